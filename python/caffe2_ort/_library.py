"""Finding and registering the native ai.caffe2 custom-op library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .opdefs import DOMAIN, ENGINES, OPSET_VERSION, RNGS  # noqa: F401 - re-exported; the op table owns them

_CPU_NAME = "libcaffe2_ort.so"
_CUDA_NAME = "libcaffe2_ort_cuda.so"  # CPU and CUDA kernels together, one ai.caffe2 domain
ENV_LIBRARY = "CAFFE2_ORT_LIBRARY"


class LibraryNotFoundError(FileNotFoundError):
    pass


def _candidate_dirs():
    """Where a build may have put the library: next to the package (wheel or in-place build) and in
    every other copy of the package directory on sys.path (scikit-build-core's editable installs keep
    the Python files in the source tree and the library in site-packages)."""
    here = Path(__file__).resolve().parent
    seen = []
    for d in [here / "lib", here] + [Path(p) / "caffe2_ort" / "lib" for p in sys.path if p]:
        d = d.resolve() if d.exists() else d
        if d not in seen:
            seen.append(d)
    return seen


def _find(name: str):
    for d in _candidate_dirs():
        f = d / name
        if f.is_file():
            return f
    return None


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def get_library_path(device: str = "auto") -> str:
    """Path of the plugin library to pass to ``SessionOptions.register_custom_ops_library``.

    ``device``: "cpu" for the CPU-only library, "cuda" for the library that also holds the CUDA kernels,
    "auto" (default) for the CUDA one when it was built and onnxruntime offers the CUDA execution
    provider, else the CPU one. The environment variable CAFFE2_ORT_LIBRARY overrides the search.
    """
    override = os.environ.get(ENV_LIBRARY)
    if override:
        if not Path(override).is_file():
            raise LibraryNotFoundError(f"{ENV_LIBRARY}={override} does not name a file")
        return str(Path(override).resolve())
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if device in ("auto", "cuda"):
        cuda = _find(_CUDA_NAME)
        if cuda is not None and (device == "cuda" or _ort_has_cuda()):
            return str(cuda)
        if device == "cuda":
            raise LibraryNotFoundError(
                f"{_CUDA_NAME} was not built; build with nvcc and the nvidia-cudnn-cu13 wheel present "
                "(see README, 'CUDA build')"
            )
    cpu = _find(_CPU_NAME)
    if cpu is None:
        searched = ", ".join(str(d) for d in _candidate_dirs()[:3])
        raise LibraryNotFoundError(
            f"{_CPU_NAME} not found (searched {searched}, ...). Install the package with "
            "'pip install .' from the repository, or set CAFFE2_ORT_LIBRARY."
        )
    return str(cpu)


def register(session_options, device: str = "auto"):
    """Register the ai.caffe2 ops with an ``onnxruntime.SessionOptions``; returns it for chaining."""
    session_options.register_custom_ops_library(get_library_path(device))
    return session_options


def available_providers():
    """Execution providers on which ai.caffe2 kernels can run here (our library and onnxruntime both)."""
    providers = ["CPUExecutionProvider"]
    if _find(_CUDA_NAME) is not None and _ort_has_cuda():
        providers.insert(0, "CUDAExecutionProvider")
    return providers
