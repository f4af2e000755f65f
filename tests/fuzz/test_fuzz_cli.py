"""Fuzzing the command line with hypothesis: every case runs ``caffe2-ort`` in a child process under a
memory cap and a timeout (harness.py) and must exit 0, or exit 2 with exactly one ``error:`` line.

Targets: binary NetDefs mutated byte by byte, text NetDefs mutated token by token, NetDefs generated
op by op with hostile arguments, value_info.json documents, init nets of fill ops, and ONNX models
whose ``ai.caffe2`` nodes carry attributes of every kind, run through the plugin.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from caffe2_ort.caffe2 import netdef, schema

from caffe2_helpers import MODELS
from .harness import check_outcome, run_cli

pytestmark = pytest.mark.fuzz

TINY = MODELS / "tiny_dropout_net"
TINY_PB = netdef.read_netdef(TINY / "predict_net.pbtxt").SerializeToString()
TINY_TEXT = (TINY / "predict_net.pbtxt").read_bytes()
TINY_INIT = (TINY / "init_net.pb").read_bytes()
TINY_VI = (TINY / "value_info.json").read_bytes()

# values that have broken converters before: zero, negative, int32/int64 edges, huge
EDGE_INTS = st.sampled_from([0, 1, -1, 2, 3, 7, 255, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -(2**63)])
INTS = st.one_of(EDGE_INTS, st.integers(-4, 16), st.integers(-(2**63), 2**63 - 1))
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, -1.0, 1e-4, 0.75, float("nan"), float("inf"), -float("inf"), 1e-45, 3.4e38]),
    st.floats(width=32),
)
STRINGS = st.one_of(
    st.sampled_from([b"", b"NCHW", b"NHWC", b"CUDNN", b"DEFAULT", b"CUDNN\0junk", b"\xff\xfe", b"philox", b"caffe2_mt19937"]),
    st.binary(max_size=12),
)
DIMS = st.lists(st.one_of(st.integers(0, 6), EDGE_INTS), max_size=5)


# ----------------------------------------------------------------------------------------------
# byte-level mutation of binary files


@st.composite
def mutated_bytes(draw, seed: bytes):
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "duplicate", "varint"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x0A, 0x0C, 0x0D, 0x12, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            end = min(len(data), pos + draw(st.integers(1, 64)))
            data[pos:pos] = data[pos:end]
        elif kind == "varint":  # a huge length or value
            data[pos:pos] = b"\xff" * draw(st.integers(1, 9)) + b"\x01"
    return bytes(data)


def _assert_contract(argv, files):
    return check_outcome(run_cli(argv, files=files))


@given(data=mutated_bytes(TINY_PB))
def test_binary_predict_net_mutations(data):
    _assert_contract(["convert", "p.pb", "--init", "i.pb", "--value-info", "vi.json", "-o", "m.onnx"],
                     {"p.pb": data, "i.pb": TINY_INIT, "vi.json": TINY_VI})  # fmt: skip


@given(data=mutated_bytes(TINY_INIT), run=st.booleans())
def test_binary_init_net_mutations(data, run):
    cmd = ["run", "p.pb", "--init", "i.pb", "--value-info", "vi.json"] if run else ["convert", "p.pb", "--init", "i.pb", "--value-info", "vi.json", "-o", "m.onnx"]
    _assert_contract(cmd, {"p.pb": TINY_PB, "i.pb": data, "vi.json": TINY_VI})


# ----------------------------------------------------------------------------------------------
# token-level mutation of text nets

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:e-?\d+)?|[A-Za-z_]+|[{}:]|\s+')


@st.composite
def mutated_text(draw, seed: bytes):
    tokens = _TOKEN.findall(seed)
    for _ in range(draw(st.integers(1, 5))):
        if not tokens:
            break
        k = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "number", "string", "nest", "swap"]))
        if kind == "delete":
            del tokens[k]
        elif kind == "duplicate":
            tokens[k:k] = tokens[k : k + draw(st.integers(1, 40))]
        elif kind == "number":
            tokens[k] = str(draw(st.one_of(INTS, FLOATS))).encode()
        elif kind == "string":
            tokens[k] = b'"' + draw(STRINGS).replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        elif kind == "nest":
            depth = draw(st.integers(1, 300))
            tokens[k:k] = [b" arg { name: \"n\" n { op { type: \"Relu\" "] * depth + [b"} } } "] * depth
        else:
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[k], tokens[j] = tokens[j], tokens[k]
    return b"".join(tokens)


@given(text=mutated_text(TINY_TEXT))
def test_text_predict_net_mutations(text):
    _assert_contract(["convert", "p.pbtxt", "--init", "i.pb", "--value-info", "vi.json", "-o", "m.onnx"],
                     {"p.pbtxt": text, "i.pb": TINY_INIT, "vi.json": TINY_VI})  # fmt: skip


# ----------------------------------------------------------------------------------------------
# generated nets with hostile arguments

OP_TYPES = ["Conv", "ConvTranspose", "FC", "Relu", "Sigmoid", "Tanh", "LRN", "MaxPool", "AveragePool", "Softmax", "Concat",
            "SpatialBN", "Sum", "Add", "Sub", "Mul", "Div", "Reshape", "Flatten", "Dropout", "DropoutGrad", "Copy",
            "Conv2D", "MaxPool1D", "Gather", ""]  # fmt: skip
ARG_NAMES = ["kernel", "kernels", "kernel_h", "kernel_w", "stride", "strides", "pad", "pads", "pad_t", "pad_l", "pad_b",
             "pad_r", "dilation", "dilations", "group", "legacy_pad", "global_pooling", "order", "axis", "axis_w",
             "add_axis", "broadcast", "shape", "size", "alpha", "beta", "bias", "epsilon", "is_test", "ratio", "adj",
             "count_include_pad", "engine"]  # fmt: skip
BLOBS = ["x", "y", "z", "w", "b", "m", "s", "\u00e9"]


@st.composite
def arguments(draw):
    arg = schema.Argument(name=draw(st.sampled_from(ARG_NAMES)))
    kind = draw(st.sampled_from(["i", "f", "s", "ints", "floats", "strings", "none"]))
    if kind == "i":
        arg.i = draw(INTS)
    elif kind == "f":
        arg.f = draw(FLOATS)
    elif kind == "s":
        arg.s = draw(STRINGS)
    elif kind == "ints":
        arg.ints.extend(draw(st.lists(INTS, max_size=6)))
    elif kind == "floats":
        arg.floats.extend(draw(st.lists(FLOATS, max_size=4)))
    elif kind == "strings":
        arg.strings.extend(draw(st.lists(STRINGS, max_size=3)))
    return arg


@st.composite
def generated_nets(draw):
    net = schema.NetDef(name=draw(st.sampled_from(["g", "", "n" * 10, "n" * 13])))
    for _ in range(draw(st.integers(1, 4))):
        op = net.op.add(type=draw(st.sampled_from(OP_TYPES)))
        op.input.extend(draw(st.lists(st.sampled_from(BLOBS), min_size=0, max_size=4)))
        op.output.extend(draw(st.lists(st.sampled_from(BLOBS), min_size=0, max_size=3)))
        op.arg.extend(draw(st.lists(arguments(), max_size=5)))
        if draw(st.booleans()):
            op.engine = draw(st.sampled_from(["", "CUDNN", "DEFAULT", "X"]))
        if draw(st.booleans()):
            op.device_option.random_seed = draw(st.integers(0, 2**32 - 1))
    net.external_input.extend(draw(st.lists(st.sampled_from(BLOBS), max_size=4, unique=True)))
    net.external_output.extend(draw(st.lists(st.sampled_from(BLOBS), max_size=2, unique=True)))
    return net


@given(net=generated_nets(), shape=st.lists(st.integers(0, 5), min_size=0, max_size=5), text=st.booleans(),
       command=st.sampled_from(["convert", "run", "synth-init"]))  # fmt: skip
def test_generated_nets(net, shape, text, command):
    name = "p.pbtxt" if text else "p.pb"
    data = text_format.MessageToString(net, as_utf8=True).encode() if text else net.SerializeToString()
    dims = ",".join(map(str, shape))
    argv = [command, name, "--input", f"x:{dims}"]
    argv += {"convert": ["-o", "m.onnx"], "run": ["--compare"], "synth-init": ["-o", "i.pb"]}[command]
    _assert_contract(argv, {name: data})


@st.composite
def tiny_net_with_hostile_arguments(draw):
    """The tiny net, valid but for one to three arguments: conversion, ORT and the executor all run."""
    net = netdef.read_netdef(TINY / "predict_net.pbtxt")
    for _ in range(draw(st.integers(1, 3))):
        op = net.op[draw(st.integers(0, len(net.op) - 1))]
        arg = draw(arguments())
        kept = [a for a in op.arg if a.name != arg.name]
        del op.arg[:]
        op.arg.extend(kept + [arg])
        if draw(st.integers(0, 3)) == 0:
            op.engine = draw(st.sampled_from(["CUDNN", "DEFAULT", "X"]))
    return net.SerializeToString()


@given(net=tiny_net_with_hostile_arguments(), dims=st.sampled_from(["1,3,8,8", "2,3,5,7", "1,3,1,1", "0,3,8,8"]))
def test_valid_net_with_hostile_arguments(net, dims):
    _assert_contract(["run", "p.pb", "--input", f"data:{dims}", "--synth", "--compare"], {"p.pb": net})


# ----------------------------------------------------------------------------------------------
# value_info.json

JSON_LEAVES = st.one_of(st.none(), st.booleans(), INTS, st.integers(), FLOATS.filter(lambda f: f == f), st.text(max_size=6))
JSON = st.recursive(JSON_LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=12)


@st.composite
def value_infos(draw):
    kind = draw(st.sampled_from(["entry", "json", "deep", "digits"]))
    if kind == "entry":
        doc = {"data": [draw(st.one_of(st.integers(-1, 17), INTS)), draw(st.one_of(DIMS, st.just([1, 3, 8, 8])))]}
        return json.dumps(doc).encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "deep":
        depth = draw(st.integers(500, 200000))
        return b'{"data": [1, ' + b"[" * depth + b"]" * depth + b"]}"
    return b'{"data": [1, [1, ' + b"9" * draw(st.integers(19, 6000)) + b"]]}"


@given(vi=value_infos(), command=st.sampled_from(["convert", "run", "synth-init"]))
def test_value_info_documents(vi, command):
    argv = [command, "p.pb", "--value-info", "vi.json"]
    argv += {"convert": ["--init", "i.pb", "-o", "m.onnx"], "run": ["--synth"], "synth-init": ["-o", "s.pb"]}[command]
    _assert_contract(argv, {"p.pb": TINY_PB, "i.pb": TINY_INIT, "vi.json": vi})


# ----------------------------------------------------------------------------------------------
# init nets of fill ops

FILL_TYPES = ["GivenTensorFill", "GivenTensorDoubleFill", "GivenTensorBoolFill", "GivenTensorInt16Fill", "GivenTensorIntFill",
              "GivenTensorInt64Fill", "GivenTensorStringFill", "GivenTensorByteStringToUInt8Fill", "ConstantFill", "XavierFill"]  # fmt: skip


@st.composite
def fill_ops(draw, output):
    op = schema.OperatorDef(type=draw(st.sampled_from(FILL_TYPES)), output=[output])
    if draw(st.integers(0, 4)) == 0:
        op.input.append(draw(st.sampled_from(["conv1_w", "s", "fc1_b"])))
    shape = draw(st.one_of(DIMS, st.sampled_from([[4, 3, 3, 3], [4], [10, 4, 4, 4], [10], [2]])))
    if draw(st.integers(0, 5)):
        op.arg.add(name="shape").ints.extend(shape)
    n = max(0, min(int(np.prod(shape, dtype=object)) if shape else 1, 2000))
    values = op.arg.add(name="values")
    kind = draw(st.sampled_from(["floats", "ints", "strings", "none", "count"]))
    if kind == "floats":
        values.floats.extend(draw(st.lists(FLOATS, min_size=n, max_size=n)) if n <= 64 else [0.5] * n)
    elif kind == "ints":
        values.ints.extend(draw(st.lists(INTS, min_size=n, max_size=n)) if n <= 64 else [1] * n)
    elif kind == "strings":
        values.strings.extend([draw(STRINGS)] * max(n, 1))
    elif kind == "count":
        values.floats.extend([1.0] * draw(st.integers(0, 5)))
    for arg in draw(st.lists(arguments(), max_size=2)):
        op.arg.append(arg)
    if draw(st.booleans()):
        op.arg.add(name=draw(st.sampled_from(["dtype", "value", "input_as_shape", "extra_shape"])), i=draw(INTS))
    return op


@st.composite
def init_nets(draw):
    init = netdef.read_netdef(TINY / "init_net.pb")
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(init.op) - 1))
        init.op[k].CopyFrom(draw(fill_ops(init.op[k].output[0] if init.op[k].output else "w")))
    if draw(st.booleans()):
        init.op.insert(0, draw(fill_ops("s")))
    return init.SerializeToString()


@given(init=init_nets(), run=st.booleans())
def test_init_nets(init, run):
    argv = ["run", "p.pb", "--init", "i.pb", "--value-info", "vi.json"] if run else ["convert", "p.pb", "--init", "i.pb", "--value-info", "vi.json", "-o", "m.onnx"]
    _assert_contract(argv, {"p.pb": TINY_PB, "i.pb": init, "vi.json": TINY_VI})


# ----------------------------------------------------------------------------------------------
# ai.caffe2 node attributes, through the plugin

ATTR_NAMES = ["ratio", "is_test", "seed", "engine", "rng", "bogus"]
ELEM_TYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32, TensorProto.BOOL]


@st.composite
def attributes(draw):
    name = draw(st.sampled_from(ATTR_NAMES))
    kind = draw(st.sampled_from(["f", "i", "s", "floats", "ints", "strings", "tensor"]))
    if kind == "f":
        return helper.make_attribute(name, draw(FLOATS))
    if kind == "i":
        return helper.make_attribute(name, draw(INTS))
    if kind == "s":
        return helper.make_attribute(name, draw(STRINGS))
    if kind == "floats":
        return helper.make_attribute(name, draw(st.lists(FLOATS, min_size=1, max_size=3)), attr_type=helper.AttributeProto.FLOATS)
    if kind == "ints":
        return helper.make_attribute(name, draw(st.lists(INTS, min_size=1, max_size=3)), attr_type=helper.AttributeProto.INTS)
    if kind == "strings":
        return helper.make_attribute(name, draw(st.lists(STRINGS, min_size=1, max_size=2)), attr_type=helper.AttributeProto.STRINGS)
    return helper.make_attribute(name, helper.make_tensor("t", TensorProto.FLOAT, [1], [draw(FLOATS)]))


@st.composite
def caffe2_models(draw):
    op = draw(st.sampled_from(["Dropout", "DropoutGrad"]))
    elem = draw(st.sampled_from(ELEM_TYPES))
    shape = draw(st.lists(st.integers(0, 5), max_size=3))
    n_out = draw(st.integers(1, 2)) if op == "Dropout" else 1
    ins = ["X"] if op == "Dropout" else (["dY", "mask"] if draw(st.booleans()) else ["dY"])
    outs = ["Y", "mask"][:n_out] if op == "Dropout" else ["dX"]
    node = helper.make_node(op, ins, outs, domain="ai.caffe2", name="n")
    unique = {}
    for a in draw(st.lists(attributes(), max_size=4)):
        unique[a.name] = a
    node.attribute.extend(unique.values())
    types = {"X": elem, "dY": elem, "Y": elem, "dX": elem, "mask": TensorProto.BOOL}
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, types[n], shape) for n in ins],
        [helper.make_tensor_value_info(n, types[n], None) for n in outs],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)], ir_version=8)
    return model.SerializeToString()


@given(model=caffe2_models())
def test_caffe2_node_attributes_through_the_plugin(model):
    _assert_contract(["run", "m.onnx"], {"m.onnx": model})
