"""CPU code paths that small ORT runs do not reach: counter blocks past 2^32 in every ISA path and
every apply path against the portable one (C++ tests compiled here), the CAFFE2_ORT_CPU_ISA
variable, non-temporal stores for large outputs, and in-place execution."""

import os

import numpy as np
import pytest
from onnx import TensorProto, helper

import caffe2_ort
from caffe2_ort import reference as R
from ort_helpers import bits, compile_and_run_cpp, make_model, plain_dropout_model, session


def test_keep_bits_paths_across_the_counter_high_word(tmp_path):
    out = compile_and_run_cpp(tmp_path, "tests/cpp/keep_bits_test.cc", "ort_ops/cpu/keep_bits.cc")
    assert "checked scalar" in out
    # The benchmark's header names the path from /proc/cpuinfo; it must be the one the library takes.
    from caffe2_ort.bench import cpu_isa_path

    assert f"selected {cpu_isa_path(env={})}" in out


def test_apply_paths_match_the_portable_path_bit_for_bit(tmp_path):
    """AVX2 (+F16C) and AVX-512 apply steps, forward and backward, all dtypes, streaming or not."""
    out = compile_and_run_cpp(tmp_path, "tests/cpp/elementwise_test.cc", "ort_ops/cpu/elementwise.cc",
                           "ort_ops/cpu/keep_bits.cc")
    assert "checked mask words" in out
    assert "checked avx2" in out or "x86" not in os.uname().machine


def test_kernel_microbenchmark_runs(tmp_path):
    """The in-cache microbenchmark the README's cycle figures come from keeps building and running."""
    out = compile_and_run_cpp(tmp_path, "tests/cpp/kernel_microbench.cc", "ort_ops/cpu/keep_bits.cc",
                           "ort_ops/cpu/elementwise.cc", args=("3",), expect_ok=False)
    lines = out.strip().splitlines()
    assert lines[0].startswith("isa ") and "GHz" in lines[0]
    for what in ("keep bits", "keep bits + apply, mask", "keep bits + apply, no mask", "grad apply",
                 "keep bits + apply, packed mask", "grad apply, packed mask"):
        line = next(l for l in lines[1:] if l.startswith(what + " "))
        ns, cycles = float(line.split()[-4]), float(line.split()[-2])
        assert ns > 0 and cycles > 0


@pytest.mark.parametrize("value", ["avx1024", "AVX2", "sse2 ", "auto"])
def test_unknown_cpu_isa_value_is_an_error_naming_the_accepted_ones(monkeypatch, value):
    monkeypatch.setenv("CAFFE2_ORT_CPU_ISA", value)
    with pytest.raises(Exception) as err:
        session(plain_dropout_model(ratio=0.5, seed=1))
    msg = str(err.value)
    assert f"CAFFE2_ORT_CPU_ISA = '{value}'" in msg and "not one of scalar, avx2, avx512, avx512ifma" in msg


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "avx512ifma", ""])
@pytest.mark.parametrize("dtype,np_type", [(TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64)])
def test_every_cap_gives_the_reference_masks(monkeypatch, isa, dtype, np_type):
    # "" = no cap; a cap above this CPU's best runs its best. Several ORT tasks and a scalar tail.
    monkeypatch.setenv("CAFFE2_ORT_CPU_ISA", isa)
    x = np.random.default_rng(3).standard_normal(3 * 32768 + 77).astype(np_type)
    x[:4] = [np.nan, np.inf, -np.inf, -0.0]
    y, mask = session(plain_dropout_model(dtype, ratio=0.3, seed=12), threads=2).run(None, {"X": x})
    ref_y, ref_mask = R.dropout(x, ratio=0.3, seed=12)
    assert np.array_equal(mask, ref_mask)
    assert np.array_equal(bits(y), bits(ref_y))


def test_empty_cpu_isa_value_means_no_cap(monkeypatch):
    monkeypatch.setenv("CAFFE2_ORT_CPU_ISA", "")
    x = np.arange(1000, dtype=np.float32)
    y, mask = session(plain_dropout_model(ratio=0.5, seed=1)).run(None, {"X": x})
    assert np.array_equal(mask, R.keep_mask(1, 0, x.shape, 0.5))


@pytest.mark.parametrize("dtype,np_type", [(TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64),
                                           (TensorProto.FLOAT16, np.float16)])
def test_streaming_store_path_is_exact(dtype, np_type):
    # Outputs of 32 MiB and more take the non-temporal-store path; +5 leaves a scalar tail.
    n = (32 << 20) // np.dtype(np_type).itemsize + 5
    x = np.random.default_rng(8).standard_normal(n).astype(np_type)
    y, mask = session(plain_dropout_model(dtype, ratio=0.25, seed=6), threads=2).run(None, {"X": x})
    ref_y, ref_mask = R.dropout(x, ratio=0.25, seed=6)
    assert np.array_equal(mask, ref_mask)
    assert np.array_equal(bits(y), bits(ref_y))


def test_in_place_after_relu():
    """Relu -> Dropout -> DropoutGrad, where ORT may hand the ops their input's buffer as output."""
    nodes = [
        helper.make_node("Relu", ["X"], ["A"]),
        helper.make_node("Dropout", ["A"], ["Y", "M"], domain=caffe2_ort.DOMAIN, ratio=0.5, seed=9),
        helper.make_node("Relu", ["Y"], ["dY"]),
        helper.make_node("DropoutGrad", ["dY", "M"], ["dX"], domain=caffe2_ort.DOMAIN, ratio=0.5),
    ]
    f = TensorProto.FLOAT
    model = make_model(nodes, [helper.make_tensor_value_info("X", f, [4096])],
                       [helper.make_tensor_value_info("dX", f, [4096]), helper.make_tensor_value_info("M", TensorProto.BOOL, [4096])])  # fmt: skip
    x = np.random.default_rng(10).standard_normal(4096).astype(np.float32)
    dx, m = session(model).run(None, {"X": x})
    a = np.maximum(x, 0)
    y, ref_m = R.dropout(a, ratio=0.5, seed=9)
    assert np.array_equal(m, ref_m)
    assert np.array_equal(bits(dx), bits(R.dropout_grad(np.maximum(y, 0), ref_m, ratio=0.5)))


def test_mt19937_stream_paths_against_std_mt19937(tmp_path):
    """Every ISA path of the caffe2_mt19937 stream (words, skips, keep bits) against std::mt19937."""
    out = compile_and_run_cpp(tmp_path, "tests/cpp/mt19937_test.cc", "ort_ops/cpu/mt19937_keep_bits.cc",
                              "ort_ops/cpu/keep_bits.cc", flags=("-O2",))
    assert "checked scalar" in out
