"""``caffe2-ort train``: from a model plus a loss or from a training-step model, batches or one batch,
progress lines, --export, --plot, and one-line errors (exit 2) for bad input."""

import sys

import numpy as np
import onnx
import pytest

from caffe2_ort import cli
from caffe2_ort import training as T
from test_training import mlp_model


@pytest.fixture
def files(tmp_path):
    model, feeds = mlp_model(dropout=True)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    rng = np.random.RandomState(1)
    xs = np.stack([feeds["X"], rng.standard_normal(feeds["X"].shape).astype(np.float32)])
    batches = tmp_path / "batches.npz"
    np.savez(batches, X=xs, labels=np.stack([feeds["labels"], feeds["labels"][::-1].copy()]))
    one = tmp_path / "one.npz"
    np.savez(one, **feeds)
    return tmp_path, path, batches, one, feeds


def run(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_from_model_and_loss_with_batches_and_export(files, capsys):
    tmp, path, batches, _, feeds = files
    rc, out, err = run(["train", str(path), "--data", str(batches), "--loss", "loss", "--optimizer", "momentum",
                        "--lr", "0.1", "--momentum", "0.8", "--steps", "6", "--export", str(tmp / "t.onnx"),
                        "--save", str(tmp / "step.onnx")], capsys)
    assert rc == 0, err
    lines = [l for l in out.splitlines() if l.startswith("step ")]
    assert len(lines) == 6 and lines[0].startswith("step 1/6 loss ") and lines[-1].endswith("steps/s")
    assert "trained 6 step(s) on 2 batch(es)" in out
    exported = onnx.load(str(tmp / "t.onnx"))
    assert [o.name for o in exported.graph.output] == ["probs"]
    assert T.is_training_model(onnx.load(str(tmp / "step.onnx")))


def test_train_a_training_step_model_on_one_batch(files, capsys):
    tmp, path, _, one, _ = files
    model, _ = mlp_model(dropout=False)
    step = tmp / "step.onnx"
    onnx.save(T.make_training_model(model, "loss", optimizer="adam", lr=0.05), str(step))
    rc, out, err = run(["train", str(step), "--data", str(one), "--steps", "30"], capsys)
    assert rc == 0, err
    first, last = (float(x) for x in out.splitlines()[-1].split("loss ")[1].split(" -> "))
    assert last < 0.5 * first and "on 1 batch(es)" in out


def test_plot_writes_a_png(files, capsys):
    pytest.importorskip("matplotlib")
    tmp, path, batches, _, _ = files
    rc, out, err = run(["train", str(path), "--data", str(batches), "--loss", "loss", "--steps", "3",
                        "--plot", str(tmp / "loss.png")], capsys)
    assert rc == 0, err
    assert (tmp / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(files, capsys, monkeypatch):
    tmp, path, batches, _, _ = files
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, out, err = run(["train", str(path), "--data", str(batches), "--loss", "loss", "--plot", str(tmp / "p.png")], capsys)
    assert rc == 2 and err == "error: --plot needs matplotlib: pip install 'caffe2-ort[plot]'\n"


def _bad(tmp, **arrays):
    p = tmp / "bad.npz"
    np.savez(p, **arrays)
    return str(p)


@pytest.mark.parametrize("case,match", [
    ("unknown_loss", "loss 'nope' is not a tensor of the graph"),
    ("no_loss", "is not a training-step model: give --loss NAME"),
    ("wrong_shape", r"array 'X' has shape \[8, 5\]; expected \[8,4\] or \[batches,8,4\]"),
    ("wrong_dtype", "array 'labels' is int32, the input is int64"),
    ("missing_array", "no array 'labels' \\(the model is fed X, labels\\)"),
    ("extra_array", "array\\(s\\) Z name no fed input"),
    ("non_float_param", "parameter 'count' is not a floating-point tensor"),
    ("unsupported_op", "no gradient rule for Erf x1 \\(erf_node\\)"),
    ("not_onnx", "not an ONNX model"),
    ("missing_file", "No such file"),
])
def test_bad_input_is_one_line_exit_2(files, capsys, case, match):
    tmp, path, batches, one, feeds = files
    argv = ["train", str(path), "--data", str(one), "--loss", "loss", "--steps", "1"]
    if case == "unknown_loss":
        argv[argv.index("loss")] = "nope"
    elif case == "no_loss":
        argv = argv[:4] + argv[6:]
    elif case == "wrong_shape":
        argv[3] = _bad(tmp, X=np.zeros((8, 5), np.float32), labels=feeds["labels"])
    elif case == "wrong_dtype":
        argv[3] = _bad(tmp, X=feeds["X"], labels=feeds["labels"].astype(np.int32))
    elif case == "missing_array":
        argv[3] = _bad(tmp, X=feeds["X"])
    elif case == "extra_array":
        argv[3] = _bad(tmp, Z=feeds["X"], **feeds)
    elif case in ("non_float_param", "unsupported_op"):
        from onnx import helper as h, numpy_helper
        model = onnx.load(str(path))
        if case == "non_float_param":
            model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "count"))
            argv += ["--params", "W1", "count"]
        else:
            for n in model.graph.node:
                if n.op_type == "Relu":
                    n.op_type, n.name = "Erf", "erf_node"
        onnx.save(model, str(tmp / "m2.onnx"))
        argv[1] = str(tmp / "m2.onnx")
    elif case == "not_onnx":
        (tmp / "junk.onnx").write_bytes(b"\x01\x02garbage")
        argv[1] = str(tmp / "junk.onnx")
    elif case == "missing_file":
        argv[1] = str(tmp / "absent.onnx")
    rc, out, err = run(argv, capsys)
    assert rc == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    import re
    assert re.search(match, err), err
