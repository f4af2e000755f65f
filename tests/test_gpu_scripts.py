"""The GPU machine's scripts, checked without a GPU: tests/gpu/run_all.sh --dry-run (syntax, modules,
carry items, collection of the CUDA tests, the CPU self-test) and scripts/gpu_prepare.sh --check (the
carry items and the run-tool calls it plans). A lent GPU machine gets one try: these keep the scripts
from breaking unseen. Each takes seconds; they skip where bash or coreutils' timeout is missing."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "tests" / "gpu" / "run_all.sh"
PREPARE = ROOT / "scripts" / "gpu_prepare.sh"


def _need(*tools):
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} not installed")


def _headers() -> str:
    """ORT's include folder as the build found it (the fetch script's cache; no download here)."""
    if os.environ.get("ORT_INCLUDE_DIR"):
        return os.environ["ORT_INCLUDE_DIR"]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_ort_headers.py")], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        pytest.skip(f"ORT headers unavailable: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


def _dry_run(tmp_path, **env):
    _need("bash", "timeout", "sha256sum")
    out = tmp_path / "out"
    full = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "GPU_CARRY_DIR": str(tmp_path / "carry"),
            "ORT_INCLUDE_DIR": _headers(), **env}
    proc = subprocess.run(["bash", str(RUN_ALL), "--dry-run"], capture_output=True, text=True, timeout=300, env=full)
    return proc, (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""


def test_run_all_dry_run_passes(tmp_path):
    proc, summary = _dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run: done (status 0)" in summary
    m = re.search(r"dry run: pytest collects (\d+) tests from 3 files", summary)
    assert m and int(m.group(1)) > 50, summary
    assert "self-test: int64 Philox matches caffe2_ort.reference" in summary
    assert "ORT headers: " in summary and "(API " in summary
    assert "no parts in" in summary  # an empty carry folder: said, not fatal in a dry run


def _without_pytest_and_torch(tmp_path) -> str:
    """A PYTHONPATH under which this Python finds neither pytest nor torch (a sitecustomize that blocks them)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytest', 'torch'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n")
    return os.pathsep.join(p for p in (str(block), os.environ.get("PYTHONPATH", "")) if p)


