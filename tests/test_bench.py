"""`caffe2-ort bench` on tiny sizes: every row carries its fields, the copy baseline and the
fraction of copy; options and missing optional dependencies give one `error:` line."""

import json
import subprocess
import sys

import pytest

from caffe2_ort import bench
from caffe2_ort.cli import main

ROW_FIELDS = {"n", "log2n", "threads", "mode", "dtype", "impl", "bytes", "ms", "min_ms", "gbps", "ns_per_elem",
              "cycles_per_elem", "copy_ms", "copy_gbps", "copy_by", "vs_copy", "copy_pool_ms", "copy_memcpy_ms",
              "vs_builtin"}


@pytest.fixture(scope="module")
def result():
    return bench.measure([6, 9], [1, 2], dtypes=bench.DTYPES, min_time=0.001, torch=False)


def test_rows_cover_every_variant_dtype_thread_count_and_output_mode(result):
    timed = [v.name for v in bench.VARIANTS if v.name not in result["unavailable"]]
    assert {"dropout+mask", "dropout", "dropout_grad", "bitmask_dropout+mask", "bitmask_dropout_grad"} <= set(timed)
    import onnxruntime as ort

    # bfloat16 is left out only where the Python API cannot make its OrtValues (onnxruntime 1.17)
    assert ("bfloat16" in result["unavailable"]) == (not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"))
    for log2n in (6, 9):
        for dtype in [d for d in bench.DTYPES if d not in result["unavailable"]]:
            for threads in (1, 2):
                for mode in bench.OUTPUT_MODES:
                    impls = {r["impl"] for r in result["rows"] if (r["log2n"], r["dtype"], r["threads"], r["mode"]) ==
                             (log2n, dtype, threads, mode)}
                    assert set(timed) <= impls, (log2n, dtype, threads, mode, impls)


def test_row_fields_and_arithmetic(result):
    for r in result["rows"]:
        assert ROW_FIELDS <= set(r), r
        assert r["n"] == 1 << r["log2n"] and r["ms"] > 0 and r["min_ms"] <= r["ms"]
        itemsize = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}[r["dtype"]]
        # X (dY) read, Y (dX) written, and the mask: n bools, n / 8 bytes of packed words, or none
        mask_bytes = {"dropout": 0, "bitmask_dropout+mask": r["n"] // 8, "bitmask_dropout_grad": r["n"] // 8}
        assert r["bytes"] == 2 * itemsize * r["n"] + mask_bytes.get(r["impl"], r["n"])
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["ms"] * 1e-3) / 1e9)
        assert r["ns_per_elem"] == pytest.approx(r["ms"] * 1e6 / r["n"])
        assert r["copy_by"] in ("pool", "memcpy")
        assert r["copy_ms"] == min(r["copy_pool_ms"], r["copy_memcpy_ms"])
        assert r["vs_copy"] == pytest.approx(r["copy_ms"] / r["ms"])
        builtin = [b for b in result["rows"] if b["impl"] == bench.BUILTIN and
                   (b["n"], b["threads"], b["mode"], b["dtype"]) == (r["n"], r["threads"], r["mode"], r["dtype"])]
        if r["impl"] in ("dropout+mask", "bitmask_dropout+mask") and builtin:
            assert r["vs_builtin"] == pytest.approx(builtin[0]["ms"] / r["ms"])
        elif r["impl"] in ("dropout", "dropout_grad", "bitmask_dropout_grad", bench.BUILTIN):
            assert r["vs_builtin"] is None
        if result["machine"]["ghz"]:
            assert r["cycles_per_elem"] == pytest.approx(r["ns_per_elem"] * result["machine"]["ghz"] * r["threads"])


def test_header_names_the_cpu_and_the_isa_path(result):
    m = result["machine"]
    assert m["cpu"] and m["isa_path"] == bench.cpu_isa_path() and m["onnxruntime"]
    text = bench.format_header(result)
    assert m["cpu"] in text and f"path: {m['isa_path']}" in text
    table = bench.format_table(result["rows"])
    assert "x copy" in table and "x ORT" in table and "cyc/el" in table
    assert len(table.splitlines()) == len(result["rows"]) + 1


def test_an_rng_variant_the_library_ignores_is_listed_unavailable(monkeypatch):
    # An attribute the library does not know is ignored by ORT's custom-op API: a variant asking for a
    # stream that comes back as Philox's must not be timed under its name.
    probe = bench.Variant("bogus rng", "Dropout", True, (("rng", "no_such_stream"),))
    reason = bench.probe_variant(probe)
    assert reason  # ignored (Philox masks came back) or refused at session creation, with the reason
    assert bench.probe_variant(bench.VARIANTS[0]) is None


