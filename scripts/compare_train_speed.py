#!/usr/bin/env python3
"""Compares kiln's CPU training speed with PyTorch eager + timm, one after the other on the same machine.

Measures convnext_atto training throughput (images/s) three ways and prints one markdown table, kiln and PyTorch
side by side with their ratio, plus a line naming the machine. The numbers go in the README's benchmark table.

  step    one training step on a fixed random batch, no data loading: 32 px batch 128 and 224 px batch 32
          (kiln: `kiln bench train`; PyTorch: timm model, AdamW, label-smoothed cross entropy)
  fmnist  the Fashion-MNIST recipe end to end (32 px, batch 128, --epochs epochs): PyTorch on preloaded tensors
          (flips only), kiln `train` with --cache ram and --cache none; training images/s and test top-1
  photos  224 px JPEG "photos" (generated with PIL), batch 32: PyTorch on preloaded 224x224 tensors, kiln
          streaming from disk with its default augmentation (decoding and augmentation inside its time)

Needs torch 2.11 and timm; a throwaway venv does:
    python3 -m venv /tmp/ptvenv && /tmp/ptvenv/bin/pip install torch==2.11.0 timm
Run (DIR made by scripts/fashion_mnist_folder.py):
    /tmp/ptvenv/bin/python scripts/compare_train_speed.py --kiln target/release/kiln --data DIR --threads 2 \\
        --epochs 3 --json speed.json
    ... --quick --which step,photos     # seconds-long smoke test of the script itself
"""
import argparse, csv, json, math, os, platform, random, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LR, WD, MIN_LR, SMOOTH, DROP_PATH = 2e-3, 0.05, 1e-6, 0.1, 0.1
SHAPES = ["ellipses", "rectangles", "triangles", "stripes"]
EXTS = (".png", ".jpg", ".jpeg")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"), help="the kiln binary")
    ap.add_argument("--data", help="Fashion-MNIST ImageFolder: DIR/{train,test}/<class>/*.png")
    ap.add_argument("--photos", help="where to generate (or find) the JPEG photos; default a temp dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="Fashion-MNIST epochs")
    ap.add_argument("--which", default="step,fmnist,photos", help="comma list of parts: step,fmnist,photos")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: 2 steps, 1 epoch, 512 images")
    ap.add_argument("--json", help="write every measured number here")
    args = ap.parse_args()
    args.which = [w.strip() for w in args.which.split(",") if w.strip()]
    bad = set(args.which) - {"step", "fmnist", "photos"}
    if bad:
        ap.error(f"unknown parts in --which: {','.join(sorted(bad))}")
    if "fmnist" in args.which and not args.data:
        ap.error("part fmnist needs --data DIR (see scripts/fashion_mnist_folder.py)")
    return args


args = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before torch loads; kiln inherits the same
    os.environ[var] = str(args.threads)
try:
    import torch
    import torch.nn.functional as F
    import timm
    from PIL import Image, ImageDraw, ImageFilter
except ImportError as e:
    print(f"missing {e.name}: run this under a Python with torch and timm, e.g. a throwaway venv:\n"
          "    python3 -m venv /tmp/ptvenv && /tmp/ptvenv/bin/pip install torch==2.11.0 timm\n"
          f"    /tmp/ptvenv/bin/python {' '.join(sys.argv)}", file=sys.stderr)
    sys.exit(2)
torch.set_num_threads(args.threads)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- PyTorch side

def make_model(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("convnext_atto", num_classes=10, drop_path_rate=DROP_PATH).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases and norms, as timm excludes them
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    return model, opt, torch.nn.CrossEntropyLoss(label_smoothing=SMOOTH)


def train_step(model, opt, crit, x, y):
    opt.zero_grad(set_to_none=True)
    loss = crit(model(x), y)
    loss.backward()
    opt.step()
    return loss


def torch_step_bench(size, batch, steps, warmup):
    model, opt, crit = make_model()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    for _ in range(warmup):
        train_step(model, opt, crit, x, y)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, crit, x, y)
    secs = time.perf_counter() - t
    return {"images_per_second": batch * steps / secs, "mean_step_ms": 1000 * secs / steps}


def list_folder(split_dir):
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    items = [(os.path.join(split_dir, c, f), i) for i, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(split_dir, c))) if f.lower().endswith(EXTS)]
    return classes, items


