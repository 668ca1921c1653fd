#!/usr/bin/env python3
"""Generate the COCO bbox-evaluation parity fixture for kiln-train's `detect::coco_eval`.

How it was made
---------------
The Rust evaluator in `train/src/detect/coco_eval.rs` is a hand-written port of the
behaviour of pycocotools' `COCOeval` (iouType='bbox'). To check it, this script

1. builds a small but deliberately awkward detection data set from a fixed seed
   (`SEED` below) plus a hand-written tiny case,
2. writes it as COCO json (`ground_truth.json`: images/annotations/categories,
   `predictions.json`: a COCO results list),
3. loads those *files* back with real pycocotools (`COCO(...)`, `loadRes(...)`),
   runs `COCOeval(gt, dt, 'bbox')` `evaluate()/accumulate()/summarize()`, and
4. writes `expected.json` with the 12 `COCOeval.stats` under the names used by the
   Rust `CocoStats` (map, map_50, ... mar_large), the per-category AP@[.5:.95]
   (mean of `eval['precision'][:, :, k, area=all, maxDets=100]` over entries > -1,
   -1 when there are none, exactly as `summarize()` averages), and a few extras
   (per-category AP50/AP75/AR100, the per-category precision curve at IoU 0.5, the
   IoU/recall thresholds pycocotools used) so that the Rust test can compare more
   than the headline numbers.

The random case (`tests/fixtures/coco_eval/`) has ~30 images (non-contiguous ids,
listed unsorted), 4 categories (non-contiguous ids, unsorted; one of them has only
crowd ground truth, so it is -1 everywhere and must be left out of the means) and
a few hundred predictions, with: images without any GT (some with predictions, one
with none), images with GT but no predictions, crowd GT (iscrowd=1) with
predictions inside, GT whose annotated `area` differs from its box area (so the
small/medium/large split must use `area`), GT areas and prediction boxes exactly on
the 32^2 / 96^2 boundaries, exact duplicate predictions, many score ties (scores
rounded to 2 decimals) within and across images, an image with more than 100
predictions of one category where true positives fall behind the maxDets=100 cut
(with score ties at the cut), a zero-width prediction, predictions of a category id
that is not in the category list (ignored), and hand-placed matching corner cases: a
detection with exactly equal IoU to two GT boxes, nested small/medium GT (a match
to a regular GT must not move to a better-overlapping ignored one) and a regular GT
inside a crowd region.

The tiny case (`tests/fixtures/coco_eval/tiny/`) is written out by hand below.

How to rerun
------------
From the repository root (PyPI is the only thing needed)::

    python3 -m venv /tmp/cocovenv
    /tmp/cocovenv/bin/pip install pycocotools numpy
    /tmp/cocovenv/bin/python scripts/make_coco_eval_fixture.py

Options: `--out DIR` (default `tests/fixtures/coco_eval`); `--seed N` makes a different
random case (for extra ad-hoc checks; the committed fixture uses the default). The output is
deterministic for a given Python (the generator only uses `random.Random(SEED)`)
and the pycocotools/numpy versions are recorded in `expected.json`. The fixture
was produced with pycocotools 2.0.11 and numpy 2.4.6 on Python 3.11.
"""

import argparse
import importlib.metadata
import json
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coco_eval_pycocotools import STAT_NAMES, evaluate  # noqa: E402  (the scoring shared with kiln's tests)

SEED = 20240601
IMG_W, IMG_H = 640, 480

# Listed unsorted on purpose; pycocotools sorts category ids.
CATEGORIES = [
    {"id": 7, "name": "kite"},
    {"id": 1, "name": "person"},
    {"id": 12, "name": "umbrella"},  # only crowd ground truth -> -1 everywhere
    {"id": 3, "name": "car"},
]
NORMAL_CATS = [1, 3, 7]
CROWD_ONLY_CAT = 12
UNKNOWN_CAT = 99  # predictions with this id are not in the category list


def r2(x):
    return round(x, 2)


def clamp_box(x, y, w, h):
    x = min(max(x, 0.0), IMG_W - 1.0)
    y = min(max(y, 0.0), IMG_H - 1.0)
    w = min(w, IMG_W - x)
    h = min(h, IMG_H - y)
    return [r2(x), r2(y), r2(w), r2(h)]


