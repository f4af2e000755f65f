"""The training nets the parity suite builds with real Caffe2 (scripts/caffe2_make_train_nets.py),
regenerated into a cache outside the repository: $CAFFE2_ORT_TRAIN_NETS, default
~/.cache/caffe2-ort/train_nets/<hash of the generator>, so an edited generator rebuilds them."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from caffe2_oracle import REPO, Caffe2Error

GENERATOR = REPO / "scripts" / "caffe2_make_train_nets.py"
COMPLETE = ".complete"


def _generator_module():
    spec = importlib.util.spec_from_file_location("caffe2_make_train_nets", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports Caffe2 only inside its functions
    return mod


_GEN = _generator_module()
STEPS = _GEN.STEPS
NET_NAMES = tuple(_GEN.NETS)


def cache_dir() -> Path:
    if os.environ.get("CAFFE2_ORT_TRAIN_NETS"):
        return Path(os.environ["CAFFE2_ORT_TRAIN_NETS"])
    digest = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "caffe2-ort" / "train_nets" / digest


def generated_nets(python) -> list:
    """The generated nets' folders, building them first (once per generator version)."""
    out = cache_dir()
    if not (out / COMPLETE).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        proc = subprocess.run([str(python), str(GENERATOR), "--out", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            lines = [ln for ln in proc.stderr.splitlines() if "init_intrinsics_check" not in ln and not ln.startswith("frame #")]
            raise Caffe2Error("the training-net generator failed:\n" + "\n".join(lines[-20:]))
        (tmp / COMPLETE).write_text(proc.stdout)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return [out / name for name in NET_NAMES]


def fed_batch(traj) -> dict:
    """The blobs fed before every step, from a trajectory.npz."""
    return {k[len("fed/") :]: traj[k] for k in traj.files if k.startswith("fed/")}
