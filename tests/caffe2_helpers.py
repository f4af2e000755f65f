"""Helpers shared by the Caffe2 converter tests: the ../shared model-zoo nets, small NetDef
builders, and running converted models in ONNX Runtime with the ai.caffe2 plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffe2_ort.caffe2 import netdef, schema
from ort_helpers import session as ort_session
from ort_helpers import SHARED, shared_path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def _zoo_nets():
    """Every net in ../shared/caffe2_models (the SPEC: every net there must convert and match). Without
    ../shared, the three known names: shared_file() then fails under CI and skips elsewhere."""
    found = sorted(p.parent.name for p in (SHARED / "caffe2_models").glob("*/predict_net.pbtxt"))
    return tuple(found) or ("bvlc_alexnet", "inception_v1", "resnet50")


ZOO_NETS = _zoo_nets()


def shared_file(*parts) -> Path:
    """A path under ../shared (beside the repository): fails when CI=true and it is missing, else skips."""
    return shared_path(*parts)


def zoo_net(name):
    """(predict NetDef, value_info) of a model-zoo net in ../shared/caffe2_models."""
    net = netdef.read_netdef(shared_file("caffe2_models", name, "predict_net.pbtxt"))
    vi = netdef.read_value_info(shared_file("caffe2_models", name, "value_info.json"))
    return net, vi


def make_net(name="test_net", ops=(), inputs=(), outputs=()):
    """A NetDef from (type, inputs, outputs, {arg: value}) tuples."""
    net = schema.NetDef(name=name, external_input=list(inputs), external_output=list(outputs))
    for spec in ops:
        type_, ins, outs = spec[:3]
        args = spec[3] if len(spec) > 3 else {}
        op = net.op.add(type=type_, input=ins, output=outs)
        netdef.add_args(op, args)
    return net


def init_net_of(blobs):
    init = schema.NetDef(name="init")
    for k, v in blobs.items():
        init.op.append(netdef.make_given_fill(k, np.asarray(v)))
    return init


def session(model):
    """An ORT CPU session of an ONNX model (ModelProto or path) with the ai.caffe2 ops registered."""
    return ort_session(Path(model).read_bytes() if isinstance(model, (str, Path)) else model)


def run_ort(model, feeds):
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def max_rel_error(got, ref):
    """Largest |got - ref| divided by the largest |ref| (1 when ref is all zeros)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    return float(np.max(np.abs(got - ref))) / scale if ref.size else 0.0


def assert_matches_caffe2(label, got, ref, tolerance, ours="ORT", check_dtype=False):
    """One blob against Caffe2's: same shape (and dtype when asked), floats within ``tolerance`` of
    :func:`max_rel_error`, everything else exactly equal."""
    assert got.shape == ref.shape, f"{label}: {ours} shape {got.shape}, Caffe2 {ref.shape}"
    if check_dtype:
        assert got.dtype == ref.dtype, f"{label}: {ours} dtype {got.dtype}, Caffe2 {ref.dtype}"
    if ref.dtype.kind == "f":
        err = max_rel_error(got, ref)
        assert err <= tolerance, f"{label}: max |{ours} - Caffe2| = {err:.3g} x max |Caffe2|"
    else:
        np.testing.assert_array_equal(got, ref, err_msg=label)


def run_cli(capsys, *argv):
    """``caffe2-ort`` converter commands in-process: (exit status, stdout, stderr)."""
    from caffe2_ort.caffe2 import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err
