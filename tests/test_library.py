"""The shared library's contract: one exported symbol, no link to libonnxruntime, loads anywhere."""

import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import caffe2_ort
from ort_helpers import plain_dropout_model, session


@pytest.fixture(scope="module")
def library():
    return caffe2_ort.get_library_path("cpu")


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def test_only_register_custom_ops_is_exported(library):
    out = subprocess.run([_tool("nm"), "-D", "--defined-only", library], capture_output=True, text=True, check=True)
    symbols = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert symbols == ["RegisterCustomOps"]


def test_does_not_link_onnxruntime(library):
    out = subprocess.run([_tool("ldd"), library], capture_output=True, text=True, check=True).stdout
    assert "onnxruntime" not in out
    assert "libstdc++" not in out  # linked statically: no clash with the host's C++ runtime


def test_loads_into_two_sessions_and_both_run():
    x = np.ones(100, np.float32)
    a = session(plain_dropout_model(ratio=0.5, seed=1))
    b = session(plain_dropout_model(ratio=0.5, seed=1))
    assert np.array_equal(a.run(None, {"X": x})[1], b.run(None, {"X": x})[1])


def test_registers_alongside_onnxruntime_extensions():
    ext = pytest.importorskip("onnxruntime_extensions")
    so = ort.SessionOptions()
    so.register_custom_ops_library(ext.get_library_path())
    caffe2_ort.register(so)
    sess = ort.InferenceSession(plain_dropout_model(ratio=0.5, seed=2).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    y, mask = sess.run(None, {"X": np.ones(64, np.float32)})
    assert y.shape == mask.shape == (64,)


def test_library_path_override_and_errors(monkeypatch, tmp_path, library):
    monkeypatch.setenv("CAFFE2_ORT_LIBRARY", library)
    assert caffe2_ort.get_library_path() == os.path.realpath(library)
    monkeypatch.setenv("CAFFE2_ORT_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(caffe2_ort.LibraryNotFoundError, match="does not name a file"):
        caffe2_ort.get_library_path()
    monkeypatch.delenv("CAFFE2_ORT_LIBRARY")
    with pytest.raises(ValueError, match="device must be"):
        caffe2_ort.get_library_path("tpu")


def test_available_providers_lists_cpu():
    assert "CPUExecutionProvider" in caffe2_ort.available_providers()


def test_check_command_reports_success():
    out = subprocess.run([sys.executable, "-m", "caffe2_ort", "check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    Dropout on CPUExecutionProvider" in out.stdout
    assert "ok    DropoutGrad on CPUExecutionProvider" in out.stdout
    assert f"onnxruntime {ort.__version__}" in out.stdout


def test_check_command_reports_a_missing_library(tmp_path):
    env = dict(os.environ, CAFFE2_ORT_LIBRARY=str(tmp_path / "nope.so"))
    out = subprocess.run([sys.executable, "-m", "caffe2_ort", "check"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert "FAIL  finding the library" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


ORT_VERSION = tuple(int(p) for p in ort.__version__.split(".")[:2])


@pytest.mark.skipif(ORT_VERSION >= (1, 17), reason="needs onnxruntime < 1.17; .ci/run runs it in a 1.16 venv")
def test_old_runtime_gets_a_clear_error_not_a_crash():
    so = ort.SessionOptions()
    with pytest.raises(Exception, match=r"caffe2-ort needs onnxruntime >= 1\.17.*runs onnxruntime 1\.16"):
        caffe2_ort.register(so)


def test_a_library_that_is_not_a_plugin_fails_cleanly(tmp_path):
    bogus = tmp_path / "libnot_a_plugin.so"
    bogus.write_bytes(b"\x7fELF not really")
    so = ort.SessionOptions()
    with pytest.raises(Exception):
        so.register_custom_ops_library(str(bogus))
