"""The convert, synth-init and run commands, and their one-line errors (exit status 2, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from caffe2_ort.caffe2 import netdef

from caffe2_helpers import MODELS, REPO, init_net_of, make_net, run_cli, shared_file

TINY = MODELS / "tiny_dropout_net"


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


# ----------------------------------------------------------------------------------------------
# Hostile input (issue 14): every reproducer, run in a child process under a memory cap and a
# timeout (tests/fuzz/harness.py), must end in exit 0 or in exit 2 with exactly one `error:` line.

from fuzz.harness import check_outcome, run_cli as run_capped  # noqa: E402

from caffe2_ort.caffe2 import schema  # noqa: E402


def _pb(net):
    return net.SerializeToString()


def _text(net):
    from google.protobuf import text_format

    return text_format.MessageToString(net).encode()


def _relu_net(**kw):
    return make_net(ops=[("Relu", ["x"], ["y"])], inputs=["x"], outputs=["y"], **kw)


def _fill_net(*ops):
    return make_net(name="init", ops=ops, outputs=[ops[-1][2][0]])


def _use_net(blob):
    """A predict net reading the weight ``blob`` (Add with broadcast: a weight slot)."""
    return make_net(ops=[("Add", ["x", blob], ["y"], {"broadcast": 1})], inputs=["x", blob], outputs=["y"])


VI_X = b'{"x": [1, [4]]}'


def _convert_with_init(init_net, blob="w"):
    files = {"p.pb": _pb(_use_net(blob)), "i.pb": _pb(init_net), "vi.json": VI_X}
    return files, ["convert", "p.pb", "--init", "i.pb", "--value-info", "vi.json", "-o", "m.onnx"]


def _cut_between_ops():
    net = make_net(ops=[("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Relu", ["b"], ["y"])], inputs=["x"], outputs=["y"])
    one = schema.NetDef(name=net.name, op=net.op[:2]).SerializeToString()
    return one  # the name and the first two ops, exactly as a cut after op #1 leaves them


def _bad_utf8_net(field):
    net = _relu_net()
    net.op[0].engine = "EEEE"
    net.name = "NNNN"
    data = _pb(net)
    return data.replace(b"EEEE" if field == "engine" else b"NNNN", b"\xff\xfe\xfd\xfc")


def _corrupt_binary_with_whitespace_length(n):
    """A binary NetDef whose name has n characters (its length byte is 10, 12 or 13: whitespace), cut."""
    net = make_net(name="n" * n, ops=[("Relu", ["x"], ["y"])] * 4, inputs=["x"], outputs=["y"])
    data = _pb(net)
    return data[: len(data) - 9]


def _nested_args(depth):
    text = 'name: "deep"\nexternal_input: "x"\nexternal_output: "y"\nop { type: "Relu" input: "x" output: "y"\n'
    text += 'arg { name: "a" n { name: "inner" op { type: "Relu" ' * depth + "} } }" * depth + "}\n"
    return text.encode()


def _npy_header_claiming(shape, dtype="<f4"):
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    import io as _io

    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\0" * 64


def _npz():
    import io as _io

    buf = _io.BytesIO()
    np.savez(buf, data=np.ones((1, 3, 8, 8), np.float32))
    return buf.getvalue()


def _npy(arr):
    import io as _io

    buf = _io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


TINY_ARGS = [str(TINY / "predict_net.pbtxt"), "--value-info", str(TINY / "value_info.json")]

REPRODUCERS = {
    # allocation from a claimed size
    "constantfill-1e5x1e5": (
        lambda: _convert_with_init(_fill_net(("ConstantFill", [], ["w"], {"shape": [100000, 100000]}))),
        "for 'w': shape [100000, 100000] float32 is 37.3 GiB, over the 256 MiB limit (--max-bytes"),
    "constantfill-2^40": (
        lambda: _convert_with_init(_fill_net(("ConstantFill", [], ["w"], {"shape": [2**40]}))), "4 TiB, over the 256 MiB limit"),
    "constantfill-input-as-shape": (
        lambda: _convert_with_init(_fill_net(("GivenTensorInt64Fill", [], ["s"], {"shape": [2], "values": [100000, 100000]}),
                                             ("ConstantFill", ["s"], ["w"], {"input_as_shape": 1}))),
        "ConstantFill for 'w': shape [100000, 100000] float32 is 37.3 GiB"),
    "constantfill-extra-shape": (
        lambda: _convert_with_init(_fill_net(("GivenTensorFill", [], ["s"], {"shape": [4], "values": [1.0] * 4}),
                                             ("ConstantFill", ["s"], ["w"], {"extra_shape": [100000, 100000]}))),
        "shape [4, 100000, 100000] float32 is 149 GiB"),
    "run-value-info-huge": (
        lambda: ({"vi.json": b'{"data": [1, [1, 3, 100000, 100000]]}'}, ["run", str(TINY / "predict_net.pbtxt"), "--value-info", "vi.json", "--synth"]),
        "input 'data': shape [1, 3, 100000, 100000] float32 is 112 GiB"),
    "data-npy-header-1e12": (
        lambda: ({"x.npy": _npy_header_claiming((10**12,))}, ["run", *TINY_ARGS, "--data", "data=x.npy"]),
        "shape [1000000000000], the model wants [1, 3, 8, 8]"),
    "synth-width-1e9": (
        lambda: ({}, ["synth-init", str(TINY / "predict_net.pbtxt"), "--input", "data:1,3,8,8", "--width", "1000000000", "-o", "i.pb"]),
        "weight 'conv1_w': shape [1000000000, 3, 3, 3] float32 is 101 GiB"),
    "dev-zero-predict-net": (lambda: ({}, ["convert", "/dev/zero", "-o", "m.onnx"]), "/dev/zero: is a device, not a file"),
    # int64 overflow
    "fill-2^32x2^32": (
        lambda: _convert_with_init(_fill_net(("ConstantFill", [], ["w"], {"shape": [2**32, 2**32]}))), "shape [4294967296, 4294967296] float32 is"),
    "value-info-dim-2^63": (
        lambda: ({"vi.json": b'{"data": [1, [1, 3, 9223372036854775808, 8]]}'}, ["convert", str(TINY / "predict_net.pbtxt"), "--value-info", "vi.json", "-o", "m.onnx"]),
        "entry 'data': dimension 9223372036854775808 in shape [1, 3, 9223372036854775808, 8] does not fit int64"),
    "input-30-digits": (
        lambda: ({}, ["convert", str(TINY / "predict_net.pbtxt"), "--input", "data:" + "9" * 30, "-o", "m.onnx"]),
        "does not fit int64"),
    "ir-version-2^64": (
        lambda: ({}, ["convert", *TINY_ARGS, "--ir-version", str(2**64), "-o", "m.onnx"]), "ir_version 18446744073709551616 is not supported"),
    "conv-pad-2^62": (
        lambda: ({"p.pbtxt": _text(make_net(ops=[("Conv", ["x", "w", "b"], ["y"], {"kernel": 1, "pad": 2**62})], inputs=["x", "w", "b"], outputs=["y"])),
                  "i.pb": _pb(init_net_of({"w": np.ones((2, 1, 1, 1), np.float32), "b": np.zeros(2, np.float32)}))},
                 ["convert", "p.pbtxt", "--init", "i.pb", "--input", "x:1,1,2,2", "-o", "m.onnx"]),
        "Conv op #0: output 'y': dimension"),
    # uncaught errors
    "conv-group-0": (
        lambda: ({"p.pbtxt": _text(make_net(ops=[("Conv", ["x", "w", "b"], ["y"], {"kernel": 1, "group": 0})], inputs=["x", "w", "b"], outputs=["y"])),
                  "i.pb": _pb(init_net_of({"w": np.ones((2, 1, 1, 1), np.float32), "b": np.zeros(2, np.float32)}))},
                 ["convert", "p.pbtxt", "--init", "i.pb", "--input", "x:1,1,2,2", "-o", "m.onnx"]),
        "Conv op #0: group must be at least 1, got 0"),
    "dropout-3-outputs": (
        lambda: ({"p.pbtxt": _text(make_net(ops=[("Dropout", ["x"], ["y", "m", "z"])], inputs=["x"], outputs=["y"]))},
                 ["convert", "p.pbtxt", "--input", "x:4", "-o", "m.onnx"]),
        "Dropout op #0: 3 output(s); Caffe2's Dropout has 1 to 2"),
    "utf8-name": (lambda: ({"p.pb": _bad_utf8_net("name")}, ["convert", "p.pb", "--input", "x:4", "-o", "m.onnx"]), "name is not valid UTF-8"),
    "utf8-engine": (
        lambda: ({"p.pb": _bad_utf8_net("engine")}, ["convert", "p.pb", "--input", "x:4", "-o", "m.onnx"]), "engine is not valid UTF-8"),
    "pbtxt-args-nested-200": (
        lambda: ({"p.pbtxt": _nested_args(200)}, ["convert", "p.pbtxt", "--input", "x:4", "-o", "m.onnx"]), "p.pbtxt: not a"),
    "value-info-nested-100k": (
        lambda: ({"vi.json": b'{"data": [1, ' + b"[" * 100000 + b"]" * 100000 + b"]}"}, ["convert", str(TINY / "predict_net.pbtxt"), "--value-info", "vi.json", "-o", "m.onnx"]),
        "vi.json: not a value_info.json file (nested too deeply)"),
    "value-info-5000-digits": (
        lambda: ({"vi.json": b'{"data": [1, [1, ' + b"7" * 5000 + b"]]}"}, ["convert", str(TINY / "predict_net.pbtxt"), "--value-info", "vi.json", "-o", "m.onnx"]),
        "vi.json: not a usable value_info.json file"),
    "input-as-shape-negative": (
        lambda: _convert_with_init(_fill_net(("GivenTensorInt64Fill", [], ["s"], {"shape": [2], "values": [4, -1]}),
                                             ("ConstantFill", ["s"], ["w"], {"input_as_shape": 1}))),
        "negative dimension -1 in shape [4, -1]"),
    "int8-constantfill-100000": (
        lambda: _convert_with_init(_fill_net(("ConstantFill", [], ["w"], {"shape": [4], "dtype": 7, "value": 100000}))),
        "'value': value 100000 does not fit int8 (-128..127)"),
    "seed-minus-1": (lambda: ({}, ["run", *TINY_ARGS, "--seed", "-1"]), "invalid seed -1: expected a non-negative integer"),
    "data-string-array": (
        lambda: ({"x.npy": _npy(np.array([["abc"] * 8] * 8 * 3).reshape(1, 3, 8, 8))}, ["run", *TINY_ARGS, "--data", "data=x.npy"]),
        "holds <U3 values; the input 'data' takes numbers (float32)"),
    "data-npz": (lambda: ({"x.npy": _npz()}, ["run", *TINY_ARGS, "--data", "data=x.npy"]), "is an .npz archive; give one array as a .npy file"),
    # wrong or leaking messages
    **{
        f"binary-name-{n}-chars": (
            (lambda n=n: ({"p.pb": _corrupt_binary_with_whitespace_length(n)}, ["convert", "p.pb", "-o", "m.onnx"])),
            "p.pb: not a Caffe2 NetDef, or truncated")
        for n in (10, 12, 13)
    },
    "ort-refuses-the-model": (
        lambda: ({"p.pbtxt": _text(make_net(ops=[("Dropout", ["x"], ["y"], {"ratio": 1.5})], inputs=["x"], outputs=["y"]))},
                 ["run", "p.pbtxt", "--input", "x:4"]),
        "ratio"),
    # accepted when it should not be
    "cut-between-ops": (
        lambda: ({"p.pb": _cut_between_ops()}, ["convert", "p.pb", "--input", "x:4", "-o", "m.onnx"]),
        "p.pb: a predict net with 2 op(s) but no external inputs or external outputs: truncated?"),
    "external-output-never-produced": (
        lambda: ({"p.pbtxt": _text(make_net(ops=[("Relu", ["x"], ["y"])], inputs=["x"], outputs=["z"]))}, ["convert", "p.pbtxt", "--input", "x:4", "-o", "m.onnx"]),
        "external output 'z' is never produced by the net"),
    "lrn-negative-alpha": (
        lambda: ({"p.pbtxt": _text(make_net(ops=[("LRN", ["x"], ["y"], {"size": 3, "alpha": -1.0, "beta": 0.75})], inputs=["x"], outputs=["y"]))},
                 ["convert", "p.pbtxt", "--input", "x:1,4,2,2", "-o", "m.onnx"]),
        "ONNX Runtime's LRN needs alpha > 0 and beta > 0"),
    "givenintfill-2^40": (
        lambda: _convert_with_init(_fill_net(("GivenTensorIntFill", [], ["w"], {"shape": [4], "values": [2**40, 1, 2, 3]}))),
        "value 1099511627776 does not fit int32"),
    "provider-bogus": (
        lambda: ({}, ["run", *TINY_ARGS, "--provider", "BogusExecutionProvider"]),
        "execution provider 'BogusExecutionProvider' is not available in this onnxruntime; available: "),
}


@pytest.mark.parametrize("case", sorted(REPRODUCERS))
def test_hostile_input_reproducer(case):
    make, expected = REPRODUCERS[case]
    files, argv = make()
    o = check_outcome(run_capped(argv, files=files))
    assert o.rc == 2, o.describe()
    assert expected in o.stderr, o.describe()


@pytest.mark.parametrize("alpha,beta", [(None, None), (0.0, 0.75), (1e-4, 0.0), (1e-4, 0.75)])
def test_lrn_caffe2_defaults_load_and_match(tmp_path, alpha, beta):
    """Caffe2's LRN defaults are alpha 0, beta 0 (ONNX's are 1e-4, 0.75) and ORT's LRN refuses 0: the
    converted model must still load in ORT and match the executor."""
    args = {"size": 3, "bias": 2.0}
    args.update({k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None})
    net = make_net(ops=[("LRN", ["x"], ["y"], args)], inputs=["x"], outputs=["y"])
    netdef.write_netdef(net, tmp_path / "p.pbtxt")
    o = check_outcome(run_capped(["run", tmp_path / "p.pbtxt", "--input", "x:1,4,3,3", "--compare"]))
    assert o.rc == 0, o.describe()
    diff = float(o.stdout.split("largest |difference| ")[1].split()[0])
    assert diff < 1e-5, o.stdout
    expected_node = "LRN x1" if alpha and beta else "Identity x1" if not beta else "Mul x1"
    assert expected_node in o.stdout, o.stdout


def test_run_stderr_is_only_our_error_line_when_ort_refuses(tmp_path, capsys):
    """ORT's own logger is quiet: no `[E:onnxruntime...]` line precedes our error (in-process too)."""
    net = make_net(ops=[("Dropout", ["x"], ["y"], {"ratio": 1.5})], inputs=["x"], outputs=["y"])
    netdef.write_netdef(net, tmp_path / "p.pbtxt")
    rc, out, err = run_cli(capsys, "run", tmp_path / "p.pbtxt", "--input", "x:4")
    _assert_one_line_error(rc, out, err, "ratio")


