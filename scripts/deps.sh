#!/usr/bin/env bash
# Installs kiln's native dependencies, once, into a cache directory:
#   $KILN_DEPS/libtorch        libtorch 2.11.0 for CPU (from the torch==2.11.0 wheel on PyPI, libtorch_cuda left out)
#   $KILN_DEPS/libtorch-cuda   the same with libtorch_cuda and the CUDA 13 libraries      (only with CUDA=1)
#   $KILN_DEPS/onnxruntime     libonnxruntime.so.1.31.1 (from the onnxruntime==1.31.1 wheel on PyPI)
# KILN_DEPS defaults to .deps/ in the repository. Everything comes from PyPI through pip; nothing else is fetched.
# Usage: scripts/deps.sh [--print-libtorch]     (CUDA=1 for the CUDA libtorch)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
deps=${KILN_DEPS:-$repo/.deps}
cuda=${CUDA:-0}
torch_version=2.11.0
ort_version=1.31.1
wheels=$deps/wheels

libtorch_dir() { if [ "$cuda" = 1 ]; then echo "$deps/libtorch-cuda"; else echo "$deps/libtorch"; fi; }
if [ "${1:-}" = "--print-libtorch" ]; then libtorch_dir; exit 0; fi

mkdir -p "$wheels"

# pip download of one binary wheel for this machine's Python and platform (only the native libraries are used,
# so any CPython version with a wheel will do).
fetch() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check -d "$wheels" "$1"
}

# Extracts the members of wheel $1 matching the glob patterns $3... into directory $2 (python's zipfile: no unzip
# needed).
extract() {
  python3 - "$@" <<'PY'
import fnmatch, sys, zipfile
wheel, dest, *patterns = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            z.extract(name, dest)
PY
}

# The newest wheel in $wheels whose file name starts with $1.
wheel() { ls -1t "$wheels"/"$1"*.whl 2>/dev/null | head -n 1; }

# Extracts the shared libraries under nvidia/*/lib of the given wheels into $1.
extract_nvidia_libs() {
  local dest=$1; shift
  local tmp; tmp=$(mktemp -d)
  for w in "$@"; do extract "$w" "$tmp" 'nvidia/*'; done
  find "$tmp" -path '*/lib/*.so*' -type f -exec cp -f {} "$dest"/ \;
  rm -rf "$tmp"
}

install_libtorch() {
  local dest; dest=$(libtorch_dir)
  local stamp="$dest/.kiln-installed-$torch_version"
  [ -f "$stamp" ] && return 0
  echo "kiln deps: installing libtorch $torch_version ($([ "$cuda" = 1 ] && echo CUDA || echo CPU)) into $dest"
  [ -n "$(wheel "torch-$torch_version-")" ] || fetch "torch==$torch_version"
  [ -n "$(wheel nvidia_cuda_runtime-13.0)" ] || fetch "nvidia-cuda-runtime==13.0.*"
  [ -n "$(wheel nvidia_cuda_cupti-13.0)" ] || fetch "nvidia-cuda-cupti==13.0.*"

  local tmp; tmp=$(mktemp -d "$deps/tmp.XXXXXX")
  extract "$(wheel "torch-$torch_version-")" "$tmp" 'torch/lib/*' 'torch/include/*' 'torch/version.py'
  rm -f "$tmp"/torch/lib/libtorch_python.so
  if [ "$cuda" != 1 ]; then
    # torch-sys links libtorch_cuda whenever it is in the lib dir: the CPU install leaves it (and its helpers) out.
    rm -f "$tmp"/torch/lib/libtorch_cuda*.so "$tmp"/torch/lib/libc10_cuda.so "$tmp"/torch/lib/libtorch_nvshmem.so \
          "$tmp"/torch/lib/libcaffe2_nvrtc.so
  fi
  extract_nvidia_libs "$tmp/torch/lib" "$(wheel nvidia_cuda_runtime-13.0)" "$(wheel nvidia_cuda_cupti-13.0)"
  if [ "$cuda" = 1 ]; then
    # The torch wheel's own CUDA requirements (its Requires-Dist lines for Linux), with their dependencies.
    local reqs
    reqs=$(python3 -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
print(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode())" \
      "$(wheel "torch-$torch_version-")" | sed -n 's/^Requires-Dist: \(\(cuda-toolkit\|nvidia-\)[^;]*\);.*Linux.*/\1/p' | tr -d ' ')
    local cudawheels="$deps/wheels-cuda"
    mkdir -p "$cudawheels"
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --only-binary=:all: --disable-pip-version-check -d "$cudawheels" $reqs
    extract_nvidia_libs "$tmp/torch/lib" "$cudawheels"/nvidia*.whl
  fi
  python3 -c "import re,sys; print(re.search(r\"__version__ = '([^']+)'\", open(sys.argv[1]).read()).group(1).split('+')[0])" \
    "$tmp/torch/version.py" > "$tmp/torch/build-version"
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/torch" "$dest"
  rm -rf "$tmp"
  touch "$stamp"
}

install_onnxruntime() {
  local dest="$deps/onnxruntime"
  [ -f "$dest/libonnxruntime.so.$ort_version" ] && return 0
  echo "kiln deps: installing ONNX Runtime $ort_version into $dest"
  [ -n "$(wheel "onnxruntime-$ort_version-")" ] || fetch "onnxruntime==$ort_version"
  local tmp; tmp=$(mktemp -d "$deps/tmp.XXXXXX")
  extract "$(wheel "onnxruntime-$ort_version-")" "$tmp" 'onnxruntime/capi/libonnxruntime*'
  mkdir -p "$dest"
  mv "$tmp"/onnxruntime/capi/libonnxruntime* "$dest"/
  ln -sf "libonnxruntime.so.$ort_version" "$dest/libonnxruntime.so"
  rm -rf "$tmp"
}

install_libtorch
install_onnxruntime
