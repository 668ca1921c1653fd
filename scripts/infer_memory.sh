#!/usr/bin/env bash
# Peak resident memory of `kiln infer` over 100 and over 1,000 images with the same model: results are streamed
# (printed batch by batch), so the two peaks should be about equal.
# Usage: scripts/infer_memory.sh MODEL.onnx [ort|tract]. Needs `make build` and the make_shapes example in release.
set -euo pipefail
model=$1
backend=${2:-ort}
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$target/release/examples/make_shapes" "$work/data" 250 96 >/dev/null   # 1,000 training images of 96 px
mkdir -p "$work/small"
find "$work/data/train" -type f | sort | head -n 100 | while read -r f; do
  cp "$f" "$work/small/$(basename "$(dirname "$f")")-$(basename "$f")"
done
echo "model: $model ($(du -h "$model" | cut -f1)), backend $backend"
for set in "$work/small" "$work/data/train"; do
  "$target/release/kiln" infer --model "$model" --backend "$backend" --batch 8 "$set" 2>&1 >/dev/null | grep 'peak resident'
done
