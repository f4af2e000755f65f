"""Message classes for Caffe2's protobuf format, built at import time from ``caffe2.proto``.

The committed ``caffe2.proto`` (next to this file) is the single source of truth. This module reads
it with a small parser for the proto2 subset it uses (package, messages, nested messages and enums,
``optional``/``repeated``/``required`` fields, ``[default = ...]`` and ``[packed = true]``), turns it
into a ``FileDescriptorProto``, adds that to a private ``DescriptorPool`` (so it never clashes with
another copy of caffe2.proto loaded in the same process, e.g. by PyTorch) and makes the classes with
``message_factory``. No protoc and no generated code are involved.

``render_proto(file_descriptor_proto)`` writes a descriptor back as .proto text; the tests use it to
prove that what was built is exactly what the committed file says.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_PATH = Path(__file__).with_name("caffe2.proto")
PROTO_FILE_NAME = "caffe2_ort/caffe2/caffe2.proto"

_FDP = descriptor_pb2.FieldDescriptorProto
SCALAR_TYPES = {
    "double": _FDP.TYPE_DOUBLE,
    "float": _FDP.TYPE_FLOAT,
    "int64": _FDP.TYPE_INT64,
    "uint64": _FDP.TYPE_UINT64,
    "int32": _FDP.TYPE_INT32,
    "uint32": _FDP.TYPE_UINT32,
    "bool": _FDP.TYPE_BOOL,
    "string": _FDP.TYPE_STRING,
    "bytes": _FDP.TYPE_BYTES,
    "sint32": _FDP.TYPE_SINT32,
    "sint64": _FDP.TYPE_SINT64,
}
_SCALAR_NAMES = {v: k for k, v in SCALAR_TYPES.items()}
LABELS = {"optional": _FDP.LABEL_OPTIONAL, "repeated": _FDP.LABEL_REPEATED, "required": _FDP.LABEL_REQUIRED}
_LABEL_NAMES = {v: k for k, v in LABELS.items()}

_TOKEN = re.compile(r'\s*(?:(//[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z_][A-Za-z0-9_.]*)|(-?\d+(?:\.\d+)?)|(\S))')


class ProtoSyntaxError(ValueError):
    pass


def _tokens(text: str):
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ProtoSyntaxError(f"cannot read caffe2.proto at offset {pos}")
        pos = m.end()
        comment, string, ident, number, sym = m.groups()
        if comment is not None:
            continue
        if string is not None:
            out.append(("str", string[1:-1]))
        elif ident is not None:
            out.append(("id", ident))
        elif number is not None:
            out.append(("num", number))
        elif sym is not None:
            out.append(("sym", sym))
    return out


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, kind=None, value=None):
        tok = self.peek()
        if tok[0] is None or (kind and tok[0] != kind) or (value is not None and tok[1] != value):
            raise ProtoSyntaxError(f"caffe2.proto: expected {value or kind}, found {tok[1]!r} (token {self.i})")
        self.i += 1
        return tok[1]

    def parse_file(self):
        fdp = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE_NAME)
        while self.peek()[0] is not None:
            word = self.take("id")
            if word == "syntax":
                self.take("sym", "=")
                fdp.syntax = self.take("str")
                self.take("sym", ";")
            elif word == "package":
                fdp.package = self.take("id")
                self.take("sym", ";")
            elif word == "message":
                self.parse_message(fdp.message_type.add())
            elif word == "enum":
                self.parse_enum(fdp.enum_type.add())
            else:
                raise ProtoSyntaxError(f"caffe2.proto: unexpected {word!r} at top level")
        return fdp

    def parse_enum(self, enum):
        enum.name = self.take("id")
        self.take("sym", "{")
        while self.peek() != ("sym", "}"):
            name = self.take("id")
            self.take("sym", "=")
            enum.value.add(name=name, number=int(self.take("num")))
            self.take("sym", ";")
        self.take("sym", "}")

    def parse_message(self, msg):
        msg.name = self.take("id")
        self.take("sym", "{")
        while self.peek() != ("sym", "}"):
            word = self.take("id")
            if word == "message":
                self.parse_message(msg.nested_type.add())
            elif word == "enum":
                self.parse_enum(msg.enum_type.add())
            elif word in LABELS:
                field = msg.field.add(label=LABELS[word])
                field.type_name = self.take("id")  # resolved later
                field.name = self.take("id")
                self.take("sym", "=")
                field.number = int(self.take("num"))
                if self.peek() == ("sym", "["):
                    self.take("sym", "[")
                    while True:
                        opt = self.take("id")
                        self.take("sym", "=")
                        kind, value = self.peek()
                        self.i += 1
                        if opt == "default":
                            field.default_value = value
                        elif opt == "packed":
                            field.options.packed = value == "true"
                        else:
                            raise ProtoSyntaxError(f"caffe2.proto: unsupported field option {opt!r}")
                        if self.peek() == ("sym", ","):
                            self.take("sym", ",")
                            continue
                        break
                    self.take("sym", "]")
                self.take("sym", ";")
            else:
                raise ProtoSyntaxError(f"caffe2.proto: unexpected {word!r} in message {msg.name}")
        self.take("sym", "}")


def _declared(fdp):
    """Fully qualified name -> 'message' | 'enum' for everything the file declares."""
    kinds = {}

    def walk(prefix, msgs, enums):
        for e in enums:
            kinds[f"{prefix}.{e.name}"] = "enum"
        for m in msgs:
            kinds[f"{prefix}.{m.name}"] = "message"
            walk(f"{prefix}.{m.name}", m.nested_type, m.enum_type)

    walk(f".{fdp.package}", fdp.message_type, fdp.enum_type)
    return kinds


def _resolve(fdp):
    kinds = _declared(fdp)

    def walk(scope, msgs):
        for m in msgs:
            inner = f"{scope}.{m.name}"
            for f in m.field:
                name = f.type_name
                if name in SCALAR_TYPES:
                    f.type = SCALAR_TYPES[name]
                    f.ClearField("type_name")
                    continue
                # proto scoping: innermost scope first
                parts = inner.split(".")
                for k in range(len(parts), 1, -1):
                    cand = ".".join(parts[:k]) + "." + name
                    if cand in kinds:
                        break
                else:
                    raise ProtoSyntaxError(f"caffe2.proto: unknown type {name!r} in {m.name}.{f.name}")
                f.type_name = cand
                f.type = _FDP.TYPE_ENUM if kinds[cand] == "enum" else _FDP.TYPE_MESSAGE
            walk(inner, m.nested_type)

    walk(f".{fdp.package}", fdp.message_type)
    return fdp


def parse_proto(text: str) -> descriptor_pb2.FileDescriptorProto:
    """Parse the proto2 subset used by caffe2.proto into a resolved FileDescriptorProto."""
    return _resolve(_Parser(text).parse_file())


def render_proto(fdp: descriptor_pb2.FileDescriptorProto) -> str:
    """Canonical .proto text of a descriptor (no comments, two-space indent), for comparisons."""
    pkg = f".{fdp.package}."
    lines = [f'syntax = "{fdp.syntax}";', f"package {fdp.package};"]

    def enum_lines(e, ind):
        out = [f"{ind}enum {e.name} {{"]
        out += [f"{ind}  {v.name} = {v.number};" for v in e.value]
        return out + [f"{ind}}}"]

    def msg_lines(m, scope, ind):
        out = [f"{ind}message {m.name} {{"]
        for e in m.enum_type:
            out += enum_lines(e, ind + "  ")
        for n in m.nested_type:
            out += msg_lines(n, f"{scope}{m.name}.", ind + "  ")
        for f in m.field:
            if f.type_name:
                tname = f.type_name[len(pkg):] if f.type_name.startswith(pkg) else f.type_name
                own = f"{scope}{m.name}."
                if tname.startswith(own):
                    tname = tname[len(own):]
            else:
                tname = _SCALAR_NAMES[f.type]
            opts = []
            if f.HasField("default_value"):
                dv = f.default_value
                opts.append(f'default = "{dv}"' if f.type == _FDP.TYPE_STRING else f"default = {dv}")
            if f.options.HasField("packed"):
                opts.append(f"packed = {'true' if f.options.packed else 'false'}")
            suffix = f" [{', '.join(opts)}]" if opts else ""
            out.append(f"{ind}  {_LABEL_NAMES[f.label]} {tname} {f.name} = {f.number}{suffix};")
        return out + [f"{ind}}}"]

    for e in fdp.enum_type:
        lines += enum_lines(e, "")
    for m in fdp.message_type:
        lines += msg_lines(m, "", "")
    return "\n".join(lines) + "\n"


def _build():
    fdp = parse_proto(PROTO_PATH.read_text(encoding="utf-8"))
    pool = descriptor_pool.DescriptorPool()
    file_desc = pool.Add(fdp)
    if hasattr(file_desc, "message_types_by_name"):  # protobuf >= 4 returns the FileDescriptor
        fd = file_desc
    else:  # pragma: no cover - older protobuf
        fd = pool.FindFileByName(PROTO_FILE_NAME)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        make = message_factory.GetMessageClass
    else:  # pragma: no cover - protobuf 3.20
        make = message_factory.MessageFactory(pool).GetPrototype
    classes = {name: make(d) for name, d in fd.message_types_by_name.items()}
    return fdp, pool, classes


FILE_DESCRIPTOR_PROTO, POOL, _CLASSES = _build()

DeviceOption = _CLASSES["DeviceOption"]
TensorProto = _CLASSES["TensorProto"]
QTensorProto = _CLASSES["QTensorProto"]
TensorProtos = _CLASSES["TensorProtos"]
TensorShape = _CLASSES["TensorShape"]
TensorShapes = _CLASSES["TensorShapes"]
Argument = _CLASSES["Argument"]
OperatorDef = _CLASSES["OperatorDef"]
PartitionInfo = _CLASSES["PartitionInfo"]
NetDef = _CLASSES["NetDef"]
BlobProto = _CLASSES["BlobProto"]

__all__ = [
    "Argument",
    "BlobProto",
    "DeviceOption",
    "NetDef",
    "OperatorDef",
    "PartitionInfo",
    "QTensorProto",
    "TensorProto",
    "TensorProtos",
    "TensorShape",
    "TensorShapes",
    "parse_proto",
    "render_proto",
]
