"""Porting a legacy Caffe2 script to caffe2_ort: the two imports that change, and a runner for the
scripts in tests/workspace_scripts (run under real Caffe2 as written, under ours as ported)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import caffe2_ort

SCRIPTS = Path(__file__).resolve().parent / "workspace_scripts"
IMPORTS = {
    "from caffe2.python import workspace": "from caffe2_ort import workspace",
    "from caffe2.proto import caffe2_pb2": "from caffe2_ort.caffe2 import caffe2_pb2",
}


def port(source: str) -> str:
    """``source`` with Caffe2's two imports replaced by ours; each must appear exactly once, and no
    other ``caffe2.`` import may remain (it would not carry over)."""
    for old, new in IMPORTS.items():
        count = source.count(old)
        if count != 1:
            raise ValueError(f"expected the line {old!r} once, found it {count} times")
        source = source.replace(old, new)
    left = [ln for ln in source.splitlines() if ln.lstrip().startswith(("from caffe2.", "import caffe2"))]
    if left:
        raise ValueError(f"imports that do not carry over: {left}")
    return source


def _package_root() -> str:
    return str(Path(caffe2_ort.__file__).resolve().parents[1])


def run_script(name: str, *args, python=None) -> dict:
    """Run tests/workspace_scripts/<name> with ``args`` after its output path. ``python``: the real
    Caffe2 venv's interpreter (the script runs as written); None: ours, the script ported. Returns
    the arrays it saved."""
    source = (SCRIPTS / name).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="ws-script-") as tmp:
        tmp = Path(tmp)
        out = tmp / "out.npz"
        env = dict(os.environ)
        if python is None:
            script = tmp / name
            script.write_text(port(source), encoding="utf-8")
            python = sys.executable
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        else:
            script = SCRIPTS / name
        proc = subprocess.run([str(python), str(script), str(out), *map(str, args)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "init_intrinsics_check" not in ln and not ln.startswith("frame #")]
            raise RuntimeError(f"{name} under {python} exited with {proc.returncode}:\n" + "\n".join(lines[-20:]))
        with np.load(out, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
