"""The parity stage's own tools: where the Caffe2 venv lives, how the suite reacts when it is missing,
and the errors of the venv script, the runner and the net generator. Only the runner cases need
real Caffe2 (marked parity); the rest run in the default suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe2_helpers import make_net
from caffe2_oracle import READY, VENV_SCRIPT, Caffe2Error, find_venv_python, venv_path
from train_nets import GENERATOR, NET_NAMES


def _venv_script(*args, **env):
    return subprocess.run(["bash", str(VENV_SCRIPT), *args], capture_output=True, text=True, env={**os.environ, **env})


def test_venv_path_follows_caffe2_venv(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFE2_VENV", str(tmp_path / "c2"))
    assert venv_path() == tmp_path / "c2"
    assert not (tmp_path / "c2").exists()  # --path creates nothing


def test_venv_path_default_is_outside_the_tree(monkeypatch, tmp_path):
    monkeypatch.delenv("CAFFE2_VENV", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert venv_path() == tmp_path / "caffe2-ort" / "caffe2-py39"


def test_missing_venv_fails_under_ci_and_skips_elsewhere_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFE2_VENV", str(tmp_path / "none"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=str(tmp_path / "none")):
        find_venv_python()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make parity"):
        find_venv_python()


def test_half_built_venv_counts_as_missing(tmp_path, monkeypatch):
    (tmp_path / "half" / "bin").mkdir(parents=True)  # no ready marker: the build did not finish
    monkeypatch.setenv("CAFFE2_VENV", str(tmp_path / "half"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        find_venv_python()
    (tmp_path / "half" / READY).touch()
    assert find_venv_python() == tmp_path / "half" / "bin" / "python"


def test_venv_script_refuses_a_python_that_is_not_3_9(tmp_path):
    r = _venv_script(CAFFE2_VENV=str(tmp_path / "v"), CAFFE2_PYTHON39=sys.executable)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {sys.executable} is not a Python 3.9"
    assert not (tmp_path / "v").exists()


def test_venv_script_never_replaces_a_folder_that_is_not_a_venv(tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("keep me")
    py39 = sorted(Path.home().glob(".pyenv/versions/3.9.*/bin/python3.9"))
    if not py39:
        pytest.skip("no pyenv Python 3.9 here: the script stops earlier, at finding one")
    r = _venv_script(CAFFE2_VENV=str(keep), CAFFE2_PYTHON39=str(py39[0]))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {keep} exists and is not a virtual environment; refusing to replace it (set CAFFE2_VENV)"
    assert (keep / "notes.txt").read_text() == "keep me"


def test_venv_script_says_when_no_python_3_9_is_found(tmp_path):
    if any(Path(d, "python3.9").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("this system has a python3.9 in /usr/bin")  # the script would build with it
    env = {k: v for k, v in os.environ.items() if k != "CAFFE2_PYTHON39"}
    env.update(HOME=str(tmp_path), PATH="/usr/bin:/bin", CAFFE2_VENV=str(tmp_path / "v"))
    r = subprocess.run(["bash", str(VENV_SCRIPT)], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: no Python 3.9 found (set CAFFE2_PYTHON39, or install one, e.g. pyenv install 3.9)"
    assert not (tmp_path / "v").exists()


def test_generator_lists_its_nets_and_refuses_unknown_names(tmp_path):
    assert len(NET_NAMES) >= 7
    r = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path), "no_such_net"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: unknown net 'no_such_net'; known: {', '.join(NET_NAMES)}"
    assert not any(tmp_path.iterdir())


@pytest.mark.parity
def test_runner_reports_a_missing_blob(caffe2):
    net = make_net("relu", [("Relu", ["x"], ["y"])], inputs=["x"])
    with pytest.raises(Caffe2Error, match="blob 'nope' is not in the workspace"):
        caffe2.run(net, feed={"x": np.ones(3, np.float32)}, fetch=["nope"])


@pytest.mark.parity
def test_runner_reports_an_op_caffe2_refuses(caffe2):
    net = make_net("bad", [("Dropout", ["x"], ["y", "m"], {"ratio": 1.0, "is_test": 0})], inputs=["x"])
    with pytest.raises(Caffe2Error, match=r"error: RuntimeError: .*ratio_ < 1"):
        caffe2.run(net, feed={"x": np.ones(3, np.float32)})


@pytest.mark.parity
def test_runner_fetches_named_blobs_per_step_and_the_state_before(caffe2):
    net = make_net("count", [("Iter", ["it"], ["it"])], inputs=["it"])
    out = caffe2.run(net, feed={"it": np.array([7], np.int64)}, iters=3, fetch=["it"], fetch_init=True)
    assert sorted(out) == ["init/it", "step0/it", "step1/it", "step2/it"]
    assert [int(out[k][0]) for k in sorted(out)] == [7, 8, 9, 10]
