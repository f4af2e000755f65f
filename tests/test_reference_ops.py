"""onnx.reference ops of ai.caffe2: the numpy reference bit for bit, per-node counters, agreement with ORT."""

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import caffe2_ort
from caffe2_ort import reference as R
from caffe2_ort import reference_ops as ro
from caffe2_ort.schemas import register_schemas
from ort_helpers import session as _ort_helpers_session

register_schemas()

DTYPES = [(np.float32, TP.FLOAT), (np.float64, TP.DOUBLE), (np.float16, TP.FLOAT16), (R.bfloat16, TP.BFLOAT16)]


def _model(nodes, inputs, outputs):
    g = h.make_graph(nodes, "g", inputs, outputs)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.caffe2", 1)], ir_version=8)


def _ort_session(model):
    return _ort_helpers_session(model)


def _fwd_bwd_model(et, shape, ratio, is_test=0, seed=11, io_float32=False):
    """Dropout (with mask) -> DropoutGrad, and a second maskless Dropout. ``io_float32``: the graph's
    inputs and outputs are float32 with Casts around the ops (onnxruntime's Python API cannot feed
    bfloat16 numpy arrays)."""
    x, outs = ("Xc", ["Yc", "M", "dXc", "Zc"]) if io_float32 else ("X", ["Y", "M", "dX", "Z"])
    nodes = [
        h.make_node("Dropout", [x], outs[:2], domain="ai.caffe2", ratio=ratio, is_test=is_test, seed=seed, name="d1"),
        h.make_node("DropoutGrad", [x, "M"], [outs[2]], domain="ai.caffe2", ratio=ratio, is_test=is_test),
        h.make_node("Dropout", [x], [outs[3]], domain="ai.caffe2", ratio=ratio, is_test=is_test, seed=seed + 1, name="d2"),
    ]
    io_et = et
    if io_float32:
        io_et = TP.FLOAT
        nodes.insert(0, h.make_node("Cast", ["X"], ["Xc"], to=et))
        nodes += [h.make_node("Cast", [c], [c[:-1]], to=TP.FLOAT) for c in ("Yc", "dXc", "Zc")]
    return _model(nodes, [h.make_tensor_value_info("X", io_et, shape)],
                  [h.make_tensor_value_info(n, t, shape) for n, t in (("Y", io_et), ("M", TP.BOOL), ("dX", io_et), ("Z", io_et))])


def _x(dt, shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(dt)


@pytest.mark.parametrize("dt, et", DTYPES)
def test_matches_numpy_reference_over_runs(dt, et):
    shape = (3, 7)
    ref = ro.evaluator(_fwd_bwd_model(et, shape, 0.4))
    x = _x(dt, shape)
    for run in range(3):
        y, m, dx, z = ref.run(None, {"X": x})
        ey, em = R.dropout(x, 0.4, 0, 11, base=run * R.blocks_for(x.size))
        assert np.array_equal(m, em) and y.tobytes() == ey.tobytes() and y.dtype == dt
        assert dx.tobytes() == R.dropout_grad(x, em, 0.4).tobytes()
        assert z.tobytes() == R.dropout(x, 0.4, 0, 12, base=run * R.blocks_for(x.size))[0].tobytes()
    counters = {k: n.counter for k, n in ro.dropout_nodes(ref).items()}
    assert counters == {"d1": 3 * R.blocks_for(21), "d2": 3 * R.blocks_for(21)}


@pytest.mark.parametrize("ratio, is_test", [(0.0, 0), (0.5, 1), (1.0, 0)])
def test_edge_modes(ratio, is_test):
    ref = ro.evaluator(_fwd_bwd_model(TP.FLOAT, [5], ratio, is_test))
    x = _x(np.float32, (5,))
    y, m, dx, _ = ref.run(None, {"X": x})
    if ratio == 1.0:
        assert not m.any() and not y.any()
    else:
        assert m.all() and np.array_equal(y, x) and np.array_equal(dx, x)
    consumed = ro.dropout_nodes(ref)["d1"].counter
    assert consumed == (0 if ratio == 0.0 or is_test else 2)


def test_seedless_nodes_get_random_seeds():
    m = _model([h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2")],
               [h.make_tensor_value_info("X", TP.FLOAT, [256])], [h.make_tensor_value_info("Y", TP.FLOAT, [256])])
    x = np.ones(256, np.float32)
    a, b = ro.evaluator(m).run(None, {"X": x})[0], ro.evaluator(m).run(None, {"X": x})[0]
    assert not np.array_equal(a, b)


def test_invalid_attributes_fail_at_construction():
    for kw, msg in (({"ratio": 2.0}, "ratio"), ({"engine": "X"}, "engine")):
        m = _model([h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2", name="bad", **kw)],
                   [h.make_tensor_value_info("X", TP.FLOAT, [2])], [h.make_tensor_value_info("Y", TP.FLOAT, [2])])
        with pytest.raises(Exception, match=msg):
            ro.evaluator(m)


def test_dropout_grad_mask_count_mismatch():
    m = _model([h.make_node("DropoutGrad", ["dY", "M"], ["dX"], domain="ai.caffe2")],
               [h.make_tensor_value_info("dY", TP.FLOAT, [2, 3]), h.make_tensor_value_info("M", TP.BOOL, [5])],
               [h.make_tensor_value_info("dX", TP.FLOAT, [2, 3])])
    with pytest.raises(Exception, match="5 elements but dY has 6"):
        ro.evaluator(m).run(None, {"dY": np.ones((2, 3), np.float32), "M": np.ones(5, bool)})


@pytest.mark.parametrize("dt, et", DTYPES)
@pytest.mark.parametrize("ratio, is_test", [(0.3, 0), (0.0, 0), (0.7, 1), (1.0, 0)])
def test_agrees_with_ort_bit_for_bit(dt, et, ratio, is_test):
    shape = (4, 33)
    bf16 = et == TP.BFLOAT16
    model = _fwd_bwd_model(et, shape, ratio, is_test, io_float32=bf16)
    sess, ref = _ort_session(model), ro.evaluator(model)
    x = _x(dt, shape, seed=3).astype(np.float32 if bf16 else dt)
    for _run in range(3):
        for a, b in zip(sess.run(None, {"X": x}), ref.run(None, {"X": x})):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
