#!/usr/bin/env bash
# Data-parallel training throughput on one machine's CPU (issue 30, "Performance"): `kiln train --nproc 2` (two
# ranks, one libtorch thread each, Gloo on loopback) against one process on one thread and one process on two
# threads, at the same global batch, on the same data and model. Scaling on a 2-core CPU says little about GPUs;
# what it measures is what the second process costs and gives here. Rounds alternate the three, because this
# machine's speed drifts from minute to minute; the medians of each run's last epoch (the first pays for warm-up,
# `images_per_second` in results.csv, counting every rank's images) are compared.
#
#   scripts/ddp_throughput.sh [ROUNDS] [IMG] [GLOBAL_BATCH]     (default 3 rounds, 64 px, batch 32)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
IMG=${2:-64}
BATCH=${3:-32}
KILN=${KILN:-target/release/kiln}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo run --release --quiet --example make_shapes -- "$WORK/shapes" 128 "$IMG" >/dev/null
COMMON=(train --task classify --data "$WORK/shapes" --model convnext_atto --img-size "$IMG" --epochs 3
  --workers 1 --cache ram --device cpu --project "$WORK/runs")
last_ips() {
  python3 -c "import csv,sys; rows=list(csv.DictReader(open(sys.argv[1]))); print(rows[-1]['images_per_second'])" \
    "$WORK/runs/classify/$1/results.csv"
}
one1=(); one2=(); two=()
for round in $(seq "$ROUNDS"); do
  OMP_NUM_THREADS=1 "$KILN" "${COMMON[@]}" --batch "$BATCH" --threads 1 --name "one1-$round" >/dev/null 2>&1
  one1+=("$(last_ips "one1-$round")")
  OMP_NUM_THREADS=2 "$KILN" "${COMMON[@]}" --batch "$BATCH" --threads 2 --name "one2-$round" >/dev/null 2>&1
  one2+=("$(last_ips "one2-$round")")
  OMP_NUM_THREADS=1 "$KILN" "${COMMON[@]}" --batch $((BATCH / 2)) --nproc 2 --name "two-$round" >/dev/null 2>&1
  two+=("$(last_ips "two-$round")")
  echo "round $round: 1 process x 1 thread ${one1[-1]} img/s, 1 x 2 threads ${one2[-1]}, 2 ranks x 1 thread ${two[-1]}"
done
python3 - "${one1[*]}" "${one2[*]}" "${two[*]}" "$IMG" "$BATCH" <<'PY'
import statistics, sys
a, b, c = (statistics.median(float(x) for x in arg.split()) for arg in sys.argv[1:4])
print(f"| convnext_atto, {sys.argv[4]} px, global batch {sys.argv[5]} | 1 process x 1 thread {a:.1f} img/s | "
      f"1 process x 2 threads {b:.1f} img/s | 2 ranks x 1 thread {c:.1f} img/s | "
      f"2 ranks / 1x1 {c / a:.2f} | 2 ranks / 1x2 {c / b:.2f} |")
PY
