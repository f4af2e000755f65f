"""Reading and writing Caffe2 NetDefs and TensorProtos, op arguments, and init_net fill ops.

- :func:`read_netdef` reads a binary ``.pb`` or text ``.pbtxt`` NetDef and rejects truncated or
  foreign files with a one-line :class:`NetDefFormatError`.
- :func:`read_tensor_protos` / :func:`tensor_proto_to_array` turn Caffe2 TensorProtos into numpy.
- :class:`Args` reads an OperatorDef's arguments the way Caffe2 did (the payload kind by presence).
- :func:`evaluate_fill` evaluates ``GivenTensor*Fill`` and ``ConstantFill`` ops into numpy arrays.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from google.protobuf import message as _pb_message
from google.protobuf import text_format

from . import schema
from .errors import ArgumentError, FillError, NetDefFormatError
from .limits import Budget, check_shape, numel

# Caffe2 TensorProto.DataType numbers (they are not ONNX's).
C2_FLOAT, C2_INT32, C2_BYTE, C2_STRING, C2_BOOL = 1, 2, 3, 4, 5
C2_UINT8, C2_INT8, C2_UINT16, C2_INT16, C2_INT64 = 6, 7, 8, 9, 10
C2_FLOAT16, C2_DOUBLE = 12, 13

C2_TO_NUMPY = {
    C2_FLOAT: np.dtype(np.float32),
    C2_INT32: np.dtype(np.int32),
    C2_BYTE: np.dtype(np.uint8),
    C2_STRING: np.dtype(object),
    C2_BOOL: np.dtype(bool),
    C2_UINT8: np.dtype(np.uint8),
    C2_INT8: np.dtype(np.int8),
    C2_UINT16: np.dtype(np.uint16),
    C2_INT16: np.dtype(np.int16),
    C2_INT64: np.dtype(np.int64),
    C2_FLOAT16: np.dtype(np.float16),
    C2_DOUBLE: np.dtype(np.float64),
}
NUMPY_TO_C2 = {
    np.dtype(np.float32): C2_FLOAT,
    np.dtype(np.int32): C2_INT32,
    np.dtype(object): C2_STRING,
    np.dtype(bool): C2_BOOL,
    np.dtype(np.uint8): C2_UINT8,
    np.dtype(np.int8): C2_INT8,
    np.dtype(np.uint16): C2_UINT16,
    np.dtype(np.int16): C2_INT16,
    np.dtype(np.int64): C2_INT64,
    np.dtype(np.float16): C2_FLOAT16,
    np.dtype(np.float64): C2_DOUBLE,
}
# ONNX TensorProto.DataType numbers (value_info.json uses these).
ONNX_TO_NUMPY = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    8: np.dtype(object),
    9: np.dtype(bool),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
}
NUMPY_TO_ONNX = {v: k for k, v in ONNX_TO_NUMPY.items()}

TEXT_SUFFIXES = {".pbtxt", ".prototxt", ".txt", ".pbtext"}


# ----------------------------------------------------------------------------------------------
# files


def _unknown_fields(msg, path="") -> list:
    """Paths of unknown fields anywhere in a parsed message (foreign data parsed 'successfully')."""
    try:
        from google.protobuf import unknown_fields

        unknown = unknown_fields.UnknownFieldSet(msg)
    except ImportError:  # pragma: no cover - protobuf < 4.22
        unknown = msg.UnknownFields()
    found = [f"{path or msg.DESCRIPTOR.name}#{u.field_number}" for u in unknown]
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        items = value if repeated else [value]
        for k, item in enumerate(items):
            found += _unknown_fields(item, f"{path or msg.DESCRIPTOR.name}.{fd.name}[{k}]")
    return found


_TEXT_WHITESPACE = b" \t\n\r"


def _looks_like_text(data: bytes) -> bool:
    """Whether bytes look like a text-format proto: UTF-8 without control characters (binary protos
    are full of tag and length bytes below 0x20) whose first non-blank character starts a field name
    or a comment. The check covers the whole head, not only what follows leading whitespace: a binary
    NetDef starts with the name's tag 0x0a and a length byte that may itself be whitespace (10, 12, 13)."""
    head = data[:4096]
    if any(b < 0x20 and b not in _TEXT_WHITESPACE for b in head) or 0x7F in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # only a character cut by the 4096-byte window is forgiven
            return False
    first = head.lstrip(_TEXT_WHITESPACE)[:1]
    return first.isalpha() or first in (b"#", b"_")


