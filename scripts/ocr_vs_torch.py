#!/usr/bin/env python3
"""Trains a plain PyTorch CRNN and kiln's text-line recognizer side by side on one OCR line set (kiln's
`labels.txt` layout, e.g. from scripts/make_ocr_sets.py), with the same epochs, batch, learning rate, seed, input
size (32x256) and charset, one after the other, and scores both on the test split with jiwer (CER: `jiwer.cer`
over the split; exact match: the share of lines read exactly).

Both sides see the same input: each line fitted to the input height keeping its aspect ratio (at most the input
width: wider lines are squeezed; antialiased bilinear), placed at the left of a grey (114) canvas, RGB scaled to
0..1 and normalised with ImageNet's mean and std (kiln's `FitHeight` preprocessing, kiln-infer's
`preprocess.rs`). A line of content width w has ceil(w / 4) frames; CTC (blank 0, mean over target lengths,
zero_infinity) and greedy decoding use only the line's own frames; training lines whose label needs more frames
than the line has are left out (as kiln does).

References (--reference):
  vgg_bn    a plain CRNN: 3x3 conv + BatchNorm + ReLU with widths 32-64-128-128-256-256-256, max-pooling that
            halves height and width twice (W/4 frames) and then only the height, down to 2 rows that are
            averaged away; a 2-layer BiLSTM (--lstm-hidden per direction) and a linear layer over the blank and
            the charset.
  convnext  the same CRNN on a ConvNeXt body built from timm's ConvNeXtBlock (random init, nothing downloaded)
            with kiln's recognizer layout (models/src/text_line.rs, convnext.rs): a 4x4 stride-4 patchify stem
            + LayerNorm2d, stages of --dims / --depths whose downsampling (LayerNorm2d + 2x3 conv, stride 2x1,
            padding 0x1) halves only the height, conv_mlp blocks with layer scale --layer-scale-init, convs and
            linears N(0, 0.02) (timm's init); the height left (1 row) is averaged away.
  --frame-shortcut: the linear layer also reads the frame features beside the LSTM's output, as kiln's head does
  (`auto`: on for convnext, to match kiln's model; off for vgg_bn, the classic CRNN).

The reference trains without augmentation: Adam (no weight decay), lr --lr, with a one-cycle cosine schedule
stepped per batch (torch.optim.lr_scheduler.OneCycleLR: 30 % warm-up from lr/25, then down to lr/25/1e4; Adam's
betas stay 0.9 / 0.999 as kiln's, unless --cycle-momentum lets OneCycleLR cycle beta1 between 0.85 and 0.95), or
with --torch-schedule kiln kiln's own schedule (per-step linear warm-up, then cosine to min_lr) with the recipe's
warm-up and min_lr. The model after the last epoch is scored.

kiln (`kiln train --task ocr --config CFG`, then `kiln export onnx --checkpoint last --dynamic-batch` and
`kiln infer --format json` on the test images; the last epoch's model, like the reference): kiln's default body
(ocr.backbone unset), or with --kiln-backbone convnext model convnext_atto with ocr.dims / ocr.depths (--dims,
--depths); ocr.lstm_hidden, ocr.height/width, the charset. Recipes:
  matched  kiln's augmentation off (ocr.augment all 0), drop-path 0, Adam without weight decay, no EMA or
           clipping, and the schedule closest to OneCycleLR: warm-up 30 % of the run (warmup_epochs 0.3 x epochs,
           no minimum steps), cosine to min_lr = lr / 25 / 1e4
  default  kiln's default recipe (only epochs, batch, lr, seed, the input and, with --kiln-backbone convnext, the
           model size given): AdamW 0.05, 1 epoch / 100 steps of warm-up, drop-path 0.1 (ConvNeXt only),
           ocr.augment at its default (off; --kiln-set ocr.augment.enabled=true turns it on)
--kiln-set KEY=VALUE (YAML value, repeatable) changes any other key of kiln's config. --torch-init RUN/weights/
last.safetensors starts the convnext reference from a kiln checkpoint (with --epochs 0 --which torch: kiln's
trained weights read by the PyTorch model, a check that both models, the preprocessing and the decoding agree).

    python scripts/make_ocr_sets.py --mnist package/src/digits --out SETS
    python scripts/ocr_vs_torch.py --data SETS/digit_lines --epochs 20 --seeds 0,1,2 --recipe matched \\
        --json digits_matched.json
    python scripts/ocr_vs_torch.py --data SETS/printed_lines --epochs 20 --reference convnext --recipe matched
    ... --which kiln (or torch) to run one side; --kiln PATH for the binary (default target/release/kiln)

Needs torch 2.11, timm (for --reference convnext), jiwer, numpy, Pillow, PyYAML. Prints a markdown table with
each seed's test CER and exact match, training lines/s (median over epochs: kiln's results.csv
`images_per_second`, the reference measured the same way over its training steps, its lines decoded once
beforehand), training seconds and wall time, and the means over seeds; --json writes every measured number.
"""
import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PAD_GREY = 114
WIDTH_STRIDE = 4


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--data", required=True, help="DIR/{train,val,test}/labels.txt (name<TAB>text, images/)")
    ap.add_argument("--charset", help="ranges (0-9A-Za-z), a file of characters, or auto (default: DATA/charset.txt "
                    "when it exists, else auto)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--kiln-epochs", type=int, help="kiln's epochs when they differ from the reference's --epochs "
                    "(a comparison at equal wall time: the reference's time divided by kiln's time per epoch)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--recipe", choices=["matched", "default"], default="matched")
    ap.add_argument("--reference", choices=["vgg_bn", "convnext"], default="vgg_bn")
    ap.add_argument("--kiln-backbone", choices=["default", "convnext"], default="default",
                    help="kiln's body: its default (ocr.backbone and widths unset), or convnext_atto with --dims / "
                    "--depths (the seeds' CRNN)")
    ap.add_argument("--dims", default="32,64,96,128", help="ConvNeXt widths (kiln's ocr.dims with --kiln-backbone "
                    "convnext, and --reference convnext)")
    ap.add_argument("--depths", default="1,1,2,1", help="ConvNeXt blocks per stage (kiln's ocr.depths)")
    ap.add_argument("--lstm-hidden", type=int, default=128)
    ap.add_argument("--lstm-layers", type=int, default=2)
    ap.add_argument("--layer-scale-init", type=float, default=1.0, help="the ConvNeXt reference's blocks (kiln: 1.0)")
    ap.add_argument("--frame-shortcut", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--torch-schedule", choices=["onecycle", "kiln"], default="onecycle")
    ap.add_argument("--cycle-momentum", action="store_true", help="OneCycleLR also cycles Adam's beta1")
    ap.add_argument("--pct-start", type=float, default=0.3, help="OneCycleLR's warm-up share (and kiln's, matched)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="both sides: cpu or cuda")
    ap.add_argument("--which", default="kiln,torch")
    ap.add_argument("--kiln-set", action="append", default=[], help="extra KEY=VALUE for kiln's config (YAML value)")
    ap.add_argument("--torch-init", help="start the convnext reference from this kiln OCR checkpoint (safetensors, "
                    "e.g. RUN/weights/last.safetensors); with --epochs 0 it scores kiln's weights in PyTorch")
    ap.add_argument("--val-every", type=int, default=1, help="the reference's validation CER every N epochs (0: off)")
    ap.add_argument("--workdir", help="kiln's runs go here (default: a temporary folder)")
    ap.add_argument("--json", help="write every measured number here")
    return ap.parse_args()


args = parse_args()
if args.torch_init and args.reference != "convnext":
    sys.exit("--torch-init needs --reference convnext (kiln's model)")
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
try:
    import jiwer
    import numpy as np
    import torch
    import torch.nn.functional as F
    import yaml
    from PIL import Image
except ImportError as e:
    sys.exit(f"missing {e.name}: pip install torch==2.11.0 timm jiwer numpy pillow pyyaml")


# -------------------------------------------------------------------------------------------------------- data
def split_lines(split):
    """[(absolute image path, text)] of a split's labels.txt (or gt.txt), in file order; [] when absent."""
    folder = os.path.join(os.path.abspath(args.data), split)
    for name, base in (("labels.txt", os.path.join(folder, "images")), ("gt.txt", folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            lines = []
            with open(path, encoding="utf-8") as f:
                for raw in f:
                    raw = raw.rstrip("\n").rstrip("\r")
                    if not raw.strip():
                        continue
                    file, text = raw.split("\t", 1)
                    if text:
                        lines.append((os.path.join(base, file.strip()), text))
            return lines
    return []


def charset_setting():
    """The charset as kiln's config gets it."""
    if args.charset:
        return os.path.abspath(args.charset) if os.path.isfile(args.charset) else args.charset
    default = os.path.join(os.path.abspath(args.data), "charset.txt")
    return default if os.path.isfile(default) else "auto"


def parse_ranges(spec):
    """kiln's charset string: `a-z` is a range of code points; anything else is itself."""
    out, i = [], 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-" and spec[i] < spec[i + 2]:
            out.extend(chr(c) for c in range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            out.append(spec[i])
            i += 1
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=None)
def charset():
    """The characters in class order (class i + 1 is charset[i]; 0 is the blank), as kiln resolves them."""
    setting = charset_setting()
    if setting == "auto":
        return sorted({c for _, text in split_lines("train") for c in text})
    if os.path.isfile(setting):
        with open(setting, encoding="utf-8") as f:
            return list(dict.fromkeys(c for c in f.read() if c not in "\r\n"))
    return parse_ranges(setting)


def frames_needed(classes):
    return len(classes) + sum(a == b for a, b in zip(classes, classes[1:]))


def fit_line(path):
    """kiln's FitHeight: (uint8 [H, W, 3] canvas, content width in pixels)."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    rw = min(max(round(w * args.height / max(h, 1)), 1), args.width)
    if (rw, args.height) != (w, h):
        img = img.resize((rw, args.height), Image.BILINEAR)
    canvas = np.full((args.height, args.width, 3), PAD_GREY, dtype=np.uint8)
    canvas[:, :rw] = np.asarray(img)
    return canvas, rw


@functools.lru_cache(maxsize=None)
def read_split(split):
    """A split's lines fitted and padded once: uint8 [N, H, W, 3], frames per line, classes per line, texts."""
    index = {c: i + 1 for i, c in enumerate(charset())}
    images, frames, classes, texts = [], [], [], []
    max_frames = args.width // WIDTH_STRIDE
    skipped = 0
    for path, text in split_lines(split):
        missing = sorted({c for c in text if c not in index})
        if missing:
            sys.exit(f"{path}: characters {missing} are not in the charset")
        canvas, rw = fit_line(path)
        n = min(max(math.ceil(rw / WIDTH_STRIDE), 1), max_frames)
        target = [index[c] for c in text]
        if split == "train" and frames_needed(target) > n:
            skipped += 1
            continue
        images.append(canvas)
        frames.append(n)
        classes.append(target)
        texts.append(text)
    if skipped:
        print(f"  {split}: {skipped} line(s) whose label needs more frames than the line has, left out",
              file=sys.stderr)
    return np.stack(images), frames, classes, texts


def to_input(batch_u8, device):
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W]."""
    x = torch.from_numpy(batch_u8).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def score(references, hypotheses):
    return {"cer": float(jiwer.cer(references, hypotheses)),
            "exact_match": sum(r == h for r, h in zip(references, hypotheses)) / max(len(references), 1)}


# --------------------------------------------------------------------------------------------- the reference
class VggBn(torch.nn.Module):
    """3x3 conv + BN + ReLU, widths 32-64-128-128-256-256-256; H/16 x W/4 out (2 rows for a 32 px line)."""

    LAYOUT = [(32, (2, 2)), (64, (2, 2)), (128, None), (128, (2, 1)), (256, None), (256, (2, 1)), (256, None)]

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for cout, pool in self.LAYOUT:
            layers += [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout),
                       torch.nn.ReLU(inplace=True)]
            if pool:
                layers.append(torch.nn.MaxPool2d(pool, pool))
            cin = cout
        self.body = torch.nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x):
        return self.body(x)


class ConvNextLines(torch.nn.Module):
    """kiln's text-line ConvNeXt from timm blocks: stride-4 stem, height-only 2x3 downsampling. Parameter names
    are kiln's (and timm's): stem.{0,1}, stages.N.downsample.{0,1}, stages.N.blocks.M.*."""

    def __init__(self, dims, depths, layer_scale_init):
        super().__init__()
        from timm.layers import LayerNorm2d, trunc_normal_
        from timm.models.convnext import ConvNeXtBlock
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        stages = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stage = torch.nn.Module()
            stage.downsample = torch.nn.Identity() if i == 0 else torch.nn.Sequential(
                LayerNorm2d(dims[i - 1], eps=1e-6),
                torch.nn.Conv2d(dims[i - 1], dim, (2, 3), stride=(2, 1), padding=(0, 1)))
            stage.blocks = torch.nn.Sequential(
                *[ConvNeXtBlock(dim, conv_mlp=True, ls_init_value=layer_scale_init) for _ in range(depth)])
            stages.append(stage)
        self.stages = torch.nn.ModuleList(stages)
        self.out_channels = dims[-1]
        for m in self.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x))
        return x


def load_kiln_weights(model, path):
    """A kiln OCR checkpoint's weights into the convnext reference: the backbone's `stem.*` / `stages.*` go under
    `body.`, `rnn.*` and `head.*` keep their names; every parameter must be given."""
    from safetensors.torch import load_file
    state = {}
    for name, tensor in load_file(path).items():
        if name.startswith(("optimizer.", "train.", "rng.")):
            continue
        state["body." + name if name.startswith(("stem.", "stages.")) else name] = tensor
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        sys.exit(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")


class Crnn(torch.nn.Module):
    """body -> mean over the remaining height -> BiLSTM -> linear over blank + charset, per frame."""

    def __init__(self, body, num_classes, hidden, layers, shortcut):
        super().__init__()
        self.body = body
        self.rnn = torch.nn.LSTM(body.out_channels, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.shortcut = shortcut
        self.head = torch.nn.Linear(2 * hidden + (body.out_channels if shortcut else 0), num_classes)

    def forward(self, x):
        frames = self.body(x).mean(dim=2).permute(0, 2, 1)  # [N, T, C]
        sequence, _ = self.rnn(frames)
        if self.shortcut:
            sequence = torch.cat([sequence, frames], dim=-1)
        return self.head(sequence)  # [N, T, classes]


def shortcut_on():
    return args.frame_shortcut == "on" or (args.frame_shortcut == "auto" and args.reference == "convnext")


def build_reference():
    if args.reference == "vgg_bn":
        body = VggBn()
    else:
        body = ConvNextLines([int(d) for d in args.dims.split(",")], [int(d) for d in args.depths.split(",")],
                             args.layer_scale_init)
    return Crnn(body, len(charset()) + 1, args.lstm_hidden, args.lstm_layers, shortcut_on())


def kiln_schedule_settings(epochs=None):
    """Warm-up epochs, warm-up floor (steps) and min_lr of kiln's schedule under the recipe, for a run of `epochs`
    (the reference's by default)."""
    if args.recipe == "matched":
        return args.pct_start * (epochs or args.epochs), 0, args.lr / 25.0 / 1e4
    return 1.0, 100, 1e-6


def kiln_lr(step, steps_per_epoch):
    """kiln's CosineSchedule.lr with optim::warmup_steps."""
    total = args.epochs * steps_per_epoch
    warmup_epochs, min_steps, min_lr = kiln_schedule_settings()
    warmup = round(warmup_epochs * steps_per_epoch)
    if warmup_epochs > 0:
        warmup = max(warmup, min(min_steps, total // 5))
    if step < warmup:
        return args.lr * (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (args.lr - min_lr) * (1 + math.cos(math.pi * t))


def greedy(logits, frames):
    """Greedy CTC decoding of each line's own frames: best class per frame, repeats merged, blanks dropped."""
    chars = charset()
    best = logits.argmax(-1).cpu().tolist()
    texts = []
    for row, n in zip(best, frames):
        out, prev = [], 0
        for c in row[:n]:
            if c != prev and c != 0:
                out.append(chars[c - 1])
            prev = c
        texts.append("".join(out))
    return texts


def read_all(model, split, device):
    images, frames, _, texts = read_split(split)
    model.eval()
    hyps = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            hyps += greedy(model(to_input(images[i:i + 64], device)), frames[i:i + 64])
    return score(texts, hyps)


def train_torch(seed):
    device = torch.device(args.device)
    torch.manual_seed(seed)
    torch.set_num_threads(args.threads)
    images, frames, classes, _ = read_split("train")
    has_val = len(split_lines("val")) > 0
    if has_val:
        read_split("val")
    read_split("test")
    model = build_reference()
    if args.torch_init:
        load_kiln_weights(model, args.torch_init)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(classes) / args.batch)
    total = args.epochs * steps_per_epoch
    sched = None
    if args.torch_schedule == "onecycle" and total > 0:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=args.pct_start,
                                                    anneal_strategy="cos", cycle_momentum=args.cycle_momentum)
    gen = torch.Generator().manual_seed(seed)
    step, rates, seconds, losses, val_cer = 0, [], 0.0, [], []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(classes), generator=gen).tolist()
        start = time.perf_counter()
        epoch_loss, lines = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            x = to_input(images[idx], device)
            targets = torch.tensor([c for i in idx for c in classes[i]], dtype=torch.long)
            target_lengths = torch.tensor([len(classes[i]) for i in idx], dtype=torch.long)
            input_lengths = torch.tensor([frames[i] for i in idx], dtype=torch.long)
            if sched is None:
                for g in opt.param_groups:
                    g["lr"] = kiln_lr(step, steps_per_epoch)
            log_probs = model(x).log_softmax(-1).transpose(0, 1)  # [T, N, C]
            loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                              zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            lines += len(idx)
            epoch_loss += loss.item() * len(idx)
        took = time.perf_counter() - start
        seconds += took
        rates.append(lines / took)
        losses.append(epoch_loss / lines)
        line = f"  torch seed {seed} epoch {epoch + 1}: loss {losses[-1]:.4f}, {rates[-1]:.0f} lines/s"
        if has_val and args.val_every and ((epoch + 1) % args.val_every == 0 or epoch == args.epochs - 1):
            val_cer.append((epoch + 1, read_all(model, "val", device)["cer"]))
            line += f", val CER {val_cer[-1][1]:.4f}"
        print(line, file=sys.stderr, flush=True)
    test = read_all(model, "test", device)
    nan = float("nan")
    return {**test, "lines_per_s": statistics.median(rates) if rates else nan, "train_s": seconds,
            "first_loss": losses[0] if losses else nan, "last_loss": losses[-1] if losses else nan,
            "last_val_cer": val_cer[-1][1] if val_cer else nan, "val_cer_by_epoch": val_cer}


# ---------------------------------------------------------------------------------------------------- kiln side
def kiln_epochs():
    return args.kiln_epochs if args.kiln_epochs is not None else args.epochs


def kiln_config(seed, workdir):
    ocr = {"height": args.height, "width": args.width, "charset": charset_setting(),
           "lstm_hidden": args.lstm_hidden, "lstm_layers": args.lstm_layers}
    config = {"task": "ocr", "data": os.path.abspath(args.data), "epochs": kiln_epochs(),
              "batch": args.batch, "lr": args.lr, "seed": seed, "threads": args.threads, "workers": args.threads,
              "device": args.device, "project": workdir, "name": f"seed{seed}", "ocr": ocr}
    if args.kiln_backbone == "convnext":
        config["model"] = "convnext_atto"
        ocr.update({"backbone": "convnext", "dims": [int(d) for d in args.dims.split(",")],
                    "depths": [int(d) for d in args.depths.split(",")]})
    if args.recipe == "matched":
        warmup_epochs, min_steps, min_lr = kiln_schedule_settings(kiln_epochs())
        config.update({"optimizer": "adam", "weight_decay": 0.0, "warmup_epochs": warmup_epochs,
                       "warmup_min_steps": min_steps, "min_lr": min_lr, "drop_path_rate": 0.0, "ema": False,
                       "grad_clip": 0.0, "label_smoothing": 0.0})
        ocr["augment"] = {"pad": 0.0, "rotate": 0.0, "shear": 0.0, "contrast": 0.0, "blur": 0.0, "noise": 0.0}
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
    run = os.path.join(workdir, "ocr", f"seed{seed}")
    # --task on the command line: the flag's default (classify) would otherwise replace the config's task.
    subprocess.run([args.kiln, "train", "--task", "ocr", "--config", path], check=True, stdout=subprocess.DEVNULL)
    onnx = os.path.join(workdir, f"seed{seed}.onnx")
    subprocess.run([args.kiln, "export", "onnx", "--run", run, "--checkpoint", "last", "--dynamic-batch", "--out",
                    onnx], check=True, stdout=subprocess.DEVNULL)
    test = split_lines("test")
    out = subprocess.run([args.kiln, "infer", "--model", onnx, "--format", "json", "--batch", "16", "--threads",
                          str(args.threads), *[p for p, _ in test]], check=True, capture_output=True,
                         text=True).stdout
    read = {}
    for line in out.splitlines():
        if line.strip():
            r = json.loads(line)
            read[r["path"]] = r.get("text", "")
    missing = [p for p, _ in test if p not in read]
    if missing:
        sys.exit(f"kiln infer gave no reading for {len(missing)} test image(s), e.g. {missing[0]}")
    stats = score([t for _, t in test], [read[p] for p, _ in test])
    with open(os.path.join(run, "results.csv")) as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    header, rows = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}

    def column(name):
        return [float(r[col[name]]) for r in rows] if name in col else []

    rates, loss, val = column("images_per_second"), column("train_loss"), column("val_cer")
    return {**stats, "lines_per_s": statistics.median(rates) if rates else float("nan"),
            "train_s": sum(column("seconds")), "first_loss": loss[0] if loss else float("nan"),
            "last_loss": loss[-1] if loss else float("nan"), "last_val_cer": val[-1] if val else float("nan"),
            "val_cer_by_epoch": [(i + 1, v) for i, v in enumerate(val)]}


# ------------------------------------------------------------------------------------------------------- report
def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def versions():
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        from importlib.metadata import version
        out["jiwer"] = version("jiwer")
        if args.reference == "convnext":
            out["timm"] = version("timm")
    except Exception:  # noqa: BLE001 (versions are informative only)
        pass
    if "kiln" in args.which.split(","):
        try:
            out["kiln"] = subprocess.run([args.kiln, "--version"], capture_output=True, text=True).stdout.strip()
        except OSError:
            out["kiln"] = "not found"
    return out


def main():
    seeds = [int(s) for s in args.seeds.split(",")]
    which = args.which.split(",")
    names = {"kiln": f"kiln ({args.recipe}" + (f", {kiln_epochs()} epochs)" if kiln_epochs() != args.epochs else ")"),
             "torch": f"torch {args.reference}" +
             (" +shortcut" if shortcut_on() and args.reference == "vgg_bn" else "") +
             (" (kiln schedule)" if args.torch_schedule == "kiln" else "")}
    info = {"data": args.data, "recipe": args.recipe, "reference": args.reference, "epochs": args.epochs,
            "kiln_epochs": kiln_epochs(), "kiln_backbone": args.kiln_backbone,
            "batch": args.batch, "lr": args.lr, "input": [args.height, args.width], "charset": "".join(charset()),
            "dims": args.dims, "depths": args.depths, "lstm_hidden": args.lstm_hidden,
            "frame_shortcut": shortcut_on(), "torch_schedule": args.torch_schedule, "threads": args.threads,
            "cpu": cpu_name(), "versions": versions(), "kiln_set": args.kiln_set}
    results = {**info, "runs": {w: {} for w in which}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.abspath(args.workdir or tmp)
        os.makedirs(workdir, exist_ok=True)
        for seed in seeds:
            for w in which:
                start = time.perf_counter()
                r = train_kiln(seed, workdir) if w == "kiln" else train_torch(seed)
                r["wall_s"] = time.perf_counter() - start
                results["runs"][w][seed] = r
                print(f"{w} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()
                                                       if isinstance(v, float)), file=sys.stderr, flush=True)
    counts = {s: len(split_lines(s)) for s in ("train", "val", "test")}
    print(f"\n{args.data} ({counts['train']} / {counts['val']} / {counts['test']} lines, {len(charset())} "
          f"characters); {args.epochs} epochs, batch {args.batch}, lr {args.lr}, input {args.height}x{args.width}, "
          f"kiln recipe {args.recipe} ({kiln_epochs()} epochs, body {args.kiln_backbone}), reference {args.reference}; "
          f"{args.threads} threads")
    print(f"{cpu_name()}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + "\n")
    print("| trainer | seed | test CER | test exact match | train lines/s | train s | wall s |")
    print("|---|---|---|---|---|---|---|")
    keys = ("cer", "exact_match", "lines_per_s", "train_s", "wall_s")
    for w in which:
        runs = results["runs"][w]
        for seed, r in runs.items():
            print(f"| {names[w]} | {seed} | {100 * r['cer']:.2f} % | {r['exact_match']:.3f} | "
                  f"{r['lines_per_s']:.1f} | {r['train_s']:.0f} | {r['wall_s']:.0f} |")
        mean = {k: sum(r[k] for r in runs.values()) / len(runs) for k in keys}
        results.setdefault("mean", {})[w] = mean
        print(f"| {names[w]} | mean | **{100 * mean['cer']:.2f} %** | {mean['exact_match']:.3f} | "
              f"{mean['lines_per_s']:.1f} | {mean['train_s']:.0f} | {mean['wall_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
