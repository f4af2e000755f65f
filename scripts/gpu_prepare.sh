#!/usr/bin/env bash
# Prepares, here (network, ../shared beside the checkout), everything tests/gpu/run_all.sh needs on the
# workplace's lent GPU machine, which has no network and no ../shared, and prints the `run` tool calls
# that take it there.
#
#   scripts/gpu_prepare.sh            make every carry item under build/gpu-carry/ (git-ignored), reusing
#                                     what is already there and checks out; then check them and print the calls
#   scripts/gpu_prepare.sh --check    make nothing: check the items and print the calls (exit 1 if one is
#                                     missing or damaged)
#   scripts/gpu_prepare.sh --rehearse check, then play the GPU machine's part here: a copy of what the
#                                     calls send (the tree and the carry items, no ../shared beside it) in
#                                     a temporary folder, run_all.sh --received, --dry-run and the full run
#                                     there, without network where `unshare -n` works (root); everything
#                                     up to the GPU work must pass (PYTHON: the Python to run it with,
#                                     default .venv/bin/python, else python3)
#
# Run it in the checkout the `run` tool sends (the lead's: the tool copies that one, whoever calls it).
# The items (each read on the GPU machine by tests/gpu/run_all.sh from the same place):
#   build/gpu-carry/ortgpu/       onnxruntime-gpu (cp312, CUDA 13) packed by ../shared/tools/ort-gpu-carry.sh
#                                 into part.NN (<= 48 MiB each) + SHA256SUMS + the script that unpacks them
#   build/gpu-carry/ort-headers/  ONNX Runtime's C API headers (scripts/fetch_ort_headers.py's folder)
#   build/gpu-carry/shared/       the ../shared files the GPU tests read: caffe2_models/bvlc_alexnet
#                                 (test_cuda_ort's AlexNet) and caffe2_rng (test_cuda_rng's known answers)
# Environment: SHARED_DIR (default ../shared), ORTGPU_VERSION (default: ort-gpu-carry.sh's), PYTHON
# (default python3, for the header fetch), CARRY_LIMIT_MIB (what one call may send, tree included;
# default 63 of the tool's 64), GPU_CARRY_DIR (default build/gpu-carry; a git-ignored folder of the
# checkout, given relative to its root; run_all.sh on the GPU machine must then get the same).
#
# Each call sends the checkout plus its carry list (at most 8 paths, 64 MiB in all); a warm machine
# keeps what earlier calls carried, and goes back after about 30 s idle, so make the calls one right
# after the other. Every call but the last runs `tests/gpu/run_all.sh --received` (lists what has
# arrived, in a second); the last one carries the rest and runs the whole script.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CARRY=${GPU_CARRY_DIR:-build/gpu-carry}  # relative to the checkout, as the run tool's carry paths are
SHARED_DIR=${SHARED_DIR:-$ROOT/../shared}
PY=${PYTHON:-python3}
LIMIT_MIB=${CARRY_LIMIT_MIB:-63}
# The ../shared files the GPU tests read (tests/test_cuda_ort.py, tests/test_cuda_rng.py).
SHARED_SUBSETS=(caffe2_models/bvlc_alexnet caffe2_rng)
check_only=0
rehearse=0
case "${1:-}" in
  --check) check_only=1 ;;
  --rehearse) check_only=1; rehearse=1 ;;
  "") ;;
  *) sed -n '2,32p' "$0"; exit 2 ;;
esac

