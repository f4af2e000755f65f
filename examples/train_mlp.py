"""Train a small MLP with ai.caffe2 Dropout using only onnxruntime (inference package) and numpy.

    PYTHONPATH=python python examples/train_mlp.py [--steps 200] [--seed 0] [--backend ort|reference]

The forward graph is Gemm -> Relu -> ai.caffe2 Dropout (training) -> Gemm -> SoftmaxCrossEntropyLoss.
``caffe2_ort.graph.build_training_model`` turns it into one model that returns the loss and the gradient
of every parameter; ONNX Runtime runs it each step (the Dropout node draws a fresh mask per run from its
seeded Philox stream) and numpy applies plain SGD. Afterwards the trained weights are used for
MC-dropout inference: the same forward with Dropout left in training mode, run many times, gives a
predictive mean and variance. ``--backend reference`` runs every graph with onnx.reference and
``caffe2_ort.reference_ops`` instead of ONNX Runtime: the same dropout masks bit for bit for the same
seed; the float32 Gemm/Softmax arithmetic rounds slightly differently in numpy and MLAS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:
    import caffe2_ort
except ImportError:  # run from a checkout without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import caffe2_ort

from caffe2_ort import graph as G
from caffe2_ort.schemas import register_schemas

register_schemas()

IR_VERSION = 8  # accepted by every onnxruntime from 1.14 on
OPSET = 17


def make_data(n=240, n_features=4, n_classes=3, seed=0, dtype=np.float32, sample_seed=None):
    """Gaussian blobs: class c centred at a point drawn from ``seed``, unit-variance noise. Samples come
    from ``sample_seed`` (default: ``seed``), so a held-out set shares the centres. Returns (X, labels)."""
    centres = np.random.default_rng(seed).normal(scale=2.0, size=(n_classes, n_features))
    rng = np.random.default_rng([seed, 1 if sample_seed is None else 2 + sample_seed])
    labels = rng.integers(0, n_classes, size=n)
    x = centres[labels] + rng.normal(size=(n, n_features))
    return x.astype(dtype), labels.astype(np.int64)


def build_mlp(n_features=4, hidden=16, n_classes=3, *, ratio=0.3, seed=1234, activation="Relu",
              dtype=np.float32, init_seed=0):
    """The forward model: inputs X (N, F) and labels (N,), output the mean cross-entropy ``loss``
    (and ``logits``). Parameters W1, b1, W2, b2 are initializers."""
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(init_seed)
    params = {
        "W1": rng.normal(scale=1 / np.sqrt(n_features), size=(n_features, hidden)),
        "b1": np.zeros(hidden),
        "W2": rng.normal(scale=1 / np.sqrt(hidden), size=(hidden, n_classes)),
        "b2": np.zeros(n_classes),
    }
    nodes = [
        helper.make_node("Gemm", ["X", "W1", "b1"], ["h1"], name="fc1"),
        helper.make_node(activation, ["h1"], ["a1"], name="act1"),
        helper.make_node("Gemm", ["a1", "W2", "b2"], ["logits"], name="fc2"),
        helper.make_node("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["loss"], name="xent"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", et, ["N", n_features]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("loss", et, []),
         helper.make_tensor_value_info("logits", et, ["N", n_classes])],
        [numpy_helper.from_array(v.astype(dtype), k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    # Dropout on the hidden activations; fc2 now reads the dropout's output.
    G.add_dropout(model, "a1", output="a1_drop", training=True, ratio=ratio, seed=seed, expose_mask=False)
    onnx.checker.check_model(model, full_check=True)
    return model


class Runner:
    """Runs a model with onnxruntime (plus our library) or with onnx.reference; ``run(feeds) -> dict``.

    One Runner = one session: its Dropout nodes' RNG counters persist across ``run`` calls."""

    def __init__(self, model, backend="ort", optimized_model_path=None, graph_optimization_level=None):
        self.output_names = [o.name for o in model.graph.output]
        if backend == "ort":
            import onnxruntime as ort

            so = caffe2_ort.register(ort.SessionOptions())
            if graph_optimization_level is None and tuple(int(p) for p in ort.__version__.split(".")[:2]) < (1, 18):
                # onnxruntime 1.17 fuses float64 Gemm+Tanh into com.microsoft FusedGemm, for which it has
                # no float64 CPU kernel; basic optimisations leave that fusion out.
                graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if graph_optimization_level is not None:
                so.graph_optimization_level = graph_optimization_level
            if optimized_model_path is not None:
                so.optimized_model_filepath = str(optimized_model_path)
            self._sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            self._run = lambda feeds: self._sess.run(None, feeds)
        elif backend == "reference":
            from caffe2_ort.reference_ops import evaluator

            self._ref = evaluator(model)
            self._run = lambda feeds: self._ref.run(None, feeds)
        else:
            raise ValueError(f"backend must be 'ort' or 'reference', not {backend!r}")

    def run(self, feeds):
        return dict(zip(self.output_names, self._run(feeds)))


