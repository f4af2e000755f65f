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

__version__ = "0.1.0"

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "LibraryNotFoundError",
    "available_providers",
    "get_library_path",
    "register",
    "reference",
]
