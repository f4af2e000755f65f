"""Optimizers (Caffe2's formulas, checked against real Caffe2 trajectories), the training-step model
format, make_training_model and TrainingSession (state round trip, export)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper as h, numpy_helper

import caffe2_ort
from caffe2_ort import gradients as GR
from caffe2_ort import optimizers as OPT
from caffe2_ort import training as T
from ort_helpers import session, shared_path


def run_builder(build, feeds):
    """Run optimizer builder nodes on numpy feeds: ``build(e, names...)`` returns output names."""
    used = set(feeds)

    def names(base):
        n, k = base, 0
        while n in used:
            k += 1
            n = f"{base}_{k}"
        used.add(n)
        return n

    e = GR.Emitter({}, names)
    outs = build(e, *feeds)
    outs = [outs] if isinstance(outs, str) else list(outs)
    inputs = [h.make_tensor_value_info(k, helper_type(v), list(np.shape(v))) for k, v in feeds.items()]
    g = h.make_graph(e.nodes, "opt", inputs, [onnx.ValueInfoProto(name=o) for o in outs])
    model = onnx.shape_inference.infer_shapes(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8))
    return session(model).run(outs, {k: np.asarray(v) for k, v in feeds.items()})


def helper_type(v):
    return h.np_dtype_to_tensor_dtype(np.asarray(v).dtype)


def it(k):
    return np.array([k], np.int64)


@pytest.mark.parametrize("policy,args,expect", [
    ("fixed", {}, lambda k: 1.0),
    ("step", {"stepsize": 3, "gamma": 0.5}, lambda k: 0.5 ** (k // 3)),
    ("exp", {"gamma": 0.9}, lambda k: 0.9 ** k),
    ("inv", {"gamma": 0.1, "power": 0.75}, lambda k: (1 + 0.1 * k) ** -0.75),
    ("multistep", {"stepsizes": [2, 5, 9], "gamma": 0.1}, lambda k: 0.1 ** sum(k >= s for s in (2, 5, 9))),
])
def test_learning_rate_policies(policy, args, expect):
    for k in (0, 1, 2, 3, 5, 8, 9, 20):
        (lr,) = run_builder(lambda e, i: OPT.learning_rate(e, i, -0.05, policy, **args), {"i": it(k)})
        assert lr.shape == (1,) and lr.dtype == np.float32
        assert np.isclose(lr[0], -0.05 * expect(k), rtol=1e-6), (policy, k)


def test_learning_rate_errors():
    with pytest.raises(ValueError, match="unknown learning-rate policy 'cosine'"):
        run_builder(lambda e, i: OPT.learning_rate(e, i, 0.1, "cosine"), {"i": it(1)})
    with pytest.raises(ValueError, match="policy 'step' needs stepsize"):
        run_builder(lambda e, i: OPT.learning_rate(e, i, 0.1, "step", gamma=0.5), {"i": it(1)})


def _trajectory(net):
    return np.load(shared_path("caffe2_train_nets", net, "trajectory.npz"))


def test_step_policy_and_nesterov_momentum_follow_caffe2():
    """lenet_dropout_momentum: LearningRate(step, stepsize 2, gamma 0.5) at the incremented iteration and
    MomentumSGDUpdate(nesterov) reproduce Caffe2's learning rates, momenta and parameters bit for bit.
    The raw gradient is recovered from Caffe2's momentum update (its gradient blob holds the adjusted one)."""
    d = _trajectory("lenet_dropout_momentum")
    counter = d["init/optimizer_iteration"].astype(np.int64)
    for name in ("conv1_w", "pred_b", "fc_h_w"):
        m0, p0 = d[f"init/{name}_momentum"], d[f"init/{name}"]
        counter = d["init/optimizer_iteration"].astype(np.int64)
        for s in range(4):
            (counter, lr) = run_builder(lambda e, i: (lambda n: (n, OPT.learning_rate(e, n, 0.05, "step", stepsize=2, gamma=0.5)))(
                OPT.iteration(e, i)), {"i": counter})
            assert counter[0] == d[f"step{s}/optimizer_iteration"][0]
            assert lr.tobytes() == np.asarray(d[f"step{s}/SgdOptimizer_1_lr_cpu"], np.float32).reshape(1).tobytes()
            m1 = d[f"step{s}/{name}_momentum"]
            g = ((m1.astype(np.float64) - 0.9 * m0.astype(np.float64)) / float(lr[0])).astype(np.float32)
            adj, m, p = run_builder(lambda e, p_, g_, m_, l_: OPT.momentum_sgd_update(e, p_, g_, m_, l_, 0.9, True, "p"),
                                    {"p": p0, "g": g, "m": m0, "lr": lr})
            assert np.allclose(m, m1, rtol=1e-5, atol=1e-7 * np.abs(m1).max())
            assert np.allclose(p, d[f"step{s}/{name}"], rtol=1e-5, atol=1e-6 * np.abs(p0).max())
            assert np.allclose(adj, d[f"step{s}/{name}_grad"], rtol=1e-4, atol=1e-6 * np.abs(adj).max())
            m0, p0 = m1, d[f"step{s}/{name}"]