def random_size(rng, kind):
    if kind == "small":
        return rng.uniform(4, 30), rng.uniform(4, 30)
    if kind == "medium":
        return rng.uniform(34, 90), rng.uniform(34, 90)
    return rng.uniform(100, 330), rng.uniform(100, 300)


def random_box(rng, kind):
    w, h = random_size(rng, kind)
    return clamp_box(rng.uniform(0, IMG_W - w), rng.uniform(0, IMG_H - h), w, h)


def jitter(rng, box, level):
    x, y, w, h = box
    dx, dy = rng.uniform(-level, level) * w, rng.uniform(-level, level) * h
    dw, dh = rng.uniform(-level, level) * w, rng.uniform(-level, level) * h
    return clamp_box(x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0))


def score(rng, lo=0.05, hi=0.99):
    # Two decimals -> plenty of exact ties, within and across images.
    return r2(rng.uniform(lo, hi))


def make_random_case(seed=SEED):
    rng = random.Random(seed)
    image_ids = rng.sample(range(1, 500), 30)  # non-contiguous, unsorted
    images = [{"id": i, "width": IMG_W, "height": IMG_H, "file_name": f"{i:06d}.jpg"} for i in image_ids]
    anns, preds = [], []

    def add_gt(img, cat, box, area=None, crowd=0):
        if area is None:
            # Segmentation-like area: smaller than the box, so the area-range split
            # must use the annotated area rather than w*h.
            area = r2(box[2] * box[3] * rng.uniform(0.55, 1.0))
        anns.append(
            {"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": box, "area": area, "iscrowd": crowd}
        )

    def add_pred(img, cat, box, s):
        preds.append({"image_id": img, "category_id": cat, "bbox": box, "score": s})

    no_gt = image_ids[:4]  # images without any GT
    gt_no_pred = image_ids[4:7]  # GT but no predictions at all
    crowd_imgs = image_ids[7:12]  # crowd regions
    many_pred_img = image_ids[12]  # > 100 predictions of one category
    boundary_img = image_ids[13]  # areas exactly on the range boundaries

    for img in image_ids:
        if img in no_gt:
            continue
        n = rng.randint(1, 6)
        for _ in range(n):
            cat = rng.choice([1, 1, 3, 3, 7]) if img != many_pred_img else 1
            kind = rng.choice(["small", "medium", "large"] if cat != 7 else ["small", "medium"])
            add_gt(img, cat, random_box(rng, kind))

    # Crowd regions: category 1 (mixed with regular GT) and the crowd-only category.
    for j, img in enumerate(crowd_imgs):
        cat = 1 if j < 3 else CROWD_ONLY_CAT
        box = clamp_box(rng.uniform(0, 300), rng.uniform(0, 200), rng.uniform(150, 300), rng.uniform(120, 250))
        add_gt(img, cat, box, area=r2(box[2] * box[3] * 0.8), crowd=1)
        for _ in range(rng.randint(3, 6)):  # small detections inside the crowd box
            w, h = rng.uniform(8, 40), rng.uniform(8, 40)
            p = clamp_box(box[0] + rng.uniform(0, box[2] - w), box[1] + rng.uniform(0, box[3] - h), w, h)
            add_pred(img, cat, p, score(rng))
        add_pred(img, cat, jitter(rng, box, 0.05), score(rng))  # one covering the crowd box
        # One straddling the crowd border (partial overlap with the crowd region).
        add_pred(img, cat, clamp_box(box[0] - 20, box[1] - 20, 60, 60), score(rng))

    # Boundary areas: GT area exactly 32^2 and 96^2 (inclusive on both neighbouring
    # ranges), predictions of exactly 32x32 and 96x96 pixels.
    add_gt(boundary_img, 3, [100.0, 100.0, 40.0, 30.0], area=1024.0)
    add_gt(boundary_img, 3, [300.0, 200.0, 100.0, 100.0], area=9216.0)
    add_pred(boundary_img, 3, [101.0, 99.0, 40.0, 30.0], 0.5)
    add_pred(boundary_img, 3, [305.0, 204.0, 96.0, 96.0], 0.5)
    add_pred(boundary_img, 3, [20.0, 400.0, 32.0, 32.0], 0.5)  # unmatched, area 1024
    add_pred(boundary_img, 3, [500.0, 10.0, 96.0, 96.0], 0.42)  # unmatched, area 9216
    add_pred(boundary_img, 7, [30.5, 40.25, 0.0, 20.0], 0.9)  # zero width

    # Predictions for every non-crowd GT of images that get predictions.
    for a in list(anns):
        img = a["image_id"]
        if img in gt_no_pred or a["iscrowd"] or img == boundary_img:
            continue
        if rng.random() < 0.15:
            continue  # missed object
        level = rng.choice([0.0, 0.02, 0.05, 0.1, 0.15, 0.25, 0.35])
        box = a["bbox"] if level == 0.0 else jitter(rng, a["bbox"], level)
        # On the crowded image the true positives score low, so that some of them fall
        # behind the 100-detection cut.
        s = score(rng) if img != many_pred_img else score(rng, 0.05, 0.4)
        add_pred(img, a["category_id"], box, s)
        u = rng.random()
        if u < 0.12:
            add_pred(img, a["category_id"], list(box), s)  # exact duplicate, same score
        elif u < 0.25:
            add_pred(img, a["category_id"], jitter(rng, a["bbox"], 0.08), r2(max(s - 0.1, 0.01)))
        if rng.random() < 0.08:
            other = rng.choice([c for c in NORMAL_CATS if c != a["category_id"]])
            add_pred(img, other, list(box), score(rng, 0.05, 0.5))  # right box, wrong class

    # False positives, including on images without any GT.
    for img in image_ids:
        if img in gt_no_pred or img == no_gt[0]:
            continue  # no_gt[0]: no GT and no predictions at all
        for _ in range(rng.randint(0, 3) + (2 if img in no_gt else 0)):
            cat = rng.choice(NORMAL_CATS + [CROWD_ONLY_CAT])
            add_pred(img, cat, random_box(rng, rng.choice(["small", "medium", "large"])), score(rng, 0.01, 0.6))

    # More than 100 predictions of category 1 on one image, scored around the true positives
    # (ties at the cut are decided by input order).
    for _ in range(108):
        add_pred(many_pred_img, 1, random_box(rng, "small"), r2(rng.uniform(0.2, 0.95)))

    # Hand-placed matching corner cases (they get no random predictions):
    # (a) a detection with exactly equal IoU to two GT boxes goes to the later one, so the
    #     exact detection of the first, scored lower, is a TP too.
    add_gt(boundary_img, 3, [100.0, 300.0, 50.0, 50.0], area=2500.0)
    add_gt(boundary_img, 3, [120.0, 300.0, 50.0, 50.0], area=2500.0)
    add_pred(boundary_img, 3, [110.0, 300.0, 50.0, 50.0], 0.8)
    add_pred(boundary_img, 3, [100.0, 300.0, 50.0, 50.0], 0.7)
    # (b) nested small (area 900) and medium (area 1296) GT: for the small range the medium one
    #     is ignored, and a detection that already matched the small one must stop there even
    #     though its IoU with the ignored one is higher.
    add_gt(boundary_img, 7, [400.0, 50.0, 30.0, 30.0], area=900.0)
    add_gt(boundary_img, 7, [400.0, 50.0, 36.0, 36.0], area=1296.0)
    add_pred(boundary_img, 7, [400.0, 50.0, 34.0, 34.0], 0.6)
    # (c) a regular GT inside a crowd region: its detection (IoU 0.905, and 1.0 with the crowd
    #     box) is a TP, not swallowed by the crowd box.
    cb = next(a["bbox"] for a in anns if a["iscrowd"] and a["category_id"] == 1)
    cimg = next(a["image_id"] for a in anns if a["iscrowd"] and a["category_id"] == 1)
    add_gt(cimg, 1, [r2(cb[0] + 10), r2(cb[1] + 10), 40.0, 40.0], area=1600.0)
    add_pred(cimg, 1, [r2(cb[0] + 12), r2(cb[1] + 10), 40.0, 40.0], 0.66)

    # Predictions of a category that is not in the category list: ignored.
    add_pred(image_ids[20], UNKNOWN_CAT, random_box(rng, "medium"), 0.99)
    add_pred(image_ids[21], UNKNOWN_CAT, random_box(rng, "large"), 0.7)

    rng.shuffle(preds)  # input order within an (image, category) must not matter beyond ties
    gt = {"info": {"description": "kiln coco_eval parity fixture", "seed": seed}, "images": images}
    gt["annotations"] = anns
    gt["categories"] = CATEGORIES
    return gt, preds


