"""The shared library's contract: one exported symbol, no link to libonnxruntime, loads anywhere."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import caffe2_ort
from ort_helpers import compile_and_run_cpp, plain_dropout_model, session


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


# --- portability, ABI and loading ----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
# What a manylinux_2_28 library may need from the system (auditwheel's whitelist, the part we use).
MANYLINUX_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libgcc_s.so.1",
                  "ld-linux-x86-64.so.2"}
GLIBC_FLOOR = (2, 28)


def glibc_versions(lib):
    """(version, symbol) for every dynamic symbol bound to a GLIBC_x.y version."""
    out = subprocess.run([_tool("objdump"), "-T", str(lib)], capture_output=True, text=True, check=True).stdout
    return {((int(a), int(b)), line.split()[-1]) for line in out.splitlines()
            for a, b in re.findall(r"GLIBC_(\d+)\.(\d+)", line)}


def test_needs_nothing_newer_than_glibc_2_28(library):
    too_new = {f"{sym}@GLIBC_{v[0]}.{v[1]}" for v, sym in glibc_versions(library) if v > GLIBC_FLOOR}
    assert not too_new, f"symbols above GLIBC_2.28 (see ort_ops/compat/glibc_2_28.cc): {sorted(too_new)}"


def test_needs_only_manylinux_libraries_and_stays_loaded(library):
    out = subprocess.run([_tool("readelf"), "-d", library], capture_output=True, text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    assert needed <= MANYLINUX_LIBS, sorted(needed - MANYLINUX_LIBS)
    assert "libpthread.so.0" in needed  # where glibc < 2.34 keeps the old pthread_once
    assert re.search(r"\(FLAGS_1\)\s+Flags:.*NODELETE", out), "built without -z nodelete"


def _probe(library, scenario):
    out = subprocess.run([sys.executable, str(REPO / "tests" / "ort_abi_probe.py"), library, scenario],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


@pytest.mark.parametrize("scenario", ["null-base", "null-base-after"])
def test_null_api_base_returns_an_error_status(library, scenario):
    assert _probe(library, scenario)["status"] == "caffe2-ort: RegisterCustomOps called with a null OrtApiBase"


def test_a_2x_runtime_is_not_too_old(library):
    """The API version is probed with GetApi, not parsed from the version string: "2.0.0" registers."""
    result = _probe(library, "runtime-2.0")
    assert result["status"] is None
    probes = result["probes"]  # from the compiled version down to the real runtime's newest
    assert probes[0] >= 21 and probes == list(range(probes[0], probes[-1] - 1, -1)) and probes[-1] >= 17


def test_api_is_probed_downwards_to_the_runtimes_newest(library):
    result = _probe(library, "runtime-api-17")
    assert result["status"] is None
    assert result["probes"] == list(range(result["probes"][0], 16, -1)) and result["probes"][-1] == 17


def test_a_runtime_without_api_17_is_refused(library):
    result = _probe(library, "runtime-api-16")
    assert result["status"].startswith("caffe2-ort needs onnxruntime >= 1.17 (API version 17)")
    assert 17 in result["probes"] and 16 not in result["probes"]


LEAK_SCRIPT = r"""
import os, sys
import numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[3])
from ort_helpers import plain_dropout_model
lib, n = sys.argv[1], int(sys.argv[2])
model = plain_dropout_model(ratio=0.5, seed=1).SerializeToString()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def one():
    so = ort.SessionOptions()  # a fresh one each time: ORT loads and unloads the library with it
    so.register_custom_ops_library(lib)
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    s.run(None, {"X": np.ones(8, np.float32)})
for _ in range(50):
    one()
before = rss()
for _ in range(n):
    one()
print(rss() - before)
"""


def test_fresh_session_options_per_session_do_not_leak(library):
    """300 sessions, each with its own SessionOptions: the old build (unloaded and reloaded each time)
    grew by about 7.6 MB; with -z nodelete the growth stays under 2 MB."""
    out = subprocess.run([sys.executable, "-c", LEAK_SCRIPT, library, "300", str(REPO / "tests")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 2_000_000, f"RSS grew by {growth / 1e6:.1f} MB over 300 sessions"


def test_cuda_request_with_a_cpu_override_is_refused(monkeypatch, library):
    monkeypatch.setenv("CAFFE2_ORT_LIBRARY", library)
    assert caffe2_ort.get_library_path("cpu") == os.path.realpath(library)
    with pytest.raises(caffe2_ort.LibraryNotFoundError, match=r"is a CPU build of the plugin, but device='cuda'"):
        caffe2_ort.get_library_path("cuda")


def test_finder_looks_only_in_the_package(monkeypatch, tmp_path):
    """A caffe2_ort/lib folder elsewhere on sys.path (a stale install, another checkout) is never used."""
    monkeypatch.delenv("CAFFE2_ORT_LIBRARY", raising=False)
    stray = tmp_path / "caffe2_ort" / "lib"
    stray.mkdir(parents=True)
    (stray / "libcaffe2_ort_cuda.so").write_bytes(b"\x7fELF stale copy")
    (stray / "libcaffe2_ort.so").write_bytes(b"\x7fELF stale copy")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not caffe2_ort.get_library_path("cpu").startswith(str(tmp_path))
    try:
        cuda = caffe2_ort.get_library_path("cuda")
    except caffe2_ort.LibraryNotFoundError as e:
        assert "is not in this install" in str(e)
    else:
        assert not cuda.startswith(str(tmp_path))


def test_one_version_number():
    from caffe2_ort import _version

    assert caffe2_ort.__version__ == _version.__version__
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "python/caffe2_ort/_version.py" in cmake and "project(caffe2_ort VERSION ${_c2ort_version}" in cmake
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'input = "python/caffe2_ort/_version.py"' in pyproject
    try:
        from importlib.metadata import version

        installed = version("caffe2-ort")
    except Exception:  # running from the source tree without an install
        return
    assert installed == caffe2_ort.__version__


def _ort_headers():
    env = os.environ.get("ORT_INCLUDE_DIR")
    if env:
        return env
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_ort_headers.py")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_parallel_for_and_kernel_table_glue(tmp_path):
    """C++ (tests/cpp/ort_glue_test.cc): an exception thrown in a ParallelFor task never reaches the
    pool and comes back on the calling thread; the legacy CreateKernel/KernelCompute are null."""
    compile_and_run_cpp(tmp_path, "tests/cpp/ort_glue_test.cc", "ort_ops/common/ort_api.cc", flags=("-O1", "-pthread"),
                        includes=(_ort_headers(),))