def load_folder(split_dir, size, chunk=512):
    """Decodes every image once (PIL, RGB), resizes to size x size (bilinear, antialias), normalises."""
    _, items = list_folder(split_dir)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    xs = []
    for i in range(0, len(items), chunk):
        imgs = []
        for path, _ in items[i:i + chunk]:
            with Image.open(path) as im:
                im = im.convert("RGB")
                imgs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3))
        if len({t.shape for t in imgs}) == 1:
            x = torch.stack(imgs).permute(0, 3, 1, 2).float() / 255
            xs.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
        else:
            xs.append(torch.cat([F.interpolate(t.permute(2, 0, 1)[None].float() / 255, size=(size, size),
                                               mode="bilinear", antialias=True, align_corners=False) for t in imgs]))
    x = (torch.cat(xs) - mean) / std
    return x.contiguous(), torch.tensor([c for _, c in items])


def lr_at(step, warm, total):
    if step < warm:
        return LR * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * t))


def torch_train(x, y, epochs, batch, seed=0):
    """Trains on preloaded tensors (shuffle, hflip p=0.5); returns per-epoch training images/s and the model."""
    model, opt, crit = make_model(seed)
    gen = torch.Generator().manual_seed(seed)
    n, per_epoch = len(x), math.ceil(len(x) / batch)
    step, rates = 0, []
    for epoch in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, per_epoch, per_epoch * epochs)
            loss = train_step(model, opt, crit, xb, yb)
            step += 1
        rates.append(n / (time.perf_counter() - t))
        log(f"  pytorch epoch {epoch + 1}/{epochs}: {rates[-1]:.1f} img/s, last loss {loss.item():.3f}")
    return rates, model


@torch.no_grad()
def torch_accuracy(model, x, y, batch=256):
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


# ---------------------------------------------------------------- kiln side

def run_kiln(cmd, logfile):
    """Runs kiln to completion; returns None on success, else 'kiln failed: <output tail>'."""
    log("  $ " + " ".join(cmd))
    try:
        with open(logfile, "w") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    except OSError as e:
        return f"kiln failed: {e}"
    if rc == 0:
        return None
    tail = " ".join(open(logfile, errors="replace").read().split())[-300:]
    return f"kiln failed (exit {rc}): {tail or 'no output'}"


def kiln_step_bench(size, batch, steps, warmup, tmp):
    out = os.path.join(tmp, f"kiln_step_{size}.json")
    err = run_kiln([args.kiln, "bench", "train", "--model", "convnext_atto", "--img-size", str(size), "--batch",
                    str(batch), "--steps", str(steps), "--warmup", str(warmup), "--threads", str(args.threads),
                    "--device", "cpu", "--json", out], out + ".log")
    if err:
        return err
    try:
        res = json.load(open(out))
    except (OSError, ValueError) as e:
        return f"kiln failed: could not read its --json file: {e}"
    res = res[0] if isinstance(res, list) else res
    if "images_per_second" not in res:
        return f"kiln failed: no images_per_second in {out} (keys: {', '.join(res)})"
    return res


def kiln_train(data, size, batch, epochs, cache, name, tmp, extra=()):
    """Runs `kiln train`; returns {images_per_second (mean over epochs), per_epoch, accuracy} or an error string."""
    cmd = [args.kiln, "train", "--data", data, "--model", "convnext_atto", "--epochs", str(epochs), "--img-size",
           str(size), "--batch", str(batch), "--lr", str(LR), "--weight-decay", str(WD), "--warmup-epochs", "1",
           "--min-lr", str(MIN_LR), "--label-smoothing", str(SMOOTH), "--drop-path-rate", str(DROP_PATH),
           "--threads", str(args.threads), "--workers", str(args.threads), "--seed", "0", "--device", "cpu",
           "--val-split", "0.0", *extra, "--cache", cache, "--project", tmp, "--name", name]
    err = run_kiln(cmd, os.path.join(tmp, name + ".log"))
    if err:
        return err
    run_dir = os.path.join(tmp, "classify", name)
    try:
        rows = list(csv.DictReader(open(os.path.join(run_dir, "results.csv"))))
    except OSError as e:
        return f"kiln: no results.csv in {run_dir} ({e})"
    if not rows or "images_per_second" not in rows[0]:
        return f"kiln: no images_per_second in results.csv (columns: {', '.join(rows[0]) if rows else 'none'})"
    rates = [float(r["images_per_second"]) for r in rows]
    res = {"images_per_second": sum(rates) / len(rates), "per_epoch": rates, "accuracy": None}
    try:
        metrics = json.load(open(os.path.join(run_dir, "test_metrics.json")))
        acc = metrics.get("metrics", {}).get("accuracy", metrics.get("accuracy"))
        if acc is None:
            log(f"  test_metrics.json has no metrics.accuracy; keys: {list(metrics)}")
        res["accuracy"] = acc
    except (OSError, ValueError, AttributeError) as e:
        log(f"  could not read {run_dir}/test_metrics.json: {e}")
    return res


