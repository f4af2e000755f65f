"""A converted AlexNet (narrow synthesised weights, training-mode Dropout via graph.to_training,
SoftmaxCrossEntropyLoss, momentum SGD) trained by TrainingSession for 30 steps on a fixed labelled
batch: the loss falls by 5x or more (mean of the last 5 steps against the first), and export() equals a fresh conversion with the trained weights."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from caffe2_ort import training as T
from caffe2_ort.caffe2 import convert, netdef
from caffe2_helpers import shared_file
from ort_helpers import session

BATCH, WIDTH, FC_WIDTH = 4, 8, 256

_spec = importlib.util.spec_from_file_location("train_alexnet", Path(__file__).resolve().parents[1] / "examples" / "train_alexnet.py")
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)


@pytest.mark.slow
def test_alexnet_trains_and_exports(tmp_path):
    zoo = shared_file("caffe2_models", "bvlc_alexnet")
    net, init, vi, forward = ex.build(BATCH, WIDTH, FC_WIDTH, zoo=zoo)
    train = T.make_training_model(forward, "loss", optimizer="momentum", lr=0.005, momentum=0.9)
    sess = T.TrainingSession(train)
    rng = np.random.RandomState(0)
    feeds = {"data": rng.standard_normal((BATCH, 3, 224, 224)).astype(np.float32),
             "label": rng.randint(0, FC_WIDTH, BATCH).astype(np.int64)}
    losses = [float(sess.step(feeds)["loss"]) for _ in range(30)]
    assert np.all(np.isfinite(losses))
    # Dropout makes single steps noisy: the level of the last 5 steps against the first
    assert np.mean(losses[-5:]) * 5 <= losses[0], losses

    exported = sess.export(tmp_path / "alexnet_trained.onnx")
    state = sess.state()
    blobs = netdef.evaluate_init_net(init)
    trained = {k: state.get(k, v) for k, v in blobs.items()}
    init_trained = netdef.schema.NetDef(name="init")
    for k, v in trained.items():
        init_trained.op.append(netdef.make_given_fill(k, np.asarray(v)))
    fresh = convert(net, init_trained, vi).model
    x = feeds["data"]
    got = session(onnx.load(str(tmp_path / "alexnet_trained.onnx"))).run(["prob"], {"data": x})[0]
    want = session(fresh).run(["prob"], {"data": x})[0]
    assert got.tobytes() == want.tobytes()
    assert [o.name for o in exported.graph.output] == ["prob"]
    assert not any(n.op_type in ("DropoutGrad", "ScatterElements") for n in exported.graph.node)


def test_example_script_runs(tmp_path, capsys):
    shared_file("caffe2_models", "bvlc_alexnet")
    losses, sess = ex.main(["--steps", "2", "--width", "4", "--fc-width", "16", "--out", str(tmp_path / "t.onnx")])
    assert len(losses) == 2 and "step   2  loss" in capsys.readouterr().out
    assert (tmp_path / "t.onnx").exists()
