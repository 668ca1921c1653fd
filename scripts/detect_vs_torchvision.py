#!/usr/bin/env python3
"""Trains torchvision's FCOS (or Faster R-CNN, `--head faster_rcnn`) and kiln's detector side by side on one COCO-layout detection set, with the same
epochs, input size, batch, optimiser and schedule, and scores both on the test split with pycocotools.

The reference (torchvision 0.26): `torchvision.models.detection.FCOS` on timm's `convnext_atto` (random init,
`features_only`, stages 1-3: strides 8, 16, 32) with torchvision's `FeaturePyramidNetwork` (no extra levels), one
anchor per location of size 8 / 16 / 32 (so its box coder's normalisation is the stride), `min_size = max_size =
img_size` so that its transform does not resize, ImageNet normalisation, score threshold 0.05, NMS 0.6, 100
detections: kiln's evaluation settings.

Both sides train with AdamW (no decay on parameters with fewer than 2 dims, as kiln), a per-step linear warm-up
then cosine to min_lr (kiln's schedule: the warm-up lasts max(warmup_epochs, min(warmup_min_steps, a fifth of the
run)) steps; --warmup-min-steps 0 gives torchvision's references a plain epoch-based warm-up), and the model after
the last epoch is scored. Recipes:

  matched   both sides: horizontal flip 0.5 only, drop-path 0, head of --head-convs convs (default 4, as
            torchvision), kiln's `detect.*` set to torchvision's FCOS choices (location_offset 0, box_activation
            relu; `--kiln-set detect.box_activation=exp` for kiln's default regression on the matched recipe)
  default   kiln with its default recipe (only --epochs/--batch/--lr/--img-size/--seed given); torchvision as in
            `matched` (the reference is one fixed recipe)

    python scripts/make_detection_sets.py ... --out SETS
    python scripts/detect_vs_torchvision.py --data SETS/digits_small --epochs 60 --seeds 0,1,2 --recipe matched \
        --json digits_matched.json
    ... --which kiln  (or torch) to run one side; --kiln PATH for the binary (default target/release/kiln)

--head faster_rcnn: torchvision's `FasterRCNN` (v1) on timm's `convnext_atto` (all four stages) with torchvision's
FPN and `LastLevelMaxPool` (P2-P6), anchors of `--anchor-sizes` (one per level) and ratios 0.5 / 1 / 2, its
default RPN and RoI settings, score threshold 0.05, NMS 0.5, 100 detections; kiln with `detect.head: faster_rcnn`,
the same anchors and `detect.nms.iou_threshold: 0.5`. Both sides take the same epochs, sizes and sampling.

Needs torch 2.11, torchvision 0.26, timm, pycocotools (a throwaway venv). Prints a markdown table with each seed's
test mAP@[.5:.95] and mAP@.5 (pycocotools for both), training images/s, and the means over seeds.
"""
import argparse
import contextlib
import functools
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--data", required=True, help="COCO layout: DIR/annotations/instances_{train,val,test}.json")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--warmup-min-steps", type=int, default=100)
    ap.add_argument("--min-lr", type=float, default=1e-6)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--fpn-channels", type=int, default=96)
    ap.add_argument("--head-convs", type=int, default=4)
    ap.add_argument("--recipe", choices=["matched", "default"], default="matched")
    ap.add_argument("--head", choices=["fcos", "faster_rcnn"], default="fcos")
    ap.add_argument("--anchor-sizes", default="16,32,64,128,256", help="Faster R-CNN: one anchor size per level P2-P6")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--which", default="kiln,torch")
    ap.add_argument("--kiln-set", action="append", default=[], help="extra KEY=VALUE for kiln's config (YAML value)")
    ap.add_argument("--torch-init", help="start torchvision's model from these kiln-named safetensors (a kiln "
                    "checkpoint): tells the weights' initialisation apart from the training")
    ap.add_argument("--workdir", help="kiln's runs go here (default: a temporary folder)")
    ap.add_argument("--json", help="write every measured number here")
    return ap.parse_args()


args = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
try:
    import numpy as np
    import torch
    import timm
    import yaml
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchvision.models.detection import FCOS, FasterRCNN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import FeaturePyramidNetwork
except ImportError as e:
    sys.exit(f"missing {e.name}: pip install torch==2.11.0 torchvision==0.26.0 timm pycocotools pyyaml")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def gt_path(split):
    return os.path.join(args.data, "annotations", f"instances_{split}.json")


def coco_stats(split, results):
    """pycocotools' bbox stats of `results` (a list of COCO result dicts) on `split`."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path(split))
        if not results:
            return {"map": 0.0, "map_50": 0.0}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": float(ev.stats[0]), "map_50": float(ev.stats[1])}


# ---------------------------------------------------------------------------------------------- torchvision side
class TimmFpnBackbone(torch.nn.Module):
    """timm's convnext C3-C5 with torchvision's FPN; FCOS reads `out_channels`."""

    def __init__(self, channels, drop_path_rate):
        super().__init__()
        self.body = timm.create_model("convnext_atto", pretrained=False, features_only=True, out_indices=(1, 2, 3),
                                      drop_path_rate=drop_path_rate)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), channels)
        self.out_channels = channels

    def forward(self, x):
        feats = self.body(x)
        return self.fpn({str(i): f for i, f in enumerate(feats)})


def torchvision_fcos(num_classes, head_convs=4, drop_path_rate=0.0):
    backbone = TimmFpnBackbone(args.fpn_channels, drop_path_rate)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,)), aspect_ratios=((1.0,),) * 3)
    model = FCOS(backbone, num_classes=num_classes, min_size=args.img_size, max_size=args.img_size,
                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, anchor_generator=anchors, score_thresh=0.05,
                 nms_thresh=0.6, detections_per_img=100, topk_candidates=1000)
    if head_convs != 4:
        from torchvision.models.detection.fcos import FCOSHead
        model.head = FCOSHead(args.fpn_channels, 1, num_classes, num_convs=head_convs)
    return model


class TimmFpnP2P6(torch.nn.Module):
    """timm's convnext C2-C5 with torchvision's FPN and LastLevelMaxPool (P2-P6), as BackboneWithFPN."""

    def __init__(self, channels):
        super().__init__()
        self.body = timm.create_model("convnext_atto", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3),
                                      drop_path_rate=0.0)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x):
        return self.fpn({str(i): f for i, f in enumerate(self.body(x))})


def anchor_sizes():
    return [float(s) for s in args.anchor_sizes.split(",")]


def torchvision_faster_rcnn(num_classes):
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes()), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(TimmFpnP2P6(args.fpn_channels), num_classes=num_classes + 1, min_size=args.img_size,
                      max_size=args.img_size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                      rpn_anchor_generator=anchors, box_score_thresh=0.05, box_nms_thresh=0.5,
                      box_detections_per_img=100)


def load_kiln_weights(model, path):
    """kiln's names -> torchvision FCOS's: `stem.N` / `stages.N` under `backbone.body` (timm's features_only
    `stem_N` / `stages_N`), `fpn.*` under `backbone`; every parameter of the model must be given."""
    from safetensors.torch import load_file
    state = {}
    for name, tensor in load_file(path).items():
        if name.startswith(("optimizer.", "train.", "rng.")):
            continue
        name = re.sub(r"^stem\.(\d+)", r"backbone.body.stem_\1", name)
        name = re.sub(r"^stages\.(\d+)", r"backbone.body.stages_\1", name)
        name = re.sub(r"^fpn\.", "backbone.fpn.", name)
        state[name] = tensor
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        sys.exit(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")


@functools.lru_cache(maxsize=None)
def read_split(split):
    """[(image float [3,H,W] in 0..1, {'boxes', 'labels'} with labels 0..C-1, image id)], category ids in order."""
    with open(gt_path(split)) as f:
        gt = json.load(f)
    cats = sorted(c["id"] for c in gt["categories"])
    index = {c: i for i, c in enumerate(cats)}
    by_image = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    samples = []
    for im in gt["images"]:
        img = Image.open(os.path.join(args.data, split, im["file_name"])).convert("RGB")
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in by_image[im["id"]]]
        labels = [index[a["category_id"]] for a in by_image[im["id"]]]
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64)}
        samples.append((x, target, im["id"]))
    return samples, cats


def kiln_schedule(step, steps_per_epoch):
    """kiln's CosineSchedule.lr."""
    total = args.epochs * steps_per_epoch
    warmup = round(args.warmup_epochs * steps_per_epoch)
    if args.warmup_epochs > 0:
        warmup = max(warmup, min(args.warmup_min_steps, total // 5))
    min_lr = min(args.min_lr, args.lr)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (args.lr - min_lr) * (1 + math.cos(math.pi * t))


def train_torch(seed):
    torch.manual_seed(seed)
    torch.set_num_threads(args.threads)
    train, cats = read_split("train")
    test, _ = read_split("test")
    two_stage = args.head == "faster_rcnn"
    model = torchvision_faster_rcnn(len(cats)) if two_stage else torchvision_fcos(len(cats), head_convs=args.head_convs)
    shift = 1 if two_stage else 0  # torchvision's two-stage labels count the background as 0
    if args.torch_init:
        load_kiln_weights(model, args.torch_init)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / args.batch)
    step, images, seconds, losses, box_losses = 0, 0, 0.0, [], []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen).tolist()
        start = time.perf_counter()
        epoch_loss = []
        for b in range(steps_per_epoch):
            batch = [train[i] for i in order[b * args.batch:(b + 1) * args.batch]]
            xs, ts = [], []
            for x, t, _ in batch:
                if torch.rand((), generator=gen) < 0.5:
                    x = x.flip(-1)
                    w = x.shape[-1]
                    boxes = t["boxes"].clone()
                    boxes[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
                    t = {"boxes": boxes, "labels": t["labels"]}
                xs.append(x)
                t = {"boxes": t["boxes"], "labels": t["labels"] + shift}
                ts.append(t)
            for g in opt.param_groups:
                g["lr"] = kiln_schedule(step, steps_per_epoch)
            loss_dict = model(xs, ts)
            loss = sum(loss_dict.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            images += len(batch)
            epoch_loss.append([float(loss)] + [float(v) for v in loss_dict.values()])
        seconds += time.perf_counter() - start
        parts = [sum(p) / len(epoch_loss) for p in zip(*epoch_loss)]
        losses.append(parts[0])
        box_losses.append(parts[2])
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            named = ", ".join(f"{k} {v:.4f}" for k, v in zip(loss_dict.keys(), parts[1:]))
            print(f"  torch seed {seed} epoch {epoch + 1}: loss {parts[0]:.4f} ({named})", file=sys.stderr, flush=True)
    model.eval()
    results = []
    with torch.no_grad():
        for i in range(0, len(test), args.batch):
            chunk = test[i:i + args.batch]
            outs = model([x for x, _, _ in chunk])
            for (_, _, image_id), out in zip(chunk, outs):
                for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                    x1, y1, x2, y2 = box
                    results.append({"image_id": image_id, "category_id": cats[label - shift],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    stats = coco_stats("test", results)
    return {**stats, "images_per_s": images / seconds, "first_loss": losses[0], "last_loss": losses[-1],
            "last_box_loss": box_losses[-1]}


# ---------------------------------------------------------------------------------------------------- kiln side
def kiln_config(seed, workdir):
    config = {"task": "detect", "data": os.path.abspath(args.data), "model": "convnext_atto",
              "img_size": args.img_size, "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": seed,
              "threads": args.threads, "workers": args.threads, "project": workdir, "name": f"seed{seed}"}
    if args.recipe == "matched":
        config.update({"weight_decay": args.weight_decay, "warmup_epochs": args.warmup_epochs,
                       "min_lr": args.min_lr, "warmup_min_steps": args.warmup_min_steps, "drop_path_rate": 0.0, "ema": False, "grad_clip": 0.0})
        config["detect"] = {
            "fpn_channels": args.fpn_channels, "head_convs": args.head_convs, "num_levels": 3, "location_offset": 0.0,
            "box_activation": "relu",
            "augment": {"hflip": 0.5, "scale": [1.0, 1.0], "translate": 0.0, "hsv_h": 0.0, "hsv_s": 0.0,
                        "hsv_v": 0.0, "mosaic": 0.0},
        }
    if args.head == "faster_rcnn":
        detect = config.setdefault("detect", {})
        detect.update({"head": "faster_rcnn", "fpn_channels": args.fpn_channels,
                       "anchors": {"sizes": [[s] for s in anchor_sizes()], "aspect_ratios": [0.5, 1.0, 2.0]}})
        detect.setdefault("nms", {})["iou_threshold"] = 0.5
    for item in args.kiln_set:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return config


def train_kiln(seed, workdir):
    config = kiln_config(seed, workdir)
    path = os.path.join(workdir, f"seed{seed}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    run = os.path.join(workdir, "detect", f"seed{seed}")
    subprocess.run([args.kiln, "train", "--task", "detect", "--config", path], check=True, stdout=subprocess.DEVNULL)
    onnx = os.path.join(workdir, f"seed{seed}.onnx")
    subprocess.run([args.kiln, "export", "onnx", "--run", run, "--checkpoint", "last", "--out", onnx], check=True,
                   stdout=subprocess.DEVNULL)
    test_dir = os.path.join(os.path.abspath(args.data), "test")
    images = sorted(os.path.join(test_dir, n) for n in os.listdir(test_dir))
    out = subprocess.run([args.kiln, "infer", "--model", onnx, "--format", "coco", "--coco-gt", gt_path("test"),
                          "--score", "0.05", *images], check=True, capture_output=True, text=True).stdout
    stats = coco_stats("test", json.loads(out))
    with open(os.path.join(run, "results.csv")) as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    header, rows = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    ips = [float(r[col["images_per_second"]]) for r in rows] if "images_per_second" in col else []
    loss = [float(r[col["train_loss"]]) for r in rows] if "train_loss" in col else []
    box = [float(r[col["train_box"]]) for r in rows] if "train_box" in col else []
    return {**stats, "images_per_s": sum(ips) / len(ips) if ips else float("nan"),
            "first_loss": loss[0] if loss else float("nan"), "last_loss": loss[-1] if loss else float("nan"),
            "last_box_loss": box[-1] if box else float("nan")}


def main():
    seeds = [int(s) for s in args.seeds.split(",")]
    which = args.which.split(",")
    results = {"data": args.data, "recipe": args.recipe, "head": args.head, "epochs": args.epochs, "batch": args.batch,
               "lr": args.lr, "img_size": args.img_size, "cpu": cpu_name(), "torch": torch.__version__,
               "runs": {w: {} for w in which}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.abspath(args.workdir or tmp)
        os.makedirs(workdir, exist_ok=True)
        for seed in seeds:
            for w in which:
                start = time.perf_counter()
                r = train_kiln(seed, workdir) if w == "kiln" else train_torch(seed)
                r["wall_s"] = time.perf_counter() - start
                results["runs"][w][seed] = r
                print(f"{w} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()), file=sys.stderr,
                      flush=True)
    print(f"\n{args.data} ({args.head}, {args.recipe}, {args.epochs} epochs, batch {args.batch}, lr {args.lr}); {cpu_name()}\n")
    print("| trainer | seed | test mAP@[.5:.95] | test mAP@.5 | train images/s |")
    print("|---|---|---|---|---|")
    for w in which:
        runs = results["runs"][w]
        for seed, r in runs.items():
            print(f"| {w} | {seed} | {r['map']:.3f} | {r['map_50']:.3f} | {r['images_per_s']:.1f} |")
        mean = {k: sum(r[k] for r in runs.values()) / len(runs) for k in ("map", "map_50", "images_per_s")}
        results.setdefault("mean", {})[w] = mean
        print(f"| {w} | mean | **{mean['map']:.3f}** | {mean['map_50']:.3f} | {mean['images_per_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
