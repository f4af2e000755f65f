"""Finding and registering the native ai.caffe2 custom-op library."""

from __future__ import annotations

import os
from pathlib import Path

from .opdefs import DOMAIN, ENGINES, OPSET_VERSION, RNGS  # noqa: F401 - re-exported; the op table owns them

_CPU_NAME = "libcaffe2_ort.so"
_CUDA_NAME = "libcaffe2_ort_cuda.so"  # CPU and CUDA kernels together, one ai.caffe2 domain
ENV_LIBRARY = "CAFFE2_ORT_LIBRARY"


class LibraryNotFoundError(FileNotFoundError):
    pass


def _package_lib_dirs():
    """The package's own lib/ folders, and nothing else on sys.path: one per entry of the package's
    __path__ (a wheel install has one; an editable install may map the package onto the source tree
    and the installed build output, both counted as the package)."""
    from . import __path__ as package_path

    dirs = []
    for entry in [*package_path, str(Path(__file__).resolve().parent)]:
        d = Path(entry) / "lib"
        d = d.resolve() if d.exists() else d
        if d not in dirs:
            dirs.append(d)
    return dirs


def _find(name: str):
    for d in _package_lib_dirs():
        f = d / name
        if f.is_file():
            return f
    return None


def _needed_libraries(path: Path):
    """DT_NEEDED entries of an ELF64 little-endian shared library (empty for anything else)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for sh in sections:
        if sh[1] != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[sh[6]][4]
        for pos in range(sh[4], sh[4] + sh[5], 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                needed.append(data[strtab + val:data.index(b"\0", strtab + val)].decode("ascii", "replace"))
    return needed


def _library_device(path: Path) -> str:
    """"cuda" for a build that holds the CUDA kernels (it links cuDNN), else "cpu"."""
    return "cuda" if any(n.startswith("libcudnn") for n in _needed_libraries(path)) else "cpu"


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
    provider, else the CPU one. Only the package's own lib/ folder is searched. The environment
    variable CAFFE2_ORT_LIBRARY names a library to use instead; an explicit device must match it
    (the CUDA build is the one linking cuDNN).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    override = os.environ.get(ENV_LIBRARY)
    if override:
        path = Path(override)
        if not path.is_file():
            raise LibraryNotFoundError(f"{ENV_LIBRARY}={override} does not name a file")
        kind = _library_device(path)
        if device != "auto" and kind != device:
            raise LibraryNotFoundError(
                f"{ENV_LIBRARY}={override} is a {kind.upper()} build of the plugin, but device={device!r} "
                f"was asked for; unset {ENV_LIBRARY} or point it at {_CUDA_NAME if device == 'cuda' else _CPU_NAME}"
            )
        return str(path.resolve())
    if device in ("auto", "cuda"):
        cuda = _find(_CUDA_NAME)
        if cuda is not None and (device == "cuda" or _ort_has_cuda()):
            return str(cuda)
        if device == "cuda":
            raise LibraryNotFoundError(
                f"{_CUDA_NAME} is not in this install ({', '.join(map(str, _package_lib_dirs()))}); "
                "it is built by 'pip install .' where nvcc is found (or with -C caffe2-ort.cuda=on), "
                "see README, 'CUDA'"
            )
    cpu = _find(_CPU_NAME)
    if cpu is None:
        searched = ", ".join(str(d) for d in _package_lib_dirs())
        raise LibraryNotFoundError(
            f"{_CPU_NAME} not found (searched {searched}). Install the package with "
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