def test_fixed_negative_rate_follows_caffe2():
    d = _trajectory("mlp_dropout_sgd")
    counter = it(0)
    for s in range(4):
        counter, lr = run_builder(lambda e, i: (lambda n: (n, OPT.learning_rate(e, n, -0.1, "fixed")))(OPT.iteration(e, i)),
                                  {"i": counter})
        assert lr.tobytes() == np.asarray(d[f"step{s}/SgdOptimizer_0_lr_cpu"], np.float32).reshape(1).tobytes()


def _np_update(opt, p, g, state, lr, k, args):
    """Caffe2's formulas in numpy float64 (lr signed as the LearningRate op outputs it, k = incremented iteration)."""
    if opt == "sgd":
        return p + lr * g, []
    if opt in ("momentum", "nesterov"):
        mu = args.get("momentum", 0.9)
        m = state[0]
        if opt == "momentum":
            adj = lr * g + mu * m
            return p - adj, [adj]
        m1 = mu * m + lr * g
        return p - ((1 + mu) * m1 - mu * m), [m1]
    if opt == "adagrad":
        hh = state[0] * args.get("decay", 1.0) + g * g
        return p + lr * g / (np.sqrt(hh) + args.get("epsilon", 1e-5)), [hh]
    b1, b2, eps = args.get("beta1", 0.9), args.get("beta2", 0.999), args.get("epsilon", 1e-8)
    t = k + 1
    m1 = b1 * state[0] + (1 - b1) * g
    m2 = b2 * state[1] + (1 - b2) * g * g
    corr = np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    return p + lr * corr * m1 / (np.sqrt(m2) + eps), [m1, m2]


