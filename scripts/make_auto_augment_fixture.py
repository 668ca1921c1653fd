#!/usr/bin/env python3
"""Writes tests/fixtures/auto_augment/ops.json: torchvision's RandAugment / TrivialAugmentWide operations on a small
PIL image, for kiln's auto-augment tests (train/src/classify/auto_augment_tests.rs).

Made with torch 2.11.0, torchvision 0.26.0 and Pillow 13.0.0 from PyPI:
    python3 scripts/make_auto_augment_fixture.py

It records
  - the input: a 16x12 RGB8 image (a gradient, a light square and a dark bar, values 30..220, so that
    autocontrast and equalize have work to do), as hex;
  - every operation of torchvision's `_apply_op` at a few signed magnitudes, each output as hex;
  - the magnitude tables of RandAugment (31 bins, this image's size) and TrivialAugmentWide (31 bins), from
    their `_augmentation_space`.
"""
import json
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import RandAugment, TrivialAugmentWide, _apply_op

W, H = 16, 12


def make_image():
    img = Image.new("RGB", (W, H))
    px = img.load()
    for y in range(H):
        for x in range(W):
            r = 30 + (x * 190) // (W - 1)
            g = 40 + (y * 150) // (H - 1)
            b = 60 + ((x * 7 + y * 13) % 120)
            if 3 <= x < 8 and 2 <= y < 7:
                r, g, b = 220, 210, 200
            if 10 <= x < 13:
                r, g, b = 35, 50, 45
            px[x, y] = (r, g, b)
    return img


CASES = {
    "Identity": [0.0],
    "ShearX": [0.09, -0.09, 0.3, -0.66],
    "ShearY": [0.09, -0.3, 0.66],
    "TranslateX": [2.0, -3.0, 7.0],
    "TranslateY": [2.0, -5.0],
    "Rotate": [9.0, -9.0, 30.0, -37.5, 90.0, 135.0],
    "Brightness": [0.27, -0.27, 0.9, -0.99],
    "Color": [0.27, -0.27, 0.9, -0.99],
    "Contrast": [0.27, -0.27, 0.9, -0.99],
    "Sharpness": [0.27, -0.27, 0.9, -0.99],
    "Posterize": [8.0, 7.0, 4.0, 2.0],
    "Solarize": [255.0, 178.5, 100.0, 0.0],
    "AutoContrast": [0.0],
    "Equalize": [0.0],
}


def tables(space):
    out = {}
    for name, (magnitudes, _signed) in space.items():
        out[name] = [float(v) for v in magnitudes.reshape(-1).tolist()] if magnitudes.ndim > 0 else []
    return out


def main():
    img = make_image()
    cases = []
    for name, magnitudes in CASES.items():
        for m in magnitudes:
            out = _apply_op(img, name, m, interpolation=InterpolationMode.NEAREST, fill=None)
            cases.append({"op": name, "magnitude": m, "output": out.tobytes().hex()})
    fixture = {
        "width": W,
        "height": H,
        "input": img.tobytes().hex(),
        "cases": cases,
        "rand_tables": tables(RandAugment()._augmentation_space(31, (H, W))),
        "wide_tables": tables(TrivialAugmentWide()._augmentation_space(31)),
    }
    path = Path(__file__).resolve().parent.parent / "tests/fixtures/auto_augment/ops.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
