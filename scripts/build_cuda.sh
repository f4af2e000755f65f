#!/usr/bin/env bash
# Builds libcaffe2_ort_cuda.so (CPU + CUDA/cuDNN kernels) and the test-only
# libcaffe2_ort_cuda_testing.so. Needs nvcc (CUDA 13) and cmake; installs the nvidia-cudnn-cu13
# wheel (headers + libraries, about 0.9 GB unpacked) into the current Python environment if missing.
#
#   scripts/build_cuda.sh [--build-dir DIR] [--archs "75;80;86;89;90;100"] [--dev-copy] [--no-install]
#     --dev-copy    also copy the plugin into python/caffe2_ort/lib/ for in-tree use
#     --no-install  fail instead of pip-installing nvidia-cudnn-cu13
# Environment: PYTHON (default: .venv/bin/python if present, else python3), ORT_INCLUDE_DIR, CUDNN_ROOT.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build/cuda"
ARCHS=""
DEV_COPY=OFF
INSTALL=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) BUILD=$2; shift 2 ;;
    --archs) ARCHS=$2; shift 2 ;;
    --dev-copy) DEV_COPY=ON; shift ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build_cuda.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v nvcc >/dev/null || { echo "build_cuda.sh: nvcc not found on PATH" >&2; exit 1; }

if [[ -z "${CUDNN_ROOT:-}" ]] && ! "$PYTHON" -c "import nvidia.cudnn" 2>/dev/null; then
  if [[ $INSTALL -eq 0 ]]; then
    echo "build_cuda.sh: nvidia-cudnn-cu13 is not installed in $PYTHON (and --no-install was given)" >&2
    exit 1
  fi
  echo "build_cuda.sh: installing nvidia-cudnn-cu13 into $PYTHON"
  "$PYTHON" -m pip install --quiet nvidia-cudnn-cu13
fi

gen=()
if command -v ninja >/dev/null; then
  gen=(-G Ninja)
elif [[ -x "$ROOT/.venv/bin/ninja" ]]; then
  gen=(-G Ninja -DCMAKE_MAKE_PROGRAM="$ROOT/.venv/bin/ninja")
fi
args=(-DCAFFE2_ORT_CUDA=ON -DPython3_EXECUTABLE="$(command -v "$PYTHON")" -DCAFFE2_ORT_DEV_COPY="$DEV_COPY")
[[ -n "$ARCHS" ]] && args+=(-DCAFFE2_ORT_CUDA_ARCHS="$ARCHS")
[[ -n "${ORT_INCLUDE_DIR:-}" ]] && args+=(-DORT_INCLUDE_DIR="$ORT_INCLUDE_DIR")
cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" "${args[@]}"
cmake --build "$BUILD" --target caffe2_ort_cuda caffe2_ort_cuda_testing
echo "built: $BUILD/libcaffe2_ort_cuda.so $BUILD/libcaffe2_ort_cuda_testing.so"
