"""Small helpers the tests share: building one-node ai.caffe2 models and running them in ORT."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import caffe2_ort
from caffe2_ort import reference as R

DTYPES = {
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
}
SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts) -> Path:
    """A path under ../shared; fails under CI=true when missing, else skips saying where it is expected."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared data expected at {p} (the ../shared folder beside the repository)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def make_model(nodes, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "caffe2_ort_test", inputs, outputs)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(caffe2_ort.DOMAIN, 1)],
        ir_version=8,
    )


def dropout_model(dtype="float32", with_mask=True, name="drop", **attrs):
    """X (float32) -> Cast(dtype) -> Dropout -> Cast(float32): outputs Xt (the cast input, exact in
    float32), Y (exact in float32) and optionally mask. The casts let 16-bit types travel as float32."""
    t = DTYPES[dtype]
    outs = ["Yt", "mask"] if with_mask else ["Yt"]
    nodes = [
        helper.make_node("Cast", ["X"], ["Xt"], to=t),
        helper.make_node("Dropout", ["Xt"], outs, domain=caffe2_ort.DOMAIN, name=name, **attrs),
        helper.make_node("Cast", ["Xt"], ["Xf"], to=TensorProto.FLOAT if dtype != "float64" else TensorProto.DOUBLE),
        helper.make_node("Cast", ["Yt"], ["Y"], to=TensorProto.FLOAT if dtype != "float64" else TensorProto.DOUBLE),
    ]
    ft = TensorProto.DOUBLE if dtype == "float64" else TensorProto.FLOAT
    outputs = [helper.make_tensor_value_info("Xf", ft, None), helper.make_tensor_value_info("Y", ft, None)]
    if with_mask:
        outputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, None))
    return make_model(nodes, [helper.make_tensor_value_info("X", ft, None)], outputs)


def plain_dropout_model(dtype=TensorProto.FLOAT, outputs=("Y", "mask"), name="drop", **attrs):
    node = helper.make_node("Dropout", ["X"], list(outputs), domain=caffe2_ort.DOMAIN, name=name, **attrs)
    outs = [helper.make_tensor_value_info(outputs[0], dtype, None)]
    outs += [helper.make_tensor_value_info(o, TensorProto.BOOL, None) for o in outputs[1:] if o]
    return make_model([node], [helper.make_tensor_value_info("X", dtype, None)], outs)


def grad_model(dtype=TensorProto.FLOAT, with_mask=True, name="grad", mask_type=TensorProto.BOOL, **attrs):
    ins = ["dY", "mask"] if with_mask else ["dY"]
    node = helper.make_node("DropoutGrad", ins, ["dX"], domain=caffe2_ort.DOMAIN, name=name, **attrs)
    inputs = [helper.make_tensor_value_info("dY", dtype, None)]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("mask", mask_type, None))
    return make_model([node], inputs, [helper.make_tensor_value_info("dX", dtype, None)])


def session(model, threads=1, **so_settings):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    for k, v in so_settings.items():
        setattr(so, k, v)
    caffe2_ort.register(so)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def np_dtype(name):
    if name == "bfloat16":
        if R.bfloat16 is None:
            pytest.fail("bfloat16 checks need ml_dtypes (a test dependency): pip install ml_dtypes")
        return R.bfloat16
    return np.dtype(name)


def bits(a):
    """The raw bits of a float array, so comparisons are exact (signed zeros and NaN payloads)."""
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def grad_cast_model(dtype="float32", **attrs):
    """dY (float32/float64) -> Cast(dtype) -> DropoutGrad(mask) -> Cast back: outputs dYt and dX, both
    exact in the wide type, so 16-bit types travel as float32."""
    t = DTYPES[dtype]
    ft = TensorProto.DOUBLE if dtype == "float64" else TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["dY"], ["dYt"], to=t),
        helper.make_node("DropoutGrad", ["dYt", "mask"], ["dXt"], domain=caffe2_ort.DOMAIN, name="grad", **attrs),
        helper.make_node("Cast", ["dYt"], ["dYf"], to=ft),
        helper.make_node("Cast", ["dXt"], ["dX"], to=ft),
    ]
    inputs = [helper.make_tensor_value_info("dY", ft, None), helper.make_tensor_value_info("mask", TensorProto.BOOL, None)]
    outputs = [helper.make_tensor_value_info("dYf", ft, None), helper.make_tensor_value_info("dX", ft, None)]
    return make_model(nodes, inputs, outputs)
