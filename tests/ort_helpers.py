"""Small helpers the tests share: building one-node ai.caffe2 models and running them in ORT."""

from __future__ import annotations

import os
import shutil
import subprocess
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
REPO = Path(__file__).resolve().parents[1]


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


def compile_and_run_cpp(tmp_path, test_source, *sources, flags=("-O3", "-ffp-contract=off"), includes=(), args=(),
                        expect_ok=True):
    """Compiles a C++ test (paths relative to the repository) with ort_ops/ on the include path and runs it
    without CAFFE2_ORT_CPU_ISA (the tests pin their paths themselves); it must exit 0 and, with
    ``expect_ok``, end with "ok". Returns its stdout. The default flags are the library's: -ffp-contract=off
    keeps (x * scale) * m two roundings. No compiler: a failure under CI (the build needs one anyway), else
    a skip."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C++ compiler found (the build needs one anyway)")
        pytest.skip("no C++ compiler found")
    exe = tmp_path / Path(test_source).stem
    subprocess.run([cxx, "-std=c++17", *flags, f"-I{REPO / 'ort_ops'}", *(f"-I{d}" for d in includes),
                    str(REPO / test_source), *(str(REPO / s) for s in sources), "-o", str(exe)],
                   check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "CAFFE2_ORT_CPU_ISA"}
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not expect_ok or out.stdout.strip().endswith("ok"), out.stdout
    return out.stdout
