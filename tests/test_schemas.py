"""ONNX schemas of ai.caffe2 Dropout/DropoutGrad: checker, shape inference, validation, idempotence."""

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

from caffe2_ort import schemas

schemas.register_schemas()

FLOATS = [TP.FLOAT, TP.DOUBLE, TP.FLOAT16, TP.BFLOAT16]


def _model(nodes, inputs, outputs):
    g = h.make_graph(nodes, "g", inputs, outputs)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.caffe2", 1)], ir_version=8)


def _inferred(model):
    m = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {vi.name: vi.type.tensor_type for vi in list(m.graph.value_info) + list(m.graph.output)}


def _dims(tt):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def test_register_twice_is_harmless():
    schemas.register_schemas()
    schemas.register_schemas()
    assert schemas.is_registered()
    s = onnx.defs.get_schema("Dropout", 1, "ai.caffe2")
    assert s.attributes["ratio"].default_value.f == 0.5
    assert s.attributes["is_test"].default_value.i == 0
    assert not s.attributes["seed"].required
    assert [p.name for p in s.outputs] == ["Y", "mask"]
    g = onnx.defs.get_schema("DropoutGrad", 1, "ai.caffe2")
    assert [p.name for p in g.inputs] == ["dY", "mask"] and g.min_input == 1 and g.max_input == 2


@pytest.mark.parametrize("elem", FLOATS)
def test_forward_and_grad_types_and_shapes(elem):
    nodes = [
        h.make_node("Dropout", ["X"], ["Y", "M"], domain="ai.caffe2", ratio=0.25, seed=3),
        h.make_node("DropoutGrad", ["Y", "M"], ["dX"], domain="ai.caffe2", ratio=0.25),
        h.make_node("Dropout", ["X"], ["Z"], domain="ai.caffe2", is_test=1),
        h.make_node("DropoutGrad", ["Z"], ["dZ"], domain="ai.caffe2", is_test=1),
    ]
    m = _model(nodes, [h.make_tensor_value_info("X", elem, ["N", 3, 0])],
               [h.make_tensor_value_info("dX", elem, ["N", 3, 0]), h.make_tensor_value_info("dZ", elem, ["N", 3, 0])])
    onnx.checker.check_model(m, full_check=True)
    t = _inferred(m)
    for name in ("Y", "dX", "Z", "dZ"):
        assert t[name].elem_type == elem and _dims(t[name]) == ["N", 3, 0], name
    assert t["M"].elem_type == TP.BOOL and _dims(t["M"]) == ["N", 3, 0]


def test_rank0_and_cudnn_mask():
    nodes = [h.make_node("Dropout", ["X"], ["Y", "M"], domain="ai.caffe2", engine="CUDNN"),
             h.make_node("Dropout", ["S"], ["T", "SM"], domain="ai.caffe2")]
    m = _model(nodes, [h.make_tensor_value_info("X", TP.FLOAT, [2, 3]), h.make_tensor_value_info("S", TP.DOUBLE, [])],
               [h.make_tensor_value_info("Y", TP.FLOAT, [2, 3]), h.make_tensor_value_info("T", TP.DOUBLE, [])])
    onnx.checker.check_model(m, full_check=True)
    t = _inferred(m)
    assert t["M"].elem_type == TP.BOOL and len(t["M"].shape.dim) == 1 and not t["M"].shape.dim[0].HasField("dim_value")
    assert _dims(t["SM"]) == [] and t["SM"].elem_type == TP.BOOL and _dims(t["T"]) == []


@pytest.mark.parametrize(
    "node, message",
    [
        (h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2", ratio=1.5), "ratio = 1.5 is out of range; valid: 0 <= ratio <= 1"),
        (h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2", ratio=float("nan")), "ratio = nan is out of range"),
        (h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2", engine="MKL"), "engine = 'MKL' is not supported"),
        (h.make_node("DropoutGrad", ["X"], ["Y"], domain="ai.caffe2"), "needs the mask input"),
        (h.make_node("DropoutGrad", ["X", "M"], ["Y"], domain="ai.caffe2"), "mask has 4 elements but dY has 6"),
    ],
)
def test_invalid_nodes_fail_full_check(node, message):
    ins = [h.make_tensor_value_info("X", TP.FLOAT, [2, 3]), h.make_tensor_value_info("M", TP.BOOL, [4])]
    m = _model([node], ins[: len(node.input)], [h.make_tensor_value_info("Y", TP.FLOAT, [2, 3])])
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")):
        onnx.checker.check_model(m, full_check=True)


def test_checker_rejects_wrong_types_and_attributes():
    m = _model([h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2")],
               [h.make_tensor_value_info("X", TP.INT32, [2])], [h.make_tensor_value_info("Y", TP.INT32, [2])])
    with pytest.raises(Exception):
        onnx.checker.check_model(m, full_check=True)
    m = _model([h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2", ratio="half")],
               [h.make_tensor_value_info("X", TP.FLOAT, [2])], [h.make_tensor_value_info("Y", TP.FLOAT, [2])])
    with pytest.raises(Exception):
        onnx.checker.check_model(m, full_check=True)


def test_onnx_reference_importable_after_registration():
    # onnx.reference indexes schemas by op name at import time and refuses a name in two domains.
    code = (
        "from caffe2_ort import schemas; schemas.register_schemas(); "
        "import onnx.reference; from caffe2_ort import reference_ops; print('ok')"
    )
    env_path = str(Path(__file__).resolve().parents[1] / "python")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_deregister_and_register_again():
    schemas.deregister_schemas()
    assert not onnx.defs.has("Dropout", 1, "ai.caffe2")
    schemas.register_schemas()
    assert schemas.is_registered()
