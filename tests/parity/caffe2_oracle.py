"""Real Caffe2 as an oracle: locate the Caffe2 venv and run nets there (scripts/caffe2_run.py) in
a subprocess, NetDefs and blobs travelling as files."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from caffe2_ort.caffe2 import netdef

REPO = Path(__file__).resolve().parents[2]
VENV_SCRIPT = REPO / "scripts" / "caffe2_venv.sh"
RUNNER = REPO / "scripts" / "caffe2_run.py"
READY = ".caffe2-ort-ready"  # written by scripts/caffe2_venv.sh once the import check passed


def venv_path() -> Path:
    """Where scripts/caffe2_venv.sh keeps the venv (it alone knows the rule: $CAFFE2_VENV or the cache)."""
    out = subprocess.run(["bash", str(VENV_SCRIPT), "--path"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def find_venv_python() -> Path:
    """The venv's python; fails under CI=true when the venv is missing, skips elsewhere."""
    venv = venv_path()
    if not (venv / READY).is_file():
        msg = f"real Caffe2 venv not found at {venv} (build it with `make parity` or scripts/caffe2_venv.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return venv / "bin" / "python"


class Caffe2Error(RuntimeError):
    """Real Caffe2 refused a net or a blob; the message is the runner's."""


def _write_net(net, path: Path) -> str:
    if isinstance(net, (str, Path)):
        return str(net)
    netdef.write_netdef(net, path)
    return str(path)


class Caffe2Oracle:
    def __init__(self, python: Path):
        self.python = Path(python)

    def run(self, net=None, *, init=(), feed=None, feed_each=None, iters=1, fetch=(), fetch_init=False) -> dict:
        """Run in one fresh Caffe2 workspace: feed ``feed``, run each ``init`` net once, create ``net``
        and run it ``iters`` times, feeding ``feed_each`` before each run. Returns
        ``{"step<k>/<blob>": array}``: the ``fetch`` blobs, or every tensor blob, after run k; plus
        ``"init/<blob>"`` as they were before the first run when ``fetch_init`` or without ``net``.
        Nets are our NetDef messages or paths (.pb/.pbtxt)."""
        with tempfile.TemporaryDirectory(prefix="caffe2-oracle-") as tmp:
            tmp = Path(tmp)
            cmd = [str(self.python), str(RUNNER), "--out", str(tmp / "out.npz"), "--iters", str(iters)]
            if feed:
                np.savez(tmp / "feed.npz", **feed)
                cmd += ["--feed", str(tmp / "feed.npz")]
            if feed_each:
                np.savez(tmp / "feed_each.npz", **feed_each)
                cmd += ["--feed-each", str(tmp / "feed_each.npz")]
            for i, n in enumerate([init] if not isinstance(init, (list, tuple)) else init):
                cmd += ["--init", _write_net(n, tmp / f"init{i}.pb")]
            if net is not None:
                cmd += ["--net", _write_net(net, tmp / "net.pb")]
            for b in fetch:
                cmd += ["--fetch", b]
            if fetch_init:
                cmd.append("--fetch-init")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.splitlines() if "init_intrinsics_check" not in ln]
                raise Caffe2Error("\n".join(lines[-15:]) or f"caffe2 runner exited with {proc.returncode}")
            with np.load(tmp / "out.npz", allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
