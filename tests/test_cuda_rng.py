"""rng = "caffe2_mt19937" on the CUDA execution provider: the default engine refuses it at session
creation naming the node and the value (never a silently different mask); under engine "CUDNN" cuDNN
draws, as Caffe2's GPU did, and ORT's log gets one warning. Runs only with onnxruntime-gpu, a usable
GPU and libcaffe2_ort_cuda.so (as tests/test_cuda_ort.py); skipped with the reason otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("onnxruntime here has no CUDAExecutionProvider (needs onnxruntime-gpu)", allow_module_level=True)

# One process per case: ORT's log goes to the process's stderr, which only a child lets us read.
_SCRIPT = r"""
import sys, numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
lib, engine = sys.argv[1], sys.argv[2]
node = helper.make_node("Dropout", ["X"], ["Y", "mask"], domain="ai.caffe2", name="gpu_mt", ratio=0.5, seed=3,
                        rng="caffe2_mt19937", **({"engine": engine} if engine else {}))
g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1024])],
                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
                       helper.make_tensor_value_info("mask", TensorProto.BOOL, None)])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)], ir_version=8)
so = ort.SessionOptions()
so.log_severity_level = 1
so.register_custom_ops_library(lib)
try:
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CUDAExecutionProvider"])
except Exception as e:
    print("REFUSED:", e)
    sys.exit(0)
s.run(None, {"X": np.ones(1024, np.float32)})
print("RAN")
"""


def _lib() -> str:
    env = os.environ.get("CAFFE2_ORT_CUDA_LIB")
    cands = [Path(env)] if env else []
    cands += [ROOT / "build" / "cuda" / "libcaffe2_ort_cuda.so", ROOT / "python" / "caffe2_ort" / "lib" /
              "libcaffe2_ort_cuda.so"]
    for c in cands:
        if c.is_file():
            return str(c)
    pytest.skip("libcaffe2_ort_cuda.so not built (scripts/build_cuda.sh)")


def _run(engine):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, _lib(), engine], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "python")})
    assert out.returncode == 0, out.stderr[-2000:]
    if "no CUDA-capable device" in out.stdout + out.stderr:
        pytest.skip("onnxruntime-gpu is installed but no GPU is usable")
    return out.stdout, out.stderr


def test_default_engine_refuses_caffe2_mt19937_naming_node_and_value():
    from caffe2_ort import opdefs

    stdout, _ = _run("")
    assert stdout.startswith("REFUSED:")
    assert opdefs.cuda_rng_message(opdefs.where("Dropout", "gpu_mt"), "caffe2_mt19937") in stdout


def test_cudnn_engine_runs_and_warns_once():
    stdout, stderr = _run("CUDNN")
    assert stdout.strip().endswith("RAN")
    warning = "ai.caffe2 Dropout node 'gpu_mt': rng = 'caffe2_mt19937' does not apply under engine 'CUDNN'"
    assert stderr.count(warning) == 1, stderr[-2000:]