# ---------------------------------------------------------------- data

def subset_folder(src, dst, n_train, n_test):
    """Copies the first images of each class, round-robin, into dst (copies, not links: kiln may skip symlinks)."""
    for split, n in (("train", n_train), ("test", n_test)):
        classes, items = list_folder(os.path.join(src, split))
        per_class = [[p for p, c in items if c == i] for i in range(len(classes))]
        chosen = [lst[k] for k in range(max(map(len, per_class))) for lst in per_class if k < len(lst)][:n]
        for path in chosen:
            d = os.path.join(dst, split, os.path.basename(os.path.dirname(path)))
            os.makedirs(d, exist_ok=True)
            shutil.copy(path, d)
    return dst


def make_photos(root, n_train, n_test, seed=0):
    """500x375 JPEGs (quality 90): gradient background, a few shapes; the class is the shape drawn most."""
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, cls in enumerate(SHAPES):
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for k in range(n):
                rng = random.Random(f"{seed}/{split}/{ci}/{k}")
                colour = lambda: tuple(rng.randrange(256) for _ in range(3))
                grad = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize((500, 375))
                img = Image.composite(Image.new("RGB", (500, 375), colour()), Image.new("RGB", (500, 375), colour()), grad)
                draw = ImageDraw.Draw(img)
                for shape in [ci] * 4 + [rng.randrange(4) for _ in range(2)]:
                    x, y, w, h = rng.randrange(450), rng.randrange(325), rng.randrange(30, 160), rng.randrange(30, 160)
                    if shape == 0:
                        draw.ellipse((x, y, x + w, y + h), fill=colour())
                    elif shape == 1:
                        draw.rectangle((x, y, x + w, y + h), fill=colour())
                    elif shape == 2:
                        draw.polygon([(x, y + h), (x + w, y + h), (x + w // 2, y)], fill=colour())
                    else:
                        draw.line((x, y, x + w, y + h), fill=colour(), width=rng.randrange(4, 16))
                img.filter(ImageFilter.GaussianBlur(1.5)).save(os.path.join(root, split, cls, f"{k:04d}.jpg"), quality=90)


# ---------------------------------------------------------------- parts

def median_run(runs):
    """The run with the median images/s of several (a string is a failed run and is returned as it is)."""
    failed = [r for r in runs if isinstance(r, str)]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["images_per_second"])
    best = dict(ordered[len(ordered) // 2])
    best["all_images_per_second"] = [round(r["images_per_second"], 1) for r in runs]
    return best


def part_step(res, tmp):
    # The step is short and this machine's speed drifts by +-20 % from run to run: alternate the two frameworks
    # over several rounds and keep each one's median.
    warmup, rounds = (1, 1) if args.quick else (5, 5)
    for size, batch, steps in ((32, 128, 30), (224, 32, 10)):
        steps = 2 if args.quick else steps
        log(f"step {size} px batch {batch}: {warmup} warm-up + {steps} timed steps, {rounds} alternating rounds")
        torch_runs, kiln_runs = [], []
        for _ in range(rounds):
            kiln_runs.append(kiln_step_bench(size, batch, steps, warmup, tmp))
            torch_runs.append(torch_step_bench(size, batch, steps, warmup))
        res[f"step_{size}"] = {"pytorch": median_run(torch_runs), "kiln": median_run(kiln_runs)}


def part_fmnist(res, tmp):
    data, epochs = args.data, 1 if args.quick else args.epochs
    if args.quick:
        data = subset_folder(args.data, os.path.join(tmp, "fm_subset"), 512, 256)
    log(f"fmnist: decoding {data}")
    x, y = load_folder(os.path.join(data, "train"), 32)
    xt, yt = load_folder(os.path.join(data, "test"), 32)
    log(f"fmnist: pytorch, {len(x)} train / {len(xt)} test images, {epochs} epochs")
    rates, model = torch_train(x, y, epochs, 128)
    res["fmnist"] = {"pytorch": {"images_per_second": sum(rates) / len(rates), "per_epoch": rates,
                                 "accuracy": torch_accuracy(model, xt, yt)}}
    del x, xt, model
    flips_only = ["--set", "augment.scale=[1.0,1.0]", "--set", "augment.ratio=[1.0,1.0]",
                  "--set", "augment.color_jitter=0.0", "--set", "augment.hflip=0.5"]
    for cache in ("ram", "none"):
        log(f"fmnist: kiln --cache {cache}")
        res["fmnist"][f"kiln_{cache}"] = kiln_train(data, 32, 128, epochs, cache, f"fm_{cache}", tmp, flips_only)


def part_photos(res, tmp):
    n_train, n_test, epochs = (8, 2, 1) if args.quick else (80, 20, 2)
    root = args.photos or os.path.join(tmp, "photos")
    if os.path.isdir(os.path.join(root, "train")):
        log(f"photos: using the existing {root}")
    else:
        log(f"photos: generating {len(SHAPES)} x {n_train} train + {n_test} test JPEGs in {root}")
        make_photos(root, n_train, n_test)
    x, y = load_folder(os.path.join(root, "train"), 224)
    log(f"photos: pytorch, {len(x)} images at 224 px, {epochs} epochs")
    rates, _ = torch_train(x, y, epochs, 32)
    del x
    res["photos"] = {"pytorch": {"images_per_second": sum(rates) / len(rates), "per_epoch": rates}}
    log("photos: kiln --cache none (streaming, default augmentation)")
    res["photos"]["kiln"] = kiln_train(root, 224, 32, epochs, "none", "photos", tmp)


# ---------------------------------------------------------------- report

def cell(v, key, fmt):
    if isinstance(v, str):
        return v.replace("|", "\\|")
    return "n/a" if v is None or v.get(key) is None else fmt.format(v[key])


def row(name, kiln, torch_res, key="images_per_second", fmt="{:.1f}"):
    ok = all(isinstance(v, dict) and v.get(key) for v in (kiln, torch_res))
    ratio = f"{kiln[key] / torch_res[key]:.2f}" if ok else "n/a"
    return f"| {name} | {cell(kiln, key, fmt)} | {cell(torch_res, key, fmt)} | {ratio} |"


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {args.threads} threads used; torch {torch.__version__}, timm {timm.__version__}"


def main():
    res = {"machine": machine(), "threads": args.threads, "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="kiln_speed_") as tmp:
        for part in ("step", "fmnist", "photos"):
            if part in args.which:
                globals()["part_" + part](res, tmp)
    lines = ["| measurement | kiln | PyTorch | kiln / PyTorch |", "|---|---|---|---|"]
    for size, batch in ((32, 128), (224, 32)):
        if f"step_{size}" in res:
            r = res[f"step_{size}"]
            lines.append(row(f"step {size} px b{batch} img/s", r["kiln"], r["pytorch"]))
    if "fmnist" in res:
        r = res["fmnist"]
        lines.append(row("Fashion-MNIST epoch img/s, cache ram", r["kiln_ram"], r["pytorch"]))
        lines.append(row("Fashion-MNIST epoch img/s, cache none", r["kiln_none"], r["pytorch"]))
        pct = lambda v: {"accuracy": 100 * v["accuracy"]} if isinstance(v, dict) and v.get("accuracy") is not None else v
        lines.append(row("Fashion-MNIST test top-1 % (kiln ram / PyTorch)", pct(r["kiln_ram"]), pct(r["pytorch"]),
                         "accuracy", "{:.2f}"))
    if "photos" in res:
        lines.append(row("photos 224 px epoch img/s, kiln streaming", res["photos"]["kiln"], res["photos"]["pytorch"]))
    print("\n".join(lines))
    print(f"\nMachine: {res['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