def make_tiny_case():
    """Hand-written case; the numbers in the comments are what pycocotools reports."""
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"tiny{i}.jpg"} for i in (1, 2, 3, 4, 5)]
    anns = [
        # image 1: one person, predicted perfectly plus an exact duplicate (one TP, one FP)
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
        # image 2: a crowd region and a regular person next to it
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 200, 200], "area": 40000, "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [300, 300, 40, 40], "area": 1600, "iscrowd": 0},
        # image 3: a large car nobody predicted
        {"id": 4, "image_id": 3, "category_id": 2, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0},
        # image 4: no ground truth
        # image 5: two cars the same IoU away from one detection; it takes the later one
        {"id": 5, "image_id": 5, "category_id": 2, "bbox": [100, 100, 50, 50], "area": 2500, "iscrowd": 0},
        {"id": 6, "image_id": 5, "category_id": 2, "bbox": [120, 100, 50, 50], "area": 2500, "iscrowd": 0},
    ]
    preds = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.8},  # inside the crowd: ignored
        {"image_id": 2, "category_id": 1, "bbox": [305, 305, 40, 40], "score": 0.8},  # IoU 1225/1975
        {"image_id": 4, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.95},  # FP on an image without GT
        {"image_id": 5, "category_id": 2, "bbox": [110, 100, 50, 50], "score": 0.6},  # IoU 2/3 with both: id 6
        {"image_id": 5, "category_id": 2, "bbox": [100, 100, 50, 50], "score": 0.5},  # exact on id 5: TP
    ]
    gt = {"info": {"description": "kiln coco_eval tiny hand-made case"}, "images": images, "annotations": anns}
    gt["categories"] = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    return gt, preds


