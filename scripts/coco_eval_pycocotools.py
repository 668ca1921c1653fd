#!/usr/bin/env python3
"""Score a COCO results file with pycocotools, the reference implementation of COCO's bbox mAP.

Usage: coco_eval_pycocotools.py GROUND_TRUTH.json RESULTS.json

GROUND_TRUTH.json is COCO instances (images, annotations, categories); RESULTS.json is what
`kiln infer --format coco --coco-gt GROUND_TRUTH.json` writes. Prints one JSON object: the 12
`COCOeval.stats` under the names of kiln's `CocoStats` (map, map_50, map_75, map_small, ...,
mar_large), and the number of results pycocotools loaded.

Needs `pip install pycocotools` (tests/coco_pycocotools.rs builds a throwaway environment with it).
"""
import contextlib
import io
import json
import sys

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats in order, under the names of kiln's `CocoStats`.
STAT_NAMES = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


def evaluate(gt_path, results_path):
    """COCOeval (bbox) of a results file against a ground truth, evaluated, accumulated and summarized; returns it
    with the loaded results and what pycocotools printed."""
    with contextlib.redirect_stdout(io.StringIO()) as log:
        gt = COCO(gt_path)
        dt = gt.loadRes(results_path)
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation, dt, log.getvalue()


def main(gt_path, results_path):
    evaluation, dt, _ = evaluate(gt_path, results_path)
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluation.stats)}
    stats["results"] = len(dt.getAnnIds())
    print(json.dumps(stats))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
