"""A converted AlexNet (narrow synthesised weights, training-mode Dropout via graph.to_training,
SoftmaxCrossEntropyLoss, momentum SGD) trained by TrainingSession for 30 steps on a fixed labelled
batch: the loss falls by 5x or more (mean of the last 5 steps against the first), and export() equals a fresh conversion with the trained weights."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper as h

from caffe2_ort import graph as G
from caffe2_ort import training as T
from caffe2_ort.caffe2 import convert, netdef, read_netdef, synthesize
from caffe2_helpers import shared_file
from ort_helpers import session

BATCH, WIDTH, FC_WIDTH = 4, 8, 256


def alexnet():
    net = read_netdef(shared_file("caffe2_models", "bvlc_alexnet", "predict_net.pbtxt"))
    vi = {"data": (np.dtype(np.float32), (BATCH, 3, 224, 224))}
    init, _ = synthesize(net, vi, seed=0, width=WIDTH, fc_width=FC_WIDTH)
    return net, init, vi


def with_loss(model, logits="fc8"):
    """Training-mode Dropout (fixed seeds, so the run repeats) and SoftmaxCrossEntropyLoss on the logits."""
    model = G.to_training(model, expose_masks=False)
    for k, n in enumerate(d for d in model.graph.node if d.op_type == "Dropout"):
        n.attribute.append(h.make_attribute("seed", 100 + k))
    g = model.graph
    g.input.append(h.make_tensor_value_info("label", TensorProto.INT64, [BATCH]))
    g.node.append(h.make_node("SoftmaxCrossEntropyLoss", [logits, "label"], ["loss"]))
    g.output.append(h.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    return model


@pytest.mark.slow
def test_alexnet_trains_and_exports(tmp_path):
    net, init, vi = alexnet()
    model = convert(net, init, vi).model
    train = T.make_training_model(with_loss(model), "loss", optimizer="momentum", lr=0.005, momentum=0.9)
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
