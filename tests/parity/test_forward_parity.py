"""Forward parity with real Caffe2: every net of ../shared/caffe2_models and models/, with synthesised
weights, run by Caffe2 and by ONNX Runtime with our plugin, agrees within 1e-4 of the output's
largest magnitude (integer outputs exactly). Dropout and DropoutGrad run in test mode here (their
training masks are checked in test_dropout_stream.py)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_helpers import MODELS, ZOO_NETS, assert_matches_caffe2, run_ort, shared_file
from caffe2_ort.caffe2 import netdef, schema
from caffe2_ort.caffe2.converter import convert
from caffe2_ort.caffe2.synth import synthesize

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4
LOCAL_NETS = tuple(sorted(p.parent.name for p in MODELS.glob("*/predict_net.pbtxt")))


def test_models_dir_has_nets():
    assert LOCAL_NETS, f"no predict_net.pbtxt under {MODELS}"


def in_test_mode(net):
    """A copy of ``net`` whose Dropout and DropoutGrad ops have is_test = 1."""
    out = schema.NetDef()
    out.CopyFrom(net)
    for op in out.op:
        if op.type in ("Dropout", "DropoutGrad"):
            args = [a for a in op.arg if a.name == "is_test"]
            if args:
                args[0].i = 1
            else:
                netdef.add_args(op, {"is_test": 1})
    return out


def _load(kind, name):
    if kind == "zoo":
        folder = shared_file("caffe2_models", name)
    else:
        folder = MODELS / name
    net = netdef.read_netdef(folder / "predict_net.pbtxt")
    vi = netdef.read_value_info(folder / "value_info.json")
    return net, vi


def _feeds(vi, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(dtype) for k, (dtype, shape) in vi.items()}


@pytest.mark.parametrize(
    "kind,name", [("zoo", n) for n in ZOO_NETS] + [("models", n) for n in LOCAL_NETS], ids=lambda v: str(v)
)
def test_forward_matches_caffe2(caffe2, kind, name):
    net, vi = _load(kind, name)
    net = in_test_mode(net)
    init, weights = synthesize(net, vi, seed=1)
    feeds = _feeds(vi, seed=2)

    ref = caffe2.run(net, init=[init], feed=feeds)
    conv = convert(net, None, vi, init_blobs=weights)
    got = run_ort(conv.model, feeds)

    compared = 0
    for blob in net.external_output:
        ort_value = got[conv.names[blob]]
        if ort_value.dtype == bool:
            continue  # a test-mode mask: Caffe2 leaves it unwritten, ORT gives all-true
        key = f"step0/{blob}"
        assert key in ref, f"{name}: Caffe2 left no tensor in {blob!r}"
        c2 = ref[key]
        assert_matches_caffe2(f"{name}/{blob}", ort_value, c2, TOLERANCE)
        compared += 1
    assert compared, f"{name}: no output compared"
