#!/usr/bin/env bash
# Everything the CUDA plugin needs a GPU for, in one run: build, checks, benchmark, one table.
#
# For a machine with an NVIDIA GPU, nvcc (CUDA 13), cmake, PyTorch, onnx, pytest, ml_dtypes and the
# nvidia-cudnn-cu13 wheel in the Python that runs it (the workplace's H200 image has all of them in
# its python3, Python 3.12), no network needed. Steps:
#   1. onnxruntime-gpu: a real install when `python -c "import onnxruntime"` already offers the CUDA EP;
#      else the parts packed by ../shared/tools/ort-gpu-carry.sh (cp312 wheel) from $ORTGPU_DIR
#      (default build/ortgpu), unpacked into /tmp/ortgpu and put first on PYTHONPATH; without either,
#      the CUDA EP tests skip and the script says so.
#   2. build libcaffe2_ort_cuda.so and libcaffe2_ort_cuda_testing.so for this GPU's architecture;
#   3. pytest tests/test_cuda_build.py tests/test_cuda_ort.py tests/test_cuda_rng.py (the ORT CUDA EP
#      suite, slow ones too; test_cuda_rng: rng = "caffe2_mt19937" masks equal the CPU's, every dtype,
#      runs 0-2, odd sizes, threads, Caffe2's known answers, the CUDA-graph capture refusal);
#   4. tests/gpu/gpu_checks.py: the kernels through the testing library (numpy reference, device
#      counter and CUDA-graph replays, 2^31 + 5 elements, cuDNN);
#   5. tests/gpu/bench_ort.py: the benchmark through ORT's CUDA EP against copy, torch and cuDNN;
#   6. summary.txt: what passed, what failed, the benchmark table.
#
#   OUT=/some/dir tests/gpu/run_all.sh        # at most 8 files land in $OUT (default build/gpu-out)
#   tests/gpu/run_all.sh --dry-run            # syntax, tools and skip paths, no build and no GPU work
# Environment: PYTHON (default python3), ORT_INCLUDE_DIR (default: the fetched header cache
# .cache/ort-headers, which a machine without network must receive), ORTGPU_DIR, BUILD_DIR
# (default build/gpu), CAFFE2_ORT_CUDA_ARCHS (default: this GPU's), GPU_CHECKS_ARGS, BENCH_ARGS,
# PYTEST_ARGS.
#
# On the workplace's lent GPU machine (the `run` tool; it sends the lead's checkout, so this script
# must be there): prepare here once (build/ is git-ignored)
#   bash ../shared/tools/ort-gpu-carry.sh prepare build/ortgpu         # 4 parts of <= 48 MiB (1.31.1)
#   mkdir -p build/shared/caffe2_models && cp -r ../shared/caffe2_models/bvlc_alexnet build/shared/caffe2_models/
#   cp -r ../shared/caffe2_rng build/shared/     # Caffe2's known answers for test_cuda_rng
# then send the parts one call at a time while the machine stays warm (it goes back after 30 s idle):
#   carry [build/ortgpu/part.00, build/ortgpu/SHA256SUMS, build/ortgpu/ort-gpu-carry.sh]   command: ls build/ortgpu
#   carry [build/ortgpu/part.01] ... carry [build/ortgpu/part.02]                          command: ls build/ortgpu
#   carry [build/ortgpu/part.03, .cache/ort-headers, build/shared]   command: OUT=$OUT bash tests/gpu/run_all.sh
# (timeout_s 600; the run itself takes about 5-8 minutes on an H200).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/build/gpu-out}
BUILD=${BUILD_DIR:-$ROOT/build/gpu}
ORTGPU_DIR=${ORTGPU_DIR:-$ROOT/build/ortgpu}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
status=0

# ---------------------------------------------------------------------------------------- set-up
export PYTHONUNBUFFERED=1
{
  echo "date: $(date -u +%FT%TZ)"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
  command -v nvcc >/dev/null && nvcc --version | tail -2 | head -1
} >"$OUT/env.txt" 2>&1

