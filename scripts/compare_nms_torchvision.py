#!/usr/bin/env python3
"""Times torchvision's batched_nms and kiln's nms side by side, in one run, on one core, on the same deterministic case:
10,000 boxes in a 1024x1024 image over 80 classes, class-aware at IoU 0.5, every box a candidate (kiln: no score
threshold, pre_nms_top_k and max_detections of --boxes). Checks that both keep the same boxes (the same indices); exits
1 if they do not, or if kiln takes more than half of torchvision's time (the goal).

The case (seeded numpy): 2,000 cluster centres, uniform in the image, with box sizes log-uniform in 8-256 px and a
uniform class each; every box is a copy of a random cluster's box, its centre moved up to +-15% of the size, its width
and height scaled by e^+-0.15, clipped to the image, keeping the cluster's class with probability 0.8 (else a uniform
class). Scores are uniform in [0, 1). So classes are uniform in 0..80 and copies of one object overlap: real suppression.

torchvision: torch.set_num_threads(1), inference mode, the median of --repeats calls after warm-up, half before and
half after kiln's run (both halves are printed, to show drift on a busy machine). kiln: `cargo bench --bench nms` on
the same case (written to TARGET/nms_case.bin and passed in KILN_NMS_CASE), criterion's median from
TARGET/criterion/nms/case_file/new/estimates.json. The whole script is pinned to one CPU (--cpu) once the bench is built.

Set-up, once (only PyPI is needed; torch's Linux wheels on PyPI are the CUDA ones, big but fine on a CPU):
    python3 -m venv /tmp/tvvenv && /tmp/tvvenv/bin/pip install numpy torch==2.11.0 torchvision
Run from anywhere, with the environment `make` sets (LIBTORCH, LD_LIBRARY_PATH, ORT_DYLIB_PATH, CARGO_TARGET_DIR;
unset ones default to the repository's .deps/ and target/):
    /tmp/tvvenv/bin/python scripts/compare_nms_torchvision.py [--boxes 10000] [--repeats 300] [--cpu 0]
Checked with torch 2.11.0, torchvision 0.26.0, numpy 2.4.6.
"""
import argparse, json, os, statistics, struct, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.ops import batched_nms

REPO = Path(__file__).resolve().parent.parent
IMAGE, CLASSES, IOU = 1024.0, 80, 0.5


def make_case(n, seed):
    rng = np.random.default_rng(seed)
    k = max(n // 5, 1)
    cx, cy = rng.uniform(0, IMAGE, (2, k))
    w, h = np.exp(rng.uniform(np.log(8), np.log(256), (2, k)))
    cluster_class = rng.integers(0, CLASSES, k)
    which = rng.integers(0, k, n)
    jx, jy = rng.uniform(-0.15, 0.15, (2, n))
    sx, sy = np.exp(rng.uniform(-0.15, 0.15, (2, n)))
    bx = np.clip(cx[which] + jx * w[which], 0, IMAGE)
    by = np.clip(cy[which] + jy * h[which], 0, IMAGE)
    bw, bh = w[which] * sx, h[which] * sy
    boxes = np.stack([np.maximum(bx - bw / 2, 0), np.maximum(by - bh / 2, 0),
                      np.minimum(bx + bw / 2, IMAGE), np.minimum(by + bh / 2, IMAGE)], 1).astype(np.float32)
    classes = np.where(rng.random(n) < 0.8, cluster_class[which], rng.integers(0, CLASSES, n)).astype(np.uint32)
    scores = rng.random(n, dtype=np.float32)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    return boxes, scores, classes


def write_case(path, boxes, scores, classes):
    # The format benches/nms.rs reads: b"KNMS", u32 version 1, u32 n, n x 4 f32 corners, n f32 scores, n u32 classes.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"KNMS" + struct.pack("<II", 1, len(scores)) + boxes.astype("<f4").tobytes()
                     + scores.astype("<f4").tobytes() + classes.astype("<u4").tobytes())