def mean_valid(s):
    """`summarize()`'s averaging: mean over entries > -1, or -1 when there are none."""
    v = s[s > -1]
    return -1.0 if v.size == 0 else float(np.mean(v))


def run_cocoeval(gt_path, pred_path):
    ev, _, log = evaluate(gt_path, pred_path)
    p = ev.params
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    rec = ev.eval["recall"]  # [T, K, A, M]
    t50 = int(np.where(p.iouThrs == 0.5)[0][0])
    t75 = int(np.where(p.iouThrs == 0.75)[0][0])
    per_cat = []
    for k, cat in enumerate(p.catIds):
        per_cat.append(
            {
                "category": int(cat),
                "ap": mean_valid(prec[:, :, k, 0, -1]),
                "ap_50": mean_valid(prec[t50, :, k, 0, -1]),
                "ap_75": mean_valid(prec[t75, :, k, 0, -1]),
                "ar_100": mean_valid(rec[:, k, 0, -1]),
                "precision_iou50": [float(x) for x in prec[t50, :, k, 0, -1]],
            }
        )
    expected = {
        "generator": {
            "script": "scripts/make_coco_eval_fixture.py",
            "pycocotools": importlib.metadata.version("pycocotools"),
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "stats": {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)},
        "per_category": per_cat,
        "iou_thresholds": [float(x) for x in p.iouThrs],
        "recall_thresholds": [float(x) for x in p.recThrs],
    }
    return expected, log


def write_case(out_dir, gt, preds):
    os.makedirs(out_dir, exist_ok=True)
    gt_path = os.path.join(out_dir, "ground_truth.json")
    pred_path = os.path.join(out_dir, "predictions.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f, indent=1)
        f.write("\n")
    with open(pred_path, "w") as f:
        json.dump(preds, f, indent=1)
        f.write("\n")
    # Evaluate what was written, exactly as a user would.
    expected, log = run_cocoeval(gt_path, pred_path)
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"{out_dir}: {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(preds)} predictions")
    print("\n".join(line for line in log.splitlines() if "Average" in line))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "coco_eval"))
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    write_case(args.out, *make_random_case(args.seed))
    write_case(os.path.join(args.out, "tiny"), *make_tiny_case())


if __name__ == "__main__":
    main()
