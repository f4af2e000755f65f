#!/usr/bin/env bash
# GPU checks of the CUDA kernels (see tests/gpu/gpu_checks.py), for a machine with an NVIDIA GPU,
# nvcc, cmake, PyTorch and the nvidia-cudnn-cu13 wheel in the Python that runs it. No network and no
# onnxruntime-gpu needed. Builds for this GPU's architecture only, then runs (a) kernel checks,
# (b) cuDNN engine checks, (c) the benchmark, and the library tests that need no GPU.
#
#   OUT=/some/dir tests/gpu/run_gpu_checks.sh      # logs and gpu_checks.json go to $OUT
# Environment: PYTHON (default python3), ORT_INCLUDE_DIR (default: the fetched header cache),
# BUILD_DIR (default build/gpu), CAFFE2_ORT_CUDA_ARCHS (default: this GPU's), GPU_CHECKS_ARGS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/build/gpu-checks}
BUILD=${BUILD_DIR:-$ROOT/build/gpu}
mkdir -p "$OUT"

if [[ -z "${ORT_INCLUDE_DIR:-}" && -f "$ROOT/.cache/ort-headers/root/usr/include/onnxruntime/onnxruntime_c_api.h" ]]; then
  ORT_INCLUDE_DIR="$ROOT/.cache/ort-headers/root/usr/include/onnxruntime"
fi
if [[ -z "${CAFFE2_ORT_CUDA_ARCHS:-}" ]]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
  CAFFE2_ORT_CUDA_ARCHS=${cap:-90}
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)

nvidia-smi -L | tee "$OUT/device.txt"
start=$(date +%s)
cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCAFFE2_ORT_CUDA=ON -DCAFFE2_ORT_CUDA_ARCHS="$CAFFE2_ORT_CUDA_ARCHS" \
  -DPython3_EXECUTABLE="$(command -v "$PY")" ${ORT_INCLUDE_DIR:+-DORT_INCLUDE_DIR="$ORT_INCLUDE_DIR"} \
  >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target caffe2_ort_cuda caffe2_ort_cuda_testing >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "build (sm_$CAFFE2_ORT_CUDA_ARCHS): $(($(date +%s) - start)) s"

status=0
# Library checks and the CPU kernels of the CUDA library inside the CPU onnxruntime; the ORT-glue test
# on the CUDA EP runs where onnxruntime-gpu is installed and skips otherwise.
CAFFE2_ORT_CUDA_LIB="$BUILD/libcaffe2_ort_cuda.so" PYTHONPATH="$ROOT/python" \
  "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_cuda_build.py" "$ROOT/tests/test_cuda_ort.py" \
  2>&1 | tee "$OUT/pytest.log" | tail -5 || status=1

PYTHONUNBUFFERED=1 "$PY" "$ROOT/tests/gpu/gpu_checks.py" --lib "$BUILD/libcaffe2_ort_cuda_testing.so" \
  --out "$OUT" ${GPU_CHECKS_ARGS:-} 2>&1 | tee "$OUT/gpu_checks.log" || status=1
exit $status