# onnxruntime-gpu
ort_cuda() { "$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" 2>/dev/null; }
if ort_cuda; then
  say "onnxruntime-gpu: installed"
elif [[ -f "$ORTGPU_DIR/SHA256SUMS" ]]; then
  if [[ $DRY -eq 1 ]]; then
    (cd "$ORTGPU_DIR" && sha256sum -c --quiet SHA256SUMS) && say "onnxruntime-gpu: parts in $ORTGPU_DIR check out (dry run: not unpacked)" \
      || say "onnxruntime-gpu: parts in $ORTGPU_DIR are incomplete"
  else
    line=$(bash "$ORTGPU_DIR/ort-gpu-carry.sh" unpack "$ORTGPU_DIR" /tmp/ortgpu | tail -n 1) || line=""
    if [[ "$line" == export* ]]; then
      eval "$line"
      say "onnxruntime-gpu: unpacked from $ORTGPU_DIR ($("$PY" -c 'import onnxruntime as o; print(o.__version__)' 2>&1))"
    else
      say "onnxruntime-gpu: the parts in $ORTGPU_DIR did not unpack: send them again"
    fi
  fi
else
  say "onnxruntime-gpu: not installed and no parts in $ORTGPU_DIR: the CUDA EP tests and bench_ort will skip"
fi
# The CUDA 13 libraries onnxruntime-gpu loads (cuBLAS, cuDNN, cuFFT, cuRAND, cudart) come from the
# nvidia-* wheels beside PyTorch.
nvlibs=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "cu13", "lib")))
print(":".join(dict.fromkeys(dirs)))
EOF
)
[[ -n "$nvlibs" ]] && export LD_LIBRARY_PATH="$nvlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ../shared (the zoo nets for the AlexNet test) does not travel to a lent machine: a copy carried in
# build/shared stands in for it.
if [[ ! -e "$ROOT/../shared" && -d "$ROOT/build/shared" ]]; then
  ln -s "$ROOT/build/shared" "$ROOT/../shared" && say "../shared: linked to build/shared"
fi
[[ -d "$ROOT/../shared/caffe2_models" ]] || say "../shared/caffe2_models missing: the AlexNet test will skip"
[[ -d "$ROOT/../shared/caffe2_rng" ]] || say "../shared/caffe2_rng missing: the known-answer test on CUDA will skip"

if [[ -z "${ORT_INCLUDE_DIR:-}" && -f "$ROOT/.cache/ort-headers/root/usr/include/onnxruntime/onnxruntime_c_api.h" ]]; then
  ORT_INCLUDE_DIR="$ROOT/.cache/ort-headers/root/usr/include/onnxruntime"
fi
if [[ -z "${CAFFE2_ORT_CUDA_ARCHS:-}" ]]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  CAFFE2_ORT_CUDA_ARCHS=${cap:-90}
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
export CAFFE2_ORT_CUDA_LIB="$BUILD/libcaffe2_ort_cuda.so"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"

if [[ $DRY -eq 1 ]]; then
  for f in "$ROOT/tests/gpu/gpu_checks.py" "$ROOT/tests/gpu/bench_ort.py" "$ROOT/tests/test_cuda_ort.py" \
           "$ROOT/tests/test_cuda_rng.py"; do
    "$PY" -m py_compile "$f" || { say "dry run: $f does not compile"; status=1; }
  done
  for t in cmake nvcc nvidia-smi; do command -v $t >/dev/null && say "dry run: $t found" || say "dry run: $t missing"; done
  [[ -n "${ORT_INCLUDE_DIR:-}" ]] && say "dry run: ORT headers $ORT_INCLUDE_DIR" || say "dry run: no ORT headers (set ORT_INCLUDE_DIR or carry .cache/ort-headers)"
  "$PY" "$ROOT/tests/gpu/gpu_checks.py" --self-test | tee -a "$SUMMARY" || status=1
  "$PY" "$ROOT/tests/gpu/bench_ort.py" --lib "$CAFFE2_ORT_CUDA_LIB" --out "$OUT" --max-log2 20 | tee -a "$SUMMARY"
  say "dry run: done (status $status)"
  exit $status