def _bad_string(msg, path=""):
    """The path of the first string field that is not valid UTF-8 (protobuf hands such proto2 strings
    back as bytes, or raises UnicodeDecodeError when it reads them), else None."""
    for fd, value in msg.ListFields():
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        items = list(value) if repeated else [value]
        for k, item in enumerate(items):
            where = f"{path}.{fd.name}[{k}]" if repeated else f"{path}.{fd.name}"
            if fd.type == fd.TYPE_MESSAGE:
                found = _bad_string(item, where)
                if found:
                    return found
            elif fd.type == fd.TYPE_STRING and not isinstance(item, str):
                return where
    return None


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _parse_text(data: bytes, source: str):
    net = schema.NetDef()
    try:
        text_format.Parse(data.decode("utf-8"), net)
    except UnicodeDecodeError as e:
        raise NetDefFormatError(f"{source}: not a text-format Caffe2 NetDef (not UTF-8 at byte {e.start})") from None
    except RecursionError:
        raise NetDefFormatError(f"{source}: not a usable text-format Caffe2 NetDef (nested too deeply)") from None
    except (text_format.ParseError, ValueError, TypeError, OverflowError) as e:
        raise NetDefFormatError(f"{source}: not a text-format Caffe2 NetDef ({_one_line(e)})") from None
    return net


def _parse_binary(data: bytes, source: str):
    """The NetDef, or the error message (a string) saying why the bytes are not a binary NetDef."""
    net = schema.NetDef()
    try:
        net.ParseFromString(data)
    except RecursionError:
        return f"{source}: not a Caffe2 NetDef (nested too deeply)"
    except UnicodeDecodeError as e:  # some protobuf builds check proto2 strings while parsing
        field = str(e).rpartition("in field: ")[2] if "in field: " in str(e) else "a string field"
        return f"{source}: not a Caffe2 NetDef, or corrupt ({field} is not valid UTF-8 text)"
    except (_pb_message.DecodeError, RuntimeError, ValueError, TypeError) as e:
        return f"{source}: not a Caffe2 NetDef, or truncated ({len(data)} bytes; protobuf says: {_one_line(e)})"
    try:
        unknown = _unknown_fields(net)
        bad = _bad_string(net, "NetDef")
    except UnicodeDecodeError as e:
        return f"{source}: not a Caffe2 NetDef (a name or string field is not valid UTF-8: {_one_line(e)})"
    except RecursionError:
        return f"{source}: not a Caffe2 NetDef (nested too deeply)"
    if bad:
        return f"{source}: not a Caffe2 NetDef, or corrupt ({bad} is not valid UTF-8 text)"
    if unknown:
        return (
            f"{source}: not a Caffe2 NetDef (fields that NetDef does not have: {', '.join(unknown[:4])}"
            f"{' ...' if len(unknown) > 4 else ''}); is it an ONNX model or another protobuf?"
        )
    return net


def parse_netdef(data: bytes, *, source: str = "<bytes>", text: bool | None = None, kind: str | None = None):
    """Parse NetDef bytes, binary or text. ``text`` is a hint (the file name's suffix): text-looking
    data with the hint is parsed as text; anything else is tried as binary first, then as text when
    the hint says so or the data looks like text (see :func:`_looks_like_text`), and the error of the
    format the data seems to be in is reported. Every failure is one :class:`NetDefFormatError`.

    ``kind``: "predict" or "init" adds the checks of :func:`check_net` for that kind of net."""
    looks = _looks_like_text(data)
    if text and looks:
        net = _parse_text(data, source)
    else:
        net = _parse_binary(data, source)
        if isinstance(net, str):
            if not (looks or text):
                raise NetDefFormatError(net)
            net = _parse_text(data, source)
    check_net(net, source, kind)
    return net


