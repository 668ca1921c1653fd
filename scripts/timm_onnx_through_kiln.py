#!/usr/bin/env python3
"""A timm classifier exported by torch.onnx (no kiln metadata) run through `kiln infer --raw-*`, against Python's
onnxruntime on the same file and images.

What it does
------------
1. Builds timm's `convnext_atto` (1,000 classes; seeded random weights, since nothing may download pretrained
   ones) and exports it with `torch.onnx.export` (opset 18, a dynamic batch): a plain ONNX file such as users bring.
2. Makes two image sets from the images in IMAGES_DIR (any RGB or grayscale photos; Fashion-MNIST PNGs work):
   `exact/`: each image resized by PIL to exactly 224x224, so that no further resize happens on either side and
   both feed the same pixels; `photos/`: each image resized to a non-square 320x256, for timm's eval transform
   (resize the shorter side to 248 with bicubic filtering, centre-crop 224) against kiln's `center-crop:0.875`
   (antialiased bilinear), where the pixels differ slightly.
3. Scores both sets with onnxruntime in Python (ImageNet mean and std; timm's own `create_transform` for
   `photos/`), runs `kiln infer --model M --raw-size 224 [--raw-resize center-crop:0.875] --format json`, and
   prints top-1 agreement and the largest probability difference of the top class.

Usage (a venv with torch, timm, onnxruntime and pillow from PyPI; `make build` for the kiln binary)::

    python3 scripts/timm_onnx_through_kiln.py IMAGES_DIR [--kiln target/release/kiln] [--limit 200]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kiln_top1(kiln, model, folder, extra):
    out = subprocess.run(
        [kiln, "infer", "--model", model, "--raw-size", "224", *extra, "--format", "json", "--batch", "8", folder],
        check=True, capture_output=True, text=True,
    )
    result = {}
    for line in out.stdout.splitlines():
        row = json.loads(line)
        result[os.path.basename(row["path"])] = (int(row["top"][0]["class"]), row["top"][0]["probability"])
    return result


def compare(name, python, kiln):
    same = sum(python[f][0] == kiln[f][0] for f in python)
    diff = max(abs(python[f][1] - kiln[f][1]) for f in python)
    classes = len({python[f][0] for f in python})
    spread = max(p for _, p in python.values()) - min(p for _, p in python.values())
    print(f"{name}: top-1 agreement {same}/{len(python)} ({100 * same / len(python):.1f} %), "
          f"largest top-class probability difference {diff:.2e} (the images' top-1 covers {classes} classes, "
          f"their top probabilities spread over {spread:.2e})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("images")
    parser.add_argument("--kiln", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release/kiln"))
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    files = sorted(
        os.path.join(root, f) for root, _, names in os.walk(args.images) for f in names
        if f.lower().endswith((".png", ".jpg", ".jpeg"))
    )[: args.limit]
    if not files:
        sys.exit(f"no images in {args.images}")
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", pretrained=False, num_classes=1000).eval()
    work = tempfile.mkdtemp()
    model = os.path.join(work, "convnext_atto_timm.onnx")
    torch.onnx.export(
        net, torch.zeros(1, 3, 224, 224), model, opset_version=18, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
    )
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    os.makedirs(os.path.join(work, "exact"))
    os.makedirs(os.path.join(work, "photos"))
    transform = create_transform(**resolve_data_config({}, model=net))
    print(f"{len(files)} images; timm's eval transform: {transform}")
    exact, photos = {}, {}
    for i, path in enumerate(files):
        image = Image.open(path).convert("RGB")
        name = f"{i:05d}.png"
        square = image.resize((224, 224), Image.BILINEAR)
        square.save(os.path.join(work, "exact", name))
        x = ((np.asarray(square, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
        p = softmax(session.run(None, {"input": x})[0])[0]
        exact[name] = (int(p.argmax()), float(p.max()))
        wide = image.resize((320, 256), Image.BICUBIC)
        wide.save(os.path.join(work, "photos", name))
        x = transform(wide).numpy()[None]
        p = softmax(session.run(None, {"input": x})[0])[0]
        photos[name] = (int(p.argmax()), float(p.max()))
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, timm {timm.__version__}")
    compare("same pixels (224x224, stretch)", exact, kiln_top1(args.kiln, model, os.path.join(work, "exact"), []))
    compare(
        "timm eval transform vs kiln center-crop:0.875 (320x256)",
        photos,
        kiln_top1(args.kiln, model, os.path.join(work, "photos"), ["--raw-resize", "center-crop:0.875"]),
    )


if __name__ == "__main__":
    main()
