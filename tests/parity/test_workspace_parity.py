"""Legacy Caffe2 scripts (tests/workspace_scripts) run unchanged under real Caffe2 and, with their two
imports changed, under caffe2_ort.workspace: what they save agrees — float blobs within 1e-4 of the
blob's largest magnitude, masks, integers, blob lists and HasBlob answers exactly."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_helpers import ZOO_NETS, assert_matches_caffe2, shared_file
from caffe2_oracle import find_venv_python
from caffe2_ort.caffe2 import netdef
from caffe2_ort.caffe2.synth import synthesize
from workspace_port import run_script

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def caffe2_python():
    return find_venv_python()


def assert_same(ours: dict, ref: dict, label: str, *, only_ours=(), only_ref=()):
    """Every saved array agrees; ``only_ours`` / ``only_ref``: keys only one side saves (the documented
    differences)."""
    missing = set(ref) - set(ours) - set(only_ref)
    assert not missing, f"{label}: missing under caffe2_ort: {sorted(missing)}"
    extra = set(ours) - set(ref) - set(only_ours)
    assert not extra, f"{label}: saved only under caffe2_ort: {sorted(extra)}"
    for key, c2 in ref.items():
        if key not in ours:
            continue
        assert_matches_caffe2(f"{label}/{key}", ours[key], c2, TOLERANCE, ours="ours", check_dtype=True)


def _test_mode_masks(net):
    return {"blob/" + op.output[1] for op in net.op if op.type == "Dropout" and len(op.output) > 1
            and any(a.name == "is_test" and a.i for a in op.arg)}


def _not_computed(net):
    """Side outputs the converter computes no value for (LRN's scale, Concat's split sizes): the
    workspace leaves them unwritten."""
    return {"blob/" + op.output[1] for op in net.op if op.type in ("LRN", "Concat") and len(op.output) > 1}


@pytest.mark.parametrize("name", ZOO_NETS)
def test_zoo_inference_script(caffe2_python, tmp_path, name):
    folder = shared_file("caffe2_models", name)
    net = netdef.read_netdef(folder / "predict_net.pbtxt")
    vi = netdef.read_value_info(folder / "value_info.json")
    init, _ = synthesize(net, vi, seed=5)
    netdef.write_netdef(init, tmp_path / "init_net.pb")
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "data.npz", **{k: rng.standard_normal(s).astype(dt) for k, (dt, s) in vi.items()})
    args = (folder / "predict_net.pbtxt", tmp_path / "init_net.pb", tmp_path / "data.npz")

    ref = run_script("zoo_inference.py", *args, python=caffe2_python)
    ours = run_script("zoo_inference.py", *args)
    # Caffe2 leaves a test-mode Dropout's mask unwritten; ours holds the all-true mask
    masks = _test_mode_masks(net)
    for key in masks & set(ours):
        assert ours[key].dtype == bool and ours[key].all()
    assert_same(ours, ref, name, only_ours=masks, only_ref=_not_computed(net))
    intermediates = [k for k in ref if k.startswith("blob/") and k[5:] not in set(net.external_output)]
    assert len(intermediates) > 10, f"{name}: too few intermediate blobs compared ({len(intermediates)})"


def test_run_operator_once_dropout_and_grad(caffe2_python):
    ref = run_script("dropout_ops.py", python=caffe2_python)
    ours = run_script("dropout_ops.py")
    assert_same(ours, ref, "dropout_ops")
    np.testing.assert_array_equal(ref["run0/mask"], ref["run1/mask"])  # a fresh operator each call
    assert 0 < ref["run0/mask"].mean() < 1


def test_created_net_keeps_its_dropout_streams(caffe2_python):
    ref = run_script("dropout_net.py", python=caffe2_python)
    ours = run_script("dropout_net.py")
    assert_same(ours, ref, "dropout_net")
    assert not np.array_equal(ref["run0/mask1"], ref["run1/mask1"])  # the stream carried on
    np.testing.assert_array_equal(ref["once0/mask1"], ref["once1/mask1"])  # RunNetOnce: fresh


def test_blobs_has_blob_reset_and_errors(caffe2_python):
    ref = run_script("blobs.py", python=caffe2_python)
    ours = run_script("blobs.py")
    errors = [k for k in ref if k.startswith("err/")]
    for key in errors:  # both refused; the messages are compared by what they name
        assert str(ref[key]) and str(ours[key]), f"{key}: Caffe2 {ref[key]!r}, ours {ours[key]!r}"
    assert_same({k: v for k, v in ours.items() if k not in errors}, {k: v for k, v in ref.items() if k not in errors}, "blobs")
    for key, needle in {"err/fetch": "Can't find blob: nope", "err/runnet": "Can't find net no_such_net",
                        "err/missing": "Encountered a non-existing input blob: missing",
                        "err/twice": "refuse to overwrite an existing net"}.items():
        assert needle in str(ref[key]) and needle in str(ours[key]), f"{key}: Caffe2 {ref[key]!r}, ours {ours[key]!r}"


@pytest.mark.parametrize("name", ["mlp_dropout_sgd", "lenet_dropout_momentum"])
def test_caffe2_init_net_random_fills(caffe2_python, name):
    init = shared_file("caffe2_train_nets", name, "init_net.pbtxt")
    ref = run_script("init_fills.py", init, python=caffe2_python)
    ours = run_script("init_fills.py", init)
    assert_same(ours, ref, name)


@pytest.mark.parametrize("name", ["mlp_dropout_sgd", "lenet_dropout_momentum"])
def test_training_net_four_steps(caffe2_python, name):
    """RunNet of a Caffe2 training net: parameters, optimizer state and loss after each of 4 steps."""
    folder = shared_file("caffe2_train_nets", name)
    ref = run_script("train_net.py", folder, 4, python=caffe2_python)
    assert {"step3/loss", "step3/optimizer_iteration"} <= set(ref)
    ours = run_script("train_net.py", folder, 4)
    assert_same(ours, ref, f"{name} training")
    first = [k for k in ref if k.startswith("step0/") and ref[k].dtype.kind == "f" and k != "step0/loss"]
    assert any(not np.array_equal(ref[k], ref["step3/" + k[6:]]) for k in first), "the parameters never moved"