def check_net(net, source: str = "net", kind: str | None = None) -> None:
    """The structure Caffe2 demands of a net when it creates it (``NetBase``), plus the checks that
    catch a file cut short wherever the cut falls.

    - every op has a type; a net is not empty;
    - every external output is an external input or produced by an op;
    - for a net read from a file (``kind`` "predict", "init" or "train"): with external inputs declared, every
      blob an op reads is one of them or an earlier op's output (nets built in memory often leave
      their weights undeclared, so this is a file check);
    - ``kind="predict"``: a net with ops declares external inputs and outputs (a binary predict net
      serialises them after its ops, so a cut between two ops drops them all).
    """
    if len(net.op) == 0 and not net.external_input and not net.external_output:
        raise NetDefFormatError(f"{source}: empty or not a Caffe2 NetDef (no ops, no external inputs or outputs)")
    for k, op in enumerate(net.op):
        if not op.type:
            raise NetDefFormatError(f"{source}: op #{k} has no type; not a Caffe2 NetDef?")
    if kind == "predict" and len(net.op) and not (net.external_input and net.external_output):
        lacks = " or ".join(n for n, v in (("external inputs", net.external_input), ("external outputs", net.external_output)) if not v)
        raise NetDefFormatError(
            f"{source}: a predict net with {len(net.op)} op(s) but no {lacks}: truncated? "
            "(Caffe2 writes them after the ops)"
        )
    known = set(net.external_input)
    if net.external_input and kind is not None:
        for k, op in enumerate(net.op):
            for b in op.input:
                if b and b not in known:
                    raise NetDefFormatError(
                        f"{source}: {op.type} op #{k} reads {b!r}, which is neither an external input nor an "
                        "earlier op's output (Caffe2 refuses such a net; truncated?)"
                    )
            known.update(op.output)
    else:
        for op in net.op:
            known.update(op.output)
    never = [b for b in net.external_output if b not in known]
    if never:
        raise NetDefFormatError(
            f"{source}: external output {never[0]!r}{f' (and {len(never) - 1} more)' if len(never) > 1 else ''} "
            "is never produced by the net (Caffe2 refuses such a net)"
        )


def read_netdef(path, *, kind: str | None = None, budget=None):
    """Read a NetDef from a binary ``.pb`` or a text ``.pbtxt`` file (at most the size budget's bytes).

    ``kind``: "predict" or "init" (see :func:`check_net`)."""
    p = Path(path)
    data = Budget.of(budget).read_file(p)
    return parse_netdef(data, source=str(p), text=p.suffix.lower() in TEXT_SUFFIXES, kind=kind)


def write_netdef(net, path) -> None:
    """Write a NetDef as text when the suffix says so (``.pbtxt``), else as binary."""
    p = Path(path)
    if p.suffix.lower() in TEXT_SUFFIXES:
        p.write_text(text_format.MessageToString(net), encoding="utf-8")
    else:
        p.write_bytes(net.SerializeToString(deterministic=True))


