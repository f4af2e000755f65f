"""The fuzz stage: off in the default suite, on with ``CAFFE2_ORT_FUZZ``.

    CAFFE2_ORT_FUZZ=ci    bounded, derandomised run (CI: a few minutes on 2 cores)
    CAFFE2_ORT_FUZZ=long  many more random cases per target (``make fuzz``)
    CAFFE2_ORT_FUZZ=<n>   n random cases per target
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, settings

from . import harness

MODE = os.environ.get("CAFFE2_ORT_FUZZ", "")
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("fuzz-ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_HEALTH, print_blob=True)  # fmt: skip
settings.register_profile("fuzz-long", max_examples=1500, deadline=None, suppress_health_check=_HEALTH, print_blob=True)
if MODE.isdigit():
    settings.register_profile("fuzz-n", max_examples=int(MODE), deadline=None, suppress_health_check=_HEALTH, print_blob=True)
if MODE:
    settings.load_profile({"ci": "fuzz-ci", "long": "fuzz-long"}.get(MODE, "fuzz-n"))

_started = time.monotonic()


def pytest_configure(config):
    config.addinivalue_line("markers", "fuzz: fuzz tests of the command line (run with CAFFE2_ORT_FUZZ=ci|long|<n>)")


def pytest_collection_modifyitems(config, items):
    if MODE:
        return
    skip = pytest.mark.skip(reason="fuzz stage: set CAFFE2_ORT_FUZZ=ci (bounded) or long (make fuzz)")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if harness.CASES["total"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(harness.CASES.items()) if k != "total")
        terminalreporter.write_line(
            f"fuzz: {harness.CASES['total']} cases in capped child processes ({counts}) in {time.monotonic() - _started:.0f}s"
        )
