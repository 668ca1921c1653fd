#!/usr/bin/env bash
# The detector's training throughput against its isolated step, side by side (issue: detection training,
# "Performance"): `kiln train --task detect` on generated scenes (streaming: decode + box-aware augmentation on the
# loader's threads, default augmentation incl. mosaic) and `kiln bench train --task detect` (the same model, input
# size, batch and classes; one fixed batch already in memory, the same loss and update). Rounds alternate, because
# this machine's speed drifts by ±20 % from minute to minute; the medians are compared.
#
#   scripts/detect_train_speed.sh [ROUNDS] [IMG] [BATCH]     (default 3 rounds, 128 px, batch 16)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
IMG=${2:-128}
BATCH=${3:-16}
KILN=${KILN:-target/release/kiln}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo run --release --quiet --example make_scenes -- "$WORK/scenes" 320 "$IMG" 3 >/dev/null
train_ips=()
step_ips=()
for round in $(seq "$ROUNDS"); do
  "$KILN" train --task detect --data "$WORK/scenes" --model convnext_atto --img-size "$IMG" --batch "$BATCH" \
    --epochs 2 --device cpu --project "$WORK/runs" --name "r$round" >/dev/null 2>&1
  # The second epoch (the first pays for warm-up), column images_per_second.
  ips=$(python3 -c "import csv,sys; rows=list(csv.DictReader(open(sys.argv[1]))); print(rows[-1]['images_per_second'])" \
    "$WORK/runs/detect/r$round/results.csv")
  train_ips+=("$ips")
  "$KILN" bench train --task detect --classes 3 --model convnext_atto --img-size "$IMG" --batch "$BATCH" \
    --steps 20 --warmup 3 --device cpu --json "$WORK/step.json" >/dev/null
  step_ips+=("$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['images_per_second'])" "$WORK/step.json")")
  echo "round $round: training ${train_ips[-1]} img/s, isolated step ${step_ips[-1]} img/s"
done
python3 - "${train_ips[*]}" "${step_ips[*]}" "$IMG" "$BATCH" <<'PY'
import statistics, sys
train = [float(x) for x in sys.argv[1].split()]
step = [float(x) for x in sys.argv[2].split()]
t, s = statistics.median(train), statistics.median(step)
print(f"| detector (convnext_atto + FPN + FCOS, {sys.argv[3]} px, batch {sys.argv[4]}) | training {t:.1f} img/s | "
      f"isolated step {s:.1f} img/s | ratio {t / s:.2f} |")
PY
