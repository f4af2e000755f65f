"""The per-op registry (caffe2/ops.py): every supported op has its shape rule and ONNX lowering in one
entry, and the converter, the shape pass and the synthesiser all dispatch through it."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_ort.caffe2 import converter, ops, synth
from caffe2_ort.caffe2.errors import UnsupportedOpsError
from caffe2_ort.caffe2.shapes import Info

from caffe2_helpers import make_net, run_ort


def test_every_op_has_shape_and_lowering():
    assert ops.supported_ops() >= {"Conv", "ConvTranspose", "FC", "Relu", "Sigmoid", "Tanh", "LRN", "MaxPool",
                                   "AveragePool", "Softmax", "Concat", "SpatialBN", "Sum", "Add", "Sub", "Mul",
                                   "Div", "Reshape", "Flatten", "Dropout", "DropoutGrad", "Copy"}
    for t, d in ops.REGISTRY.items():
        assert d.shape is not None and d.lower is not None, t
        assert len(d.arity) == 4, t


@pytest.fixture
def scale_op():
    """A made-up op 'TestScale' (Y = X * W, W per channel) defined only through the registry."""
    ops.define("TestScale", (2, 2, 1, 1), weight_slots=(1,), width="keep")

    @ops.shape("TestScale")
    def _shape(op, args, ins, where):
        return [ins[0]]

    @ops.lower("TestScale")
    def _lower(c):
        w = ops.reshape_to(c, c.xin[1], c.ins[1], (1, c.ins[1].shape[0], 1, 1), f"{c.xin[1]}_4d", c.node_name + "_w")
        c.g.node("Mul", [c.xin[0], w], c.xout[:1], c.node_name)

    @ops.synth("TestScale")
    def _synth(w, op, k, args, x, missing, where):
        for _slot, b in missing:
            w.weight(op, k, b, (x.shape[1],), "scale")

    yield
    del ops.REGISTRY["TestScale"]


def test_one_registry_entry_serves_converter_shapes_and_synthesiser(scale_op):
    net = make_net(ops=[("TestScale", ["x", "s"], ["y"]), ("Relu", ["y"], ["z"])], inputs=["x", "s"], outputs=["z"])
    vi = {"x": (np.float32, (2, 3, 4, 4))}
    init, blobs = synth.synthesize(net, vi, seed=1)
    assert blobs["s"].shape == (3,)
    assert ops.infer(net.op[0], [Info(np.dtype(np.float32), (2, 3, 4, 4)), Info(np.dtype(np.float32), (3,))]) == [
        Info(np.dtype(np.float32), (2, 3, 4, 4))]
    conv = converter.convert(net, init, vi)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    got = run_ort(conv.model, {"x": x})["z"]
    np.testing.assert_allclose(got, np.maximum(x * blobs["s"].reshape(1, 3, 1, 1), 0), rtol=1e-6)


def test_unknown_type_is_listed_from_the_registry():
    net = make_net(ops=[("TestScale", ["x", "s"], ["y"])], inputs=["x", "s"], outputs=["y"])
    with pytest.raises(UnsupportedOpsError, match="TestScale"):
        converter.convert(net, None, {"x": (np.float32, (1, 3, 2, 2)), "s": (np.float32, (3,))})
