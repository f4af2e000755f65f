#!/usr/bin/env python3
"""Runtime compatibility matrix: the whole CPU op suite under several onnxruntime releases.

    python scripts/compat.py [--python PY] [--versions 1.17.3,1.24.4,1.32.0] [--wheel WHEEL]

Default versions: the oldest supported (newest 1.17.x), a middle release and the newest on the package
index (`pip index versions onnxruntime`). Each gets its own venv (.venv-ort-X.Y.Z) with the CPU wheel
built from this checkout (CUDA off) and the test dependencies; numpy < 2 for runtimes built against
numpy 1. Then 1.16.3 must refuse the plugin with a clear error. Prints the matrix and writes it to
build/compat-matrix.txt; exit status 1 if any cell failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Everything but the CUDA modules, which need the CUDA build.
SUITE = ["tests", "--ignore=tests/test_cuda_build.py", "--ignore=tests/test_cuda_ort.py", "--ignore=tests/gpu"]
TEST_DEPS = ["ml_dtypes", "pytest", "hypothesis", "onnxruntime-extensions", "torch==2.13.0", "matplotlib"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def available_versions(python):
    out = subprocess.run([python, "-m", "pip", "index", "versions", "onnxruntime"], capture_output=True,
                         text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Available versions:"))
    versions = [v.strip() for v in line.split(":", 1)[1].split(",")]
    return [v for v in versions if re.fullmatch(r"\d+\.\d+\.\d+", v)]


def key(v):
    return tuple(int(p) for p in v.split("."))


def default_versions(python):
    vs = sorted({v for v in available_versions(python) if key(v) >= (1, 17, 0)}, key=key)
    newest_per_minor = {}
    for v in vs:
        newest_per_minor[key(v)[:2]] = v
    minors = sorted(newest_per_minor)
    oldest, newest = newest_per_minor[minors[0]], newest_per_minor[minors[-1]]
    middle = newest_per_minor[minors[len(minors) // 2]]
    return [oldest, middle, newest]


def venv_for(python, version, wheel):
    venv = ROOT / f".venv-ort-{version}"
    py = venv / "bin" / "python"
    if not py.exists():
        run([python, "-m", "venv", str(venv)])
    numpy = "numpy<2" if key(version) < (1, 19, 0) else "numpy"
    # One resolver run: the wheel's dependencies cannot move the runtime or numpy pinned beside them.
    run([str(py), "-m", "pip", "install", "-q", str(wheel), f"onnxruntime=={version}", numpy, *TEST_DEPS])
    # The wheel just built replaces an earlier build of the same version.
    run([str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])
    return py


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--versions", default=None, help="comma-separated onnxruntime versions")
    p.add_argument("--wheel", default=None, help="a built CPU wheel (default: build one)")
    args = p.parse_args(argv)
    wheel = args.wheel
    if wheel is None:
        out = ROOT / "build" / "compat-wheel"
        for old in out.glob("*.whl"):
            old.unlink()
        run([args.python, "-m", "pip", "wheel", "-q", "--no-deps", "-C", "caffe2-ort.cuda=off", "-w", str(out), str(ROOT)])
        wheel = str(next(out.glob("caffe2_ort-*.whl")))
    versions = args.versions.split(",") if args.versions else default_versions(args.python)
    rows, ok = [], True
    for v in versions:
        py = venv_for(args.python, v, wheel)
        t = time.time()
        proc = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE], cwd=ROOT,
                              capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
        print(proc.stdout[-3000:] if proc.returncode else tail, flush=True)
        ok &= proc.returncode == 0
        rows.append((v, "passed" if proc.returncode == 0 else "FAILED", tail.strip("= "), f"{time.time() - t:.0f} s"))
    # The release before the oldest supported one: a clear error, not a crash.
    py = venv_for(args.python, "1.16.3", wheel)
    proc = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_library.py", "-k",
                           "old_runtime"], cwd=ROOT, capture_output=True, text=True)
    ok &= proc.returncode == 0
    rows.append(("1.16.3", "refused" if proc.returncode == 0 else "FAILED", "clear error on registration", ""))
    table = ["| onnxruntime | result | pytest summary | time |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table)
    print(text)
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "compat-matrix.txt").write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
