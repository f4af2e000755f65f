"""Caffe2 training nets -> training-step models (caffe2/training_net.py), without real Caffe2: the
shared nets against their recorded trajectories, the CLI (convert, then `caffe2-ort train` unchanged),
save_init_net, the init net's random fills, and one-line errors for nets that do not fit together."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from caffe2_ort.caffe2 import netdef
from caffe2_ort.caffe2.errors import UnsupportedOpsError
from caffe2_ort.caffe2.training_net import TrainingNetError, convert_training_net, evaluate_training_init, is_training_net
from caffe2_ort.training import TrainingSession, metadata

from caffe2_helpers import make_net, max_rel_error, shared_file

NETS = ("mlp_dropout_sgd", "lenet_dropout_momentum")


def _load(name):
    d = shared_file("caffe2_train_nets", name)
    return (d, netdef.read_netdef(d / "train_net.pbtxt"), netdef.read_netdef(d / "init_values.pb"),
            netdef.read_value_info(d / "value_info.json"))


def _fed(traj):
    return {k[4:]: traj[k] for k in traj.files if k.startswith("fed/")}


@pytest.mark.parametrize("name", NETS)
def test_shared_net_follows_its_recorded_trajectory(name):
    d, net, init, vi = _load(name)
    assert is_training_net(net)
    model, notes = convert_training_net(net, init, vi, rng="caffe2")
    state, loss, _ = metadata(model)
    assert "optimizer_iteration" in state and all(p in state for p in ("fc_h_w", "pred_b"))
    assert "ONE_0_0" not in state and "iteration_mutex" not in state
    traj = np.load(d / "trajectory.npz")
    sess = TrainingSession(model)
    for k in range(4):
        out = sess.step(_fed(traj))
        assert max_rel_error(out[loss], traj[f"step{k}/loss"]) <= 1e-4
        masks = [o for o in out if o != loss]
        assert masks
        for m in masks:
            np.testing.assert_array_equal(out[m].reshape(traj[f"step{k}/{m}"].shape), traj[f"step{k}/{m}"])
        for b, v in sess.state().items():
            assert max_rel_error(v, traj[f"step{k}/{b}"]) <= 1e-4, (k, b)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "caffe2_ort", *map(str, args)], capture_output=True, text=True)


def test_cli_convert_then_train_unchanged(tmp_path):
    d, *_ = _load("lenet_dropout_momentum")
    out = tmp_path / "step.onnx"
    r = _cli("convert", d / "train_net.pbtxt", "--init", d / "init_values.pb", "--value-info", d / "value_info.json",
             "--rng", "caffe2", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "training-step model" in r.stdout and "note: engine CUDNN dropped" in r.stdout
    traj = np.load(d / "trajectory.npz")
    np.savez(tmp_path / "batch.npz", **_fed(traj))
    r = _cli("train", out, "--data", tmp_path / "batch.npz", "--steps", 4)
    assert r.returncode == 0, r.stderr
    last = float(r.stdout.strip().splitlines()[-1].split("->")[-1])
    assert abs(last - float(traj["step3/loss"])) <= 1e-4 * abs(float(traj["step3/loss"]))


def test_save_init_net_restarts_from_the_saved_state(tmp_path):
    d, net, init, vi = _load("mlp_dropout_sgd")
    model, _ = convert_training_net(net, init, vi, rng="caffe2")
    sess = TrainingSession(model)
    traj = np.load(d / "trajectory.npz")
    for _ in range(2):
        sess.step(_fed(traj))
    saved = sess.save_init_net(tmp_path / "init_net.pb")
    types = [op.type for op in saved.op]
    assert "CreateMutex" in types and "GivenTensorInt64Fill" in types
    again = netdef.read_netdef(tmp_path / "init_net.pb")
    model2, _ = convert_training_net(net, again, vi, rng="caffe2")
    fresh = TrainingSession(model2)
    for k, v in sess.state().items():
        np.testing.assert_array_equal(fresh.state()[k], v)
    assert int(fresh.state()["optimizer_iteration"][0]) == 2
    fresh.step(_fed(traj))
    assert int(fresh.state()["optimizer_iteration"][0]) == 3


def test_random_fills_are_drawn_from_the_seed():
    init = make_net("init", [
        ("XavierFill", [], ["w"], {"shape": [4, 6]}),
        ("MSRAFill", [], ["c"], {"shape": [3, 2, 5, 5]}),
        ("GaussianFill", [], ["g"], {"shape": [1000], "mean": 2.0, "std": 0.5}),
        ("UniformFill", [], ["u"], {"shape": [50], "min": -1.0, "max": 3.0}),
        ("ConstantFill", [], ["it"], {"shape": [1], "value": 0, "dtype": 10}),
        ("CreateMutex", [], ["mutex"]),
    ])
    a, mutexes, notes = evaluate_training_init(init, seed=7)
    b, _, _ = evaluate_training_init(init, seed=7)
    c, _, _ = evaluate_training_init(init, seed=8)
    assert mutexes == ["mutex"] and "--init-seed 7 + op index" in notes[0]
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["w"], c["w"])
    assert a["w"].dtype == np.float32 and np.abs(a["w"]).max() <= np.sqrt(3 / 6)
    assert a["it"].dtype == np.int64 and a["it"].tolist() == [0]
    assert abs(a["g"].mean() - 2.0) < 0.1 and abs(a["g"].std() - 0.5) < 0.1
    assert a["u"].min() >= -1.0 and a["u"].max() <= 3.0
    # an op that carries a random_seed draws Caffe2's values from it, whatever --init-seed says
    seeded = make_net("init", [("UniformFill", [], ["u"], {"shape": [5], "min": 0.0, "max": 1.0})])
    seeded.op[0].device_option.random_seed = 1234
    s7, _, notes7 = evaluate_training_init(seeded, seed=7)
    s8, _, _ = evaluate_training_init(seeded, seed=8)
    words = np.random.RandomState(1234).randint(0, 2**32, size=5, dtype=np.uint32)  # raw MT19937 words, init_genrand
    expected = (words & 0xFFFFFF).astype(np.float32) * np.float32(2.0**-24)
    assert np.array_equal(s7["u"], expected) and np.array_equal(s8["u"], expected) and not notes7


# ----------------------------------------------------------------------------------------------
# bad input: one line naming the op and blob, exit 2, nothing written


def _tiny(ops_tail, init_extra=(), prefix=()):
    """A one-FC softmax net with SGD, the tail of its ops replaced for each bad case."""
    head = list(prefix) + [
        ("FC", ["x", "w", "b"], ["y"]),
        ("SoftmaxWithLoss", ["y", "label"], ["sm", "loss"]),
        ("ConstantFill", ["loss"], ["loss_grad"], {"value": 1.0}),
    ]
    net = make_net("tiny", head + list(ops_tail), inputs=["x", "label", "w", "b", "it", "ONE", "w_momentum"])
    init = make_net("init", [
        ("GivenTensorFill", [], ["w"], {"shape": [3, 4], "values": [0.1] * 12}),
        ("GivenTensorFill", [], ["b"], {"shape": [3], "values": [0.0] * 3}),
        ("GivenTensorInt64Fill", [], ["it"], {"shape": [1], "values": [0]}),
        ("GivenTensorFill", [], ["ONE"], {"shape": [1], "values": [1.0]}),
        *init_extra,
    ])
    return net, init


GOOD_TAIL = [
    ("SoftmaxWithLossGradient", ["y", "label", "sm", "loss_grad"], ["y_grad"]),
    ("FCGradient", ["x", "w", "y_grad"], ["w_grad", "b_grad", "x_grad"]),
    ("Iter", ["it"], ["it"]),
    ("LearningRate", ["it"], ["lr"], {"base_lr": -0.1, "policy": "fixed"}),
    ("WeightedSum", ["w", "ONE", "w_grad", "lr"], ["w"]),
    ("WeightedSum", ["b", "ONE", "b_grad", "lr"], ["b"]),
]

BAD = {
    "missing forward blob": (
        [("SoftmaxWithLossGradient", ["y", "label", "sm", "loss_grad"], ["y_grad"]),
         ("FCGradient", ["sm", "w", "y_grad"], ["w_grad", "b_grad", "x_grad"])] + GOOD_TAIL[2:],
        "FCGradient op #4: no earlier FC op reads or writes 'sm'",
    ),
    "wrong input count": (
        [GOOD_TAIL[0], ("FCGradient", ["x", "y_grad"], ["w_grad", "b_grad"])] + GOOD_TAIL[2:],
        "FCGradient op #4: 2 input(s); Caffe2's FCGradient takes 3",
    ),
    "uninitialised update": (
        GOOD_TAIL + [("MomentumSGDUpdate", ["w_grad", "w_momentum", "lr", "w"], ["w_grad", "w_momentum", "w"],
                      {"momentum": 0.9})],
        "MomentumSGDUpdate op #9 updates 'w_momentum', which nothing initialises",
    ),
    "unknown policy": (
        GOOD_TAIL[:3] + [("LearningRate", ["it"], ["lr"], {"base_lr": -0.1, "policy": "multistep"})] + GOOD_TAIL[4:],
        "LearningRate op #6: learning-rate policy 'multistep' for 'lr' is not supported",
    ),
}


def _files(net, init, tmp_path):
    netdef.write_netdef(net, tmp_path / "train_net.pbtxt")
    netdef.write_netdef(init, tmp_path / "init.pb")
    (tmp_path / "vi.json").write_text('{"x": [1, [2, 4]], "label": [6, [2]]}')
    return tmp_path / "train_net.pbtxt", tmp_path / "init.pb", tmp_path / "vi.json"


def test_good_tiny_net_converts_and_trains(tmp_path):
    net, init, = _tiny(GOOD_TAIL)
    t, i, v = _files(net, init, tmp_path)
    r = _cli("convert", t, "--init", i, "--value-info", v, "-o", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    model, _ = convert_training_net(net, init, netdef.read_value_info(v))
    sess = TrainingSession(model)
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    lab = np.array([0, 2], np.int32)
    l0 = sess.step({"x": x, "label": lab})["loss"]
    l1 = sess.step({"x": x, "label": lab})["loss"]
    assert l1 < l0
    # plain SGD by hand: w -= 0.1 * dL/dw for softmax cross-entropy
    w, b = np.full((3, 4), 0.1), np.zeros(3)
    for _ in range(2):
        z = x @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - np.eye(3)[lab]) / 2
        w, b = w - 0.1 * dz.T @ x, b - 0.1 * dz.sum(0)
    np.testing.assert_allclose(sess.state()["w"], w, rtol=1e-5, atol=1e-7)
    assert sess.state()["it"].tolist() == [2]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_training_net_is_one_error_line(case, tmp_path):
    tail, message = BAD[case]
    net, init = _tiny(tail)
    t, i, v = _files(net, init, tmp_path)
    out = tmp_path / "m.onnx"
    r = _cli("convert", t, "--init", i, "--value-info", v, "-o", out)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not out.exists()


def test_unsupported_ops_are_listed_at_once():
    net, init = _tiny(GOOD_TAIL + [("Foo", ["w"], ["f"]), ("Foo", ["b"], ["g"]), ("Bar", ["w"], ["h"])])
    with pytest.raises(UnsupportedOpsError, match=r"3 unsupported op\(s\) of 2 kind\(s\): Bar x1, Foo x2"):
        convert_training_net(net, init, {"x": (np.float32, (2, 4)), "label": (np.int32, (2,))})


def test_data_reader_outputs_become_fed_inputs():
    net, init = _tiny(GOOD_TAIL, prefix=[("TensorProtosDBInput", ["dbreader"], ["x", "label"], {"batch_size": 2})])
    model, notes = convert_training_net(net, init, {"x": (np.float32, (2, 4)), "label": (np.int32, (2,))})
    assert any("data readers become fed inputs: TensorProtosDBInput" in n for n in notes)
    assert [i.name for i in model.graph.input][:2] == ["x", "label"]
    with pytest.raises(TrainingNetError, match="TensorProtosDBInput op: its output\\(s\\) 'label' become fed inputs"):
        convert_training_net(net, init, {"x": (np.float32, (2, 4))})


def test_accuracy_and_stop_gradient():
    tail = [("Accuracy", ["sm", "label"], ["accuracy"]), ("StopGradient", ["sm"], ["sm_stopped"])] + GOOD_TAIL
    net, init = _tiny(tail)
    model, _ = convert_training_net(net, init, {"x": (np.float32, (2, 4)), "label": (np.int32, (2,))})
    sess = TrainingSession(model)
    x = np.array([[1, 0, 0, 0], [0, 0, 0, 1]], np.float32)
    out = sess.step({"x": x, "label": np.array([0, 0], np.int32)})
    assert out["accuracy"].shape == () and float(out["accuracy"]) == 1.0  # all-equal logits: argmax picks class 0
    out = sess.step({"x": x, "label": np.array([1, 1], np.int32)})
    assert float(out["accuracy"]) == 0.0


def test_momentum_sgd_without_the_parameter():
    """MomentumSGD(g, m, lr) -> (g, m): adjusted = lr g + mu m, then WeightedSum(w, ONE, g, MINUS_ONE)."""
    tail = GOOD_TAIL[:4] + [
        ("MomentumSGD", ["w_grad", "w_momentum", "lr"], ["w_grad", "w_momentum"], {"momentum": 0.9}),
        ("WeightedSum", ["w", "ONE", "w_grad", "MINUS_ONE"], ["w"]),
    ]
    tail[3] = ("LearningRate", ["it"], ["lr"], {"base_lr": 0.1, "policy": "step", "stepsize": 1, "gamma": 0.5})
    net, init = _tiny(tail, init_extra=[
        ("GivenTensorFill", [], ["w_momentum"], {"shape": [3, 4], "values": [0.0] * 12}),
        ("GivenTensorFill", [], ["MINUS_ONE"], {"shape": [1], "values": [-1.0]}),
    ])
    net.external_input.append("MINUS_ONE")
    model, _ = convert_training_net(net, init, {"x": (np.float32, (2, 4)), "label": (np.int32, (2,))})
    sess = TrainingSession(model)
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    lab = np.array([0, 2], np.int32)
    w, b, m = np.full((3, 4), 0.1), np.zeros(3), np.zeros((3, 4))
    for step in range(3):
        sess.step({"x": x, "label": lab})
        z = x @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - np.eye(3)[lab]) / 2
        lr = 0.1 * 0.5 ** (step + 1)  # the step policy at iter = step + 1
        m = lr * (dz.T @ x) + 0.9 * m
        w = w - m
        np.testing.assert_allclose(sess.state()["w_momentum"], m, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(sess.state()["w"], w, rtol=1e-5, atol=1e-8)
    assert "b" not in sess.state()  # nothing updates b here: it is a constant