def test_max_bytes_flag_raises_the_limit(tmp_path):
    init = _fill_net(("ConstantFill", [], ["w"], {"shape": [4, 1024, 1024]}))  # 16 MiB
    files, argv = _convert_with_init(init)
    files["p.pb"] = _pb(make_net(ops=[("Add", ["x", "w"], ["y"], {"broadcast": 1})], inputs=["x", "w"], outputs=["y"]))
    files["vi.json"] = b'{"x": [1, [2, 4, 1024, 1024]]}'
    o = check_outcome(run_capped(argv, files=files, max_bytes="8M"))
    assert o.rc == 2 and "over the 8 MiB limit" in o.stderr, o.describe()
    o = check_outcome(run_capped(argv + ["--max-bytes", "64M"], files=files, max_bytes="8M"))
    assert o.rc == 0, o.describe()


def test_check_verbose_is_accepted():
    from caffe2_ort import cli as top

    args = top.build_parser().parse_args(["check", "--verbose"])
    assert args.verbose is True and args.func is not None
    # the child imports the same caffe2_ort (installed, or the dev tree with its lib/) as this process
    env = dict(os.environ, PYTHONPATH=str(Path(top.__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "caffe2_ort", "check", "--verbose"], cwd=REPO, capture_output=True, text=True,
                       env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout + r.stderr


def test_usage_errors_are_one_line(capsys):
    from caffe2_ort import cli as top

    with pytest.raises(SystemExit) as e:
        top.main(["synth-init", "p.pbtxt", "--width", "1e9", "-o", "x.pb"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: caffe2-ort synth-init: argument --width"), err


def test_run_compare_with_an_empty_batch(capsys):
    """Found by the fuzz suite: the executor's Softmax/Flatten reshaped with -1, which numpy refuses for size 0."""
    rc, out, err = run_cli(capsys, "run", TINY / "predict_net.pbtxt", "--input", "data:0,3,8,8", "--synth", "--compare")
    assert rc == 0, err
    assert "prob: shape [0, 32] float32" in out and "prob: identical" in out  # synthesised FC width 32


def test_warnings_never_precede_the_error_line(tmp_path):
    """A numpy warning raised before a failure is dropped; after a success it is one `warning:` line."""
    np.save(tmp_path / "big.npy", np.full((1, 3, 8, 8), 1e300))  # float64 -> float32: overflow warning
    np.save(tmp_path / "bad.npy", np.zeros(3, np.float32))
    base = ["run", *TINY_ARGS, "--data", f"data={tmp_path / 'big.npy'}"]
    o = check_outcome(run_capped(base + ["--data", f"data={tmp_path / 'bad.npy'}"]))
    assert o.rc == 2 and "shape [3], the model wants [1, 3, 8, 8]" in o.stderr, o.describe()
    o = check_outcome(run_capped(base))
    assert o.rc == 0 and o.stderr.startswith("warning: overflow encountered in cast"), o.describe()