fi

# ---------------------------------------------------------------------------------------- build
start=$(date +%s)
{
  cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCAFFE2_ORT_CUDA=ON -DCAFFE2_ORT_CUDA_ARCHS="$CAFFE2_ORT_CUDA_ARCHS" \
    -DPython3_EXECUTABLE="$(command -v "$PY")" ${ORT_INCLUDE_DIR:+-DORT_INCLUDE_DIR="$ORT_INCLUDE_DIR"} &&
  cmake --build "$BUILD" -j "$(nproc)" --target caffe2_ort_cuda caffe2_ort_cuda_testing
} >"$OUT/build.log" 2>&1
if [[ $? -ne 0 ]]; then
  tail -40 "$OUT/build.log"
  say "build (sm_$CAFFE2_ORT_CUDA_ARCHS): FAILED, see build.log"
  exit 1
fi
say "build (sm_$CAFFE2_ORT_CUDA_ARCHS): $(($(date +%s) - start)) s"

# ---------------------------------------------------------------------------------------- checks
start=$(date +%s)
"$PY" -m pytest -q -rs -p no:cacheprovider ${PYTEST_ARGS:-} "$ROOT/tests/test_cuda_build.py" "$ROOT/tests/test_cuda_ort.py" \
  "$ROOT/tests/test_cuda_rng.py" >"$OUT/pytest.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] && status=1
say "pytest (test_cuda_build, test_cuda_ort, test_cuda_rng; $(($(date +%s) - start)) s, rc $rc): $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|skipped)' "$OUT/pytest.log" | tail -1)"
grep -E '^(FAILED|ERROR)' "$OUT/pytest.log" | head -40 | tee -a "$SUMMARY"
grep -E '^SKIPPED' "$OUT/pytest.log" | sed -E 's/^SKIPPED \[([0-9]+)\] [^ ]+: /\1 skipped: /' \
  | awk '{n = $1; $1 = ""; c[$0] += n} END {for (r in c) print "  " c[r] r}' | tee -a "$SUMMARY"

start=$(date +%s)
"$PY" "$ROOT/tests/gpu/gpu_checks.py" --lib "$BUILD/libcaffe2_ort_cuda_testing.so" --out "$OUT" ${GPU_CHECKS_ARGS:-} \
  >"$OUT/gpu_checks.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] && status=1
say "gpu_checks ($(($(date +%s) - start)) s, rc $rc): $(grep -E '^checks:' "$OUT/gpu_checks.log" | tail -1)"
grep -E 'FAILED:|^\(b\) cuDNN' "$OUT/gpu_checks.log" | head -20 | tee -a "$SUMMARY"
[[ $rc -ne 0 ]] && tail -3 "$OUT/gpu_checks.log" | tee -a "$SUMMARY"

# ---------------------------------------------------------------------------------------- benchmark
start=$(date +%s)
"$PY" "$ROOT/tests/gpu/bench_ort.py" --lib "$CAFFE2_ORT_CUDA_LIB" --out "$OUT" ${BENCH_ARGS:-} >"$OUT/bench_ort.log" 2>&1
rc=$?
[[ $rc -eq 1 ]] && status=1
say "bench_ort ($(($(date +%s) - start)) s, rc $rc)"
sed -n '/^ai.caffe2 ops through/,$p' "$OUT/bench_ort.log" | tee -a "$SUMMARY"
[[ $rc -ne 0 ]] && tail -20 "$OUT/bench_ort.log" | tee -a "$SUMMARY"
say "kernels through the testing library (forward with mask):"
sed -n '/^Dropout forward with mask/,$p' "$OUT/gpu_checks.log" | tee -a "$SUMMARY"
say "run_all: status $status"
exit $status
