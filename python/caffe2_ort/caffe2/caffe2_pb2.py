"""Caffe2's ``caffe2.proto.caffe2_pb2`` under its own names, for porting scripts:

    from caffe2.proto import caffe2_pb2          # before
    from caffe2_ort.caffe2 import caffe2_pb2     # after

The message classes are those of :mod:`caffe2_ort.caffe2.schema` (built from the committed
``caffe2.proto``), so ``text_format.Merge(text, caffe2_pb2.NetDef())``, ``ParseFromString`` and
``SerializeToString`` work unchanged and the messages go straight into :mod:`caffe2_ort.workspace`
and the converter. The top-level enum ``DeviceTypeProto`` is exposed as Caffe2's module does: its
values as module constants (``PROTO_CPU``, ``PROTO_CUDA``, ...) plus the short aliases Caffe2's
``caffe2.proto`` package adds (``CPU``, ``CUDA``, ...).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2 as _descriptor_pb2

from . import schema as _schema

DESCRIPTOR = _schema.POOL.FindFileByName(_schema.PROTO_FILE_NAME)

# every message class of caffe2.proto, by its Caffe2 name
for _name, _cls in _schema._CLASSES.items():
    globals()[_name] = _cls

# top-level enums: the enum's values as module constants (what protoc's Python output does)
for _enum in DESCRIPTOR.enum_types_by_name.values():
    for _value in _enum.values:
        globals()[_value.name] = _value.number

# caffe2/proto/__init__.py's aliases: the device types without their PROTO_ prefix
_ALIASES = ("CPU", "CUDA", "MKLDNN", "OPENGL", "OPENCL", "IDEEP", "HIP", "COMPILE_TIME_MAX_DEVICE_TYPES")
for _alias in _ALIASES:
    globals()[_alias] = globals()["PROTO_" + _alias]

__all__ = sorted(
    [*_schema._CLASSES, *_ALIASES, *(v.name for e in DESCRIPTOR.enum_types_by_name.values() for v in e.values)]
)

del _name, _cls, _enum, _value, _alias
