#!/usr/bin/env python3
"""Trains the classification recipe in configs/recipe_fashion_mnist.yaml with kiln and with PyTorch + timm, one
after the other on the same machine, and prints both test accuracies (and training speed) as a markdown table.

The recipe: convnext_atto from scratch at 32 px, AdamW with a linear warm-up then a per-step cosine, label
smoothing, drop-path, random-resized-crop + horizontal flip, RandAugment, random erasing, MixUp/CutMix, EMA of the
weights; the model evaluated after the last epoch is the EMA one. The PyTorch side builds it from the same file:

  random-resized-crop   torchvision RandomResizedCrop(img_size, scale, ratio), bilinear with antialias (PIL)
  flip                  torchvision RandomHorizontalFlip(hflip)
  RandAugment           torchvision RandAugment(num_ops, magnitude, num_magnitude_bins): kiln implements
                        torchvision's definition (its tests compare every operation to torchvision's on PIL), so
                        both sides draw from the same augmentation; timm's rand_augment_transform is another one
  random erasing        timm RandomErasing(prob, mode, min_area, max_area, min_aspect, max_count), after Normalize
  MixUp / CutMix        timm Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, mode='batch',
                        label_smoothing, num_classes) with SoftTargetCrossEntropy
  EMA                   decay min(ema_decay, (1 + n) / (10 + n)) after every step (kiln's, timm ModelEmaV3's warm-up)
  AdamW                 no weight decay on biases and norms (ndim < 2), as timm and kiln do

Evaluation: the whole 28x28 test image stretched to 32x32 (bilinear, antialias), normalised: what kiln's
`resize: stretch` does. kiln trains with --cache ram (decoded once, augmented every epoch); PyTorch reads the
PNGs with a DataLoader of --threads workers.

Needs torch 2.11, torchvision, timm and PyYAML (a throwaway venv: pip install torch==2.11.0 torchvision timm pyyaml).
Run (DIR made by scripts/fashion_mnist_folder.py):
    python scripts/recipe_vs_timm.py --kiln target/release/kiln --data DIR --threads 2 --json recipe.json
    ... --quick          # a 2,000-image, 1-epoch smoke test of the script itself
"""
import argparse, json, math, os, platform, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--data", required=True, help="Fashion-MNIST ImageFolder: DIR/{train,test}/<class>/*.png")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/recipe_fashion_mnist.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--which", default="kiln,torch", help="comma list: kiln,torch")
    ap.add_argument("--quick", action="store_true", help="2,000 train / 500 test images, 1 epoch")
    ap.add_argument("--json", help="write every measured number here")
    return ap.parse_args()


args = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
try:
    import torch
    import torch.nn.functional as F
    import timm
    import yaml
    from PIL import Image
    from timm.data import Mixup
    from timm.data.random_erasing import RandomErasing
    from timm.loss import SoftTargetCrossEntropy
    from torchvision import datasets, transforms
except ImportError as e:
    sys.exit(f"missing {e.name}: pip install torch==2.11.0 torchvision timm pyyaml")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


with open(args.config) as f:
    R = yaml.safe_load(f)
AUG, MIX = R["augment"], R["mixup"]
RA, RE = AUG["auto_augment"], AUG["random_erasing"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPOCHS = 1 if args.quick else R["epochs"]


def subset(src, dst, n_train, n_test):
    """Every k-th image of each class folder, so the quick run keeps all classes."""
    for split, n in (("train", n_train), ("test", n_test)):
        classes = sorted(os.listdir(os.path.join(src, split)))
        per = n // len(classes)
        for c in classes:
            files = sorted(os.listdir(os.path.join(src, split, c)))[:per]
            os.makedirs(os.path.join(dst, split, c))
            for f in files:
                os.symlink(os.path.join(src, split, c, f), os.path.join(dst, split, c, f))


# ---------------------------------------------------------------- PyTorch + timm

def torch_run(data):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    size = R["img_size"]
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=tuple(AUG["scale"]), ratio=tuple(AUG["ratio"]),
                                     interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.RandomHorizontalFlip(AUG["hflip"]),
        transforms.RandAugment(num_ops=RA.get("num_ops", 2), magnitude=RA.get("magnitude", 9),
                               num_magnitude_bins=RA.get("num_magnitude_bins", 31)),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
        RandomErasing(probability=RE["prob"], mode=RE.get("fill", "pixel"),
                      min_area=RE.get("area", [0.02, 1 / 3])[0], max_area=RE.get("area", [0.02, 1 / 3])[1],
                      min_aspect=RE.get("aspect", [0.3, 1 / 0.3])[0], max_count=RE.get("count", [1, 1])[1],
                      device="cpu"),
    ])
    eval_tf = transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = datasets.ImageFolder(os.path.join(data, "train"), transform=train_tf)
    test = datasets.ImageFolder(os.path.join(data, "test"), transform=eval_tf)
    loader = torch.utils.data.DataLoader(train, batch_size=R["batch"], shuffle=True, num_workers=args.threads,
                                         persistent_workers=True, drop_last=False)
    model = timm.create_model(R["model"], num_classes=len(train.classes), drop_path_rate=R["drop_path_rate"])
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": R["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=R["lr"])
    ema = timm.create_model(R["model"], num_classes=len(train.classes)).eval()
    ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    mixup = Mixup(mixup_alpha=MIX["mixup_alpha"], cutmix_alpha=MIX["cutmix_alpha"], prob=MIX["prob"],
                  switch_prob=MIX["switch_prob"], mode="batch", label_smoothing=R["label_smoothing"],
                  num_classes=len(train.classes))
    crit = SoftTargetCrossEntropy()
    per_epoch = len(loader)
    total, warm = per_epoch * EPOCHS, round(R["warmup_epochs"] * per_epoch)
    peak, floor = R["lr"], R["min_lr"]

    def lr_at(step):
        if step < warm:
            return peak * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t))

    step, rates = 0, []
    for epoch in range(EPOCHS):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = mixup(x, y)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            d = min(R["ema_decay"], (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
                    if e.dtype.is_floating_point:
                        e.lerp_(p, 1 - d)
                    else:
                        e.copy_(p)
            step += 1
            seen += len(x)
        rates.append(seen / (time.perf_counter() - t0))
        log(f"  torch epoch {epoch + 1}/{EPOCHS}: {rates[-1]:.1f} img/s, last loss {loss.item():.3f}")
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=256, num_workers=args.threads):
            correct += (ema(x).argmax(1) == y).sum().item()
    return {"top1": correct / len(test), "images_per_second": sum(rates) / len(rates), "epochs": EPOCHS}


# ---------------------------------------------------------------- kiln

def kiln_run(data, tmp):
    cmd = [args.kiln, "train", "--data", data, "--config", args.config, "--epochs", str(EPOCHS),
           "--val-split", "0", "--threads", str(args.threads), "--workers", str(args.threads),
           "--seed", str(args.seed), "--device", "cpu", "--cache", "ram", "--project", tmp, "--name", "recipe"]
    log("  $ " + " ".join(cmd))
    with open(os.path.join(tmp, "kiln.log"), "w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit("kiln failed:\n" + open(os.path.join(tmp, "kiln.log")).read()[-3000:])
    run = os.path.join(tmp, "classify", "recipe")
    with open(os.path.join(run, "test_metrics.json")) as f:
        test = json.load(f)
    rates = []
    with open(os.path.join(run, "results.csv")) as f:
        header = f.readline().strip().split(",")
        for line in f:
            row = dict(zip(header, line.strip().split(",")))
            rates.append(float(row["images_per_second"]))
    return {"top1": test["metrics"]["accuracy"], "images_per_second": sum(rates) / len(rates), "epochs": EPOCHS}


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {args.threads} threads each, {platform.system()}"


def main():
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    res = {"machine": machine(), "config": os.path.relpath(args.config, ROOT), "seed": args.seed,
           "torch": torch.__version__, "timm": timm.__version__}
    with tempfile.TemporaryDirectory(prefix="kiln-recipe-") as tmp:
        data = args.data
        if args.quick:
            data = os.path.join(tmp, "data")
            subset(args.data, data, 2000, 500)
        if "kiln" in which:
            log("kiln: training")
            res["kiln"] = kiln_run(data, tmp)
            log(f"kiln: {res['kiln']}")
        if "torch" in which:
            log("PyTorch + timm: training")
            res["pytorch"] = torch_run(data)
            log(f"pytorch: {res['pytorch']}")
    lines = [f"| {EPOCHS} epochs, seed {args.seed} | kiln | PyTorch + timm |", "|---|---|---|"]
    k, p = res.get("kiln", {}), res.get("pytorch", {})
    fmt = lambda d, key, f: f.format(d[key]) if key in d else "-"
    lines.append(f"| test top-1 | {fmt(k, 'top1', '{:.2%}')} | {fmt(p, 'top1', '{:.2%}')} |")
    lines.append(f"| training images/s | {fmt(k, 'images_per_second', '{:.0f}')} | "
                 f"{fmt(p, 'images_per_second', '{:.0f}')} |")
    print("\n".join(lines))
    print(f"\nMachine: {res['machine']}; torch {res['torch']}, timm {res['timm']}.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
