"""Graph helpers: add_dropout, inference/training forms, fixed masks, ONNX Dropout conversion, backward graphs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import caffe2_ort
from caffe2_ort import graph as G
from caffe2_ort import reference as R
from caffe2_ort import reference_ops as ro
from caffe2_ort.schemas import register_schemas
from ort_helpers import session as _ort_helpers_session

register_schemas()


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=8)


def _session(model):
    return _ort_helpers_session(model)


def _relu_model(et=TP.FLOAT):
    return _model([h.make_node("Relu", ["X"], ["A"]), h.make_node("Neg", ["A"], ["Out"])],
                  [h.make_tensor_value_info("X", et, ["N", 8])], [h.make_tensor_value_info("Out", et, ["N", 8])])


def test_add_dropout_inference_and_training():
    m = _relu_model()
    y, mask = G.add_dropout(m, "A", ratio=0.2, seed=4)
    assert mask is None and [n.op_type for n in m.graph.node] == ["Relu", "Dropout", "Neg"]
    assert m.graph.node[2].input[0] == y and G._attrs(m.graph.node[1])["is_test"] == 1
    onnx.checker.check_model(m, full_check=True)
    t = _relu_model()
    y, mask = G.add_dropout(t, "A", training=True, ratio=0.2, seed=4)
    assert mask == f"{y}_mask" and t.graph.output[-1].name == mask
    assert t.graph.output[-1].type.tensor_type.elem_type == TP.BOOL
    onnx.checker.check_model(t, full_check=True)
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    out, m_out = _session(t).run(None, {"X": x})
    ey, em = R.dropout(np.maximum(x, 0), 0.2, 0, 4)
    assert np.array_equal(m_out, em) and np.array_equal(out, -ey)
    assert np.array_equal(_session(m).run(None, {"X": x})[0], -np.maximum(x, 0))


def test_inference_training_and_mc_forms():
    m = _relu_model()
    G.add_dropout(m, "A", training=True, seed=1)
    inf = G.to_inference(m)
    d = G.dropout_nodes(inf)[0]
    assert G._attrs(d)["is_test"] == 1 and len(d.output) == 1 and len(inf.graph.output) == 1
    tr = G.to_training(inf)
    d = G.dropout_nodes(tr)[0]
    assert G._attrs(d)["is_test"] == 0 and len(d.output) == 2 and tr.graph.output[-1].name == d.output[1]
    onnx.checker.check_model(tr, full_check=True)
    mc = G.mc_dropout(inf)
    d = G.dropout_nodes(mc)[0]
    assert G._attrs(d)["is_test"] == 0 and len(d.output) == 1
    x = np.ones((2, 8), np.float32)
    sess = _session(mc)
    a, b = sess.run(None, {"X": x})[0], sess.run(None, {"X": x})[0]
    assert not np.array_equal(a, b)  # fresh masks per run
    # DropoutGrad follows to_inference into test form
    bw = G.build_training_model(_with_head(m), "loss", ["W"], wrt_inputs=["X"])
    inf_bw = G.to_inference(bw)
    grads = [n for n in inf_bw.graph.node if n.op_type == "DropoutGrad"]
    assert len(grads[0].input) == 1 and G._attrs(grads[0])["is_test"] == 1


def _with_head(m, classes=3):
    """Append Gemm(W) + SoftmaxCrossEntropyLoss on the model's single output."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    g = m.graph
    out = g.output[0]
    et = out.type.tensor_type.elem_type
    width = out.type.tensor_type.shape.dim[1].dim_value
    w = np.random.default_rng(1).normal(size=(width, classes)).astype(helper_dtype(et))
    g.initializer.append(nh.from_array(w, "W"))
    g.node.extend([h.make_node("Gemm", [out.name, "W"], ["logits"]),
                   h.make_node("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["loss"])])
    g.input.append(h.make_tensor_value_info("labels", TP.INT64, ["N"]))
    del g.output[:]
    g.output.append(h.make_tensor_value_info("loss", et, []))
    return m


def helper_dtype(et):
    return h.tensor_dtype_to_np_dtype(et)


@pytest.mark.parametrize("et", [TP.FLOAT, TP.DOUBLE, TP.FLOAT16])
def test_with_fixed_masks_is_bit_exact(et):
    dt = helper_dtype(et)
    m = _model([h.make_node("Dropout", ["X"], ["Y", "M"], domain="ai.caffe2", ratio=0.35, seed=8)],
               [h.make_tensor_value_info("X", et, [4, 9])],
               [h.make_tensor_value_info("Y", et, [4, 9]), h.make_tensor_value_info("M", TP.BOOL, [4, 9])])
    G.ensure_opset(m)
    x = np.random.default_rng(2).normal(size=(4, 9)).astype(dt)
    y, mask = _session(m).run(None, {"X": x})
    fixed = G.with_fixed_masks(m)
    assert "M" in [i.name for i in fixed.graph.input] and not any(n.domain for n in fixed.graph.node)
    (y2,) = _session(fixed).run(None, {"X": x, "M": mask})
    assert y2.tobytes() == y.tobytes()


def test_to_onnx_dropout_and_back():
    m = _model([h.make_node("Dropout", ["X"], ["Y", "M"], domain="ai.caffe2", ratio=0.25, is_test=1, seed=5, name="d"),
                h.make_node("DropoutGrad", ["Y", "M"], ["dX"], domain="ai.caffe2", ratio=0.25, is_test=0),
                h.make_node("Dropout", ["X"], ["Z"], domain="ai.caffe2", ratio=1.0, name="all")],
               [h.make_tensor_value_info("X", TP.FLOAT, [3, 4])],
               [h.make_tensor_value_info(n, t, [3, 4]) for n, t in (("Y", TP.FLOAT), ("M", TP.BOOL), ("dX", TP.FLOAT), ("Z", TP.FLOAT))])
    G.ensure_opset(m)
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    native = _session(m).run(None, {"X": x})
    with pytest.warns(UserWarning, match="seed"):
        std, report = G.to_onnx_dropout(m)
    assert report.converted == ["d", "dX"] and report.skipped[0][0] == "all" and "ratio = 1" in report.skipped[0][1]
    assert any("engine" not in s and "generator" in s for s in report.lost)
    assert [n for n in std.graph.node if n.op_type == "Dropout" and not n.domain][0].attribute[0].i == 5
    converted = _session(std).run(None, {"X": x})
    for a, b in zip(native, converted):
        assert a.tobytes() == b.tobytes()  # test mode: exact; DropoutGrad lowered exactly
    back, rep2 = G.from_onnx_dropout(std, warn=False)
    d = [n for n in back.graph.node if n.op_type == "Dropout" and n.domain == "ai.caffe2" and n.name == "d"][0]
    a = G._attrs(d)
    assert abs(a["ratio"] - 0.25) < 1e-7 and a["is_test"] == 1 and a["seed"] == 5
    assert not [t for t in back.graph.initializer if t.name.startswith("d_")]  # ratio/training_mode removed
    onnx.checker.check_model(back, full_check=True)


def test_from_onnx_dropout_training_and_runtime_inputs():
    inits = [nh.from_array(np.array(0.4, np.float32), "r"), nh.from_array(np.array(True), "t")]
    m = _model([h.make_node("Dropout", ["X", "r", "t"], ["Y", "M"]), h.make_node("Dropout", ["Y", "rr"], ["Z"])],
               [h.make_tensor_value_info("X", TP.FLOAT, [2, 8]), h.make_tensor_value_info("rr", TP.FLOAT, [])],
               [h.make_tensor_value_info("Z", TP.FLOAT, [2, 8]), h.make_tensor_value_info("M", TP.BOOL, [2, 8])], inits)
    conv, report = G.from_onnx_dropout(m, seed=100, warn=False)
    assert len(report.converted) == 1 and "run time" in report.skipped[0][1]
    d = G.dropout_nodes(conv)[0]
    assert G._attrs(d)["is_test"] == 0 and G._attrs(d)["seed"] == 100 and list(d.output) == ["Y", "M"]
    x = np.ones((2, 8), np.float32)
    z, mask = _session(conv).run(None, {"X": x, "rr": np.array(0.0, np.float32)})
    assert np.array_equal(mask, R.keep_mask(100, 0, (2, 8), 0.4))


# ---- backward graphs: finite differences (Caffe2's gradient check: step 0.05, threshold 0.005) -----------

def _fd_check(model, params, feeds, run, step=0.05, threshold=0.005):
    """Central differences of ``loss`` against the ``<p>_grad`` outputs, in float64."""
    names = [o.name for o in model.graph.output]
    out = dict(zip(names, run({**feeds, **params})))
    for p, v in params.items():
        for idx in np.ndindex(v.shape):
            plus, minus = v.copy(), v.copy()
            plus[idx] += step
            minus[idx] -= step
            lp = run({**feeds, **params, p: plus})[0]
            lm = run({**feeds, **params, p: minus})[0]
            est = (lp - lm) / (2 * step)
            got = out[f"{p}_grad"][idx]
            assert np.isclose(got, est, atol=threshold, rtol=threshold), (p, idx, got, est)
    return out


def _head_model(nodes, inputs, inits, scores):
    nodes = nodes + [h.make_node("SoftmaxCrossEntropyLoss", [scores, "labels"], ["loss"])]
    ins = inputs + [h.make_tensor_value_info("labels", TP.INT64, ["N"])]
    return _model(nodes, ins, [h.make_tensor_value_info("loss", TP.DOUBLE, [])],
                  [nh.from_array(v, k) for k, v in inits.items()])


RNG = np.random.default_rng(7)
X3 = RNG.normal(size=(3, 4))
LABELS = np.array([0, 2, 1])

CASES = {
    "gemm": ([h.make_node("Gemm", ["X", "W", "c"], ["S"], alpha=0.7, beta=1.5)],
             {"W": RNG.normal(size=(4, 3)), "c": RNG.normal(size=(3,))}),
    "gemm_tA_tB": ([h.make_node("Transpose", ["X"], ["XT"]),
                    h.make_node("Gemm", ["XT", "W", "c"], ["S"], transA=1, transB=1)],
                   {"W": RNG.normal(size=(3, 4)), "c": RNG.normal(size=(1, 3))}),
    "gemm_tA": ([h.make_node("Transpose", ["X"], ["XT"]), h.make_node("Gemm", ["XT", "W"], ["S"], transA=1)],
                {"W": RNG.normal(size=(4, 3))}),
    "matmul_add": ([h.make_node("MatMul", ["X", "W"], ["P"]), h.make_node("Add", ["P", "c"], ["S"])],
                   {"W": RNG.normal(size=(4, 3)), "c": RNG.normal(size=(3,))}),
    "sub_mul_col": ([h.make_node("MatMul", ["X", "W"], ["P"]), h.make_node("Mul", ["P", "k"], ["Q"]),
                     h.make_node("Sub", ["c", "Q"], ["S"])],
                    {"W": RNG.normal(size=(4, 3)), "k": RNG.normal(size=(3, 1)), "c": RNG.normal(size=(1, 3))}),
    "tanh_sigmoid_fanout": ([h.make_node("MatMul", ["X", "W"], ["P"]), h.make_node("Tanh", ["P"], ["T"]),
                             h.make_node("Sigmoid", ["P"], ["U"]), h.make_node("Add", ["T", "U"], ["S"])],
                            {"W": RNG.normal(size=(4, 3))}),
    "relu": ([h.make_node("MatMul", ["X", "W"], ["P"]), h.make_node("Relu", ["P"], ["S"])],
             {"W": RNG.normal(size=(4, 3))}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_finite_differences_reference(case):
    nodes, params = CASES[case]
    if case == "relu":  # a step moves a pre-activation by at most 0.05 * max|X|: stay clear of the kink
        assert np.abs(X3 @ params["W"]).min() > 0.05 * np.abs(X3).max()
    m = _head_model(list(nodes), [h.make_tensor_value_info("X", TP.DOUBLE, ["N", 4])], params, "S")
    tm = G.build_training_model(m, "loss")
    onnx.checker.check_model(tm, full_check=True)
    ref = ro.evaluator(tm)
    _fd_check(tm, params, {"X": X3, "labels": LABELS}, lambda f: ref.run(None, f))


@pytest.mark.parametrize("is_test", [0, 1])
def test_dropout_backward_wiring_and_ort_gradients(is_test):
    params = {"W": RNG.normal(size=(4, 6)), "V": RNG.normal(size=(6, 3))}
    nodes = [h.make_node("MatMul", ["X", "W"], ["P"]), h.make_node("Tanh", ["P"], ["T"]),
             h.make_node("Dropout", ["T"], ["D"], domain="ai.caffe2", ratio=0.5, is_test=is_test, seed=3,
                         engine="CUDNN"),
             h.make_node("MatMul", ["D", "V"], ["S"])]
    m = G.ensure_opset(_head_model(nodes, [h.make_tensor_value_info("X", TP.DOUBLE, ["N", 4])], params, "S"))
    tm = G.build_training_model(m, "loss")
    grad = [n for n in tm.graph.node if n.op_type == "DropoutGrad"][0]
    fwd = G.dropout_nodes(tm)[0]
    assert list(grad.input) == ([grad.input[0]] if is_test else [grad.input[0], fwd.output[1]])
    a = G._attrs(grad)
    assert a["ratio"] == 0.5 and a["is_test"] == is_test and a["engine"] == b"CUDNN" and "seed" not in a
    feeds = {"X": X3, "labels": LABELS}
    if is_test:
        sess = _session(tm)
        _fd_check(tm, params, feeds, lambda f: sess.run(None, f))
    else:
        out = dict(zip([o.name for o in tm.graph.output], _session(tm).run(None, {**feeds, **params})))
        fixed = G.with_fixed_masks(tm)
        sess = _session(fixed)
        _fd_check(fixed, params, {**feeds, fwd.output[1]: out[fwd.output[1]]}, lambda f: sess.run(None, f))


def test_unsupported_op_is_reported():
    m = _head_model([h.make_node("MatMul", ["X", "W"], ["P"]), h.make_node("Exp", ["P"], ["S"])],
                    [h.make_tensor_value_info("X", TP.DOUBLE, ["N", 4])], {"W": np.ones((4, 3))}, "S")
    with pytest.raises(NotImplementedError, match="no gradient rule for Exp x1"):
        G.build_training_model(m, "loss")


def test_to_onnx_dropout_with_ratio_one_in_inference_runs():
    g = h.make_graph([h.make_node("Relu", ["X"], ["A"])], "net",
                     [h.make_tensor_value_info("X", TP.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("A", TP.FLOAT, [2, 4])])  # fmt: skip
    net = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    G.add_dropout(net, "X", training=False, ratio=1.0)
    portable, _ = G.to_onnx_dropout(net, warn=False)
    assert [n.op_type for n in portable.graph.node] == ["Dropout", "Relu"]
    x = np.arange(-4, 4, dtype=np.float32).reshape(2, 4)
    (a,) = _session(portable).run(["A"], {"X": x})
    np.testing.assert_array_equal(a, np.maximum(x, 0))
