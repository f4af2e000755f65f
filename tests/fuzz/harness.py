"""Run one ``caffe2-ort`` command in its own process under a memory cap and a timeout.

Each case is a child of a multiprocessing *forkserver* that has imported the package, numpy, onnx and
onnxruntime once (and never created an ORT session), so a case costs a fork instead of a Python
start-up. The child caps its address space (``RLIMIT_AS``) at its size after the imports plus
``headroom`` bytes, points fds 1 and 2 at files, runs ``caffe2_ort.cli.main(argv)`` and exits with its
status; the parent kills it after ``timeout`` seconds.

:func:`check_outcome` is the contract every case must meet: exit 0, or exit 2 with exactly one stderr
line, ``error: ...``, and nothing else on stderr (no traceback, no ORT log line, no warning).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HEADROOM = int(os.environ.get("CAFFE2_ORT_FUZZ_HEADROOM", str(3 << 30)))  # bytes a case may add
TIMEOUT = float(os.environ.get("CAFFE2_ORT_FUZZ_TIMEOUT", "60"))
# The size budget the cases run under: well inside the memory cap, so that a tensor the budget lets
# through cannot be what exhausts it.
CASE_MAX_BYTES = os.environ.get("CAFFE2_ORT_FUZZ_MAX_BYTES", "256M")
PRELOAD = ["numpy", "onnx", "onnxruntime", "caffe2_ort", "caffe2_ort.cli", "caffe2_ort.caffe2.cli", "caffe2_ort.caffe2.converter"]

_ctx = None
CASES = {"total": 0}  # cases run in this process, by outcome ("exit 0", "exit 2", ...)


def _context():
    global _ctx
    if _ctx is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _ctx = ctx
    return _ctx


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - not Linux


def _child(argv, cwd, out_path, err_path, headroom, env):
    """The case process: cap memory, redirect output, run the CLI, exit with its status."""
    os.environ.update(env)
    os.chdir(cwd)
    cap = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    rc = 99
    try:
        from caffe2_ort.cli import main

        rc = int(main(list(argv)) or 0)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException:  # a traceback: what the contract forbids; print it so the failure shows it
        import traceback

        traceback.print_exc()
        rc = 98
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


@dataclass
class Outcome:
    argv: list
    rc: int  # exit status, or -signal
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    def describe(self) -> str:
        return (
            f"argv {self.argv}: rc {self.rc}{' (timed out)' if self.timed_out else ''} in {self.seconds:.1f}s\n"
            f"--- stderr ---\n{self.stderr[-3000:]}\n--- stdout ---\n{self.stdout[-1500:]}"
        )


def run_cli(argv, *, files=None, cwd=None, headroom=HEADROOM, timeout=TIMEOUT, max_bytes=CASE_MAX_BYTES, env=None) -> Outcome:
    """Run ``caffe2-ort *argv`` in a capped child. ``files``: {relative name: bytes} written to ``cwd``
    (a fresh temporary folder when None) first; argv paths may name them relatively."""
    with tempfile.TemporaryDirectory(prefix="c2o-fuzz-") as tmp:
        work = Path(cwd or tmp)
        for name, data in (files or {}).items():
            (work / name).write_bytes(data)
        out_path, err_path = Path(tmp) / ".stdout", Path(tmp) / ".stderr"
        child_env = {"CAFFE2_ORT_MAX_BYTES": str(max_bytes)} if max_bytes else {}
        child_env.update(env or {})
        proc = _context().Process(target=_child, args=([str(a) for a in argv], str(work), str(out_path), str(err_path), headroom, child_env))
        start = time.monotonic()
        proc.start()
        proc.join(timeout)
        timed_out = proc.is_alive()
        if timed_out:
            proc.kill()
            proc.join()
        seconds = time.monotonic() - start
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        CASES["total"] += 1
        key = "timeout" if timed_out else f"exit {proc.exitcode}"
        CASES[key] = CASES.get(key, 0) + 1
        return Outcome(list(argv), proc.exitcode if proc.exitcode is not None else -9, read(out_path), read(err_path), seconds, timed_out)


def contract_violation(o: Outcome):
    """None when the outcome meets the contract, else what is wrong."""
    if o.timed_out:
        return "timed out"
    lines = o.stderr.splitlines()
    if o.rc == 0:
        bad = [ln for ln in lines if not ln.startswith("warning: ")]
        return f"exit 0 but stderr has non-warning lines: {bad[:3]}" if bad else None
    if o.rc != 2:
        return f"exit status {o.rc} (only 0 and 2 are allowed)"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit 2 but stderr is not exactly one 'error: ' line: {lines[:5]}"
    if "internal error" in lines[0]:
        return "internal error"
    return None


def check_outcome(o: Outcome) -> Outcome:
    problem = contract_violation(o)
    assert problem is None, f"{problem}\n{o.describe()}"
    return o
