"""The NetDef reader: the committed caffe2.proto and the descriptors built from it, binary and text
NetDefs, TensorProtos, fill-op evaluation, value_info.json, and one-line errors for bad files."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from caffe2_ort.caffe2 import netdef, schema
from caffe2_ort.caffe2.errors import ArgumentError, FillError, NetDefFormatError, UnsupportedOpsError

from caffe2_helpers import ZOO_NETS, make_net, shared_file


def _normalise(proto_text):
    lines = []
    for line in proto_text.splitlines():
        line = line.split("//")[0].strip()
        if line:
            lines.append(re.sub(r"\s+", " ", line))
    return lines


def test_descriptors_are_exactly_the_committed_proto():
    text = schema.PROTO_PATH.read_text()
    rendered = schema.render_proto(schema.FILE_DESCRIPTOR_PROTO)
    assert _normalise(rendered) == _normalise(text)
    # and the rendering parses back to the same descriptor
    assert schema.parse_proto(rendered) == schema.FILE_DESCRIPTOR_PROTO


# Field numbers of the Caffe2 format (docs/caffe2-facts.md section 7), written out independently.
FIELDS = {
    "NetDef": {"name": 1, "op": 2, "type": 3, "num_workers": 4, "device_option": 5, "arg": 6,
               "external_input": 7, "external_output": 8, "partition_info": 9},
    "OperatorDef": {"input": 1, "output": 2, "name": 3, "type": 4, "arg": 5, "device_option": 6, "engine": 7,
                    "control_input": 8, "is_gradient_op": 9, "debug_info": 10, "domain": 11, "op_version": 12},
    "Argument": {"name": 1, "f": 2, "i": 3, "s": 4, "floats": 5, "ints": 6, "strings": 7, "n": 8, "nets": 9,
                 "t": 10, "tensors": 11, "qtensors": 12},
    "DeviceOption": {"device_type": 1, "device_id": 2, "random_seed": 3, "node_name": 4, "numa_node_id": 5,
                     "extra_info": 6},
    "TensorProto": {"dims": 1, "data_type": 2, "float_data": 3, "int32_data": 4, "byte_data": 5, "string_data": 6,
                    "name": 7, "device_detail": 8, "double_data": 9, "int64_data": 10, "segment": 11,
                    "raw_data": 13, "data_format": 15},
    "TensorProtos": {"protos": 1},
}  # fmt: skip
DATA_TYPES = {"FLOAT": 1, "INT32": 2, "BYTE": 3, "STRING": 4, "BOOL": 5, "UINT8": 6, "INT8": 7, "UINT16": 8,
              "INT16": 9, "INT64": 10, "FLOAT16": 12, "DOUBLE": 13}  # fmt: skip


def test_field_numbers():
    for msg, fields in FIELDS.items():
        desc = getattr(schema, msg).DESCRIPTOR
        assert {f.name: f.number for f in desc.fields} == fields, msg
    enum = schema.TensorProto.DESCRIPTOR.enum_types_by_name["DataType"]
    for name, number in DATA_TYPES.items():
        assert enum.values_by_name[name].number == number
    assert schema.DeviceOption().numa_node_id == -1
    assert schema.TensorProto().data_type == 1
    assert schema.TensorProto.DESCRIPTOR.fields_by_name["float_data"].is_packed


@pytest.mark.parametrize("name", ZOO_NETS)
def test_reads_zoo_pbtxt_and_round_trips_binary(name, tmp_path):
    path = shared_file("caffe2_models", name, "predict_net.pbtxt")
    text = path.read_text()
    net = netdef.read_netdef(path)
    assert len(net.op) == len(re.findall(r"^op \{", text, re.M))
    assert len(net.external_input) == text.count("external_input:")
    assert net.name and list(net.external_output) == re.findall(r'^external_output: "(.*)"', text, re.M)
    netdef.write_netdef(net, tmp_path / "net.pb")
    again = netdef.read_netdef(tmp_path / "net.pb")
    assert again == net
    # a binary file with a .pbtxt name and a text file with a .pb name are still read
    (tmp_path / "bin.pbtxt").write_bytes((tmp_path / "net.pb").read_bytes())
    (tmp_path / "text.pb").write_text(text)
    assert netdef.read_netdef(tmp_path / "text.pb") == net


def _one_line(e):
    s = str(e)
    assert "\n" not in s and s
    return s


def test_truncated_binary(tmp_path):
    net = make_net(ops=[("Relu", ["x"], ["y"])] * 20, inputs=["x"], outputs=["y"])
    data = net.SerializeToString()
    (tmp_path / "cut.pb").write_bytes(data[: len(data) - 7])
    with pytest.raises(NetDefFormatError) as e:
        netdef.read_netdef(tmp_path / "cut.pb")
    assert "cut.pb: not a Caffe2 NetDef, or truncated" in _one_line(e.value)


def test_onnx_model_is_not_a_netdef(tmp_path):
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(model, tmp_path / "model.onnx")
    with pytest.raises(NetDefFormatError) as e:
        netdef.read_netdef(tmp_path / "model.onnx")
    assert "not a Caffe2 NetDef" in _one_line(e.value)


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (b"", ".pb", "empty or not a Caffe2 NetDef"),
        (bytes(range(256)) * 4, ".pb", "not a Caffe2 NetDef"),
        (b"op { type: \"Relu\" input: \"x\" \n bogus_field: 3 }", ".pbtxt", "not a text-format Caffe2 NetDef"),
        (b"op { input: \"x\" output: \"y\" }", ".pbtxt", "op #0 has no type"),
    ],
)
def test_foreign_files(tmp_path, content, suffix, message):
    p = tmp_path / f"f{suffix}"
    p.write_bytes(content)
    with pytest.raises(NetDefFormatError) as e:
        netdef.read_netdef(p)
    assert message in _one_line(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(NetDefFormatError, match="cannot read"):
        netdef.read_netdef(tmp_path / "nope.pb")


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        np.arange(4, dtype=np.float64) / 3,
        np.array([[1, -2], [3, 4]], dtype=np.int32),
        np.array([1, 2**40], dtype=np.int64),
        np.array([True, False, True]),
        np.array([1, 200], dtype=np.uint8),
        np.array([-3, 5], dtype=np.int8),
        np.array([-3, 5], dtype=np.int16),
        np.array([7, 60000], dtype=np.uint16),
        np.array([0.5, -2.25, 65504], dtype=np.float16),
        np.array([b"ab", b"c"], dtype=object),
    ],
)
def test_tensor_proto_round_trip(arr, tmp_path):
    tp = netdef.array_to_tensor_proto("t", arr)
    back = netdef.tensor_proto_to_array(tp)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    protos = schema.TensorProtos(protos=[tp])
    (tmp_path / "t.pb").write_bytes(protos.SerializeToString())
    np.testing.assert_array_equal(netdef.read_tensor_protos(tmp_path / "t.pb")["t"], arr)


def test_tensor_proto_raw_data_byte_data_and_errors():
    tp = schema.TensorProto(dims=[2], data_type=1, raw_data=np.array([1.5, -2], "<f4").tobytes())
    np.testing.assert_array_equal(netdef.tensor_proto_to_array(tp), [1.5, -2])
    tp = schema.TensorProto(dims=[3], data_type=3, byte_data=b"\x01\x02\xff")
    np.testing.assert_array_equal(netdef.tensor_proto_to_array(tp), [1, 2, 255])
    with pytest.raises(NetDefFormatError, match=r"dims \[3\] need 3 values, the proto holds 2"):
        netdef.tensor_proto_to_array(schema.TensorProto(name="w", dims=[3], float_data=[1, 2]))


def _fill(type_, shape, values=None, **args):
    op = schema.OperatorDef(type=type_, output=["w"])
    if shape is not None:
        op.arg.add(name="shape", ints=shape)
    if values is not None:
        if not values:
            op.arg.add(name="values")
        else:
            netdef.add_args(op, {"values": list(values)})
    netdef.add_args(op, args)
    return op


@pytest.mark.parametrize(
    "type_, values, dtype",
    [
        ("GivenTensorFill", [0.5, 1.0, -2.0, 3.0], np.float32),
        ("GivenTensorDoubleFill", [0.5, 1.0, -2.0, 3.0], np.float64),
        ("GivenTensorBoolFill", [1, 0, 0, 1], bool),
        ("GivenTensorIntFill", [1, -2, 3, 4], np.int32),
        ("GivenTensorInt64Fill", [1, -2, 3, 2**40], np.int64),
        ("GivenTensorInt16Fill", [1, -2, 3, 4], np.int16),
        ("GivenTensorStringFill", [b"a", b"b", b"c", b"d"], object),
    ],
)
def test_given_fills(type_, values, dtype):
    arr = netdef.evaluate_fill(_fill(type_, [2, 2], values))
    assert arr.dtype == np.dtype(dtype) and arr.shape == (2, 2)
    assert arr.reshape(-1).tolist() == [np.dtype(dtype).type(v) if dtype is not object else v for v in values]
    # make_given_fill writes the matching kind back
    op = netdef.make_given_fill("w", arr)
    assert op.type == type_ or (type_ == "GivenTensorDoubleFill" and op.type == type_)
    np.testing.assert_array_equal(netdef.evaluate_fill(op), arr)


def test_given_tensor_fill_dtype_argument_and_bytestring():
    arr = netdef.evaluate_fill(_fill("GivenTensorFill", [3], [1, 2, 3], dtype=10))  # INT64 from ints
    assert arr.dtype == np.int64 and arr.tolist() == [1, 2, 3]
    op = schema.OperatorDef(type="GivenTensorByteStringToUInt8Fill", output=["w"])
    op.arg.add(name="shape", ints=[3])
    op.arg.add(name="values", s=b"\x00\x07\xff")
    assert netdef.evaluate_fill(op).tolist() == [0, 7, 255]


def test_constant_fill():
    arr = netdef.evaluate_fill(_fill("ConstantFill", [2, 3], value=1.5))
    assert arr.dtype == np.float32 and arr.shape == (2, 3) and (arr == 1.5).all()
    arr = netdef.evaluate_fill(_fill("ConstantFill", [4], dtype=10, value=7))
    assert arr.dtype == np.int64 and arr.tolist() == [7] * 4
    blobs = {"s": np.array([2, 5], dtype=np.int64)}
    op = _fill("ConstantFill", None, value=2.0, input_as_shape=1)
    op.input.append("s")
    assert netdef.evaluate_fill(op, blobs).shape == (2, 5)
    op = _fill("ConstantFill", None, extra_shape=[3])
    op.input.append("s")
    assert netdef.evaluate_fill(op, blobs).shape == (2, 3)


def test_fill_value_count_must_match_shape():
    with pytest.raises(FillError) as e:
        netdef.evaluate_fill(_fill("GivenTensorFill", [2, 3], [1.0, 2.0]), index=4)
    assert _one_line(e.value) == "init_net op #4 GivenTensorFill for 'w': shape [2, 3] needs 6 values, the op has 2"
    op = _fill("GivenTensorFill", None, [1.0])
    op.arg.add(name="shape", i=3)
    with pytest.raises(FillError, match="'shape' must be a list of ints"):
        netdef.evaluate_fill(op)
    with pytest.raises(FillError, match="no 'shape' argument and 2 values"):
        netdef.evaluate_fill(_fill("GivenTensorFill", None, [1.0, 2.0]))


def test_init_net_with_other_ops_lists_them():
    init = make_net(ops=[("XavierFill", [], ["a"]), ("XavierFill", [], ["b"]), ("UniformFill", [], ["c"])])
    with pytest.raises(UnsupportedOpsError) as e:
        netdef.evaluate_init_net(init)
    assert "UniformFill x1" in str(e.value) and "XavierFill x2" in str(e.value)


def test_value_info(tmp_path):
    (tmp_path / "vi.json").write_text('{"data": [1, [1, 3, 8, 8]], "ids": [7, [4]], "d": [11, []]}')
    vi = netdef.read_value_info(tmp_path / "vi.json")
    assert vi == {"data": (np.float32, (1, 3, 8, 8)), "ids": (np.int64, (4,)), "d": (np.float64, ())}
    (tmp_path / "bad.json").write_text('{"data": [1, "1,3"]}')
    with pytest.raises(NetDefFormatError, match="entry 'data' must be"):
        netdef.read_value_info(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text("{not json")
    with pytest.raises(NetDefFormatError, match="not JSON"):
        netdef.read_value_info(tmp_path / "bad2.json")


def test_args_kind_by_presence():
    op = make_net(ops=[("Conv", ["x"], ["y"], {"kernel": 3, "pads": [1, 1, 1, 1], "alpha": 0.5, "order": "NCHW"})]).op[0]
    a = netdef.Args(op)
    assert a.int("kernel") == 3 and a.ints("pads") == [1, 1, 1, 1] and a.float("alpha") == 0.5
    assert a.str("order") == "NCHW" and a.int("missing", 9) == 9
    with pytest.raises(ArgumentError, match="'order' should be an int"):
        a.int("order")


# ----------------------------------------------------------------------------------------------
# hostile input (issue 14): the reader's checks, in-process


def test_a_cut_anywhere_in_a_binary_predict_net_is_an_error():
    """Every proper prefix of a binary predict net fails with NetDefFormatError, except the prefixes
    that end exactly after an external output (a shorter, valid output list nothing can tell apart)."""
    net = make_net(ops=[("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Relu", ["b"], ["y"])],
                   inputs=["x"], outputs=["b", "y"])  # fmt: skip
    data = net.SerializeToString()
    boundary = len(data) - len(schema.NetDef(external_output=["y"]).SerializeToString())
    accepted = []
    for cut in range(len(data)):
        try:
            netdef.parse_netdef(data[:cut], kind="predict")
        except NetDefFormatError:
            continue
        accepted.append(cut)
    assert accepted == [boundary]
    assert list(netdef.parse_netdef(data[:boundary], kind="predict").external_output) == ["b"]


@pytest.mark.parametrize("n", [9, 10, 11, 12, 13, 14, 32])
def test_binary_sniffing_is_not_fooled_by_a_whitespace_length_byte(n):
    net = make_net(name="n" * n, ops=[("Relu", ["x"], ["y"])] * 3, inputs=["x"], outputs=["y"])
    data = net.SerializeToString()
    assert not netdef._looks_like_text(data)
    with pytest.raises(NetDefFormatError, match=r"not a Caffe2 NetDef, or truncated"):
        netdef.parse_netdef(data[:-5])
    assert netdef._looks_like_text(b"\n\n  # comment\nname: 'x'\n")


def test_predict_net_rules_of_caffe2():
    unknown = make_net(ops=[("Relu", ["q"], ["y"])], inputs=["x"], outputs=["y"])
    with pytest.raises(NetDefFormatError, match=r"Relu op #0 reads 'q', which is neither an external input"):
        netdef.parse_netdef(unknown.SerializeToString(), kind="predict")
    netdef.parse_netdef(unknown.SerializeToString())  # in-memory style nets leave weights undeclared
    never = make_net(ops=[("Relu", ["x"], ["y"])], inputs=["x"], outputs=["y", "z"])
    with pytest.raises(NetDefFormatError, match=r"external output 'z' is never produced by the net"):
        netdef.parse_netdef(never.SerializeToString())
    no_io = make_net(ops=[("Relu", ["x"], ["y"])])
    with pytest.raises(NetDefFormatError, match=r"no external inputs or external outputs: truncated\?"):
        netdef.parse_netdef(no_io.SerializeToString(), kind="predict")


def test_text_nesting_and_bad_utf8_are_format_errors():
    deep = 'name: "d" external_input: "x" external_output: "y" op { type: "Relu" input: "x" output: "y" '
    deep += 'arg { name: "a" n { op { type: "R" ' * 400 + "} } }" * 400 + "}"
    with pytest.raises(NetDefFormatError, match="not a"):
        netdef.parse_netdef(deep.encode(), text=True)
    with pytest.raises(NetDefFormatError, match="not UTF-8"):
        netdef.parse_netdef(b'name: "\xff"', text=True)


def test_value_info_hostile_documents(tmp_path):
    cases = {
        b'{"d": [1, ' + b"[" * 50000 + b"]" * 50000 + b"]}": "nested too deeply",
        b'{"d": [1, [' + b"1" * 5000 + b"]]}": "not a usable value_info.json file",
        b'{"d": [1, [9223372036854775808]]}': "does not fit int64",
        b'{"d": [1, [-1]]}': "negative dimension -1",
        b'{"d": [true, [1]]}': "must be [onnx_elem_type, [dims...]]",
    }
    for k, (doc, message) in enumerate(cases.items()):
        (tmp_path / f"{k}.json").write_bytes(doc)
        with pytest.raises(NetDefFormatError, match=re.escape(message)):
            netdef.read_value_info(tmp_path / f"{k}.json")


def test_fill_budget_and_exact_values():
    from caffe2_ort.caffe2.limits import SizeLimitError

    def op(type_, **args):
        o = schema.OperatorDef(type=type_, output=["w"])
        netdef.add_args(o, args)
        return o

    with pytest.raises(SizeLimitError, match=r"shape \[4294967296, 4294967296\] float32 is 64 EiB|shape \[4294967296, 4294967296\] float32 is"):
        netdef.evaluate_fill(op("ConstantFill", shape=[2**32, 2**32]))
    with pytest.raises(SizeLimitError, match=r"is 4 KiB, over the 1 KiB limit"):
        netdef.evaluate_fill(op("ConstantFill", shape=[1024]), budget=1024)
    assert netdef.evaluate_fill(op("ConstantFill", shape=[256]), budget=1024).shape == (256,)
    with pytest.raises(FillError, match=r"value 1099511627776 does not fit int32"):
        netdef.evaluate_fill(op("GivenTensorIntFill", shape=[1], values=[2**40]))
    with pytest.raises(FillError, match=r"value 2 does not fit bool"):
        netdef.evaluate_fill(op("GivenTensorBoolFill", shape=[1], values=[2]))
    with pytest.raises(FillError, match=r"'value' 2.5 is not an integer"):
        netdef.evaluate_fill(op("ConstantFill", shape=[1], dtype=netdef.C2_INT32, value=2.5))
    with pytest.raises(FillError, match=r"'value' 1e\+10 does not fit float16"):
        netdef.evaluate_fill(op("ConstantFill", shape=[1], dtype=netdef.C2_FLOAT16, value=1e10))
    assert netdef.evaluate_fill(op("ConstantFill", shape=[2], dtype=netdef.C2_INT8, value=-128)).tolist() == [-128, -128]
    # the whole init_net shares one budget
    init = make_net(ops=[("ConstantFill", [], ["a"], {"shape": [200]}), ("ConstantFill", [], ["b"], {"shape": [200]})])
    with pytest.raises(SizeLimitError, match=r"for 'b'.*brings the total to 1.56 KiB, over the 1 KiB limit"):
        netdef.evaluate_init_net(init, budget=1024)


def test_tensor_proto_values_must_fit():
    tp = schema.TensorProto(name="t", dims=[2], data_type=netdef.C2_INT8, int32_data=[1, 300])
    with pytest.raises(NetDefFormatError, match=r"tensor 't': value 300 does not fit int8"):
        netdef.tensor_proto_to_array(tp)
    tp = schema.TensorProto(name="t", dims=[3], data_type=netdef.C2_FLOAT, raw_data=b"\0" * 10)
    with pytest.raises(NetDefFormatError, match=r"raw_data of 10 bytes is not a whole number of float32 values"):
        netdef.tensor_proto_to_array(tp)


def test_limits_helpers(tmp_path):
    from caffe2_ort.caffe2 import limits

    assert limits.parse_size("8G") == 8 << 30 and limits.parse_size("512m") == 512 << 20 and limits.parse_size("1.5K") == 1536
    assert limits.parse_size("100") == 100 and limits.parse_size("2GiB") == 2 << 30
    with pytest.raises(limits.Caffe2Error, match="expected a number of bytes"):
        limits.parse_size("lots")
    assert limits.numel([2**40, 2**40]) == 2**80  # no int64 wrap
    with pytest.raises(limits.Caffe2Error, match="does not fit int64"):
        limits.check_shape("s", [2**63])
    with pytest.raises(NetDefFormatError, match="is a device, not a file"):
        limits.Budget().read_file("/dev/zero")
    (tmp_path / "big").write_bytes(b"x" * 2000)
    with pytest.raises(limits.SizeLimitError, match=r"the file is 1.95 KiB, over the 1 KiB limit"):
        limits.Budget(1024).read_file(tmp_path / "big")


def test_empty_tensor_with_dims_numpy_cannot_describe():
    """Found by the fuzz suite: shape [0, 2^31-1, 2^31-1] has no elements, but numpy refuses it."""
    from caffe2_ort.caffe2.limits import SizeLimitError

    op = schema.OperatorDef(type="GivenTensorFill", output=["w"])
    netdef.add_args(op, {"shape": [0, 2**31 - 1, 2**31 - 1], "values": []})
    with pytest.raises(SizeLimitError, match=r"is too large to describe, even with no elements"):
        netdef.evaluate_fill(op)
    ok = schema.OperatorDef(type="GivenTensorFill", output=["w"])
    netdef.add_args(ok, {"shape": [0, 5], "values": []})
    assert netdef.evaluate_fill(ok).shape == (0, 5)