def quadratic_model(n=5, seed=0):
    """loss = ReduceSum(W * X * X) with W an initializer and X fed: dloss/dW = X*X."""
    w = np.random.RandomState(seed).standard_normal((n,)).astype(np.float32)
    g = h.make_graph([h.make_node("Mul", ["X", "X"], ["xx"]), h.make_node("Mul", ["W", "xx"], ["wxx"]),
                      h.make_node("ReduceSum", ["wxx"], ["loss"], keepdims=0)], "quad",
                     [h.make_tensor_value_info("X", TensorProto.FLOAT, [n])], [h.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                     initializer=[numpy_helper.from_array(w, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), w


@pytest.mark.parametrize("opt,args", [("sgd", {}), ("momentum", {"momentum": 0.8}), ("nesterov", {"momentum": 0.7}),
                                      ("adagrad", {"epsilon": 1e-4}), ("adagrad", {"decay": 0.9}),
                                      ("adam", {"beta1": 0.8, "beta2": 0.99})])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_optimizers_follow_caffe2_formulas(opt, args, wd):
    model, w = quadratic_model()
    tm = T.make_training_model(model, "loss", optimizer=opt, lr=0.1, weight_decay=wd, lr_policy="step",
                               lr_args={"stepsize": 2, "gamma": 0.5}, **args)
    sess = T.TrainingSession(tm)
    sign = OPT.OPTIMIZERS[opt][0]
    p, state = w.astype(np.float64), [np.zeros(5)] * len(OPT.OPTIMIZERS[opt][1])
    rng = np.random.RandomState(3)
    for k in range(1, 6):
        x = rng.standard_normal(5).astype(np.float32)
        sess.step({"X": x})
        g = x.astype(np.float64) ** 2 + wd * p
        lr = sign * 0.1 * 0.5 ** (k // 2)
        p, state = _np_update(opt, p, g, state, lr, k, args)
        got = sess.state()
        assert got["optimizer_iteration"].tolist() == [k]
        assert np.allclose(got["W"], p, rtol=2e-5, atol=1e-6), (opt, k)
        for suf, v in zip(OPT.OPTIMIZERS[opt][1], state):
            assert np.allclose(got[f"W_{suf}"], v, rtol=2e-5, atol=1e-6), (opt, suf, k)


def test_unknown_optimizer_and_options_are_errors():
    model, _ = quadratic_model()
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        T.make_training_model(model, "loss", optimizer="rmsprop")
    with pytest.raises(ValueError, match="optimizer 'sgd' takes no option.*momentum"):
        T.make_training_model(model, "loss", optimizer="sgd", momentum=0.9)
    with pytest.raises(ValueError, match="parameter 'nope' is not an initializer"):
        T.make_training_model(model, "loss", params=["nope"])
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "count"))
    with pytest.raises(ValueError, match="parameter 'count' is not a floating-point tensor"):
        T.make_training_model(model, "loss", params=["count"])
    with pytest.raises(ValueError, match="loss 'nope' is not a tensor"):
        T.make_training_model(model, "nope")


def mlp_model(batch=8, hidden=16, classes=3, seed=0, dropout=True):
    rng = np.random.RandomState(seed)
    inits = {"W1": rng.standard_normal((4, hidden)).astype(np.float32) * 0.5, "b1": np.zeros(hidden, np.float32),
             "W2": rng.standard_normal((hidden, classes)).astype(np.float32) * 0.5, "b2": np.zeros(classes, np.float32)}
    nodes = [h.make_node("Gemm", ["X", "W1", "b1"], ["h1"]), h.make_node("Relu", ["h1"], ["a1"])]
    last = "a1"
    if dropout:
        nodes.append(h.make_node("Dropout", ["a1"], ["d1"], domain=caffe2_ort.DOMAIN, ratio=0.3, is_test=0))
        last = "d1"
    nodes += [h.make_node("Gemm", [last, "W2", "b2"], ["logits"]), h.make_node("Softmax", ["logits"], ["probs"], axis=1),
              h.make_node("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["loss"])]
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 4]),
                                    h.make_tensor_value_info("labels", TensorProto.INT64, [batch])],
                     [h.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes]),
                      h.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                     initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(caffe2_ort.DOMAIN, 1)], ir_version=8)
    x = rng.standard_normal((batch, 4)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return m, {"X": x, "labels": labels}


def test_training_step_model_format():
    model, feeds = mlp_model()
    tm = T.make_training_model(model, "loss", optimizer="momentum", lr=0.1, outputs=["probs"])
    meta = {p.key: p.value for p in tm.metadata_props}
    state = json.loads(meta[T.STATE_KEY])
    assert meta[T.LOSS_KEY] == "loss"
    assert json.loads(meta[T.INFERENCE_KEY]) == ["probs"]
    assert set(state) == {"W1", "b1", "W2", "b2", "W1_momentum", "b1_momentum", "W2_momentum", "b2_momentum",
                          "optimizer_iteration"}
    inputs = [i.name for i in tm.graph.input]
    assert inputs[:2] == ["X", "labels"] and set(inputs[2:]) == set(state)
    inits = {t.name: t for t in tm.graph.initializer}
    assert all(s in inits for s in state)
    assert numpy_helper.to_array(inits["optimizer_iteration"]).tolist() == [0]
    outs = [o.name for o in tm.graph.output]
    assert outs[:2] == ["loss", "probs"] and outs[2:] == [state[s] for s in state]
    first = session(tm).run(None, feeds)  # feeding only the data runs step 1
    assert np.isfinite(first[0])


def test_training_session_learns_and_state_round_trip_is_bit_exact():
    model, feeds = mlp_model(dropout=False)
    tm = T.make_training_model(model, "loss", optimizer="adam", lr=0.05)
    sess = T.TrainingSession(tm)
    losses = [float(sess.step(feeds)["loss"]) for _ in range(40)]
    assert losses[-1] < 0.3 * losses[0]
    saved = sess.state()
    nxt = sess.step(feeds)
    after = sess.state()
    sess.load_state(saved)
    again = sess.step(feeds)
    assert again["loss"].tobytes() == nxt["loss"].tobytes()
    assert all(after[k].tobytes() == v.tobytes() for k, v in sess.state().items())
    other = T.TrainingSession(tm)
    other.load_state(saved)
    assert other.step(feeds)["loss"].tobytes() == nxt["loss"].tobytes()


def test_load_state_and_step_errors():
    model, feeds = mlp_model(dropout=False)
    sess = T.TrainingSession(T.make_training_model(model, "loss"))
    with pytest.raises(ValueError, match="not state tensors: 'zz'"):
        sess.load_state({"zz": np.zeros(1)})
    with pytest.raises(ValueError, match=r"state 'W1': expected float32\[4, 16\], got float64\[4, 16\]"):
        sess.load_state({"W1": np.zeros((4, 16))})
    with pytest.raises(ValueError, match="missing input"):
        sess.step({"X": feeds["X"]})
    with pytest.raises(ValueError, match="unknown input"):
        sess.step({**feeds, "Y": feeds["X"]})
    with pytest.raises(ValueError, match="not a training-step model"):
        T.TrainingSession(model)


def test_export_has_trained_weights_and_inference_dropout(tmp_path):
    model, feeds = mlp_model(dropout=True)
    sess = T.TrainingSession(T.make_training_model(model, "loss", optimizer="nesterov", lr=0.1))
    for _ in range(5):
        sess.step(feeds)
    exported = sess.export(tmp_path / "trained.onnx")
    assert [i.name for i in exported.graph.input] == ["X"] and [o.name for o in exported.graph.output] == ["probs"]
    drops = [n for n in exported.graph.node if n.op_type == "Dropout"]
    assert len(drops) == 1 and len(drops[0].output) == 1
    assert {a.name: h.get_attribute_value(a) for a in drops[0].attribute}["is_test"] == 1
    assert not any(n.op_type in ("DropoutGrad", "ScatterElements", "SoftmaxCrossEntropyLoss") for n in exported.graph.node)
    assert not exported.metadata_props
    state = sess.state()
    fresh = onnx.load(str(tmp_path / "trained.onnx"))
    ref = caffe2_ort.graph.to_inference(model)
    for t in ref.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(state[t.name], t.name))
    got = session(fresh).run(["probs"], {"X": feeds["X"]})[0]
    want = session(ref).run(["probs"], feeds)[0]
    assert got.tobytes() == want.tobytes()


