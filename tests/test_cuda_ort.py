"""The CUDA kernels through onnxruntime-gpu's CUDAExecutionProvider, compared with the CPU kernels.

Runs only where onnxruntime offers CUDAExecutionProvider, a GPU is usable and libcaffe2_ort_cuda.so
was built (CAFFE2_ORT_CUDA_LIB, build/cuda/ or python/caffe2_ort/lib/); skipped with the reason
otherwise. Machines without onnxruntime-gpu check the kernels through tests/gpu/run_gpu_checks.sh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from caffe2_ort import reference as R  # noqa: E402

ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("onnxruntime here has no CUDAExecutionProvider (needs onnxruntime-gpu)", allow_module_level=True)


def _lib() -> str:
    env = os.environ.get("CAFFE2_ORT_CUDA_LIB")
    cands = [Path(env)] if env else []
    cands += [ROOT / "build" / "cuda" / "libcaffe2_ort_cuda.so", ROOT / "python" / "caffe2_ort" / "lib" /
              "libcaffe2_ort_cuda.so"]
    for c in cands:
        if c.is_file():
            return str(c)
    pytest.skip("libcaffe2_ort_cuda.so not built (pip install . builds it where nvcc is found)")


from onnx import TensorProto, helper  # noqa: E402

TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
         "bfloat16": TensorProto.BFLOAT16}


def _np_dtype(name):
    return R.bfloat16 if name == "bfloat16" else np.dtype(name)


def _model(nodes, inputs, outputs):
    g = helper.make_graph(nodes, "cuda_ort", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)],
                             ir_version=8).SerializeToString()


def _session(model, provider):
    so = ort.SessionOptions()
    so.register_custom_ops_library(_lib())
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(model, so, providers=providers)
    except Exception as e:  # a GPU-less machine with onnxruntime-gpu installed
        if provider == "CUDAExecutionProvider" and "CUDA" in str(e) and "failure" in str(e).lower():
            pytest.skip(f"CUDA EP unusable here: {e}")
        raise


def _forward_model(t, **attrs):
    node = helper.make_node("Dropout", ["X"], ["Y", "mask"], domain="ai.caffe2", name="d", **attrs)
    return _model([node], [helper.make_tensor_value_info("X", t, None)],
                  [helper.make_tensor_value_info("Y", t, None), helper.make_tensor_value_info("mask", TensorProto.BOOL,
                                                                                            None)])


def _grad_model(t, **attrs):
    node = helper.make_node("DropoutGrad", ["dY", "mask"], ["dX"], domain="ai.caffe2", name="g", **attrs)
    return _model([node], [helper.make_tensor_value_info("dY", t, None),
                           helper.make_tensor_value_info("mask", TensorProto.BOOL, None)],
                  [helper.make_tensor_value_info("dX", t, None)])


def _same(a, b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan = np.isnan(a64)
    return np.array_equal(nan, np.isnan(b64)) and np.array_equal(a.view(np.uint8).reshape(a.size, -1)[~nan.ravel()],
                                                                 b.view(np.uint8).reshape(b.size, -1)[~nan.ravel()])


@pytest.mark.parametrize("name", list(TYPES))
def test_cuda_matches_cpu(name):
    model = _forward_model(TYPES[name], ratio=0.4, seed=1234)
    cpu = _session(model, "CPUExecutionProvider")
    gpu = _session(model, "CUDAExecutionProvider")
    x = np.random.default_rng(1).standard_normal((7, 3, 1001)).astype(_np_dtype(name))
    for _ in range(2):  # the second run draws a fresh mask at the same base on both
        yc, mc = cpu.run(None, {"X": x})
        yg, mg = gpu.run(None, {"X": x})
        assert np.array_equal(mc, mg)
        assert _same(yc, yg)
    gm = _grad_model(TYPES[name], ratio=0.4)
    (dc,) = _session(gm, "CPUExecutionProvider").run(None, {"dY": x, "mask": mc})
    (dg,) = _session(gm, "CUDAExecutionProvider").run(None, {"dY": x, "mask": mc})
    assert _same(dc, dg)


def test_cudnn_engine_mask_is_reserve_space():
    model = _forward_model(TensorProto.FLOAT, ratio=0.3, seed=0, engine="CUDNN")
    gpu = _session(model, "CUDAExecutionProvider")
    x = (np.random.default_rng(2).random((64, 1024)) + 0.5).astype(np.float32)
    y, reserve = gpu.run(None, {"X": x})
    assert reserve.ndim == 1 and reserve.dtype == np.bool_
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.7), rtol=1e-6)
    (dx,) = _session(_grad_model(TensorProto.FLOAT, ratio=0.3, engine="CUDNN"), "CUDAExecutionProvider").run(
        None, {"dY": x, "mask": reserve})
    assert np.array_equal(dx != 0, kept)


def test_cudnn_engine_rejects_bfloat16_at_session_creation():
    with pytest.raises(Exception, match="CUDNN.*bfloat16"):
        so = ort.SessionOptions()
        so.register_custom_ops_library(_lib())
        ort.InferenceSession(_forward_model(TensorProto.BFLOAT16, engine="CUDNN", seed=0), so,
                             providers=["CUDAExecutionProvider"])
