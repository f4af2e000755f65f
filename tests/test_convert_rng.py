"""The converter's --rng flag: "caffe2" writes rng="caffe2_mt19937" on every converted Dropout, so a
converted net draws real Caffe2's own CPU masks; the default stays Philox."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from caffe2_ort import reference as R
from caffe2_ort.caffe2 import cli, netdef
from caffe2_ort.caffe2.converter import convert
from caffe2_ort.caffe2.errors import Caffe2Error
from caffe2_helpers import MODELS
from ort_helpers import session

TINY = MODELS / "tiny_dropout_net"
TRAIN = MODELS / "train_dropout_net"


def _dropouts(model):
    return [n for n in model.graph.node if n.domain == "ai.caffe2" and n.op_type == "Dropout"]


def _rng(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("rng")


def test_cli_rng_caffe2_writes_the_attribute_on_every_dropout(tmp_path, capsys):
    for flag, expected in ((["--rng", "caffe2"], b"caffe2_mt19937"), ([], None)):
        out_path = tmp_path / f"m{len(flag)}.onnx"
        rc = cli.main(["convert", str(TINY / "predict_net.pbtxt"), "--init", str(TINY / "init_net.pb"),
                       "--value-info", str(TINY / "value_info.json"), "-o", str(out_path), *flag])
        assert rc == 0, capsys.readouterr().err
        drops = _dropouts(onnx.load(str(out_path)))
        assert drops and all(_rng(n) == expected for n in drops)


def test_converted_net_draws_caffe2s_stream():
    net = netdef.read_netdef(TRAIN / "predict_net.pbtxt")
    vi = netdef.read_value_info(TRAIN / "value_info.json")
    conv = convert(net, netdef.read_netdef(TRAIN / "init_net.pb"), vi, rng="caffe2")
    drops = _dropouts(conv.model)
    assert len(drops) == 2 and all(_rng(n) == b"caffe2_mt19937" for n in drops)  # the CUDNN one too
    (drop,) = [n for n in drops if n.output[1] == "h_mask"]  # device_option.random_seed 7
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in drop.attribute}
    assert attrs["seed"] == 7 and attrs["rng"] == b"caffe2_mt19937"
    # the mask output of the converted Dropout, against Caffe2's stream for random_seed 7
    mask_name = drop.output[1]
    if mask_name not in [o.name for o in conv.model.graph.output]:
        conv.model.graph.output.append(onnx.helper.make_tensor_value_info(mask_name, onnx.TensorProto.BOOL, None))
    feeds = {}
    for inp in conv.model.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    sess = session(conv.model)
    names = [o.name for o in sess.get_outputs()]
    stream = R.DropoutStream(7, rng="caffe2_mt19937")
    for _ in range(2):
        mask = dict(zip(names, sess.run(None, feeds)))[mask_name]
        assert np.array_equal(mask, stream.draw(mask.shape, ratio=0.25))


def test_run_compare_replays_the_caffe2_stream(capsys):
    rc = cli.main(["run", str(TINY / "predict_net.pbtxt"), "--value-info", str(TINY / "value_info.json"), "--compare",
                   "--rng", "caffe2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "_fc1_mask: identical" in out


def test_rng_caffe2_needs_caffe2_dropout_nodes(capsys):
    net = netdef.read_netdef(TINY / "predict_net.pbtxt")
    with pytest.raises(Caffe2Error, match="rng 'caffe2' needs dropout='caffe2'"):
        convert(net, netdef.read_netdef(TINY / "init_net.pb"), netdef.read_value_info(TINY / "value_info.json"),
                dropout="onnx", rng="caffe2")
    with pytest.raises(Caffe2Error, match="rng must be one of philox, caffe2, not 'mt'"):
        convert(net, rng="mt")
    rc = cli.main(["convert", str(TINY / "predict_net.pbtxt"), "--init", str(TINY / "init_net.pb"), "--value-info",
                   str(TINY / "value_info.json"), "--dropout", "onnx", "--rng", "caffe2", "-o", "/dev/null"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "needs dropout='caffe2'" in err
