"""The worked example examples/train_mlp.py: gradients, training, reproducibility, MC-dropout, optimisers."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as h

import caffe2_ort
from caffe2_ort import graph as G

ort = pytest.importorskip("onnxruntime")
try:
    caffe2_ort.get_library_path()
except caffe2_ort.LibraryNotFoundError as e:  # pragma: no cover - before the native build
    pytest.skip(f"native library not built: {e}", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("train_mlp", Path(__file__).resolve().parents[1] / "examples" / "train_mlp.py")
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)


def test_gradients_match_finite_differences_with_mask_fixed():
    forward = ex.build_mlp(hidden=6, activation="Tanh", dtype=np.float64, ratio=0.5, seed=77)
    params = G.initial_params(forward)
    train = G.build_training_model(forward, "loss", list(params))
    x, labels = ex.make_data(n=12, dtype=np.float64)
    first = ex.Runner(train).run({"X": x, "labels": labels, **params})
    mask = first["a1_drop_mask"]
    assert 0 < mask.mean() < 1
    fixed = G.with_fixed_masks(train)
    runner = ex.Runner(fixed)
    feeds = {"X": x, "labels": labels, "a1_drop_mask": mask}
    out = runner.run({**feeds, **params})
    assert out["loss"] == first["loss"]  # the fixed-mask graph reproduces the drawn run exactly
    step, threshold = 0.05, 0.005  # Caffe2's GradientChecker defaults
    for p, v in params.items():
        for idx in np.ndindex(v.shape):
            plus, minus = v.copy(), v.copy()
            plus[idx] += step
            minus[idx] -= step
            est = (runner.run({**feeds, **params, p: plus})["loss"] - runner.run({**feeds, **params, p: minus})["loss"]) / (2 * step)
            assert np.isclose(out[f"{p}_grad"][idx], est, atol=threshold, rtol=threshold), (p, idx)
            assert np.array_equal(out[f"{p}_grad"], first[f"{p}_grad"])


def test_loss_falls_and_runs_are_bit_identical():
    losses, params, _ = ex.train(steps=60, seed=5)
    assert losses[-1] < 0.5 * losses[0]
    losses2, params2, _ = ex.train(steps=60, seed=5)
    assert losses == losses2 and all(params[k].tobytes() == params2[k].tobytes() for k in params)
    losses3, _, _ = ex.train(steps=60, seed=6)
    assert losses3 != losses


def test_reference_backend_agrees_with_ort():
    a, pa, _ = ex.train(steps=15, seed=9, batch=32)
    b, pb, _ = ex.train(steps=15, seed=9, batch=32, backend="reference")
    # Same masks (bit-exact Dropout); Gemm/Softmax in float32 round differently in MLAS and numpy.
    assert np.allclose(a, b, rtol=1e-4) and all(np.allclose(pa[k], pb[k], rtol=1e-3, atol=1e-5) for k in pa)


def test_mc_dropout_mean_and_variance():
    _, params, forward = ex.train(steps=40, seed=3)
    x, _ = ex.make_data(n=20, sample_seed=5)
    mean, var = ex.mc_dropout_predict(forward, params, x, samples=30)
    assert mean.shape == var.shape == (20, 3)
    assert np.allclose(mean.sum(axis=1), 1, atol=1e-5) and (var > 0).any() and (var >= 0).all()
    det = ex.Runner(ex.predictive_model(forward, params, mc=False))
    runs = [det.run({"X": x, "labels": np.zeros(20, np.int64)})["probs"] for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs)  # inference form: deterministic


def test_ort_optimiser_keeps_our_dropout_but_removes_onnx_dropout(tmp_path):
    _, params, forward = ex.train(steps=1, seed=3)
    ours = ex.predictive_model(forward, params, mc=False)  # ai.caffe2 Dropout, is_test=1
    onnx_form, _ = G.to_onnx_dropout(ours, warn=False)  # standard Dropout, training_mode=False
    kept = {}
    for label, model in (("ours", ours), ("onnx", onnx_form), ("mc", G.mc_dropout(ours))):
        path = tmp_path / f"{label}.onnx"
        ex.Runner(model, optimized_model_path=path,
                  graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        opt = onnx.load(str(path))
        kept[label] = [(n.domain, n.op_type) for n in opt.graph.node if n.op_type == "Dropout"]
    assert kept["ours"] == [("ai.caffe2", "Dropout")]
    assert kept["mc"] == [("ai.caffe2", "Dropout")]
    assert kept["onnx"] == []
