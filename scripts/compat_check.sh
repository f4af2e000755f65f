#!/usr/bin/env bash
# Runs the CPU op tests under the oldest onnxruntime the project supports (1.17.3) and checks that
# 1.16.3 is refused with a clear error. Each runtime gets its own venv (.venv-ort-X.Y.Z), holding the
# wheel built from this checkout; numpy < 2 because those runtimes were built against numpy 1.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
wheel_dir=build/compat-wheel
rm -rf "$wheel_dir"
"$python" -m pip wheel -q --no-deps -w "$wheel_dir" .
wheel=$(ls "$wheel_dir"/caffe2_ort-*.whl)

run_with() {
  local version=$1; shift
  local venv=.venv-ort-$version
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "onnxruntime==$version" "numpy<2" "onnx==1.19.0" "ml_dtypes" \
    "protobuf<5" pytest hypothesis
  "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"
  "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
}

run_with 1.17.3 -q tests/test_dropout_cpu.py tests/test_rng_contract.py tests/test_op_errors.py tests/test_library.py \
  tests/test_opdefs.py tests/test_caffe2_rng.py
run_with 1.16.3 -q tests/test_library.py -k old_runtime