def test_batch_norm_training_form_keeps_running_statistics_as_state():
    rng = np.random.RandomState(0)
    x = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    inits = {"s": np.ones(3, np.float32), "b": np.zeros(3, np.float32), "m": np.zeros(3, np.float32), "v": np.ones(3, np.float32),
             "R": rng.standard_normal((6, 3, 4, 4)).astype(np.float32)}
    nodes = [h.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y", "m_next", "v_next"], training_mode=1, momentum=0.5),
             h.make_node("Mul", ["Y", "R"], ["yr"]), h.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)]
    g = h.make_graph(nodes, "bn", [h.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
                     [h.make_tensor_value_info("Y", TensorProto.FLOAT, None), h.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                     initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    tm = T.make_training_model(model, "loss", params=["s", "b"])
    state = T.metadata(tm)[0]
    assert state["m"] == "m_next" and state["v"] == "v_next"
    sess = T.TrainingSession(tm)
    sess.step({"X": x})
    assert np.allclose(sess.state()["m"], 0.5 * x.mean(axis=(0, 2, 3)), atol=1e-6)
    exported = sess.export()
    bn = [n for n in exported.graph.node if n.op_type == "BatchNormalization"][0]
    assert len(bn.output) == 1 and {a.name: h.get_attribute_value(a) for a in bn.attribute}["training_mode"] == 0
