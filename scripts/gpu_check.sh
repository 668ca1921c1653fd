#!/usr/bin/env bash
# The CUDA check: one script for the GPU machine that is lent at times (no Rust there, no network; python3 with
# torch 2.11.0+cu130 and its CUDA 13 libraries, onnxruntime). It runs a stripped release `kiln` built on a CPU
# machine against the device's own libtorch, and prints:
#   1. `kiln doctor` (the GPU it sees);
#   2. the isolated training step of convnext_tiny at 224 px (generated data) in fp32, bf16 and fp16 autocast,
#      channels-last, with images/s and the peak GPU memory nvidia-smi saw;
#   3. a short real training run on generated images, its ONNX export, and `kiln bench` on ort-cpu (16 threads)
#      and on ort-cuda when the device's onnxruntime has the CUDA provider.
# On a CPU machine `scripts/gpu_check.sh --device cpu --steps 2` runs the same path in small (make test does, so
# the script cannot rot).
#
# Usage: scripts/gpu_check.sh [--kiln PATH] [--device cuda|cpu] [--steps N] [--out DIR]
#   prepare on the CPU machine:  make build && strip -o kiln-gpu target/release/kiln
#   on the device:               scripts/gpu_check.sh --kiln ./kiln-gpu
set -euo pipefail

kiln=target/release/kiln
device=cuda
steps=30
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --kiln) kiln=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$kiln" ] || { echo "gpu_check: no kiln binary at $kiln (--kiln PATH)" >&2; exit 2; }
kiln=$(cd "$(dirname "$kiln")" && pwd)/$(basename "$kiln")
if [ -z "$out" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
mkdir -p "$out"
section() { printf '\n== %s\n' "$*"; }

if [ "$device" != cpu ]; then
  # The device's libtorch (torch's wheel) and the CUDA libraries of its nvidia-* packages. libtorch_cuda is
  # preloaded: nothing in a CPU-linked kiln references it, and it must be loaded for CUDA to register.
  torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  nvidia_libs=$(python3 - <<'PY'
import glob, os, site
dirs = []
for base in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(d for d in glob.glob(os.path.join(base, "nvidia", "**", "lib"), recursive=True) if os.path.isdir(d))
print(":".join(dict.fromkeys(dirs)))
PY
)
  export LD_LIBRARY_PATH="$torch_lib${nvidia_libs:+:$nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_PRELOAD="$torch_lib/libtorch_cuda.so${LD_PRELOAD:+:$LD_PRELOAD}"
  # ONNX Runtime: the device's python package ships libonnxruntime.so (and, in a GPU build, the CUDA provider).
  ort_dir=$(python3 -c 'import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null || true)
  if [ -n "$ort_dir" ]; then
    ort_lib=$(ls "$ort_dir"/libonnxruntime.so* 2>/dev/null | head -n 1 || true)
    [ -n "$ort_lib" ] && export ORT_DYLIB_PATH="$ort_lib"
    python3 -c 'import onnxruntime as o; print("onnxruntime", o.__version__, "providers:", o.get_available_providers())' || true
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

section "kiln doctor"
"$kiln" doctor

# Runs a command while sampling the GPU's used memory; prints the peak (MiB) after it.
peak_memory() {
  if [ "$device" = cpu ] || ! command -v nvidia-smi >/dev/null; then "$@"; return; fi
  local log; log=$(mktemp)
  ( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$log" 2>/dev/null; sleep 0.2; done ) &
  local sampler=$!
  "$@"
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  echo "peak GPU memory used: $(sort -n "$log" | tail -n 1) MiB (nvidia-smi, whole GPU, sampled every 0.2 s)"
  rm -f "$log"
}

section "training step: convnext_tiny, 224 px, $device"
if [ "$device" = cpu ]; then batch=2; warmup=1; else batch=64; warmup=5; fi
for amp in false bf16 fp16; do
  peak_memory "$kiln" bench train --model convnext_tiny --img-size 224 --batch "$batch" --steps "$steps" \
    --warmup "$warmup" --device "$device" --amp "$amp" --channels-last true --json "$out/step_$amp.json"
done
peak_memory "$kiln" bench train --model convnext_tiny --img-size 224 --batch "$batch" --steps "$steps" \
  --warmup "$warmup" --device "$device" --amp bf16 --channels-last false --json "$out/step_bf16_nchw.json"

section "train, export and bench convnext_tiny on generated images"
if [ "$device" = cpu ]; then per_class=4; epochs=1; size=64; else per_class=64; epochs=2; size=224; fi
# One epoch of each demo part: this checks the paths, not the demo's quality (its detector alone trains 24 epochs).
"$kiln" demo --out "$out/demo" --epochs 1 --images-per-class "$per_class" --detect-epochs 1 --ocr-epochs 1 \
  --device "$device" >"$out/demo.log" 2>&1 ||
  { tail -n 30 "$out/demo.log"; exit 1; }
echo "kiln demo (generate, train convnext_atto, test, export, infer, bench): ok ($out/demo.log)"
"$kiln" train --data "$out/demo/shapes" --model convnext_tiny --epochs "$epochs" --batch 16 --img-size "$size" \
  --device "$device" --project "$out/runs" --name tiny --cache ram 2>&1 | grep -E "^(training|epoch|cache|test split|  accuracy)"
"$kiln" export onnx --run "$out/runs/classify/tiny" --dynamic-batch
model="$out/runs/classify/tiny/weights/best.onnx"
backends=ort-cpu
if [ "$device" != cpu ]; then
  if [ -n "${ort_dir:-}" ] && ls "$ort_dir"/libonnxruntime_providers_cuda.so >/dev/null 2>&1; then
    backends=ort-cpu,ort-cuda
  else
    echo "ort-cuda: this onnxruntime has no CUDA provider (libonnxruntime_providers_cuda.so); ort-cpu only"
  fi
fi
if [ "$device" = cpu ]; then bench_args=(--batch 1 --warmup 1 --iters 3); else bench_args=(--batch 1,32 --warmup 5 --duration 5); fi
"$kiln" bench --model "$model" --backends "$backends" --threads 16 "${bench_args[@]}" --json "$out/bench.json"
section "gpu_check: done"
