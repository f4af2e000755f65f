"""The init_net synthesiser: consistent shapes for the zoo nets and for nets whose widths are tied
(residual sums, concatenations, groups), determinism, .pb output, and BN calibration."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_ort.caffe2 import converter, netdef, synth
from caffe2_ort.caffe2.errors import MissingValueInfoError, ShapeError
from caffe2_ort.caffe2.executor import Executor

from caffe2_helpers import ZOO_NETS, make_net, zoo_net

F32 = np.dtype(np.float32)


@pytest.mark.parametrize("name", ZOO_NETS)
def test_zoo_weights_fit(name, tmp_path):
    net, vi = zoo_net(name)
    init, blobs = synth.synthesize(net, vi, seed=3, width=8, fc_width=10)
    reads = {b for op in net.op for b in op.input} - {b for op in net.op for b in op.output} - set(vi)
    assert set(blobs) == reads  # every weight the net reads, nothing else
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in blobs.values())
    netdef.write_netdef(init, tmp_path / "init_net.pb")
    again = netdef.evaluate_init_net(netdef.read_netdef(tmp_path / "init_net.pb"))
    assert again.keys() == blobs.keys() and all(np.array_equal(again[k], blobs[k]) for k in blobs)
    conv = converter.convert(net, init, vi)  # shapes checked op by op
    out = conv.model.graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in out.dim] == [1, 10]


def test_inception_fc_weight_follows_axis_w():
    net, vi = zoo_net("inception_v1")
    _, blobs = synth.synthesize(net, vi, width=8, fc_width=10)
    assert blobs["loss3/classifier_w"].shape == (1, 1, 10, 32)  # axis_w=3; 4 branches x 8 channels


def test_same_seed_same_bytes_other_seed_other_values():
    net, vi = zoo_net("bvlc_alexnet")
    a, _ = synth.synthesize(net, vi, seed=1)
    b, _ = synth.synthesize(net, vi, seed=1)
    c, _ = synth.synthesize(net, vi, seed=2)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    assert a.SerializeToString(deterministic=True) != c.SerializeToString(deterministic=True)


def _conv(x, y, w, **args):
    return ("Conv", [x, w + "_w", w + "_b"], [y], {"kernel": 1, **args})


def test_sum_with_the_data_pins_the_conv_width():
    net = make_net(ops=[_conv("data", "c1", "c1"), ("Relu", ["c1"], ["c1"]), ("Sum", ["c1", "data"], ["s"])],
                   inputs=["data"], outputs=["s"])  # fmt: skip
    _, blobs = synth.synthesize(net, {"data": (F32, (1, 3, 4, 4))}, width=16)
    assert blobs["c1_w"].shape == (3, 3, 1, 1)


def test_sum_with_a_concat_pins_the_later_conv():
    net = make_net(
        ops=[_conv("data", "a", "a"), _conv("data", "b", "b"), ("Concat", ["a", "b"], ["cat", "_info"]),
             _conv("data", "c", "c"), ("Sum", ["c", "cat"], ["s"]), _conv("s", "d", "d", group=4)],
        inputs=["data"], outputs=["d"],
    )  # fmt: skip
    _, blobs = synth.synthesize(net, {"data": (F32, (1, 3, 4, 4))}, width=6)
    assert blobs["c_w"].shape == (12, 3, 1, 1)
    assert blobs["d_w"].shape == (8, 3, 1, 1)  # width 6 rounded up to a multiple of group 4


def test_group_pins_the_width_before_it():
    net = make_net(ops=[_conv("data", "a", "a"), _conv("a", "b", "b", group=4)], inputs=["data"], outputs=["b"])
    _, blobs = synth.synthesize(net, {"data": (F32, (1, 3, 4, 4))}, width=6)
    assert blobs["a_w"].shape == (8, 3, 1, 1) and blobs["b_w"].shape == (8, 2, 1, 1)


def test_unreconcilable_widths():
    net = make_net(ops=[("Sum", ["x", "y"], ["s"])], inputs=["x", "y"], outputs=["s"])
    with pytest.raises(ShapeError, match="neither width is free"):
        synth.synthesize(net, {"x": (F32, (1, 3)), "y": (F32, (1, 4))})
    net = make_net(ops=[_conv("data", "a", "a", group=2)], inputs=["data"], outputs=["a"])
    with pytest.raises(ShapeError, match="3 input channels cannot be split into 2 groups"):
        synth.synthesize(net, {"data": (F32, (1, 3, 4, 4))})


def test_data_input_without_shape():
    net = make_net(ops=[_conv("data", "a", "a")], inputs=["data"], outputs=["a"])
    with pytest.raises(MissingValueInfoError, match="reads 'data'"):
        synth.synthesize(net, {})


def test_broadcast_operands_and_conv_transpose():
    net = make_net(
        ops=[("ConvTranspose", ["data", "up_w", "up_b"], ["u"], {"kernel": 2, "stride": 2}),
             ("Mul", ["u", "scale"], ["m"], {"broadcast": 1, "axis": 1}), ("Add", ["m", "bias"], ["a"], {"broadcast": 1}),
             ("Sub", ["a", "off"], ["o"])],
        inputs=["data"], outputs=["o"],
    )  # fmt: skip
    init, blobs = synth.synthesize(net, {"data": (F32, (1, 3, 4, 4))}, width=5)
    assert blobs["up_w"].shape == (3, 5, 2, 2) and blobs["scale"].shape == (5,)
    assert blobs["bias"].shape == (8,) and blobs["off"].shape == (1, 5, 8, 8)
    converter.convert(net, init, {"data": (F32, (1, 3, 4, 4))})


def test_bn_calibration_normalises_activations():
    net, vi = zoo_net("resnet50")
    _, blobs = synth.synthesize(net, vi, seed=0)
    x = np.random.default_rng(9).standard_normal(vi["gpu_0/data"][1]).astype(np.float32)
    ws = Executor(net, blobs).run({"gpu_0/data": x})
    assert 0.05 < float(np.std(ws["gpu_0/pred"])) < 20
    _, raw = synth.synthesize(net, vi, seed=0, calibrate=False)
    assert not np.array_equal(raw["gpu_0/res_conv1_bn_rm"], blobs["gpu_0/res_conv1_bn_rm"])


def test_unsupported_ops_listed_before_synthesis():
    from caffe2_ort.caffe2.errors import UnsupportedOpsError

    net = make_net(ops=[("Gather", ["x", "i"], ["y"]), ("Gather", ["y", "i"], ["z"])], inputs=["x", "i"], outputs=["z"])
    with pytest.raises(UnsupportedOpsError, match=r"predict_net \(synth-init\) has 2 unsupported op\(s\) of 1 kind\(s\): Gather x2"):
        synth.synthesize(net, {"x": (F32, (2,)), "i": (np.dtype(np.int64), (1,))})