def test_bitmask_variants_time_the_packed_ops():
    """The bitmask rows run BitmaskDropout (uint32 mask of ceil(n / 32) words) and BitmaskDropoutGrad,
    with the same masks as the bool-mask variants."""
    import numpy as np
    from onnx import TensorProto

    by_name = {v.name: v for v in bench.VARIANTS}
    fwd, grad = by_name["bitmask_dropout+mask"], by_name["bitmask_dropout_grad"]
    assert (fwd.op, fwd.bitmask, fwd.grad) == ("BitmaskDropout", True, False)
    assert (grad.op, grad.bitmask, grad.grad) == ("BitmaskDropoutGrad", True, True)
    model = bench.variant_model(fwd, "float32")
    assert [n.op_type for n in model.graph.node] == ["BitmaskDropout"]
    assert model.graph.output[1].type.tensor_type.elem_type == TensorProto.UINT32
    assert bench.variant_model(grad, "float16").graph.input[1].type.tensor_type.elem_type == TensorProto.UINT32
    for n in (1, 31, 32, 33, 1000):
        words = grad.mask_array(n)
        assert words.dtype == np.uint32 and words.shape == (-(-n // 32),)
        keep = by_name["dropout_grad"].mask_array(n)
        assert np.array_equal(np.unpackbits(words.view(np.uint8), bitorder="little")[:n].astype(bool), keep)
        assert grad.bytes_moved(n, 4) == 8 * n + 4 * -(-n // 32)
    assert bench.probe_variant(fwd) is None and bench.probe_variant(grad) is None


def test_cli_json_on_tiny_sizes(capsys):
    rc = main(["bench", "--sizes", "6", "--threads", "1", "--modes", "ort", "--variants", "dropout",
               "--min-time", "0.001", "--no-builtin", "--no-torch", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["impl"] for r in out["rows"]] == ["dropout"]
    assert set(out) == {"machine", "rows", "unavailable"}


@pytest.mark.parametrize("args,message", [
    (["--dtypes", "int8"], "unknown dtype 'int8'"),
    (["--modes", "pinned"], "unknown output mode 'pinned'"),
    (["--variants", "nope"], "unknown variant(s) 'nope'"),
    (["--threads", "0"], "thread count 0"),
    (["--sizes", "40"], "2^40"),
    (["--min-time", "0"], "--min-time must be positive"),
])
def test_bad_options_give_one_error_line(capsys, args, message):
    assert main(["bench", "--sizes", "6", "--threads", "1", "--no-torch", "--min-time", "0.001", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_plot_needs_matplotlib_or_draws(tmp_path, capsys):
    out = tmp_path / "bench.png"
    rc = main(["bench", "--sizes", "6", "7", "--threads", "1", "--variants", "dropout", "--min-time", "0.001",
               "--no-builtin", "--no-torch", "--plot", str(out)])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert rc == 2
        assert capsys.readouterr().err.strip() == "error: --plot needs matplotlib (pip install matplotlib)"
        assert not out.exists()
    else:
        assert rc == 0 and out.stat().st_size > 0


def test_isa_path_follows_the_cap_and_rejects_unknown_values():
    flags = {"avx2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "bmi2"}
    if not bench.platform.machine() in ("x86_64", "AMD64"):
        pytest.skip("x86 paths only")
    intel, amd = "GenuineIntel", "AuthenticAMD"
    assert bench.cpu_isa_path(flags, {}, intel) == "avx512"
    assert bench.cpu_isa_path(flags | {"avx512ifma"}, {}, intel) == "avx512ifma"
    assert bench.cpu_isa_path(flags | {"avx512ifma"}, {}, amd) == "avx512"  # Zen 4 keeps the vpshufd rounds
    assert bench.cpu_isa_path(flags - {"bmi2"}, {}, intel) == "avx2"
    assert bench.cpu_isa_path({"avx2"}, {}, intel) == "scalar"  # the AVX2 path needs F16C too
    assert bench.cpu_isa_path(flags | {"avx512ifma"}, {"CAFFE2_ORT_CPU_ISA": "avx512"}, intel) == "avx512"
    assert bench.cpu_isa_path(flags, {"CAFFE2_ORT_CPU_ISA": "avx2"}, intel) == "avx2"
    assert bench.cpu_isa_path({"avx2", "f16c"}, {"CAFFE2_ORT_CPU_ISA": "avx512ifma"}, amd) == "avx2"
    assert bench.cpu_isa_path(flags, {"CAFFE2_ORT_CPU_ISA": ""}, intel) == "avx512"
    with pytest.raises(bench.BenchError, match="'fast' is not one of scalar, avx2, avx512, avx512ifma"):
        bench.cpu_isa_path(flags, {"CAFFE2_ORT_CPU_ISA": "fast"}, intel)


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "caffe2_ort.bench", "--sizes", "6", "--threads", "1", "--modes",
                          "bound", "--variants", "dropout_grad", "--min-time", "0.001", "--no-builtin", "--no-torch"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dropout_grad" in out.stdout and "path:" in out.stdout