def cargo_env():
    env = dict(os.environ)
    deps = Path(env.get("KILN_DEPS", REPO / ".deps"))
    env.setdefault("LIBTORCH", str(deps / "libtorch"))
    env.setdefault("ORT_DYLIB_PATH", str(deps / "onnxruntime" / "libonnxruntime.so"))
    lib = str(Path(env["LIBTORCH"]) / "lib")
    if lib not in env.get("LD_LIBRARY_PATH", "").split(":"):
        env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def time_torchvision(boxes, scores, idxs, repeats, warmup=20):
    with torch.inference_mode():
        for _ in range(warmup):
            batched_nms(boxes, scores, idxs, IOU)
        times = []
        for _ in range(repeats):
            start = time.perf_counter_ns()
            batched_nms(boxes, scores, idxs, IOU)
            times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boxes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=300, help="torchvision calls timed (half before kiln's run)")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU both run on")
    args = parser.parse_args()

    env = cargo_env()
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO, env=env,
                                     check=True, capture_output=True, text=True).stdout)
    target = Path(meta["target_directory"])
    case, keep_out = target / "nms_case.bin", target / "nms_case_kiln_keep.json"
    criterion_home = target / "criterion"
    env.update(KILN_NMS_CASE=str(case), KILN_NMS_KEEP=str(keep_out), CRITERION_HOME=str(criterion_home))

    boxes, scores, classes = make_case(args.boxes, args.seed)
    write_case(case, boxes, scores, classes)
    print(f"case: {args.boxes} boxes, {CLASSES} classes, seed {args.seed} -> {case}", flush=True)
    # Build on every core, then pin this process (and so the bench it starts) to one.
    subprocess.run(["cargo", "bench", "--locked", "--bench", "nms", "--no-run"], cwd=REPO, env=env, check=True)
    os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(1)

    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    ti = torch.from_numpy(classes.astype(np.int64))
    tv_keep = batched_nms(tb, ts, ti, IOU).tolist()
    before = time_torchvision(tb, ts, ti, args.repeats // 2)

    keep_out.unlink(missing_ok=True)
    subprocess.run(["cargo", "bench", "--locked", "--bench", "nms", "--", "--noplot", "nms/case_file"], cwd=REPO,
                   env=env, check=True)
    estimates = json.loads((criterion_home / "nms" / "case_file" / "new" / "estimates.json").read_text())
    kiln_ms = estimates["median"]["point_estimate"] / 1e6
    kiln_ci = [estimates["median"]["confidence_interval"][b] / 1e6 for b in ("lower_bound", "upper_bound")]
    kiln_keep = json.loads(keep_out.read_text())

    after = time_torchvision(tb, ts, ti, args.repeats - args.repeats // 2)
    tv_ms = statistics.median(before + after)
    ratio = kiln_ms / tv_ms

    print(f"\ntorch {torch.__version__}, torchvision {torchvision.__version__}, CPU {args.cpu}, one thread each")
    print("| | median time (ms) | boxes kept |")
    print("|---|---|---|")
    print(f"| torchvision batched_nms | {tv_ms:.3f} (before kiln {statistics.median(before):.3f}, "
          f"after {statistics.median(after):.3f}; min {min(before + after):.3f}) | {len(tv_keep)} |")
    print(f"| kiln nms | {kiln_ms:.3f} (95% CI {kiln_ci[0]:.3f}-{kiln_ci[1]:.3f}) | {len(kiln_keep)} |")
    print(f"kiln / torchvision: {ratio:.3f} (goal <= 0.5)")
    only_tv, only_kiln = sorted(set(tv_keep) - set(kiln_keep)), sorted(set(kiln_keep) - set(tv_keep))
    same = not only_tv and not only_kiln and len(kiln_keep) == len(tv_keep)
    if kiln_keep == tv_keep:
        print("kept indices: identical, in the same order")
    elif same:
        print("kept indices: the same boxes, tied scores in another order")
    else:
        print(f"kept indices differ: {len(only_tv)} only in torchvision {only_tv[:10]}, "
              f"{len(only_kiln)} only in kiln {only_kiln[:10]}")
    sys.exit(0 if same and ratio <= 0.5 else 1)


if __name__ == "__main__":
    main()