def test_run_all_dry_run_reports_missing_modules(tmp_path):
    """A Python without pytest and torch: the steps needing them are named as skipped, the rest still runs."""
    proc, summary = _dry_run(tmp_path, PYTHONPATH=_without_pytest_and_torch(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "python modules missing: pytest torch" in summary, summary
    assert "without pytest the CUDA EP suite (step 3) is skipped" in summary
    assert "without torch gpu_checks (step 4) and bench_ort (step 5) are skipped" in summary
    assert "pytest collects" not in summary
    assert "self-test: int64 Philox matches" in summary


def test_run_all_dry_run_fails_on_damaged_parts(tmp_path):
    carry = tmp_path / "carry" / "ortgpu"
    carry.mkdir(parents=True)
    (carry / "part.00").write_bytes(b"abc")
    (carry / "SHA256SUMS").write_text("0" * 64 + "  part.00\n")
    # (without pytest: no collection, which this case does not need)
    proc, summary = _dry_run(tmp_path, PYTHONPATH=_without_pytest_and_torch(tmp_path))
    assert proc.returncode == 1
    assert "are incomplete or damaged: send them again" in summary
    assert "dry run: done (status 1)" in summary


def test_run_all_received_lists_the_parts(tmp_path):
    _need("bash", "sha256sum")
    carry = tmp_path / "carry"
    (carry / "ortgpu").mkdir(parents=True)
    (carry / "ortgpu" / "part.00").write_bytes(b"part zero")
    proc = subprocess.run(["bash", str(RUN_ALL), "--received"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GPU_CARRY_DIR": str(carry)})
    assert proc.returncode == 0
    assert "part.00" in proc.stdout and "ort-headers: not yet" in proc.stdout


PART_BYTES = 2 << 20  # the stand-in parts: 2 MiB each


@pytest.fixture
def fake_carry():
    """A complete carry folder with small stand-in parts, inside build/ (git-ignored) as the script requires."""
    rel = Path("build") / f"test-gpu-carry-{uuid.uuid4().hex[:8]}"
    carry = ROOT / rel
    try:
        (carry / "ortgpu").mkdir(parents=True)
        for k in range(3):
            (carry / "ortgpu" / f"part.0{k}").write_bytes(bytes([k]) * PART_BYTES)
        (carry / "ortgpu" / "ort-gpu-carry.sh").write_text("#!/bin/sh\n")
        subprocess.run("sha256sum part.* > SHA256SUMS", shell=True, check=True, cwd=carry / "ortgpu")
        (carry / "ort-headers").mkdir()
        (carry / "ort-headers" / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 21\n")
        for f in ("caffe2_models/bvlc_alexnet/predict_net.pbtxt", "caffe2_rng/kat_public.npz"):
            (carry / "shared" / f).parent.mkdir(parents=True, exist_ok=True)
            (carry / "shared" / f).write_text("x")
        yield rel
    finally:
        shutil.rmtree(carry, ignore_errors=True)


def _prepare_check(rel, limit_mib):
    _need("bash", "git", "sha256sum", "du", "awk")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout (the script sizes the tree with git)")
    return subprocess.run(["bash", str(PREPARE), "--check"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GPU_CARRY_DIR": str(rel), "CARRY_LIMIT_MIB": str(limit_mib)})


def test_prepare_check_plans_calls_within_the_limit(fake_carry):
    tree = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=True).stdout.split(b"\0")
    tree_mib = sum((ROOT / f.decode()).stat().st_size for f in tree if f and (ROOT / f.decode()).is_file()) / 2**20
    limit = math.ceil(tree_mib + 2.1)  # room for the tree and one 2 MiB part per call, never two parts
    proc = _prepare_check(fake_carry, limit)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = re.findall(r"call (\d+)/(\d+) \(([\d.]+) MiB\): timeout_s (\d+)\n  carry:   \[(.*)\]\n  command: (.*)",
                       proc.stdout)
    assert len(calls) == 3, proc.stdout
    carried = [c[4] for c in calls]
    for k in range(3):
        assert f'"{fake_carry}/ortgpu/part.0{k}"' in carried[k]
    for item in ("ortgpu/SHA256SUMS", "ortgpu/ort-gpu-carry.sh", "ort-headers", "shared"):
        assert sum(f'"{fake_carry}/{item}"' in c for c in carried) == 1, item
    assert all(float(c[2]) <= limit for c in calls)
    assert [c[5] for c in calls] == ["bash tests/gpu/run_all.sh --received"] * 2 + ["bash tests/gpu/run_all.sh"]
    assert [c[3] for c in calls] == ["60", "60", "600"]


def test_prepare_check_names_what_is_missing(fake_carry):
    (ROOT / fake_carry / "ort-headers" / "onnxruntime_c_api.h").unlink()
    (ROOT / fake_carry / "ortgpu" / "part.01").write_bytes(b"changed")
    proc = _prepare_check(fake_carry, 63)
    assert proc.returncode == 1
    assert f"missing: {fake_carry}/ort-headers/onnxruntime_c_api.h" in proc.stdout
    assert "do not match their SHA256SUMS" in proc.stdout
    assert "run scripts/gpu_prepare.sh without --check" in proc.stdout


def test_prepare_refuses_a_carry_folder_git_would_send(tmp_path):
    _need("bash", "git")
    rel = "tests"  # tracked: not ignored
    proc = subprocess.run(["bash", str(PREPARE), "--check"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GPU_CARRY_DIR": rel})
    assert proc.returncode == 1 and "tests is not ignored by git" in proc.stdout
