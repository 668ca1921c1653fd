#!/usr/bin/env bash
# Measures kiln's peak resident memory training one epoch on a small and on a 100x larger data set (same model,
# batch and image size), streaming (`--cache none`: the two peaks should be about equal) and with `--cache ram`
# (the larger peak should be about the decoded set's uint8 size, 3 bytes per pixel, above the streaming one).
# Usage: scripts/memory_check.sh [SMALL_PER_CLASS] [LARGE_PER_CLASS]   (4 classes each; defaults 150 and 15000,
# i.e. 600 and 60,000 training images). Needs `make build` and the make_shapes example built in release mode.
set -euo pipefail
small=${1:-150}
large=${2:-15000}
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in "$small" "$large"; do
  "$target/release/examples/make_shapes" "$work/data$n" "$n" 32 >/dev/null
  images=$((n * 4))
  for cache in none ram; do
    peak=$("$target/release/kiln" train --data "$work/data$n" --model convnext_atto --img-size 32 --batch 32 \
        --epochs 1 --val-split 0 --test-split 0 --device cpu --cache "$cache" --project "$work/runs" \
        --name "n${n}_$cache" 2>/dev/null | sed -n 's/^peak resident memory: //p')
    echo "$images training images, --cache $cache: peak RSS $peak (decoded uint8: $((images * 32 * 32 * 3 / 1048576)) MiB)"
  done
done
