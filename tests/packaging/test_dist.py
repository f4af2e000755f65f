"""The release artifacts: sdist and CPU wheel built by `python -m build`, their tag and auditwheel's
verdict, an install of the sdist in a clean venv that passes `caffe2-ort check`, and `pip uninstall`
leaving no file of ours behind.

Minutes (builds and venvs): marked `packaging`, deselected by default; `.ci/run` runs
`pytest -m packaging tests/packaging`. CAFFE2_ORT_DIST names a folder already holding the sdist and the
CPU wheel (CI builds them once); otherwise they are built here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging
ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    given = os.environ.get("CAFFE2_ORT_DIST")
    out = Path(given) if given else tmp_path_factory.mktemp("dist")
    if not given:
        _run(sys.executable, "-m", "build", "-q", "-C", "caffe2-ort.cuda=off", "-o", out, ROOT, timeout=1800)
    wheels, sdists = sorted(out.glob("caffe2_ort-*.whl")), sorted(out.glob("caffe2_ort-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0]


def test_wheel_is_py3_none_manylinux_2_28(dist):
    wheel, _ = dist
    assert re.fullmatch(r"caffe2_ort-[0-9.]+-py3-none-manylinux_2_28_x86_64\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        wheel_meta = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        assert "Tag: py3-none-manylinux_2_28_x86_64" in z.read(wheel_meta).decode()
        record = z.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert "caffe2_ort/lib/libcaffe2_ort.so,sha256=" in record
    assert "libcaffe2_ort_cuda" not in record  # built with -C caffe2-ort.cuda=off


def test_auditwheel_reports_manylinux_2_28_or_lower(dist):
    wheel, _ = dist
    out = _run(sys.executable, "-m", "auditwheel", "show", wheel, timeout=300)
    m = re.search(r'consistent with\s+the following platform tag:\s+"manylinux_2_(\d+)_x86_64"', out)
    assert m, out
    assert int(m.group(1)) <= 28, out


def test_sdist_builds_in_a_clean_venv_and_uninstalls_cleanly(dist, tmp_path):
    _, sdist = dist
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    before = {p.relative_to(venv) for p in venv.rglob("*")}
    env = dict(os.environ, CAFFE2_ORT_CUDA="off")
    env.pop("PYTHONPATH", None)
    _run(py, "-m", "pip", "install", "-q", f"{sdist}[cpu]", env=env, timeout=1800)
    out = _run(venv / "bin" / "caffe2-ort", "check", env=env, timeout=300)
    assert "all checks passed" in out, out
    lib = _run(py, "-c", "import caffe2_ort; print(caffe2_ort.get_library_path('cpu'))", env=env).strip()
    assert Path(lib).is_relative_to(site / "caffe2_ort" / "lib"), lib
    record = _run(py, "-c", "import importlib.metadata as m; print('\\n'.join(map(str, m.files('caffe2-ort'))))",
                  env=env)
    assert "caffe2_ort/lib/libcaffe2_ort.so" in record.split()

    _run(py, "-m", "pip", "uninstall", "-y", "-q", "caffe2-ort", env=env)
    left = sorted(str(p.relative_to(venv)) for p in venv.rglob("*")
                  if p.relative_to(venv) not in before and re.search(r"caffe2[_-]ort", str(p.relative_to(venv))))
    assert left == [], left
