#!/usr/bin/env bash
# Everything the CUDA plugin needs a GPU for, in one run: build, checks, benchmark, one table.
#
# For a machine with an NVIDIA GPU, nvcc (CUDA 13), cmake, and numpy, onnx, pytest, ml_dtypes, torch
# and the nvidia-cudnn-cu13 wheel in the Python that runs it (the workplace's H200 image has all of
# them in its python3, Python 3.12); no network needed when the carry items are there. Steps:
#   1. onnxruntime-gpu: the installed one when it offers the CUDA EP; else the parts packed by
#      ../shared/tools/ort-gpu-carry.sh (a cp312 wheel) from $ORTGPU_DIR, unpacked into /tmp/ortgpu and
#      put first on PYTHONPATH, and kept only if it imports and offers the CUDA EP there;
#   2. build libcaffe2_ort_cuda.so and libcaffe2_ort_cuda_testing.so for this GPU's architecture, with
#      the carried ORT headers;
#   3. pytest tests/test_cuda_build.py tests/test_cuda_ort.py tests/test_cuda_rng.py (the ORT CUDA EP
#      suite, slow tests too);
#   4. tests/gpu/gpu_checks.py: the kernels through the testing library (numpy reference, device
#      counter and CUDA-graph replays, 2^31 + 5 elements, cuDNN);
#   5. tests/gpu/bench_ort.py: the benchmark through ORT's CUDA EP against copy, torch and cuDNN;
#   6. summary.txt: what passed, what failed, the benchmark table.
# A missing Python module or tool skips the steps that need it, saying so; each step runs under a
# share of a total time budget, so a hanging step cannot take the steps after it with it.
#
#   OUT=/some/dir tests/gpu/run_all.sh     # the 8 files land in $OUT (default build/gpu-out)
#   tests/gpu/run_all.sh --dry-run         # no build, no GPU work: syntax, modules, tools, carry items,
#                                          # test collection, the CPU self-test; exit 1 if something is broken
#   tests/gpu/run_all.sh --received        # lists the carry items that have arrived (between run-tool calls)
# Environment: PYTHON (default python3); GPU_CARRY_DIR (default build/gpu-carry: ortgpu/, ort-headers/,
# shared/, made by scripts/gpu_prepare.sh); ORTGPU_DIR (default $GPU_CARRY_DIR/ortgpu); ORT_INCLUDE_DIR
# (default $GPU_CARRY_DIR/ort-headers, else the header cache of scripts/fetch_ort_headers.py); BUILD_DIR
# (default build/gpu); CAFFE2_ORT_CUDA_ARCHS (default: this GPU's); RUN_ALL_BUDGET_S (default 560: all
# steps together); GPU_CHECKS_ARGS, BENCH_ARGS, PYTEST_ARGS.
#
# On the workplace's lent GPU machine (the `run` tool, which sends the lead's checkout and nothing
# beside it): `scripts/gpu_prepare.sh` here makes the carry items under build/gpu-carry/ (git-ignored)
# and prints the exact sequence of calls with their carry lists: every call but the last carries
# parts and runs `bash tests/gpu/run_all.sh --received`, the last carries the rest and runs
# `bash tests/gpu/run_all.sh` (timeout_s 600). There the run takes about 5-8 minutes.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF="$ROOT/tests/gpu/run_all.sh"
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY_DIR:-build/gpu-carry}
[[ "$CARRY" == /* ]] || CARRY="$ROOT/$CARRY"  # relative to the checkout, as in scripts/gpu_prepare.sh
OUT=${OUT:-$ROOT/build/gpu-out}
BUILD=${BUILD_DIR:-$ROOT/build/gpu}
ORTGPU_DIR=${ORTGPU_DIR:-$CARRY/ortgpu}
BUDGET=${RUN_ALL_BUDGET_S:-560}
T0=$(date +%s)
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  --received)
    # Between run-tool calls: what has arrived (a part's sum is checked once SHA256SUMS is there too).
    echo "carry items in $CARRY:"
    if [[ -d "$ORTGPU_DIR" ]]; then ls -l "$ORTGPU_DIR" | sed 's/^/  /'; else echo "  no $ORTGPU_DIR yet"; fi
    if [[ -f "$ORTGPU_DIR/SHA256SUMS" ]]; then
      (cd "$ORTGPU_DIR" && sha256sum -c SHA256SUMS 2>&1 | sed 's/^/  /')
    fi
    for d in ort-headers shared; do
      [[ -d "$CARRY/$d" ]] && echo "  $d: $(find "$CARRY/$d" -type f | wc -l) files" || echo "  $d: not yet"
    done
    exit 0 ;;
  "") ;;
  *) sed -n '2,35p' "$SELF"; exit 2 ;;
esac
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
status=0
# Seconds a step may run: what is left of the budget, less `reserve` kept for the steps after it.
limit_for() {
  local l=$((BUDGET - ($(date +%s) - T0) - $1))
  ((l < 30)) && l=30
  echo "$l"
}
# run_step NAME RESERVE LOG CMD...: runs CMD under its share of the budget, output to LOG; returns its rc.
run_step() {
  local name=$1 reserve=$2 log=$3 lim rc
  shift 3
  lim=$(limit_for "$reserve")
  timeout --kill-after=10 "$lim" "$@" >"$log" 2>&1
  rc=$?
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    say "$name: stopped after its $lim s share of RUN_ALL_BUDGET_S=$BUDGET (see $(basename "$log"))"
  fi
  return $rc
}

# ---------------------------------------------------------------------------------------- set-up
export PYTHONUNBUFFERED=1
# nvcc where a CUDA toolkit installs it, when it is not on PATH
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
if ! command -v "$PY" >/dev/null; then
  say "python '$PY' not found (set PYTHON)"
  exit 1
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
  command -v nvcc >/dev/null && nvcc --version | tail -2 | head -1
  command -v cmake >/dev/null && cmake --version | head -1
} >"$OUT/env.txt" 2>&1

# Python modules: each missing one skips what needs it.
missing=" $("$PY" - <<'EOF' 2>/dev/null
import importlib.util
for name in ("numpy", "onnx", "pytest", "ml_dtypes", "torch", "nvidia.cudnn"):
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a namespace parent (nvidia) that is not there
        found = False
    if not found:
        print(name, end=" ")
EOF
)"
has() { [[ "$missing" != *" $1 "* ]]; }
[[ -n "${missing// /}" ]] && say "python modules missing:${missing% }"
has numpy && has onnx && CORE=1 || CORE=0
[[ $CORE -eq 0 ]] && say "  without numpy and onnx nothing but the build runs"
has pytest || say "  without pytest the CUDA EP suite (step 3) is skipped"
has ml_dtypes || say "  without ml_dtypes the bfloat16 cases fail"
has torch || say "  without torch gpu_checks (step 4) and bench_ort (step 5) are skipped"
has nvidia.cudnn || [[ -n "${CUDNN_ROOT:-}" ]] || say "  without nvidia.cudnn (or CUDNN_ROOT) the CUDA build cannot find cuDNN"

# onnxruntime-gpu
ort_cuda() {
  "$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" 2>/dev/null
}
ort_said() { "$PY" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' 2>&1 | tail -1; }
if ort_cuda; then
  say "onnxruntime-gpu: installed ($(ort_said))"
elif [[ -f "$ORTGPU_DIR/SHA256SUMS" ]]; then
  if ! (cd "$ORTGPU_DIR" && sha256sum -c --quiet SHA256SUMS) >>"$SUMMARY" 2>&1; then
    say "onnxruntime-gpu: the parts in $ORTGPU_DIR are incomplete or damaged: send them again (scripts/gpu_prepare.sh prints the calls)"
    [[ $DRY -eq 1 ]] && status=1
  elif [[ $DRY -eq 1 ]]; then
    say "onnxruntime-gpu: the parts in $ORTGPU_DIR check out (dry run: not unpacked)"
  else
    line=$(bash "$ORTGPU_DIR/ort-gpu-carry.sh" unpack "$ORTGPU_DIR" /tmp/ortgpu 2>>"$OUT/env.txt" | tail -n 1) || line=""
    if [[ "$line" == export* ]]; then
      saved_pythonpath=${PYTHONPATH:-}
      eval "$line"
      if ort_cuda; then
        say "onnxruntime-gpu: unpacked from $ORTGPU_DIR ($(ort_said))"
      else
        ext=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
        packed=$(cd /tmp/ortgpu/onnxruntime/capi 2>/dev/null && ls onnxruntime_pybind11_state*.so 2>/dev/null)
        say "onnxruntime-gpu: unpacked, but it offers no CUDA EP to this python ($ext; packed: $packed): $(ort_said)"
        say "  left out of PYTHONPATH: the CUDA EP tests and bench_ort skip"
        export PYTHONPATH=$saved_pythonpath
      fi
    else
      say "onnxruntime-gpu: the parts in $ORTGPU_DIR did not unpack: send them again"
    fi
  fi
else
  say "onnxruntime-gpu: not installed and no parts in $ORTGPU_DIR: the CUDA EP tests and bench_ort skip"
fi
# The CUDA 13 libraries onnxruntime-gpu loads (cuBLAS, cuDNN, cuFFT, cuRAND, cudart) come from the
# nvidia-* wheels beside PyTorch.
nvlibs=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
print(":".join(dict.fromkeys(dirs)))
EOF
)
[[ -n "$nvlibs" ]] && export LD_LIBRARY_PATH="$nvlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ../shared does not travel to a lent machine: the copy carried in $CARRY/shared stands in for it.
if [[ ! -e "$ROOT/../shared" && -d "$CARRY/shared" ]]; then
  if [[ $DRY -eq 1 ]]; then
    say "../shared: missing; a real run links it to $CARRY/shared"
  elif ln -s "$CARRY/shared" "$ROOT/../shared" 2>/dev/null; then
    say "../shared: linked to $CARRY/shared"
  else
    say "../shared: could not link it to $CARRY/shared"
  fi
fi
shared_dir="$ROOT/../shared"
[[ -e "$shared_dir" ]] || shared_dir="$CARRY/shared"
[[ -f "$shared_dir/caffe2_models/bvlc_alexnet/predict_net.pbtxt" ]] || say "../shared/caffe2_models/bvlc_alexnet missing: the AlexNet test skips"
[[ -f "$shared_dir/caffe2_rng/kat_public.npz" ]] || say "../shared/caffe2_rng missing: the known-answer test on CUDA skips"

# ORT's headers: carried, given, or the fetch script's cache (which downloads only where there is a network).
if [[ -z "${ORT_INCLUDE_DIR:-}" && -f "$CARRY/ort-headers/onnxruntime_c_api.h" ]]; then
  ORT_INCLUDE_DIR="$CARRY/ort-headers"
fi
if [[ -z "${ORT_INCLUDE_DIR:-}" ]]; then
  ORT_INCLUDE_DIR=$(timeout 30 "$PY" "$ROOT/scripts/fetch_ort_headers.py" 2>>"$OUT/env.txt") || ORT_INCLUDE_DIR=""
fi
if [[ -n "$ORT_INCLUDE_DIR" && -f "$ORT_INCLUDE_DIR/onnxruntime_c_api.h" ]]; then
  say "ORT headers: $ORT_INCLUDE_DIR (API $(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$ORT_INCLUDE_DIR/onnxruntime_c_api.h"))"
else
  say "ORT headers: none (carry $CARRY/ort-headers, made by scripts/gpu_prepare.sh, or set ORT_INCLUDE_DIR)"
  [[ $DRY -eq 0 ]] && { say "run_all: status 1"; exit 1; }
  status=1
fi
if [[ -z "${CAFFE2_ORT_CUDA_ARCHS:-}" ]]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  CAFFE2_ORT_CUDA_ARCHS=${cap:-90}
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
export CAFFE2_ORT_CUDA_LIB="$BUILD/libcaffe2_ort_cuda.so"
# caffe2_ort's own finder (TrainingSession, register()) looks only in the package's lib/ folder, which a
# checkout does not have: it gets the CUDA build (which holds the CPU kernels too).
export CAFFE2_ORT_LIBRARY=${CAFFE2_ORT_LIBRARY:-$CAFFE2_ORT_CUDA_LIB}
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
TESTS=("$ROOT/tests/test_cuda_build.py" "$ROOT/tests/test_cuda_ort.py" "$ROOT/tests/test_cuda_rng.py")

if [[ $DRY -eq 1 ]]; then
  # bash reads a script as it runs it: check the parts this dry run does not reach.
  bash -n "$SELF" || { say "dry run: $SELF has a syntax error"; status=1; }
  for t in cmake nvcc nvidia-smi timeout; do
    command -v $t >/dev/null && say "dry run: $t found" || say "dry run: $t missing"
  done
  command -v timeout >/dev/null || status=1
  for f in "$ROOT/tests/gpu/gpu_checks.py" "$ROOT/tests/gpu/bench_ort.py" "${TESTS[@]}"; do
    "$PY" -m py_compile "$f" 2>>"$SUMMARY" || { say "dry run: $f does not compile"; status=1; }
  done
  if [[ $CORE -eq 1 ]] && has pytest; then
    # Collection imports every test module: an import error here would cost the GPU run its suite.
    if "$PY" -m pytest -q --collect-only -p no:cacheprovider "${TESTS[@]}" >"$OUT/pytest.log" 2>&1; then
      say "dry run: pytest collects $(grep -cE '::' "$OUT/pytest.log") tests from ${#TESTS[@]} files"
    else
      say "dry run: pytest cannot collect the CUDA tests (see pytest.log):"
      grep -E '^E |Error' "$OUT/pytest.log" | head -5 | tee -a "$SUMMARY"
      status=1
    fi
  fi
  if [[ $CORE -eq 1 ]]; then
    "$PY" "$ROOT/tests/gpu/gpu_checks.py" --self-test 2>&1 | tee -a "$SUMMARY"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  fi
  say "dry run: done (status $status)"
  exit $status
fi

# ---------------------------------------------------------------------------------------- build
start=$(date +%s)
for t in cmake nvcc; do command -v $t >/dev/null || { say "build: $t not found"; say "run_all: status 1"; exit 1; }; done
# The build runs in a child shell (timeout cannot run a function); these are what it reads.
GEN="${gen[*]}"
export ROOT BUILD CAFFE2_ORT_CUDA_ARCHS PY ORT_INCLUDE_DIR GEN
run_step build 300 "$OUT/build.log" bash -c '
  cmake -S "$ROOT" -B "$BUILD" $GEN -DCAFFE2_ORT_CUDA=ON -DCAFFE2_ORT_CUDA_ARCHS="$CAFFE2_ORT_CUDA_ARCHS" \
    -DPython3_EXECUTABLE="$(command -v "$PY")" -DORT_INCLUDE_DIR="$ORT_INCLUDE_DIR" &&
  cmake --build "$BUILD" -j "$(nproc)" --target caffe2_ort_cuda caffe2_ort_cuda_testing'
if [[ $? -ne 0 ]]; then
  tail -40 "$OUT/build.log"
  say "build (sm_$CAFFE2_ORT_CUDA_ARCHS): FAILED, see build.log"
  say "run_all: status 1"
  exit 1
fi
say "build (sm_$CAFFE2_ORT_CUDA_ARCHS): $(($(date +%s) - start)) s"
if [[ $CORE -eq 1 ]]; then
  say "caffe2_ort.get_library_path(): $("$PY" -c 'import caffe2_ort; print(caffe2_ort.get_library_path())' 2>&1 | tail -1)"
fi

# ---------------------------------------------------------------------------------------- checks
if [[ $CORE -eq 1 ]] && has pytest; then
  start=$(date +%s)
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
  run_step pytest 180 "$OUT/pytest.log" "$PY" -m pytest -q -rs -p no:cacheprovider ${PYTEST_ARGS:-} "${TESTS[@]}"
  rc=$?
  [[ $rc -ne 0 ]] && status=1
  say "pytest (test_cuda_build, test_cuda_ort, test_cuda_rng; $(($(date +%s) - start)) s, rc $rc): $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|skipped)' "$OUT/pytest.log" | tail -1)"
  grep -E '^(FAILED|ERROR)' "$OUT/pytest.log" | head -40 | tee -a "$SUMMARY"
  grep -E '^SKIPPED' "$OUT/pytest.log" | sed -E 's/^SKIPPED \[([0-9]+)\] [^ ]+: /\1 skipped: /' \
    | awk '{n = $1; $1 = ""; c[$0] += n} END {for (r in c) print "  " c[r] r}' | tee -a "$SUMMARY"
else
  say "pytest: skipped (python modules missing)"
fi

if [[ $CORE -eq 1 ]] && has torch; then
  start=$(date +%s)
  # shellcheck disable=SC2086
  run_step gpu_checks 90 "$OUT/gpu_checks.log" "$PY" "$ROOT/tests/gpu/gpu_checks.py" \
    --lib "$BUILD/libcaffe2_ort_cuda_testing.so" --out "$OUT" ${GPU_CHECKS_ARGS:-}
  rc=$?
  [[ $rc -ne 0 ]] && status=1
  say "gpu_checks ($(($(date +%s) - start)) s, rc $rc): $(grep -E '^checks:' "$OUT/gpu_checks.log" | tail -1)"
  grep -E 'FAILED:|^\(b\) cuDNN' "$OUT/gpu_checks.log" | head -20 | tee -a "$SUMMARY"
  [[ $rc -ne 0 ]] && tail -3 "$OUT/gpu_checks.log" | tee -a "$SUMMARY"

  # ---------------------------------------------------------------------------------------- benchmark
  start=$(date +%s)
  # shellcheck disable=SC2086
  run_step bench_ort 0 "$OUT/bench_ort.log" "$PY" "$ROOT/tests/gpu/bench_ort.py" --lib "$CAFFE2_ORT_CUDA_LIB" \
    --out "$OUT" ${BENCH_ARGS:-}
  rc=$?
  [[ $rc -eq 1 || $rc -eq 124 || $rc -eq 137 ]] && status=1
  say "bench_ort ($(($(date +%s) - start)) s, rc $rc)"
  sed -n '/^ai.caffe2 ops through/,$p' "$OUT/bench_ort.log" | tee -a "$SUMMARY"
  [[ $rc -ne 0 ]] && tail -20 "$OUT/bench_ort.log" | tee -a "$SUMMARY"
  say "kernels through the testing library (forward with mask):"
  sed -n '/^Dropout forward with mask/,$p' "$OUT/gpu_checks.log" | tee -a "$SUMMARY"
else
  say "gpu_checks, bench_ort: skipped (python modules missing)"
fi
say "run_all: status $status"
exit $status
