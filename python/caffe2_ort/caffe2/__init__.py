"""Legacy Caffe2 nets in ONNX Runtime: a NetDef reader, a converter to ONNX, a numpy executor with
Caffe2's semantics (the converter's oracle) and a random init_net synthesiser. Pure Python: numpy,
onnx and protobuf only, no Caffe2 or PyTorch.

    from caffe2_ort.caffe2 import read_netdef, read_value_info, synthesize, convert
    net = read_netdef("predict_net.pbtxt")
    vi = read_value_info("value_info.json")
    init, _ = synthesize(net, vi, seed=0)          # or read_netdef("init_net.pb")
    model = convert(net, init, vi).model           # ai.caffe2 Dropout nodes; dropout="onnx" for standard ops

See docs/converter.md for the op table and the choices made.
"""

from .converter import Conversion, convert
from .errors import (
    ArgumentError,
    Caffe2Error,
    FillError,
    MissingValueInfoError,
    MissingWeightError,
    NetDefFormatError,
    ShapeError,
    UnsupportedOpsError,
)
from .executor import Executor
from .netdef import evaluate_init_net, read_netdef, read_tensor_protos, read_value_info, write_netdef
from .synth import synthesize

__all__ = [
    "ArgumentError",
    "Caffe2Error",
    "Conversion",
    "Executor",
    "FillError",
    "MissingValueInfoError",
    "MissingWeightError",
    "NetDefFormatError",
    "ShapeError",
    "UnsupportedOpsError",
    "convert",
    "evaluate_init_net",
    "read_netdef",
    "read_tensor_protos",
    "read_value_info",
    "synthesize",
    "write_netdef",
]
