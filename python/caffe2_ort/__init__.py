"""caffe2-ort: legacy Caffe2 Dropout and DropoutGrad as ONNX Runtime custom ops (domain ai.caffe2).

    import onnxruntime as ort, caffe2_ort
    so = caffe2_ort.register(ort.SessionOptions())
    sess = ort.InferenceSession("model.onnx", so)
"""

from ._library import (
    DOMAIN,
    OPSET_VERSION,
    LibraryNotFoundError,
    available_providers,
    get_library_path,
    register,
)
from . import reference
from .schemas import try_register_schemas as _try_register_schemas

# ONNX schemas for ai.caffe2 (onnx >= 1.19), so onnx.checker and shape inference accept our nodes;
# with an older onnx this warns and ONNX Runtime itself is unaffected.
_try_register_schemas()

from . import graph  # noqa: E402

from ._version import __version__  # noqa: E402

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "LibraryNotFoundError",
    "available_providers",
    "get_library_path",
    "graph",
    "register",
    "reference",
]