say() { printf 'gpu_prepare: %s\n' "$*"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
bytes_of() { du -sb "$1" | cut -f1; }

if ! git check-ignore -q "$CARRY/x"; then
  say "$CARRY is not ignored by git (it must not travel as part of the tree, nor be committed)"; exit 1
fi

# ------------------------------------------------------------------------------------------ make
if [[ $check_only -eq 0 ]]; then
  mkdir -p "$CARRY"
  # ORT's headers: the fetch script's cached folder (it downloads once, checksummed), copied in.
  inc=$("$PY" scripts/fetch_ort_headers.py)
  rm -rf "$CARRY/ort-headers"
  cp -r --no-preserve=mode "$inc" "$CARRY/ort-headers"
  say "ORT headers: $inc -> $CARRY/ort-headers"

  for sub in "${SHARED_SUBSETS[@]}"; do
    [[ -e "$SHARED_DIR/$sub" ]] || { say "$SHARED_DIR/$sub missing (set SHARED_DIR)"; exit 1; }
  done
  rm -rf "$CARRY/shared"
  for sub in "${SHARED_SUBSETS[@]}"; do
    mkdir -p "$CARRY/shared/$(dirname "$sub")"
    cp -r --no-preserve=mode "$SHARED_DIR/$sub" "$CARRY/shared/$sub"
  done
  say "shared data: ${SHARED_SUBSETS[*]} -> $CARRY/shared"

  if [[ -f "$CARRY/ortgpu/SHA256SUMS" && -f "$CARRY/ortgpu/ort-gpu-carry.sh" ]] &&
     (cd "$CARRY/ortgpu" && sha256sum -c --quiet SHA256SUMS >/dev/null 2>&1); then
    say "onnxruntime-gpu parts already in $CARRY/ortgpu (remove the folder to pack again)"
  else
    tool="$SHARED_DIR/tools/ort-gpu-carry.sh"
    [[ -f "$tool" ]] || { say "$tool missing (set SHARED_DIR)"; exit 1; }
    rm -rf "$CARRY/ortgpu"
    bash "$tool" prepare "$CARRY/ortgpu" ${ORTGPU_VERSION:+"$ORTGPU_VERSION"}
  fi
fi

# ------------------------------------------------------------------------------------------ check
bad=0
h="$CARRY/ort-headers/onnxruntime_c_api.h"
if [[ -f "$h" ]]; then
  api=$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$h")
  if [[ -z "$api" || "$api" -lt 21 ]]; then say "$h: API '${api}' (21 or newer needed)"; bad=1; fi
else
  say "missing: $h"; bad=1
fi
for sub in "${SHARED_SUBSETS[@]}"; do
  [[ -e "$CARRY/shared/$sub" ]] || { say "missing: $CARRY/shared/$sub"; bad=1; }
done
[[ -f "$CARRY/shared/caffe2_models/bvlc_alexnet/predict_net.pbtxt" ]] || { say "missing: AlexNet's predict_net.pbtxt"; bad=1; }
[[ -f "$CARRY/shared/caffe2_rng/kat_public.npz" ]] || { say "missing: caffe2_rng/kat_public.npz"; bad=1; }
parts=()
if [[ -f "$CARRY/ortgpu/SHA256SUMS" && -f "$CARRY/ortgpu/ort-gpu-carry.sh" ]]; then
  if (cd "$CARRY/ortgpu" && sha256sum -c --quiet SHA256SUMS); then
    mapfile -t parts < <(awk '{print $2}' "$CARRY/ortgpu/SHA256SUMS" | sort)
  else
    say "the parts in $CARRY/ortgpu do not match their SHA256SUMS"; bad=1
  fi
else
  say "missing: $CARRY/ortgpu/SHA256SUMS or ort-gpu-carry.sh"; bad=1
fi
if [[ $bad -ne 0 ]]; then
  say "incomplete$([[ $check_only -eq 1 ]] && echo ': run scripts/gpu_prepare.sh without --check')"; exit 1
fi

# ------------------------------------------------------------------------------------------ the calls
# What travels with every call: tracked and untracked-not-ignored files as they are here.
tree=0
while IFS= read -r -d '' f; do
  [[ -f "$f" && ! -L "$f" ]] && tree=$((tree + $(stat -c %s "$f")))
done < <(git ls-files -z --cached --others --exclude-standard)
limit=$((LIMIT_MIB * 1048576))
# Parts first, in order; the small items ride along where they fit (usually with the last part).
items=()
for p in "${parts[@]}"; do items+=("$CARRY/ortgpu/$p"); done
items+=("$CARRY/ortgpu/SHA256SUMS" "$CARRY/ortgpu/ort-gpu-carry.sh" "$CARRY/ort-headers" "$CARRY/shared")
calls=()
sizes=()
cur="" cur_bytes=$tree cur_n=0
for it in "${items[@]}"; do
  b=$(bytes_of "$it")
  if [[ $((tree + b)) -gt $limit ]]; then
    say "$it ($(mib "$b") MiB) does not fit in one call with the tree ($(mib "$tree") MiB)"; exit 1
  fi
  if [[ $cur_n -gt 0 && ( $((cur_bytes + b)) -gt $limit || $cur_n -ge 8 ) ]]; then
    calls+=("$cur"); sizes+=("$cur_bytes"); cur="" cur_bytes=$tree cur_n=0
  fi
  cur+="${cur:+, }\"$it\""; cur_bytes=$((cur_bytes + b)); cur_n=$((cur_n + 1))
done
calls+=("$cur"); sizes+=("$cur_bytes")

n=${#calls[@]}
echo
echo "Carry items (git-ignored, under $CARRY):"
for it in "${items[@]}"; do printf '  %-40s %7s MiB\n' "$it" "$(mib "$(bytes_of "$it")")"; done
printf '  %-40s %7s MiB (tracked + untracked-not-ignored files; sent with every call)\n' "the tree" "$(mib "$tree")"
echo
echo "The run-tool calls, one right after the other (the machine goes back after ~30 s idle):"
for ((k = 0; k < n; k++)); do
  echo
  if [[ $((k + 1)) -lt $n ]]; then
    echo "call $((k + 1))/$n ($(mib "${sizes[$k]}") MiB): timeout_s 60"
    echo "  carry:   [${calls[$k]}]"
    echo "  command: bash tests/gpu/run_all.sh --received"
  else
    echo "call $((k + 1))/$n ($(mib "${sizes[$k]}") MiB): timeout_s 600"
    echo "  carry:   [${calls[$k]}]"
    echo "  command: bash tests/gpu/run_all.sh"
  fi
done
echo
echo "The last call's reply ends with the summary (tests, checks, benchmark table); its files come back"
echo "from \$OUT (summary.txt, env.txt, build.log, pytest.log, gpu_checks.log/json, bench_ort.log/json)."
echo "If --received or the run says a part is missing (the machine went back in between), start over at call 1."
[[ $rehearse -eq 1 ]] || exit 0

# ------------------------------------------------------------------------------------------ rehearsal
dir=$(mktemp -d /tmp/gpu-rehearse.XXXXXX)
repo="$dir/repo"
mkdir -p "$repo"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -x -C "$repo"
for it in "${items[@]}"; do
  mkdir -p "$repo/$(dirname "$it")"
  cp -r "$it" "$repo/$it"
done
rpy=${PYTHON:-}
[[ -z "$rpy" && -x "$ROOT/.venv/bin/python" ]] && rpy="$ROOT/.venv/bin/python"
rpy=${rpy:-python3}
offline=()
if command -v unshare >/dev/null && unshare -n true 2>/dev/null; then offline=(unshare -n); fi
echo
say "rehearsal in $repo (python $rpy, ${offline[*]:-with network: unshare -n unavailable})"
(cd "$repo" && "${offline[@]}" bash tests/gpu/run_all.sh --received)
rc_dry=0 rc_run=0
(cd "$repo" && "${offline[@]}" env PYTHON="$rpy" OUT="$dir/out-dry" bash tests/gpu/run_all.sh --dry-run) || rc_dry=$?
(cd "$repo" && "${offline[@]}" env PYTHON="$rpy" OUT="$dir/out" bash tests/gpu/run_all.sh) || rc_run=$?
say "rehearsal: dry run exit $rc_dry, full run exit $rc_run (without a GPU its GPU steps fail or skip: read $dir/out/summary.txt)"
[[ $rc_dry -eq 0 ]]
