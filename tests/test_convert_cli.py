"""The convert, synth-init and run commands, and their one-line errors (exit status 2, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from caffe2_ort.caffe2 import cli, netdef

from caffe2_helpers import MODELS, REPO, make_net, shared_file

TINY = MODELS / "tiny_dropout_net"


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_tiny(tmp_path, capsys):
    out_path = tmp_path / "m.onnx"
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--init", TINY / "init_net.pb",
                           "--value-info", TINY / "value_info.json", "-o", out_path)  # fmt: skip
    assert rc == 0, err
    assert out.startswith(f"wrote {out_path}: 7 nodes") and "ai.caffe2::Dropout x1" in out
    model = onnx.load(str(out_path))
    onnx.checker.check_model(model)
    committed = onnx.load(str(TINY / "model.onnx"))
    model.producer_version = ""
    assert model.SerializeToString(deterministic=True) == committed.SerializeToString(deterministic=True)


def test_convert_onnx_dropout_and_input_override(tmp_path, capsys):
    out_path = tmp_path / "m.onnx"
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--init", TINY / "init_net.pb",
                           "--input", "data:1,3,8,8", "--dropout", "onnx", "--opset", "18", "-o", out_path)  # fmt: skip
    assert rc == 0, err
    model = onnx.load(str(out_path))
    assert {o.domain for o in model.opset_import} == {""} and model.opset_import[0].version == 18
    assert "Dropout x1" in out and "ai.caffe2" not in out


def test_synth_init_then_convert_a_zoo_net(tmp_path, capsys):
    pred = shared_file("caffe2_models", "bvlc_alexnet", "predict_net.pbtxt")
    init = tmp_path / "init_net.pb"
    rc, out, err = run_cli(capsys, "synth-init", pred, "--input", "data:1,3,227,227", "--width", "8", "--seed", "4", "-o", init)
    assert rc == 0, err
    assert out.startswith(f"wrote {init}: 16 weights")
    assert len(netdef.read_netdef(init).op) == 16
    rc, out, err = run_cli(capsys, "convert", pred, "--init", init, "--input", "data:1,3,227,227", "-o", tmp_path / "a.onnx")
    assert rc == 0, err


def test_run_predict_net_and_onnx(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", TINY / "predict_net.pbtxt", "--value-info", TINY / "value_info.json", "--compare",
                           "--save-onnx", tmp_path / "t.onnx")  # fmt: skip
    assert rc == 0, err
    assert "using" in out and "init_net.pb" in out
    assert "  prob: shape [1, 10] float32  min " in out and "_fc1_mask: shape [1, 10] bool" in out
    assert "_fc1_mask: identical" in out
    rc, out, err = run_cli(capsys, "run", TINY / "predict_net.pbtxt", "--value-info", TINY / "value_info.json", "--synth")
    assert rc == 0 and "synthesised random weights for 4 blobs" in out
    np.save(tmp_path / "x.npy", np.ones((1, 3, 8, 8), np.float32))
    rc, out, err = run_cli(capsys, "run", tmp_path / "t.onnx", "--data", f"data={tmp_path / 'x.npy'}")
    assert rc == 0, err
    assert "data: shape [1, 3, 8, 8] float32  min 1 max 1 mean 1" in out and "prob: shape [1, 10]" in out


def _assert_one_line_error(rc, out, err, expected):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expected in lines[0], lines[0]


def test_error_truncated_file(tmp_path, capsys):
    data = (TINY / "init_net.pb").read_bytes()
    (tmp_path / "cut.pb").write_bytes(data[: len(data) // 2])
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--init", tmp_path / "cut.pb",
                           "--value-info", TINY / "value_info.json", "-o", tmp_path / "m.onnx")  # fmt: skip
    _assert_one_line_error(rc, out, err, "cut.pb: not a Caffe2 NetDef, or truncated")


def test_error_not_a_netdef(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "convert", TINY / "model.onnx", "--value-info", TINY / "value_info.json", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(rc, out, err, "model.onnx: not a Caffe2 NetDef")


def test_error_weight_without_fill(tmp_path, capsys):
    init = netdef.read_netdef(TINY / "init_net.pb")
    del init.op[1]  # conv1_b
    netdef.write_netdef(init, tmp_path / "init.pb")
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--init", tmp_path / "init.pb",
                           "--value-info", TINY / "value_info.json", "-o", tmp_path / "m.onnx")  # fmt: skip
    _assert_one_line_error(rc, out, err, "weight 'conv1_b' (input 2 of Conv op #0): init_net has no fill op for it")


def test_error_input_without_value_info(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--init", TINY / "init_net.pb", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(rc, out, err, "no value info for input 'data' (input 0 of Conv op #0)")
    rc, out, err = run_cli(capsys, "synth-init", TINY / "predict_net.pbtxt", "-o", tmp_path / "i.pb")
    _assert_one_line_error(rc, out, err, "synth-init needs the data inputs' shapes")


def test_error_fill_count(tmp_path, capsys):
    init = netdef.read_netdef(TINY / "init_net.pb")
    del init.op[0].arg[1].floats[-3:]
    netdef.write_netdef(init, tmp_path / "init.pb")
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--init", tmp_path / "init.pb",
                           "--value-info", TINY / "value_info.json", "-o", tmp_path / "m.onnx")  # fmt: skip
    _assert_one_line_error(rc, out, err, "init_net op #0 GivenTensorFill for 'conv1_w': shape [4, 3, 3, 3] needs 108 values, the op has 105")


def test_error_unsupported_ops(tmp_path, capsys):
    net = make_net(ops=[("Gather", ["x", "i"], ["y"]), ("Gather", ["y", "i"], ["z"]), ("Im2Col", ["z"], ["w"])],
                   inputs=["x", "i"], outputs=["w"])  # fmt: skip
    netdef.write_netdef(net, tmp_path / "p.pbtxt")
    rc, out, err = run_cli(capsys, "convert", tmp_path / "p.pbtxt", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(rc, out, err, "predict_net has 3 unsupported op(s) of 2 kind(s): Gather x2, Im2Col x1")


@pytest.mark.parametrize("spec", ["data", "data:1,x,3", ":1,2"])
def test_error_bad_input_spec(tmp_path, capsys, spec):
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--input", spec, "-o", tmp_path / "m.onnx")
    _assert_one_line_error(rc, out, err, f"--input {spec!r}")


def test_error_missing_file(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", tmp_path / "nope.pbtxt", "--input", "data:1")
    _assert_one_line_error(rc, out, err, "nope.pbtxt: cannot read")


def test_readme_demo_command_through_the_package_entry_point():
    """The README's demo: `caffe2-ort run models/tiny_dropout_net/predict_net.pbtxt --value-info ...`."""
    import caffe2_ort

    # The source tree's package holds no library (the finder searches only the package): use this one's.
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), CAFFE2_ORT_LIBRARY=caffe2_ort.get_library_path("cpu"))
    r = subprocess.run(
        [sys.executable, "-m", "caffe2_ort", "run", "models/tiny_dropout_net/predict_net.pbtxt",
         "--value-info", "models/tiny_dropout_net/value_info.json"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "prob: shape [1, 10] float32" in r.stdout and "ai.caffe2::Dropout x1" in r.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "caffe2_ort", "convert", "models/tiny_dropout_net/model.onnx", "-o", os.devnull],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_error_binary_value_info(tmp_path, capsys):
    (tmp_path / "vi.json").write_bytes(bytes(range(256)) + b"\xff\xfe")
    rc, out, err = run_cli(capsys, "convert", TINY / "predict_net.pbtxt", "--value-info", tmp_path / "vi.json",
                           "-o", tmp_path / "m.onnx")  # fmt: skip
    _assert_one_line_error(rc, out, err, "vi.json: not a value_info.json file")


def test_error_data_file_that_is_not_npy(tmp_path, capsys):
    (tmp_path / "x.npy").write_bytes(b"this is not numpy")
    rc, out, err = run_cli(capsys, "run", TINY / "predict_net.pbtxt", "--value-info", TINY / "value_info.json",
                           "--data", f"data={tmp_path / 'x.npy'}")  # fmt: skip
    _assert_one_line_error(rc, out, err, "is not a .npy array file")
