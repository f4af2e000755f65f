"""The training benchmark's pieces (``caffe2-ort bench --training``): VGG19's NetDef, the loss tail,
one measured row with its profile, and the CLI hook. The benchmark itself is not a test."""

import json

import numpy as np
import pytest

from caffe2_ort import bench_train as B
from caffe2_ort import cli
from caffe2_ort.caffe2 import convert, synthesize
from caffe2_helpers import shared_file

pytest.importorskip("torch")


def test_vgg19_netdef_is_configuration_e():
    net = B.vgg19_netdef()
    types = [op.type for op in net.op]
    assert types.count("Conv") == 16 and types.count("FC") == 3 and types.count("MaxPool") == 5
    assert types.count("Dropout") == 2 and types[-1] == "Softmax"
    vi = {"data": (np.dtype(np.float32), (1, 3, 64, 64))}
    init, _ = synthesize(net, vi, seed=0, width=4, fc_width=8)
    forward, classes = B.training_forward(convert(net, init, vi).model, 1)
    assert classes == 8
    sce = [n for n in forward.graph.node if n.op_type == "SoftmaxCrossEntropyLoss"]
    assert len(sce) == 1 and list(sce[0].input) == ["fc8", "label"]


def test_one_measured_row_with_profile(tmp_path, monkeypatch):
    zoo = shared_file("caffe2_models")
    monkeypatch.chdir(tmp_path)  # ORT writes its profile into the working directory
    rows = B.measure(["alexnet"], [1], [1], batch=2, reps=1, zoo=zoo, profile=True, log=lambda *a, **k: None)
    (row,) = rows
    assert row["net"] == "alexnet" and row["ort_ms"] > 0 and row["torch_ms"] > 0
    assert np.isclose(row["ratio"], row["ort_ms"] / row["torch_ms"])
    parts = {part for part, _, _ in row["profile"]}
    assert parts <= {"forward", "backward+update"} and "backward+update" in parts
    assert 0 < sum(share for _, _, share in row["profile"]) <= 1 + 1e-9
    assert not list(tmp_path.glob("onnxruntime_profile*"))  # profile files are cleaned up


def test_profile_counts_the_lowered_forward_lrn_as_forward():
    forward, step, _ = B.build("alexnet", 1, 2, shared_file("caffe2_models"))
    names = B.forward_node_names(step, "loss")
    lrn = {n.name for n in forward.graph.node if n.op_type == "LRN"}
    assert lrn and {n.name for n in forward.graph.node} - lrn <= names
    by_name = {n.name: n for n in step.graph.node}
    assert sum(by_name[k].op_type == "Sqrt" for k in names) == 2 * len(lrn)  # s^-3/4 of each lowered LRN
    assert not any(o.endswith("_grad") for k in names for o in by_name[k].output)
    with pytest.raises(ValueError, match="no node of the step model writes 'nope'"):
        B.forward_node_names(step, "nope")


def test_bench_training_flag_reaches_the_training_benchmark(capsys, monkeypatch):
    seen = {}
    monkeypatch.setattr(B, "measure", lambda *a, **k: seen.update(args=a) or [
        {"net": "alexnet", "width": "x1", "threads": 1, "batch": 8, "ort_ms": 2.0, "torch_ms": 1.0, "ratio": 2.0}])
    assert cli.main(["bench", "--training", "--train-nets", "alexnet", "--train-widths", "1", "--threads", "1", "--json"]) == 0
    assert seen["args"][:3] == (["alexnet"], [1], [1])
    assert json.loads(capsys.readouterr().out)[0]["ratio"] == 2.0


def test_training_options_have_their_own_help_group(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    start = text.index("training step (--training):")
    head = "\noptions:" if "\noptions:" in text else "\noptional arguments:"  # Python >= 3.10 / 3.9
    group, others = text[start:], text[text.index(head):start]  # the usage line names them all
    for option in ("--training", "--train-nets", "--train-widths", "--train-batch", "--train-reps", "--train-zoo",
                   "--train-profile"):
        assert option in group and option not in others, option
