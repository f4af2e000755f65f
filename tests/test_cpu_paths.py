"""CPU code paths that small ORT runs do not reach: counter blocks past 2^32 in every ISA path (a
C++ test compiled here), non-temporal stores for large outputs, and in-place execution."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import caffe2_ort
from caffe2_ort import reference as R
from ort_helpers import bits, make_model, plain_dropout_model, session

REPO = Path(__file__).resolve().parents[1]


def test_keep_bits_paths_across_the_counter_high_word(tmp_path):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C++ compiler found (the build needs one anyway)")
        pytest.skip("no C++ compiler found")
    exe = tmp_path / "keep_bits_test"
    subprocess.run([cxx, "-std=c++17", "-O2", f"-I{REPO / 'ort_ops'}", str(REPO / "tests/cpp/keep_bits_test.cc"),
                    str(REPO / "ort_ops/cpu/keep_bits.cc"), "-o", str(exe)], check=True, timeout=300)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip().endswith("ok") and "checked scalar" in out.stdout


@pytest.mark.parametrize("dtype,np_type", [(TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64)])
def test_streaming_store_path_is_exact(dtype, np_type):
    # Outputs of 32 MiB and more take the non-temporal-store path; +5 leaves a scalar tail.
    n = (1 << 23) + 5
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
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C++ compiler found (the build needs one anyway)")
        pytest.skip("no C++ compiler found")
    exe = tmp_path / "mt19937_test"
    subprocess.run([cxx, "-std=c++17", "-O2", f"-I{REPO / 'ort_ops'}", str(REPO / "tests/cpp/mt19937_test.cc"),
                    str(REPO / "ort_ops/cpu/mt19937_keep_bits.cc"), str(REPO / "ort_ops/cpu/keep_bits.cc"),
                    "-o", str(exe)], check=True, timeout=300)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip().endswith("ok") and "checked scalar" in out.stdout
