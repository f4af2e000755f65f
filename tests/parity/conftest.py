"""The parity suite: real Caffe2 (the caffe2.python of PyPI torch 1.8.1, in the Python 3.9 venv that
scripts/caffe2_venv.sh builds) as the oracle. Every module is marked ``parity`` (pytestmark): the
default run (pyproject addopts ``-m 'not parity'``) leaves it out;
``make parity`` builds the venv and runs it. Without the venv it fails under CI=true and skips
elsewhere, naming the venv's path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared test helpers

from caffe2_oracle import Caffe2Oracle, find_venv_python  # noqa: E402


@pytest.fixture(scope="session")
def caffe2():
    """A Caffe2Oracle running the venv's real Caffe2 in subprocesses."""
    return Caffe2Oracle(find_venv_python())