def train(steps=200, lr=0.5, *, seed=1234, backend="ort", batch=None, data_seed=0, dtype=np.float32, log=None):
    """SGD on the synthetic data set. Returns (losses, params, forward_model)."""
    forward = build_mlp(seed=seed, dtype=dtype)
    x, labels = make_data(seed=data_seed, dtype=dtype)
    params = G.initial_params(forward)
    runner = Runner(G.build_training_model(forward, "loss", list(params)), backend)
    rng = np.random.default_rng(data_seed + 1)
    losses = []
    for step in range(steps):
        idx = rng.choice(len(x), size=batch, replace=False) if batch else slice(None)
        out = runner.run({"X": x[idx], "labels": labels[idx], **params})
        losses.append(float(out["loss"]))
        for name in params:
            params[name] = (params[name] - lr * out[f"{name}_grad"]).astype(dtype)
        if log and (step % 25 == 0 or step == steps - 1):
            log(f"step {step:4d}  loss {losses[-1]:.4f}")
    return losses, params, forward


def with_params(model, params):
    """A copy of ``model`` whose initializers hold ``params``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for t in model.graph.initializer:
        if t.name in params:
            t.CopyFrom(numpy_helper.from_array(np.asarray(params[t.name]), t.name))
    return model


def predictive_model(forward, params, *, mc=True):
    """Logits -> class probabilities, with Dropout in training form (MC-dropout) or inference form."""
    model = with_params(forward, params)
    g = model.graph
    g.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
    et = g.output[1].type.tensor_type.elem_type
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("probs", et, ["N", None]))
    return G.mc_dropout(model) if mc else G.to_inference(model)


def mc_dropout_predict(forward, params, x, *, samples=50, backend="ort"):
    """Predictive mean and variance of the class probabilities over ``samples`` dropout masks (one
    session; every run draws the next masks of the seeded stream)."""
    runner = Runner(predictive_model(forward, params, mc=True), backend)
    labels = np.zeros(len(x), dtype=np.int64)  # unused by the probs output, but a graph input
    draws = np.stack([runner.run({"X": x, "labels": labels})["probs"] for _ in range(samples)])
    return draws.mean(axis=0), draws.var(axis=0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1234, help="the Dropout node's seed")
    ap.add_argument("--backend", choices=("ort", "reference"), default="ort")
    ap.add_argument("--mc-samples", type=int, default=50)
    args = ap.parse_args(argv)
    losses, params, forward = train(args.steps, args.lr, seed=args.seed, backend=args.backend, log=print)
    x, labels = make_data(seed=0, sample_seed=99)
    inference = Runner(predictive_model(forward, params, mc=False), args.backend)
    probs = inference.run({"X": x, "labels": labels})["probs"]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; held-out accuracy {np.mean(probs.argmax(1) == labels):.3f}")
    mean, var = mc_dropout_predict(forward, params, x, samples=args.mc_samples, backend=args.backend)
    print(f"MC-dropout ({args.mc_samples} samples): accuracy of the mean {np.mean(mean.argmax(1) == labels):.3f}, "
          f"mean predictive variance {var.mean():.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