def read_value_info(path, *, budget=None) -> dict:
    """Read value_info.json: ``{name: [onnx_elem_type, [dims...]]}`` -> ``{name: (numpy dtype, shape)}``."""
    p = Path(path)
    data = Budget.of(budget).read_file(p)
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise NetDefFormatError(f"{p}: not a value_info.json file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise NetDefFormatError(f"{p}: not JSON ({e})") from None
    except RecursionError:
        raise NetDefFormatError(f"{p}: not a value_info.json file (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise NetDefFormatError(f"{p}: not a usable value_info.json file ({_one_line(e)})") from None
    return parse_value_info(raw, source=str(p))


def _brief(value, limit=80) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # huge ints, deep nesting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_value_info(raw, *, source="value_info") -> dict:
    if not isinstance(raw, dict):
        raise NetDefFormatError(f"{source}: expected an object mapping input names to [elem_type, [dims]]")
    out = {}
    for name, entry in raw.items():
        ok = (
            isinstance(entry, (list, tuple))
            and len(entry) == 2
            and isinstance(entry[0], int)
            and not isinstance(entry[0], bool)
            and isinstance(entry[1], (list, tuple))
        )
        if not ok:
            raise NetDefFormatError(f"{source}: entry {name!r} must be [onnx_elem_type, [dims...]], got {_brief(entry)}")
        if entry[0] not in ONNX_TO_NUMPY:
            raise NetDefFormatError(f"{source}: entry {name!r} has ONNX elem type {_brief(entry[0])}, which is not supported")
        shape = check_shape(f"{source}: entry {name!r}", entry[1], NetDefFormatError)
        out[name] = (ONNX_TO_NUMPY[entry[0]], shape)
    return out


# ----------------------------------------------------------------------------------------------
# tensors


def fit_ints(values, dtype, what: str, error=FillError) -> np.ndarray:
    """Integers as an array of ``dtype``, refusing values the type cannot hold (Caffe2's argument
    reader refuses lossy conversions; numpy would wrap 2^40 to 0 silently)."""
    dtype = np.dtype(dtype)
    values = [int(v) for v in values]
    if values:
        lo, hi = (0, 1) if dtype == bool else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
        bad = next((v for v in values if not lo <= v <= hi), None)
        if bad is not None:
            raise error(f"{what}: value {bad} does not fit {dtype} ({lo}..{hi})")
    return np.asarray(values, dtype=np.int64).astype(dtype) if values else np.zeros(0, dtype)


def tensor_proto_to_array(tp, budget=None) -> np.ndarray:
    """A Caffe2 TensorProto as a numpy array (all DataTypes a model file carries)."""
    dt = tp.data_type
    what = f"tensor {tp.name!r}"
    if dt not in C2_TO_NUMPY:
        raise NetDefFormatError(f"{what}: unsupported Caffe2 data type {dt}")
    npd = C2_TO_NUMPY[dt]
    dims = check_shape(what, tp.dims, NetDefFormatError)
    if tp.HasField("segment"):
        if tp.segment.end < tp.segment.begin or tp.segment.begin < 0:
            raise NetDefFormatError(f"{what}: segment [{tp.segment.begin}, {tp.segment.end}) is empty or negative")
        dims = (int(tp.segment.end - tp.segment.begin),)
    count = numel(dims)
    Budget.of(budget).check(what, dims, npd)
    if tp.raw_data and dt not in (C2_STRING,):
        if len(tp.raw_data) % npd.itemsize:
            raise NetDefFormatError(f"{what}: raw_data of {len(tp.raw_data)} bytes is not a whole number of {npd} values")
        arr = np.frombuffer(tp.raw_data, dtype=npd.newbyteorder("<")).astype(npd)
    elif dt == C2_FLOAT:
        arr = np.asarray(tp.float_data, dtype=np.float32)
    elif dt == C2_DOUBLE:
        arr = np.asarray(tp.double_data, dtype=np.float64)
    elif dt == C2_INT64:
        arr = np.asarray(tp.int64_data, dtype=np.int64)
    elif dt == C2_FLOAT16:  # the float16 bit patterns travel in int32_data
        arr = fit_ints(tp.int32_data, np.uint16, what, NetDefFormatError).view(np.float16)
    elif dt == C2_BYTE:
        arr = np.frombuffer(tp.byte_data, dtype=np.uint8).copy()
    elif dt == C2_STRING:
        arr = np.array(list(tp.string_data), dtype=object)
    else:  # int32, bool, uint8, int8, uint16, int16 all travel in int32_data
        arr = fit_ints(tp.int32_data, npd, what, NetDefFormatError)
    if arr.size != count:
        raise NetDefFormatError(f"{what}: dims {list(dims)} need {count} values, the proto holds {arr.size}")
    return arr.reshape(dims)


def array_to_tensor_proto(name: str, arr) -> "schema.TensorProto":
    arr = np.asarray(arr)
    if arr.dtype not in NUMPY_TO_C2:
        raise NetDefFormatError(f"tensor {name!r}: numpy dtype {arr.dtype} has no Caffe2 DataType")
    tp = schema.TensorProto(name=name, dims=list(arr.shape), data_type=NUMPY_TO_C2[arr.dtype])
    flat = arr.reshape(-1)
    if arr.dtype == np.float32:
        tp.float_data.extend(flat.tolist())
    elif arr.dtype == np.float64:
        tp.double_data.extend(flat.tolist())
    elif arr.dtype == np.int64:
        tp.int64_data.extend(flat.tolist())
    elif arr.dtype == np.float16:
        tp.int32_data.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif arr.dtype == object:
        tp.string_data.extend(x if isinstance(x, bytes) else str(x).encode() for x in flat)
    else:
        tp.int32_data.extend(flat.astype(np.int32).tolist())
    return tp


def read_tensor_protos(path, *, budget=None) -> dict:
    """Read a binary TensorProtos file into ``{name: array}`` (names in file order)."""
    p = Path(path)
    budget = Budget.of(budget)
    data = budget.read_file(p)
    msg = schema.TensorProtos()
    try:
        msg.ParseFromString(data)
        unknown = _unknown_fields(msg)
        bad = _bad_string(msg, "TensorProtos")
    except RecursionError:
        raise NetDefFormatError(f"{p}: not a Caffe2 TensorProtos file (nested too deeply)") from None
    except (_pb_message.DecodeError, RuntimeError, ValueError, TypeError) as e:  # UnicodeDecodeError too
        raise NetDefFormatError(f"{p}: not a Caffe2 TensorProtos file, or truncated ({_one_line(e)})") from None
    if unknown or not msg.protos or bad:
        raise NetDefFormatError(f"{p}: not a Caffe2 TensorProtos file" + (f" ({bad} is not valid UTF-8 text)" if bad else ""))
    out = {}
    for k, tp in enumerate(msg.protos):
        out[tp.name or f"tensor_{k}"] = tensor_proto_to_array(tp, budget)
    return out


# ----------------------------------------------------------------------------------------------
# arguments


def dropout_seed(op, net):
    """The Dropout seed Caffe2 would use: the op's device_option.random_seed, or the net's when the op
    has no device_option (Caffe2 copies the net's option only to ops that lack one); None when unset,
    except under engine CUDNN, whose descriptor was seeded with 0 when no seed was set."""
    dopt = None
    if op.HasField("device_option"):
        dopt = op.device_option
    elif net is not None and net.HasField("device_option"):
        dopt = net.device_option
    if dopt is not None and dopt.HasField("random_seed"):
        return int(dopt.random_seed)
    return 0 if op.engine == "CUDNN" else None


def add_args(op, args) -> None:
    """Append Python values as Caffe2 Arguments to an OperatorDef: float -> f, int -> i, str -> s,
    a sequence of ints -> ints, of bytes -> strings, of floats -> floats."""
    for key, value in args.items():
        a = op.arg.add(name=key)
        if isinstance(value, float):
            a.f = value
        elif isinstance(value, int):
            a.i = value
        elif isinstance(value, str):
            a.s = value.encode()
        elif isinstance(value, bytes):
            a.s = value
        elif all(isinstance(v, int) for v in value):
            a.ints.extend(value)
        elif all(isinstance(v, bytes) for v in value):
            a.strings.extend(value)
        else:
            a.floats.extend(value)


def _arg_value(a):
    if a.HasField("f"):
        return float(a.f)
    if a.HasField("i"):
        return int(a.i)
    if a.HasField("s"):
        return a.s
    if a.HasField("t"):
        return a.t
    if a.HasField("n"):
        return a.n
    if len(a.floats):
        return [float(x) for x in a.floats]
    if len(a.ints):
        return [int(x) for x in a.ints]
    if len(a.strings):
        return list(a.strings)
    if len(a.tensors):
        return list(a.tensors)
    if len(a.nets):
        return list(a.nets)
    return []


class Args:
    """An OperatorDef's (or NetDef's) arguments by name, read the way Caffe2's ArgumentHelper does."""

    def __init__(self, op, where: str = ""):
        self.where = where or (f"{op.type} op" if hasattr(op, "type") else "net")
        self.values = {}
        for a in op.arg:
            self.values[a.name] = _arg_value(a)

    def has(self, name: str) -> bool:
        return name in self.values

    def names(self):
        return list(self.values)

    def _bad(self, name, want):
        return ArgumentError(f"{self.where}: argument {name!r} should be {want}, got {self.values[name]!r}")

    def int(self, name: str, default=None):
        if name not in self.values:
            return default
        v = self.values[name]
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise self._bad(name, "an int")
        return v

    def float(self, name: str, default=None):
        if name not in self.values:
            return default
        v = self.values[name]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        raise self._bad(name, "a float")

    def str(self, name: str, default=None):
        if name not in self.values:
            return default
        v = self.values[name]
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        if isinstance(v, list) and not v:
            return ""
        raise self._bad(name, "a string")

    def ints(self, name: str, default=None):
        if name not in self.values:
            return default
        v = self.values[name]
        if isinstance(v, list) and all(isinstance(x, int) for x in v):
            return list(v)
        if isinstance(v, int):
            raise self._bad(name, "a list of ints")
        raise self._bad(name, "a list of ints")

    def floats(self, name: str, default=None):
        if name not in self.values:
            return default
        v = self.values[name]
        if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            return [float(x) for x in v]
        raise self._bad(name, "a list of floats")

    def strings(self, name: str, default=None):
        if name not in self.values:
            return default
        v = self.values[name]
        if isinstance(v, list) and all(isinstance(x, bytes) for x in v):
            return list(v)
        raise self._bad(name, "a list of strings")


# ----------------------------------------------------------------------------------------------
# init_net fill ops

GIVEN_FILLS = {
    # op type: (numpy dtype, argument field the values are read from)
    "GivenTensorFill": (np.dtype(np.float32), "floats"),
    "GivenTensorDoubleFill": (np.dtype(np.float64), "floats"),
    "GivenTensorBoolFill": (np.dtype(bool), "ints"),
    "GivenTensorInt16Fill": (np.dtype(np.int16), "ints"),
    "GivenTensorIntFill": (np.dtype(np.int32), "ints"),
    "GivenTensorInt64Fill": (np.dtype(np.int64), "ints"),
    "GivenTensorStringFill": (np.dtype(object), "strings"),
    "GivenTensorByteStringToUInt8Fill": (np.dtype(np.uint8), "bytestring"),
}
# GivenTensorFill's ``dtype`` argument re-reads ``values`` as another type (Caffe2 DataType numbers).
_GIVEN_FILL_DTYPES = {
    C2_FLOAT: (np.dtype(np.float32), "floats"),
    C2_DOUBLE: (np.dtype(np.float64), "floats"),
    C2_BOOL: (np.dtype(bool), "ints"),
    C2_INT32: (np.dtype(np.int32), "ints"),
    C2_INT64: (np.dtype(np.int64), "ints"),
    C2_STRING: (np.dtype(object), "strings"),
}
FILL_OPS = frozenset(GIVEN_FILLS) | {"ConstantFill"}


def _shape_arg(args: Args, op_desc: str):
    if not args.has("shape"):
        return None
    v = args.values["shape"]
    if isinstance(v, int):
        raise FillError(f"{op_desc}: argument 'shape' must be a list of ints (Caffe2: 'list expected'), got {v}")
    return check_shape(op_desc, args.ints("shape"), FillError)


def _fill_value(value, dtype, desc):
    """ConstantFill's ``value`` as a numpy scalar of ``dtype``, or a FillError when the type cannot hold it."""
    if isinstance(value, (bytes, list)) or not isinstance(value, (int, float)):
        raise FillError(f"{desc}: 'value' must be a number for dtype {dtype}")
    if dtype.kind in "iub":
        if isinstance(value, float) and not value.is_integer():
            raise FillError(f"{desc}: 'value' {value} is not an integer, the dtype is {dtype}")
        return fit_ints([int(value)], dtype, f"{desc}: 'value'")[0]
    if math.isfinite(value) and abs(value) > float(np.finfo(dtype).max):
        raise FillError(f"{desc}: 'value' {value:g} does not fit {dtype} (largest {float(np.finfo(dtype).max):g})")
    return dtype.type(value)


def evaluate_fill(op, blobs=None, index=None, budget=None) -> np.ndarray:
    """Evaluate one init_net fill op into a numpy array (its single output's value).

    ``blobs`` holds earlier results, for a ConstantFill that takes its shape from an input. ``budget``
    (a :class:`~caffe2_ort.caffe2.limits.Budget`, a byte count or None for the default) is checked
    before anything is allocated from the shape the op claims.
    """
    blobs = blobs or {}
    budget = Budget.of(budget)
    out = op.output[0] if len(op.output) else "?"
    desc = f"init_net op{'' if index is None else f' #{index}'} {op.type} for {out!r}"
    if len(op.output) != 1:
        raise FillError(f"{desc}: a fill op must have exactly one output, it has {len(op.output)}")
    args = Args(op, desc)
    if op.type in GIVEN_FILLS:
        if len(op.input):
            raise FillError(f"{desc}: {op.type} with an input is not supported (shape must come from 'shape')")
        dtype, field = GIVEN_FILLS[op.type]
        if op.type == "GivenTensorFill" and args.has("dtype"):
            code = args.int("dtype")
            if code not in _GIVEN_FILL_DTYPES:
                raise FillError(f"{desc}: unsupported dtype {code} (Caffe2 DataType number)")
            dtype, field = _GIVEN_FILL_DTYPES[code]
        if not args.has("values"):
            raise FillError(f"{desc}: no 'values' argument")
        raw = args.values["values"]
        if raw == []:
            values = []
        elif field == "floats":
            if not isinstance(raw, list) or not all(isinstance(x, float) for x in raw):
                raise FillError(f"{desc}: 'values' must be floats")
            values = raw
        elif field == "ints":
            if not isinstance(raw, list) or not all(isinstance(x, int) for x in raw):
                raise FillError(f"{desc}: 'values' must be ints")
            values = raw
        elif field == "strings":
            if not isinstance(raw, list) or not all(isinstance(x, bytes) for x in raw):
                raise FillError(f"{desc}: 'values' must be strings")
            values = raw
        else:  # bytestring: one string whose bytes are the uint8 data
            if isinstance(raw, bytes):
                raw = [raw]
            if not isinstance(raw, list) or len(raw) != 1 or not isinstance(raw[0], bytes):
                raise FillError(f"{desc}: 'values' must be one byte string")
            values = list(raw[0])
        shape = _shape_arg(args, desc)
        if shape is None:
            if len(values) != 1:
                raise FillError(f"{desc}: no 'shape' argument and {len(values)} values (a scalar needs exactly 1)")
            shape = ()
        count = numel(shape)
        if count != len(values):
            raise FillError(f"{desc}: shape {list(shape)} needs {count} values, the op has {len(values)}")
        budget.check(desc, shape, dtype)
        if dtype == object:
            return np.array(values, dtype=object).reshape(shape)
        if dtype.kind == "f":
            return np.asarray(values, dtype=np.float64).astype(dtype).reshape(shape)
        return fit_ints(values, dtype, desc).reshape(shape)

    if op.type == "ConstantFill":
        code = args.int("dtype", C2_FLOAT)
        if code not in C2_TO_NUMPY or code == C2_BYTE:
            raise FillError(f"{desc}: unsupported dtype {code} (Caffe2 DataType number)")
        dtype = C2_TO_NUMPY[code]
        shape = _shape_arg(args, desc)
        if len(op.input):
            if shape is not None:
                raise FillError(f"{desc}: both an input and a 'shape' argument (Caffe2 rejects this)")
            src = op.input[0]
            if src not in blobs:
                raise FillError(f"{desc}: its input {src!r} is not filled by an earlier init_net op")
            given = np.asarray(blobs[src])
            if args.int("input_as_shape", 0):
                if given.ndim != 1 or given.dtype != np.int64:
                    raise FillError(
                        f"{desc}: with input_as_shape its input {src!r} must be a 1-D int64 tensor (Caffe2's rule), "
                        f"it is {given.dtype} of shape {list(given.shape)}"
                    )
                shape = check_shape(f"{desc}: input_as_shape {src!r}", given.tolist(), FillError)
            else:
                extra = check_shape(f"{desc}: extra_shape", args.ints("extra_shape", []), FillError)
                shape = tuple(given.shape) + extra
        elif args.has("extra_shape"):
            raise FillError(f"{desc}: 'extra_shape' needs an input")
        shape = shape or ()
        if dtype == object:
            value = args.values.get("value", b"")
            value = value if isinstance(value, bytes) else b""
            budget.check(desc, shape, dtype)
            return np.full(shape, value, dtype=object)
        value = _fill_value(args.values.get("value", 0.0 if dtype.kind == "f" else 0), dtype, desc)
        budget.check(desc, shape, dtype)
        return np.full(shape, value, dtype=dtype)
    raise FillError(f"{desc}: {op.type} is not a fill op the converter can evaluate")


def make_given_fill(name: str, arr) -> "schema.OperatorDef":
    """An init_net op that fills ``name`` with ``arr`` (the GivenTensor*Fill kind matching its dtype)."""
    arr = np.asarray(arr)
    op = schema.OperatorDef(output=[name])
    shape = op.arg.add(name="shape")
    shape.ints.extend(int(d) for d in arr.shape)
    values = op.arg.add(name="values")
    flat = arr.reshape(-1)
    kinds = {
        np.dtype(np.float32): "GivenTensorFill",
        np.dtype(np.float64): "GivenTensorDoubleFill",
        np.dtype(bool): "GivenTensorBoolFill",
        np.dtype(np.int16): "GivenTensorInt16Fill",
        np.dtype(np.int32): "GivenTensorIntFill",
        np.dtype(np.int64): "GivenTensorInt64Fill",
        np.dtype(object): "GivenTensorStringFill",
    }
    if arr.dtype not in kinds:
        raise FillError(f"cannot write a fill op for {name!r} of dtype {arr.dtype}")
    op.type = kinds[arr.dtype]
    if arr.dtype.kind == "f":
        values.floats.extend(flat.astype(np.float32).tolist())
    elif arr.dtype == object:
        values.strings.extend(x if isinstance(x, bytes) else str(x).encode() for x in flat)
    else:
        values.ints.extend(flat.astype(np.int64).tolist())
    return op


def evaluate_init_net(init_net, skip=(), budget=None) -> dict:
    """Run every fill op of an init_net in order; returns ``{blob: array}``. Blobs in ``skip``
    (data inputs that the init_net also fills) are left out. Non-fill ops raise one error listing them.
    Every fill is checked against ``budget`` (one total for the whole init_net) before it is made."""
    from collections import Counter

    from .errors import UnsupportedOpsError

    bad = Counter(op.type for op in init_net.op if op.type not in FILL_OPS)
    if bad:
        raise UnsupportedOpsError(bad, where="init_net (only GivenTensor*Fill and ConstantFill are evaluated)")
    budget = Budget.of(budget)
    blobs = {}
    for k, op in enumerate(init_net.op):
        value = evaluate_fill(op, blobs, index=k, budget=budget)
        if op.output[0] in skip:
            continue
        blobs[op.output[0]] = value
    return blobs
