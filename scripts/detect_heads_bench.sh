#!/usr/bin/env bash
# FCOS against Faster R-CNN on one backbone and input size (issue: Faster R-CNN, "Performance"): the isolated
# training step (`kiln bench train`, images/s) and the exported model's batch-1 latency on ONNX Runtime and tract
# (`kiln bench`), from runs trained one epoch on generated scenes. tract cannot run Faster R-CNN's RoiAlign: its row
# says so. Rounds alternate the heads, because this machine's speed drifts; medians are reported.
#
#   scripts/detect_heads_bench.sh [ROUNDS] [IMG] [BATCH]     (default 3 rounds, 320 px, batch 8)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
IMG=${2:-320}
BATCH=${3:-8}
KILN=${KILN:-target/release/kiln}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo run ${EXAMPLE_PROFILE---release} --quiet --example make_scenes -- "$WORK/scenes" 32 "$IMG" 3 >/dev/null
# Faster R-CNN's anchors for this input size; torchvision's 32-512 are sized for 800 px.
ANCHORS="detect.anchors.sizes=[[16],[32],[64],[128],[256]]"
for head in fcos faster_rcnn; do
  "$KILN" train --task detect --data "$WORK/scenes" --model convnext_atto --img-size "$IMG" --batch "$BATCH" \
    --epochs 1 --device cpu --project "$WORK/runs" --name "$head" --set "detect.head=$head" --set "$ANCHORS" \
    >/dev/null 2>&1
  "$KILN" export onnx --run "$WORK/runs/detect/$head" --out "$WORK/$head.onnx" >/dev/null
done
declare -A step ort tract
for round in $(seq "$ROUNDS"); do
  for head in fcos faster_rcnn; do
    "$KILN" bench train --task detect --classes 3 --model convnext_atto --img-size "$IMG" --batch "$BATCH" \
      --steps 5 --warmup 2 --device cpu --set "head=$head" --set "anchors.sizes=[[16],[32],[64],[128],[256]]" \
      --json "$WORK/step.json" >/dev/null
    step[$head]+="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['images_per_second'])" "$WORK/step.json") "
    "$KILN" bench --model "$WORK/$head.onnx" --backends ort-cpu --iters 20 --json "$WORK/ort.json" >/dev/null
    ort[$head]+="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['mean_ms'])" "$WORK/ort.json") "
    # A backend that cannot open the model is a row without timings (mean_ms null): tract on Faster R-CNN.
    "$KILN" bench --model "$WORK/$head.onnx" --backends tract --iters 20 --json "$WORK/tract.json" >/dev/null
    tract[$head]+="$(python3 -c "import json,sys; m=json.load(open(sys.argv[1]))[0]['mean_ms']; print('refused' if m is None else m)" "$WORK/tract.json") "
  done
  echo "round $round done" >&2
done
CPU=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
echo "convnext_atto, $IMG px, training batch $BATCH, 3 classes; $CPU, $(nproc) cores; medians of $ROUNDS rounds"
echo
echo "| head | training images/s (isolated step) | ORT batch-1 latency ms | tract batch-1 latency ms |"
echo "|---|---|---|---|"
for head in fcos faster_rcnn; do
  python3 - "$head" "${step[$head]}" "${ort[$head]}" "${tract[$head]}" <<'PY'
import statistics, sys
head, step, ort, tract = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
med = lambda xs: f"{statistics.median(float(x) for x in xs):.1f}"
print(f"| {head} | {med(step)} | {med(ort)} | {'refused (no RoiAlign)' if 'refused' in tract else med(tract)} |")
PY
done
