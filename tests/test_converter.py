"""The converter: SSA renaming, inputs/initializers and their types, the Dropout mapping (attributes,
seeds, masks, --dropout onnx), op translations checked numerically against the numpy executor, and
one-line errors for unsupported ops, missing weights, missing value info and bad fills."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from caffe2_ort.caffe2 import converter, netdef
from caffe2_ort.caffe2.errors import (
    ArgumentError, Caffe2Error, FillError, MissingValueInfoError, MissingWeightError, ShapeError, UnsupportedOpsError,
)  # fmt: skip
from caffe2_ort.caffe2.executor import Executor

from caffe2_helpers import init_net_of, make_net, max_rel_error, run_ort

F32 = np.dtype(np.float32)


def vi(**shapes):
    return {k: (F32, tuple(v)) for k, v in shapes.items()}


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def check_against_executor(net, blobs, value_info, tol=1e-5, seed=0, **kw):
    conv = converter.convert(net, init_net_of(blobs), value_info, **kw)
    rng = np.random.default_rng(seed)
    feeds = {k: rng.standard_normal(s).astype(dt) for k, (dt, s) in value_info.items()}
    out = run_ort(conv.model, feeds)
    ws = Executor(net, blobs).run(feeds)
    for b in conv.outputs:
        assert out[b].shape == ws[b].shape, (b, out[b].shape, ws[b].shape)
        if ws[b].dtype.kind == "f":
            assert max_rel_error(out[b], ws[b]) <= tol, (b, max_rel_error(out[b], ws[b]))
        else:
            np.testing.assert_array_equal(out[b], ws[b])
    return conv, out, ws


# ---------------------------------------------------------------------------------------------- SSA


def test_ssa_keeps_external_names_and_versions_the_rest():
    net = make_net(
        ops=[("Relu", ["x"], ["x"]), ("Sigmoid", ["x"], ["x"]), ("Tanh", ["x"], ["y"]), ("Relu", ["y"], ["y"])],
        inputs=["x"], outputs=["y"],
    )  # fmt: skip
    conv = converter.convert(net, None, vi(x=[2, 3]))
    nodes = conv.model.graph.node
    assert [list(n.input) for n in nodes] == [["x"], ["x_1"], ["x_2"], ["y_1"]]
    assert [list(n.output) for n in nodes] == [["x_1"], ["x_2"], ["y_1"], ["y"]]
    assert conv.names == {"x": "x_2", "y": "y"}
    assert [i.name for i in conv.model.graph.input] == ["x"] and conv.outputs == ["y"]


def test_ssa_avoids_names_the_net_already_uses():
    net = make_net(
        ops=[("Relu", ["a"], ["a"]), ("Relu", ["a_1"], ["b"]), ("Sum", ["a", "b"], ["c"])],
        inputs=["a", "a_1"], outputs=["c"],
    )  # fmt: skip
    conv = converter.convert(net, None, vi(a=[3], a_1=[3]))
    assert conv.model.graph.node[0].output[0] == "a_1_"
    check_against_executor(net, {}, vi(a=[3], a_1=[3]))


def test_overwriting_an_input_that_is_an_output_is_refused():
    net = make_net(ops=[("Relu", ["x"], ["x"])], inputs=["x"], outputs=["x"])
    with pytest.raises(Caffe2Error, match="'x' is a graph input or weight and an external output"):
        converter.convert(net, None, vi(x=[2]))


# ---------------------------------------------------------------------------------------------- inputs


def test_data_input_stays_an_input_when_init_net_fills_it():
    net = make_net(ops=[("FC", ["data", "w", "b"], ["y"])], inputs=["data", "w", "b"], outputs=["y"])
    init = init_net_of({"data": np.zeros((2, 4), np.float32), "w": np.ones((3, 4), np.float32), "b": np.zeros(3, np.float32)})
    model = converter.convert(net, init, vi(data=[2, 4])).model
    assert [i.name for i in model.graph.input] == ["data"]
    assert sorted(t.name for t in model.graph.initializer) == ["b", "w"]


def test_initializer_types_follow_the_fill_ops():
    kinds = {
        "f": np.arange(2, dtype=np.float32), "d": np.arange(2, dtype=np.float64), "i": np.arange(2, dtype=np.int32),
        "l": np.arange(2, dtype=np.int64), "s": np.arange(2, dtype=np.int16), "b": np.array([True, False]),
        "t": np.array([b"x", b"y"], dtype=object),
    }  # fmt: skip
    net = make_net(ops=[("Copy", [k], [k + "_out"]) for k in kinds], outputs=[k + "_out" for k in kinds])
    model = converter.convert(net, init_net_of(kinds), None).model
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types == {"f": TensorProto.FLOAT, "d": TensorProto.DOUBLE, "i": TensorProto.INT32, "l": TensorProto.INT64,
                     "s": TensorProto.INT16, "b": TensorProto.BOOL, "t": TensorProto.STRING}  # fmt: skip
    out = run_ort(model, {})
    for k, v in kinds.items():
        expected = [x.decode() for x in v] if k == "t" else v  # ORT hands strings back as str
        np.testing.assert_array_equal(out[k + "_out"], expected)


def test_value_info_uses_onnx_type_numbers():
    net = make_net(ops=[("Relu", ["x"], ["y"])], inputs=["x"], outputs=["y"])
    raw = {"x": [11, [2, 2]]}  # 11 = ONNX DOUBLE (Caffe2's 11 is unused, its DOUBLE is 13)
    model = converter.convert(net, None, netdef.parse_value_info(raw)).model
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE


def test_input_shape_override():
    net = make_net(ops=[("Relu", ["x"], ["y"])], inputs=["x"], outputs=["y"])
    model = converter.convert(net, None, vi(x=[2, 2]), input_shapes={"x": [5]}).model
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [5]


def test_model_metadata_and_checker():
    net = make_net(name="", ops=[("Relu", ["x"], ["y"])], inputs=["x"], outputs=["y"])
    model = converter.convert(net, None, vi(x=[2])).model
    assert model.graph.name == "caffe2_net" and model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    onnx.checker.check_model(model, full_check=True)
    model = converter.convert(net, None, vi(x=[2]), name="mine", opset=13, ir_version=7).model
    assert model.graph.name == "mine" and model.ir_version == 7 and model.opset_import[0].version == 13
    with pytest.raises(Caffe2Error, match="opset 11 is not supported"):
        converter.convert(net, None, vi(x=[2]), opset=11)


# ---------------------------------------------------------------------------------------------- errors


def test_unsupported_ops_are_listed_once_with_counts():
    net = make_net(
        ops=[("Relu", ["x"], ["a"]), ("Gather", ["a", "i"], ["b"]), ("Gather", ["b", "i"], ["c"]),
             ("ChannelShuffle", ["c"], ["d"]), ("SpatialBN", ["d", "s", "o", "m", "v"], ["e"], {"is_test": 0})],
        inputs=["x"], outputs=["e"],
    )  # fmt: skip
    with pytest.raises(UnsupportedOpsError) as e:
        converter.convert(net, None, vi(x=[2]))
    msg = str(e.value)
    assert msg == (
        "predict_net has 4 unsupported op(s) of 3 kind(s): ChannelShuffle x1, Gather x2, "
        "SpatialBN(is_test=0, training mode) x1"
    )
    assert e.value.counts["Gather"] == 2


def test_missing_weight():
    net = make_net(ops=[("FC", ["data", "w", "b"], ["y"])], inputs=["data", "w", "b"], outputs=["y"])
    init = init_net_of({"w": np.ones((3, 4), np.float32)})
    with pytest.raises(MissingWeightError) as e:
        converter.convert(net, init, vi(data=[2, 4]))
    assert str(e.value) == "weight 'b' (input 2 of FC op #0): init_net has no fill op for it"
    with pytest.raises(MissingWeightError, match="no init_net was given"):
        converter.convert(net, None, vi(data=[2, 4]))


def test_missing_value_info():
    net = make_net(ops=[("FC", ["data", "w", "b"], ["y"])], inputs=["data", "w", "b"], outputs=["y"])
    init = init_net_of({"w": np.ones((3, 4), np.float32), "b": np.zeros(3, np.float32)})
    with pytest.raises(MissingValueInfoError) as e:
        converter.convert(net, init, None)
    assert str(e.value) == (
        "no value info for input 'data' (input 0 of FC op #0): give --value-info value_info.json or --input NAME:d0,d1,..."
    )


def test_fill_count_mismatch_through_convert():
    net = make_net(ops=[("Relu", ["w"], ["y"])], outputs=["y"])
    init = init_net_of({"w": np.ones((2, 2), np.float32)})
    init.op[0].arg[0].ints[:] = [2, 3]
    with pytest.raises(FillError, match=r"init_net op #0 GivenTensorFill for 'w': shape \[2, 3\] needs 6 values, the op has 4"):
        converter.convert(net, init, None)


def test_inconsistent_shapes_name_the_op():
    net = make_net(ops=[("FC", ["data", "w", "b"], ["y"])], inputs=["data"], outputs=["y"])
    init = init_net_of({"w": np.ones((3, 5), np.float32), "b": np.zeros(3, np.float32)})
    with pytest.raises(ShapeError, match=r"FC op #0: input \[2, 4\] at axis 1 has 4 features"):
        converter.convert(net, init, vi(data=[2, 4]))


# ---------------------------------------------------------------------------------------------- Dropout


def _dropout_net(seed_on_op=None, net_seed=None, op_device_option=False, engine=None, is_test=0, mask=True):
    net = make_net(ops=[("Dropout", ["x"], ["x", "_x_mask"] if mask else ["x"], {"ratio": 0.2, "is_test": is_test})],
                   inputs=["x"], outputs=["x"])  # fmt: skip
    op = net.op[0]
    if op_device_option:
        op.device_option.device_type = 0
    if seed_on_op is not None:
        op.device_option.random_seed = seed_on_op
    if net_seed is not None:
        net.device_option.random_seed = net_seed
    if engine is not None:
        op.engine = engine
    net.external_input[:] = ["d"]
    net.op[0].input[0] = "d"
    return net


@pytest.mark.parametrize(
    "kw, expected",
    [
        (dict(), {}),
        (dict(seed_on_op=5), {"seed": 5}),
        (dict(net_seed=9), {"seed": 9}),
        (dict(seed_on_op=5, net_seed=9), {"seed": 5}),
        (dict(op_device_option=True, net_seed=9), {}),  # Caffe2 copies the net's option only to ops without one
        (dict(engine="CUDNN"), {"seed": 0, "engine": "CUDNN"}),
        (dict(engine="CUDNN", net_seed=4), {"seed": 4, "engine": "CUDNN"}),
        (dict(engine="DEFAULT", seed_on_op=3), {"seed": 3, "engine": "DEFAULT"}),
    ],
)
def test_dropout_attributes(kw, expected):
    model = converter.convert(_dropout_net(**kw), None, vi(d=[3, 4])).model
    (node,) = model.graph.node
    assert node.domain == "ai.caffe2" and node.op_type == "Dropout"
    a = attrs(node)
    assert a.pop("is_test") == 0 and abs(a.pop("ratio") - 0.2) < 1e-7
    assert a == {k: (v.encode() if isinstance(v, str) else v) for k, v in expected.items()}
    assert list(node.output) == ["x", "_x_mask"]


def test_dropout_mask_output_is_kept_but_not_a_graph_output():
    model = converter.convert(_dropout_net(is_test=1, seed_on_op=1), None, vi(d=[3, 4])).model
    assert list(model.graph.node[0].output) == ["x", "_x_mask"]
    assert [o.name for o in model.graph.output] == ["x"]


def test_dropout_onnx_lowering():
    model = converter.convert(_dropout_net(seed_on_op=5, is_test=1), None, vi(d=[3, 4]), dropout="onnx").model
    (node,) = model.graph.node
    assert node.domain == "" and node.op_type == "Dropout" and attrs(node) == {"seed": 5}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    ratio, training = (inits[n] for n in node.input[1:])
    assert ratio.dtype == np.float32 and abs(float(ratio) - 0.2) < 1e-7 and training.dtype == bool and not training
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(model, {"d": x})["x"], x)


def test_dropout_grad_onnx_lowering_and_training_model():
    net = make_net(
        ops=[("Dropout", ["x"], ["y", "m"], {"ratio": 0.5, "is_test": 0}),
             ("DropoutGrad", ["dy", "m"], ["dx"], {"ratio": 0.5, "is_test": 0})],
        inputs=["x", "dy"], outputs=["y", "m", "dx"],
    )  # fmt: skip
    net.op[0].device_option.random_seed = 42
    conv, out, ws = check_against_executor(net, {}, vi(x=[64], dy=[64]))  # ai.caffe2: bit-exact masks
    assert [n.op_type for n in conv.model.graph.node] == ["Dropout", "DropoutGrad"]
    assert attrs(conv.model.graph.node[1]) == {"ratio": 0.5, "is_test": 0}
    low = converter.convert(net, None, vi(x=[64], dy=[64]), dropout="onnx").model
    assert [n.op_type for n in low.graph.node] == ["Dropout", "Cast", "Mul", "Mul"]
    x, dy = np.ones(64, np.float32), np.arange(64, dtype=np.float32)
    o = run_ort(low, {"x": x, "dy": dy})
    np.testing.assert_array_equal(o["dx"], (dy * o["m"]) * np.float32(2.0))


# ---------------------------------------------------------------------------------------------- op translations vs the executor


CONV_CASES = [
    dict(kernel=3),
    dict(kernel=3, stride=2, pad=1),
    dict(kernels=[3, 1], strides=[1, 2], pads=[1, 0, 2, 0]),
    dict(kernel_h=3, kernel_w=2, stride_h=2, stride_w=1, pad_t=1, pad_l=0, pad_b=0, pad_r=1),
    dict(kernel=3, dilation=2, pad=2),
    dict(kernel=3, group=2, pad=1),
    dict(kernel=3, stride=2, legacy_pad=1),
    dict(kernel=3, stride=2, legacy_pad=2),
    dict(kernel=4, stride=3, legacy_pad=2),
]


@pytest.mark.parametrize("args", CONV_CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_conv(args):
    g = args.get("group", 1)
    kh, kw = (args["kernels"] if "kernels" in args else [args.get("kernel_h", args.get("kernel")), args.get("kernel_w", args.get("kernel"))])
    rng = np.random.default_rng(1)
    blobs = {"w": rng.standard_normal((6, 4 // g, kh, kw)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32)}
    net = make_net(ops=[("Conv", ["x", "w", "b"], ["y"], args)], inputs=["x", "w", "b"], outputs=["y"])
    check_against_executor(net, blobs, vi(x=[2, 4, 9, 8]))


POOL_CASES = [
    ("MaxPool", dict(kernel=3, stride=2)),
    ("MaxPool", dict(kernel=3, stride=2, pad=1)),
    ("MaxPool", dict(kernel=3, stride=2, legacy_pad=3)),
    ("MaxPool", dict(kernel=3, stride=2, pad=1, legacy_pad=3)),
    ("MaxPool", dict(kernel=2, stride=2, legacy_pad=2)),
    ("AveragePool", dict(kernel=3, stride=2, pad=1)),
    ("AveragePool", dict(kernel=3, stride=2, pad=1, legacy_pad=3)),
    ("AveragePool", dict(kernel=3, stride=1, pad=1, count_include_pad=1)),
    ("AveragePool", dict(kernel=7, stride=1, pad_t=0, pad_l=0, pad_b=1, pad_r=1)),
    ("AveragePool", dict(kernels=[2, 3], strides=[1, 2], legacy_pad=1)),
    ("AveragePool", dict(global_pooling=1, kernel=3)),
    ("MaxPool", dict(global_pooling=1)),
]


@pytest.mark.parametrize("op_type, args", POOL_CASES, ids=lambda a: str(a))
def test_pool(op_type, args):
    net = make_net(ops=[(op_type, ["x"], ["y"], args)], inputs=["x"], outputs=["y"])
    check_against_executor(net, {}, vi(x=[1, 3, 10, 9]))


def test_caffe_legacy_pooling_sizes():
    net = make_net(ops=[("MaxPool", ["x"], ["y"], dict(kernel=3, stride=2, legacy_pad=3))], inputs=["x"], outputs=["y"])
    conv = converter.convert(net, None, vi(x=[1, 1, 112, 112]))
    out = conv.model.graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in out.dim] == [1, 1, 56, 56]  # Caffe's ceil sizing; floor would give 55
    assert any("CAFFE_LEGACY_POOLING" in n for n in conv.notes)


def test_fc_axis_and_axis_w():
    rng = np.random.default_rng(2)
    blobs = {"w": rng.standard_normal((1, 1, 5, 12)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    net = make_net(ops=[("FC", ["x", "w", "b"], ["y"], {"axis_w": 3, "axis": 2})], inputs=["x"], outputs=["y"])
    conv, out, ws = check_against_executor(net, blobs, vi(x=[2, 3, 3, 4]))
    assert out["y"].shape == (2, 3, 5)
    names = [t.name for t in conv.model.graph.initializer]
    assert "w_5x12" in names and "w" not in names  # the weight flattened at axis_w at conversion time


def test_binary_legacy_broadcast():
    rng = np.random.default_rng(3)
    blobs = {"c": rng.uniform(1, 2, (3,)).astype(np.float32), "s": rng.standard_normal((4, 5)).astype(np.float32),
             "t": rng.uniform(1, 2, (1, 3, 4, 1)).astype(np.float32)}  # fmt: skip
    net = make_net(
        ops=[("Mul", ["x", "c"], ["a"], {"broadcast": 1, "axis": 1}), ("Add", ["a", "s"], ["b"], {"broadcast": 1}),
             ("Div", ["b", "t"], ["c2"], {"broadcast": 1, "axis": 0}), ("Sub", ["c2", "x"], ["d"]),
             ("Add", ["d", "x2"], ["e"])],
        inputs=["x", "x2"], outputs=["e"],
    )  # fmt: skip
    check_against_executor(net, blobs, vi(x=[2, 3, 4, 5], x2=[4, 5]))
    bad = make_net(ops=[("Mul", ["x", "c"], ["a"], {"broadcast": 1, "axis": 2})], inputs=["x"], outputs=["a"])
    with pytest.raises(ShapeError, match="broadcast dimension mismatch"):
        converter.convert(bad, init_net_of(blobs), vi(x=[2, 3, 4, 5]))


def test_reshape_flatten_softmax_concat_lrn_spatialbn_sum():
    rng = np.random.default_rng(4)
    blobs = {k: rng.uniform(0.5, 1.5, 3).astype(np.float32) for k in ("s", "o", "m", "v")}
    net = make_net(
        ops=[("SpatialBN", ["x", "s", "o", "m", "v"], ["bn"], {"is_test": 1, "epsilon": 1e-3}),
             ("LRN", ["bn"], ["lrn", "_lrn_scale"], {"size": 3, "alpha": 0.01, "beta": 0.75, "bias": 1.5}),
             ("Sum", ["bn", "lrn", "x"], ["sum"]),
             ("Concat", ["sum", "x"], ["cat", "cat_info"], {"axis": 1}),
             ("Concat", ["sum", "x"], ["st", "st_info"], {"axis": 2, "add_axis": 1}),
             ("Reshape", ["cat"], ["r", "r_old"], {"shape": [0, -1, 4]}),
             ("Softmax", ["r"], ["sm"], {"axis": 1}),
             ("Softmax", ["r"], ["sm2"], {"axis": -1}),
             ("Flatten", ["st"], ["fl"], {"axis": 3})],
        inputs=["x"], outputs=["sm", "sm2", "r_old", "fl", "cat_info", "st_info"],
    )  # fmt: skip
    conv, out, ws = check_against_executor(net, blobs, vi(x=[2, 3, 4, 4]))
    assert out["cat_info"].tolist() == [3, 3] and out["st_info"].tolist() == [1, 1]
    assert out["r_old"].tolist() == [2, 6, 4, 4] and out["sm"].shape == (2, 24, 4)
    np.testing.assert_allclose(out["sm"].reshape(2, -1).sum(axis=1), 1, rtol=1e-5)  # coerced to 2-D at axis 1
    assert conv.model.graph.node[1].op_type == "LRN" and len(conv.model.graph.node[1].output) == 1


def test_lrn_scale_output_in_use_is_unsupported():
    net = make_net(ops=[("LRN", ["x"], ["y", "scale"], {"size": 3})], inputs=["x"], outputs=["y", "scale"])
    with pytest.raises(UnsupportedOpsError, match=r"LRN\(scale output used\) x1"):
        converter.convert(net, None, vi(x=[1, 3, 2, 2]))


def test_conv_transpose():
    rng = np.random.default_rng(5)
    blobs = {"w": rng.standard_normal((4, 3, 3, 2)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32)}
    net = make_net(
        ops=[("ConvTranspose", ["x", "w", "b"], ["y"], {"kernels": [3, 2], "strides": [2, 3], "pads": [1, 0, 0, 1],
                                                        "adjs": [1, 0], "group": 2})],
        inputs=["x"], outputs=["y"],
    )  # fmt: skip
    conv, out, ws = check_against_executor(net, blobs, vi(x=[1, 4, 3, 4]))
    assert out["y"].shape == (1, 6, (3 - 1) * 2 + 3 + 1 - 1, (4 - 1) * 3 + 2 - 1)


@pytest.mark.parametrize("is_test", [0, 1])
@pytest.mark.parametrize("dropout", ["caffe2", "onnx"])
def test_dropout_ratio_one_converts_to_a_runnable_model(is_test, dropout):
    """ratio = 1 is legal Caffe2; ONNX Dropout refuses it, so the onnx lowering must not emit it."""
    net = make_net(ops=[("Dropout", ["x"], ["y", "m"], {"ratio": 1.0, "is_test": is_test})],
                   inputs=["x"], outputs=["y", "m"])  # fmt: skip
    x = np.array([-1.0, 2.0, np.inf, np.nan, -0.0, 3.5, -7.0, 0.25], np.float32)
    model = converter.convert(net, None, vi(x=[8]), dropout=dropout).model
    o = run_ort(model, {"x": x})
    ws = Executor(net, {}).run({"x": x})
    np.testing.assert_array_equal(o["m"], ws["m"])
    assert o["m"].all() if is_test else not o["m"].any()
    nan = np.isnan(ws["y"])
    assert np.array_equal(np.isnan(o["y"]), nan)
    assert np.array_equal(o["y"][~nan].view(np.uint32), ws["y"][~nan].view(np.uint32))  # signed zeros too


# ----------------------------------------------------------------------------------------------
# hostile input (issue 14): converter checks, in-process


def test_lrn_with_caffe2_defaults_runs_in_ort_and_matches_the_executor():
    x = np.random.default_rng(3).standard_normal((1, 5, 3, 3)).astype(np.float32)
    for args, node in [({"size": 3}, "Identity"), ({"size": 3, "beta": 0.75, "bias": 2.0}, "Mul"),
                       ({"size": 3, "alpha": 1e-3, "beta": 0.75}, "LRN")]:  # fmt: skip
        net = make_net(ops=[("LRN", ["x"], ["y"], args)], inputs=["x"], outputs=["y"])
        conv = converter.convert(net, value_info={"x": (np.float32, x.shape)})
        assert [n.op_type for n in conv.model.graph.node] == [node]
        got = run_ort(conv.model, {"x": x})["y"]
        ref = Executor(net).run({"x": x})["y"]
        assert max_rel_error(got, ref) < 1e-6, args
    net = make_net(ops=[("LRN", ["x"], ["y"], {"size": 3, "alpha": 1e-3, "beta": -1.0})], inputs=["x"], outputs=["y"])
    with pytest.raises(ArgumentError, match=r"LRN op #0: LRN alpha 0.001, beta -1, bias 1: ONNX Runtime's LRN needs alpha > 0"):
        converter.convert(net, value_info={"x": (np.float32, x.shape)})


def test_op_arity_group_and_kernel_checks():
    vi = {"x": (np.float32, (1, 2, 4, 4))}
    w = {"w": np.ones((2, 2, 1, 1), np.float32), "b": np.zeros(2, np.float32)}
    cases = [
        (("Dropout", ["x"], ["y", "m", "z"]), r"Dropout op #0: 3 output\(s\); Caffe2's Dropout has 1 to 2"),
        (("Relu", ["x", "x"], ["y"]), r"Relu op #0: 2 input\(s\); Caffe2's Relu takes 1"),
        (("Conv", ["x", "w", "b"], ["y"], {"kernel": 1, "group": 0}), r"group must be at least 1, got 0"),
        (("Conv", ["x", "w", "b"], ["y"], {"kernel": 0}), r"kernel sizes must be positive, got \[0, 0\]"),
    ]
    for spec, message in cases:
        net = make_net(ops=[spec], inputs=["x"], outputs=["y"])
        with pytest.raises(Caffe2Error, match=message):
            converter.convert(net, value_info=vi, init_blobs=w)


def test_intermediate_blobs_must_fit_the_budget_and_ir_version_is_checked():
    from caffe2_ort.caffe2.limits import SizeLimitError

    net = make_net(ops=[("Conv", ["x", "w", "b"], ["y"], {"kernel": 1, "pad": 2**40})], inputs=["x"], outputs=["y"])
    blobs = {"w": np.ones((2, 1, 1, 1), np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(SizeLimitError, match=r"Conv op #0: output 'y': shape \[1, 2, 2199023255554, 2199023255554\] float32 is"):
        converter.convert(net, value_info={"x": (np.float32, (1, 1, 2, 2))}, init_blobs=blobs)
    net = make_net(ops=[("Relu", ["x"], ["y"])], inputs=["x"], outputs=["y"])
    for bad in (2**64, 0, 99):
        with pytest.raises(Caffe2Error, match=rf"ir_version {bad} is not supported"):
            converter.convert(net, value_info={"x": (np.float32, (2,))}, ir_version=bad)
    with pytest.raises(SizeLimitError, match=r"input 'x': shape \[1024\] float32 is 4 KiB, over the 1 KiB limit"):
        converter.convert(net, value_info={"x": (np.float32, (1024,))}, budget=1024)
