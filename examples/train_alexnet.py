"""Train a converted Caffe2 AlexNet in plain ONNX Runtime.

    python examples/train_alexnet.py [--steps 30] [--width 8] [--fc-width 256] [--out trained.onnx]

Reads ../shared/caffe2_models/bvlc_alexnet (the Caffe2 model zoo's predict net), synthesises narrow
random weights (``caffe2-ort synth-init`` does the same from the shell), converts the net to ONNX,
switches its Dropout nodes to training form (``graph.to_training``), puts SoftmaxCrossEntropyLoss on
the logits, makes a training-step model with momentum SGD (``training.make_training_model``) and runs
it with ``training.TrainingSession`` on one fixed labelled batch, then exports the trained inference
model. The same training-step model also runs from the shell: ``caffe2-ort train step.onnx --data ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from caffe2_ort import graph as G
from caffe2_ort import training as T
from caffe2_ort.caffe2 import convert, read_netdef, synthesize

ZOO = Path(__file__).resolve().parents[2] / "shared" / "caffe2_models" / "bvlc_alexnet"


def with_loss(model, batch, logits="fc8", seed=100):
    """Training-mode Dropout (fixed seeds, so a run repeats) and SoftmaxCrossEntropyLoss on ``logits``."""
    model = G.to_training(model, expose_masks=False)
    for k, n in enumerate(d for d in model.graph.node if d.op_type == "Dropout"):
        n.attribute.append(helper.make_attribute("seed", seed + k))
    g = model.graph
    g.input.append(helper.make_tensor_value_info("label", TensorProto.INT64, [batch]))
    g.node.append(helper.make_node("SoftmaxCrossEntropyLoss", [logits, "label"], ["loss"], name="loss"))
    g.output.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    return model


def build(batch=4, width=8, fc_width=256, seed=0, zoo=ZOO):
    """(predict net, init net, value info, forward model with loss) of a narrow AlexNet."""
    net = read_netdef(Path(zoo) / "predict_net.pbtxt")
    vi = {"data": (np.dtype(np.float32), (batch, 3, 224, 224))}
    init, _ = synthesize(net, vi, seed=seed, width=width, fc_width=fc_width)
    return net, init, vi, with_loss(convert(net, init, vi).model, batch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--fc-width", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--out", default=None, help="write the trained inference model here")
    args = p.parse_args(argv)
    _, _, _, forward = build(args.batch, args.width, args.fc_width)
    step_model = T.make_training_model(forward, "loss", optimizer="momentum", lr=args.lr, momentum=0.9)
    sess = T.TrainingSession(step_model)
    rng = np.random.RandomState(0)
    feeds = {"data": rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32),
             "label": rng.randint(0, args.fc_width, args.batch).astype(np.int64)}
    losses = []
    for k in range(args.steps):
        losses.append(float(sess.step(feeds)["loss"]))
        print(f"step {k + 1:3d}  loss {losses[-1]:.4f}")
    if args.out:
        sess.export(args.out)
        print(f"wrote {args.out}")
    return losses, sess


if __name__ == "__main__":
    main()
