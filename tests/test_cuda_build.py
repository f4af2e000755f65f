"""Checks of the built CUDA plugin, libcaffe2_ort_cuda.so, that need no GPU.

The library is looked up in CAFFE2_ORT_CUDA_LIB, the installed package (where `pip install .` puts it
when nvcc is found) and the build folders. Where it was not built the tests skip, except under CI=true
or with nvcc on the PATH, where `pip install .` must have built it and a missing library fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

from caffe2_ort import reference as R  # noqa: E402

# Shared libraries the plugin may need at load time: cuDNN and the C runtime. cudart is linked
# statically and libcuda.so.1 is loaded lazily by cudart, so neither may appear; libonnxruntime never.
ALLOWED_NEEDED = {"libcudnn.so.9", "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
                  "ld-linux-x86-64.so.2", "libgcc_s.so.1"}
WHEEL_RUNPATH = "$ORIGIN/../../nvidia/cudnn/lib"


def _installed(name: str):
    try:
        from caffe2_ort import _library
    except ImportError:
        return None
    return _library._find(name)


def _find(name: str):
    env = os.environ.get("CAFFE2_ORT_CUDA_LIB")
    if env and name == "libcaffe2_ort_cuda.so":
        return Path(env) if Path(env).is_file() else None
    if env:  # the testing library sits beside the plugin in a build folder
        cand = Path(env).parent / name
        return cand if cand.is_file() else None
    found = _installed(name)
    if found is not None:
        return found
    # pip's build folder (build/<wheel tag>, which also holds the test-only library), then dev builds
    for d in sorted(ROOT.glob("build/py3-none-*")) + [ROOT / "build" / "dev", ROOT / "build" / "cuda"]:
        if (d / name).is_file():
            return d / name
    return None


def _must_exist() -> bool:
    return os.environ.get("CI") == "true" or shutil.which("nvcc") is not None


def _require(name: str) -> Path:
    p = _find(name)
    if p is None:
        msg = f"{name} not built (`pip install .` builds it where nvcc is found; CAFFE2_ORT_CUDA_LIB names it)"
        if _must_exist():
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def _run(*cmd) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def lib() -> Path:
    return _require("libcaffe2_ort_cuda.so")


def test_exports_only_register_custom_ops(lib):
    out = _run(_tool("nm"), "-D", "--defined-only", str(lib))
    symbols = sorted({line.split()[-1] for line in out.splitlines() if line.strip()})
    assert symbols == ["RegisterCustomOps"], symbols


def test_dynamic_dependencies(lib):
    out = _run(_tool("readelf"), "-d", str(lib))
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    assert "libcudnn.so.9" in needed
    assert needed <= ALLOWED_NEEDED, f"unexpected NEEDED entries: {sorted(needed - ALLOWED_NEEDED)}"
    assert not any("onnxruntime" in n or "cudart" in n or n.startswith("libcuda.") for n in needed), needed


def test_runpath_points_at_the_cudnn_wheel(lib):
    out = _run(_tool("readelf"), "-d", str(lib))
    m = re.search(r"\(RUNPATH\)\s+Library runpath: \[([^\]]*)\]", out)
    assert m, "no RUNPATH (the linker must use --enable-new-dtags)"
    entries = m.group(1).split(":")
    assert WHEEL_RUNPATH in entries, entries


def test_every_symbol_resolves(lib):
    ldd = _tool("ldd")
    proc = subprocess.run([ldd, "-r", str(lib)], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "undefined symbol" not in text, text
    assert "not found" not in text, text
    assert "libcudart" not in text and "libonnxruntime" not in text, text


def test_testing_library_is_separate():
    testing = _require("libcaffe2_ort_cuda_testing.so")
    out = _run(_tool("nm"), "-D", "--defined-only", str(testing))
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols and all(s.startswith("c2ort_test_") for s in symbols), sorted(symbols)
    plugin_out = _run(_tool("nm"), "-D", "--defined-only", str(_require("libcaffe2_ort_cuda.so")))
    assert "c2ort_test" not in plugin_out


def _model(dtype, node):
    import onnx
    from onnx import helper

    graph = helper.make_graph([node], "cuda_lib_cpu", [helper.make_tensor_value_info(i, dtype, None) for i in
                                                      node.input[:1]] +
                              ([helper.make_tensor_value_info(node.input[1], onnx.TensorProto.BOOL, None)]
                               if len(node.input) > 1 else []),
                              [helper.make_tensor_value_info(o, dtype if k == 0 else onnx.TensorProto.BOOL, None)
                               for k, o in enumerate(node.output)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)],
                             ir_version=8)


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16"])
def test_cpu_kernels_run_from_the_cuda_library(lib, dtype_name):
    """The CUDA library registers into a CPU-only onnxruntime (no GPU, no libcuda needed at load) and its
    CPU kernels give the reference results."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    tp = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16}[dtype_name]
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(lib))
    fwd = helper.make_node("Dropout", ["X"], ["Y", "mask"], domain="ai.caffe2", ratio=0.375, seed=2**40 + 5)
    sess = ort.InferenceSession(_model(tp, fwd).SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 1001)).astype(dtype_name)
    y, mask = sess.run(None, {"X": x})
    y_ref, keep = R.dropout(x, ratio=0.375, seed=2**40 + 5, base=0)
    assert np.array_equal(mask, keep)
    assert np.array_equal(y.view(np.uint8), y_ref.view(np.uint8))
    # the node's counter advanced: the second run draws at base ceil(numel / 4)
    y2, mask2 = sess.run(None, {"X": x})
    assert np.array_equal(mask2, R.keep_mask(2**40 + 5, R.blocks_for(x.size), x.shape, 0.375))

    grad = helper.make_node("DropoutGrad", ["dY", "mask"], ["dX"], domain="ai.caffe2", ratio=0.375)
    gs = ort.InferenceSession(_model(tp, grad).SerializeToString(), so, providers=["CPUExecutionProvider"])
    (dx,) = gs.run(None, {"dY": x, "mask": keep})
    assert np.array_equal(dx.view(np.uint8), R.dropout_grad(x, keep, ratio=0.375).view(np.uint8))


def test_cuda_library_loads_without_libcuda(lib):
    """Loading (dlopen) must not need the driver: cudart (static) opens libcuda.so.1 on first CUDA call."""
    out = _run(_tool("readelf"), "-d", str(lib))
    assert "libcuda.so" not in out
    code = f"import ctypes; ctypes.CDLL({str(lib)!r}); print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_pip_install_put_the_cuda_library_in_record():
    """`pip install .` with nvcc present builds the CUDA plugin into the wheel, listed in RECORD (so pip
    uninstall removes it)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: the wheel is CPU-only here")
    from importlib.metadata import PackageNotFoundError, files

    try:
        record = [str(f) for f in files("caffe2-ort")]
    except PackageNotFoundError:
        pytest.skip("caffe2-ort is not installed (source-tree run)")
    assert "caffe2_ort/lib/libcaffe2_ort_cuda.so" in record, [f for f in record if f.endswith(".so")]
    assert "caffe2_ort/lib/libcaffe2_ort.so" in record


def test_cuda_library_needs_nothing_newer_than_glibc_2_28(lib):
    out = _run(_tool("objdump"), "-T", str(lib))
    too_new = sorted({line.split()[-1] + "@" + v for line in out.splitlines()
                      for v in re.findall(r"GLIBC_2\.\d+", line) if int(v.split(".")[1]) > 28})
    assert not too_new, f"symbols above GLIBC_2.28 (see ort_ops/compat/glibc_2_28.cc): {too_new}"
