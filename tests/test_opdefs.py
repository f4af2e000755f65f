"""The op table (caffe2_ort.opdefs) is the one description of the ai.caffe2 ops: the README tables,
the ONNX schemas and every Python check follow from it, and the native library is probed against it
(every attribute's default, an accepted and a refused value of each kind, optional inputs and outputs
present and absent), so neither side can drift."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import caffe2_ort
from caffe2_ort import opdefs as D
from caffe2_ort import reference as R
from caffe2_ort import reference_ops as RO
from caffe2_ort import schemas
from ort_helpers import make_model, session

ROOT = Path(__file__).resolve().parents[1]
NODE = "pr\u00f6be"  # a UTF-8 node name: messages keep it as it is
LABEL = {op: D.where(op, NODE) for op in D.OPS}

# one value of every attribute kind onnx can write
KIND_VALUES = {
    "FLOAT": 0.25,
    "INT": 1,
    "STRING": "x",
    "FLOATS": [0.25],
    "INTS": [1],
    "TENSOR": numpy_helper.from_array(np.array(0.25, np.float32)),
    "STRINGS": ["x"],
    "GRAPH": helper.make_graph([], "g", [], []),
}


def _attribute(name, kind, value):
    types = {"FLOAT": onnx.AttributeProto.FLOAT, "INT": onnx.AttributeProto.INT, "STRING": onnx.AttributeProto.STRING}
    return helper.make_attribute(name, value, attr_type=types.get(kind))


def _mask_type(op):
    return TensorProto.UINT32 if D.mask_format_of(op) == "bits" else TensorProto.BOOL


def _model(op, attributes=(), with_mask=True, training=None):
    """A one-node model of ``op`` named NODE with the given AttributeProtos."""
    t = TensorProto.FLOAT
    if op in D.FORWARD_OPS:
        outs = ["Y", "mask"] if with_mask else ["Y"]
        node = helper.make_node(op, ["X"], outs, domain=caffe2_ort.DOMAIN, name=NODE)
        ins = [helper.make_tensor_value_info("X", t, None)]
        outputs = [helper.make_tensor_value_info("Y", t, None)]
        if with_mask:
            outputs.append(helper.make_tensor_value_info("mask", _mask_type(op), None))
    else:
        ins_names = ["dY", "mask"] if with_mask else ["dY"]
        node = helper.make_node(op, ins_names, ["dX"], domain=caffe2_ort.DOMAIN, name=NODE)
        ins = [helper.make_tensor_value_info("dY", t, None)]
        if with_mask:
            ins.append(helper.make_tensor_value_info("mask", _mask_type(op), None))
        outputs = [helper.make_tensor_value_info("dX", t, None)]
    node.attribute.extend(attributes)
    return make_model([node], ins, outputs)


def _feeds(op, with_mask=True):
    x = np.random.default_rng(0).standard_normal(777).astype(np.float32)
    if op in D.FORWARD_OPS:
        return {"X": x}
    feeds = {"dY": x}
    if with_mask:
        keep = np.random.default_rng(1).random(777) < 0.5
        feeds["mask"] = R.pack_mask(keep) if D.mask_format_of(op) == "bits" else keep
    return feeds


def _native_error(model):
    with pytest.raises(Exception) as e:
        session(model)
    return str(e.value)


def _python_error(op, attributes):
    node = _model(op, attributes).graph.node[0]
    with pytest.raises((D.AttributeKindError, D.AttributeValueError)) as e:
        D.OPS[op].validate_node(node)
    return str(e.value)


def _run(model, op, runs=2, with_mask=True):
    sess = session(model)
    return [sess.run(None, _feeds(op, with_mask)) for _ in range(runs)]


def _same(a, b):
    return all(np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))
               for ra, rb in zip(a, b) for x, y in zip(ra, rb))


# --------------------------------------------------------------------------------------------- README


def test_readme_op_tables_are_generated_from_the_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert D.rewrite_readme(text) == text, "README op tables differ: run python -m caffe2_ort.optables --write README.md"


def test_optables_command_rewrites_a_readme(tmp_path):
    from caffe2_ort import optables

    f = tmp_path / "README.md"
    f.write_text(f"intro\n{D._BEGIN}\nstale\n{D._END}\noutro\n", encoding="utf-8")
    assert optables.main(["--write", str(f)]) == 0
    text = f.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and D.markdown() in text and "stale" not in text
    f.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no op-table markers"):
        optables.main(["--write", str(f)])


# ----------------------------------------------------------------------------------- ONNX schemas


@pytest.mark.skipif(not schemas.is_registered(), reason="needs onnx >= 1.19 (Python schemas)")
@pytest.mark.parametrize("op", list(D.OPS))
def test_onnx_schema_follows_the_table(op):
    d = D.OPS[op]
    s = onnx.defs.get_schema(op, D.OPSET_VERSION, D.DOMAIN)
    assert [(p.name, p.type_str) for p in s.inputs] == [(p.name, p.type_str) for p in d.inputs]
    assert [(p.name, p.type_str) for p in s.outputs] == [(p.name, p.type_str) for p in d.outputs]
    opt = onnx.defs.OpSchema.FormalParameterOption.Optional
    assert [p.option == opt for p in s.inputs] == [p.optional for p in d.inputs]
    assert [p.option == opt for p in s.outputs] == [p.optional for p in d.outputs]
    assert sorted(s.attributes) == sorted(a.name for a in d.attrs)
    for a in d.attrs:
        sa = s.attributes[a.name]
        assert onnx.AttributeProto.AttributeType.Name(sa.type) == a.kind
        if a.default is None:
            assert not sa.required and not sa.default_value.name
        else:
            v = helper.get_attribute_value(sa.default_value)
            assert (v.decode() if isinstance(v, bytes) else v) == a.default
    assert {c.type_param_str: sorted(c.allowed_type_strs) for c in s.type_constraints} == {
        n: sorted(t) for n, t, _ in d.type_constraints()}


def test_every_type_constraint_is_used_and_masks_are_bool_or_uint32():
    used = {c[0] for d in D.OPS.values() for c in d.type_constraints()}
    assert used == {n for n, _, _ in D.TYPE_CONSTRAINTS}
    assert [p.type_str for p in D.DROPOUT.outputs] == ["T", "B"]
    assert [p.type_str for p in D.BITMASK_DROPOUT.outputs] == ["T", "M"]
    assert [p.type_str for p in D.BITMASK_DROPOUT_GRAD.inputs] == ["T", "M"]
    assert dict((n, t) for n, t, _ in D.TYPE_CONSTRAINTS)["M"] == ("tensor(uint32)",)


# ------------------------------------------------------------------------------- the native probe


def _cases():
    for op, d in D.OPS.items():
        for a in d.attrs:
            yield op, a


@pytest.mark.parametrize("op,attr", [pytest.param(op, a, id=f"{op}.{a.name}") for op, a in _cases()])
def test_native_default_matches_the_table(op, attr):
    seeded = [helper.make_attribute("seed", 5)] if op in D.FORWARD_OPS and attr.name != "seed" else []
    absent = _run(_model(op, seeded), op)
    if attr.default is None:  # seed: absent means a fresh seed per kernel instance
        assert not _same(absent, _run(_model(op), op))
        return
    explicit = _run(_model(op, seeded + [_attribute(attr.name, attr.kind, attr.default)]), op)
    assert _same(absent, explicit)


def _accepted_values(a):
    if a.choices:
        return list(a.choices)
    if a.low is not None:
        return [a.low, (a.low + a.high) / 2, a.high]
    return [0, 1, -1, 2**63 - 1, -(2**63)]


def _refused_values(a):
    if a.choices:
        return ["nope", b"CUDNN\0junk", b"caffe2_mt19937\0", b"\xff\xfe" + a.choices[-1].encode(), "x\\y", "\u00e9t\u00e9"]
    if a.low is not None:
        return [a.low - 0.1, a.high + 0.5, float(np.nextafter(np.float32(a.high), np.float32(2))), math.nan, math.inf,
                -math.inf]
    return []


@pytest.mark.parametrize("op,attr", [pytest.param(op, a, id=f"{op}.{a.name}") for op, a in _cases()])
def test_native_accepts_what_the_table_accepts(op, attr):
    for v in _accepted_values(attr):
        D.OPS[op].validate({attr.name: v})
        session(_model(op, [_attribute(attr.name, attr.kind, v)]))


@pytest.mark.parametrize("op,attr", [pytest.param(op, a, id=f"{op}.{a.name}") for op, a in _cases()])
def test_native_refuses_what_the_table_refuses_with_its_message(op, attr):
    for v in _refused_values(attr):
        attrs = [_attribute(attr.name, attr.kind, v)]
        expected = _python_error(op, attrs)
        assert expected.startswith(LABEL[op] + ": " + attr.name + " = ")
        message = _native_error(_model(op, attrs))
        assert expected in message, (v, message)
        message.encode("utf-8")  # the runtime's message reached Python as text


@pytest.mark.parametrize("op,attr", [pytest.param(op, a, id=f"{op}.{a.name}") for op, a in _cases()])
@pytest.mark.parametrize("kind", list(KIND_VALUES))
def test_wrong_kinds_are_refused_naming_both_kinds(op, attr, kind):
    if kind == attr.kind:
        return
    attrs = [helper.make_attribute(attr.name, KIND_VALUES[kind])]
    assert _python_error(op, attrs) == D.kind_message(LABEL[op], attr, kind)
    assert f"got {kind}" in _python_error(op, attrs)
    assert D.kind_message(LABEL[op], attr, kind, native=True) in _native_error(_model(op, attrs))


_REFUSALS = [(op, name) for op, d in D.OPS.items() for name in d.refused_names]
_REFUSED_VALUES = {"rng": D.RNG_CAFFE2, "engine": "CUDNN", "seed": 3}


@pytest.mark.parametrize("op,name", [pytest.param(op, n, id=f"{op}.{n}") for op, n in _REFUSALS])
def test_refused_attributes_are_refused_with_the_tables_message(op, name):
    attrs = [helper.make_attribute(name, _REFUSED_VALUES[name])]
    expected = _python_error(op, attrs)
    assert expected == D.OPS[op].refusal_message(name, NODE)
    assert expected in _native_error(_model(op, attrs))


def test_refusal_messages_are_the_contracts_words():
    forward_only = "(it belongs to the forward Dropout; the mask input carries its draw)"
    no_bits = "(cuDNN's reserve space is not a bit mask; use Dropout with engine 'CUDNN')"
    for op in ("DropoutGrad", "BitmaskDropoutGrad"):
        for name in ("seed", "rng"):
            assert D.OPS[op].refusal_message(name, NODE) == f"{LABEL[op]}: {op} has no attribute {name} {forward_only}"
    for op in ("BitmaskDropout", "BitmaskDropoutGrad"):
        assert D.OPS[op].refusal_message("engine", NODE) == f"{LABEL[op]}: {op} has no attribute engine {no_bits}"
    assert D.DROPOUT.refused_names == () and D.BITMASK_DROPOUT.refused_names == ("engine",)
    assert D.BITMASK_DROPOUT_GRAD.refused_names == ("seed", "rng", "engine")


@pytest.mark.parametrize("fmt", list(D.MASK_FORMATS))
def test_optional_inputs_and_outputs_present_and_absent(fmt):
    fwd, grad = D.MASK_FORMATS[fmt]
    # the table's optional slots are exactly the mask output of the forward and the mask input of the gradient
    assert [p.name for p in D.OPS[fwd].outputs if p.optional] == ["mask"]
    assert [p.name for p in D.OPS[grad].inputs if p.optional] == ["mask"]
    assert not any(p.optional for p in D.OPS[fwd].inputs + D.OPS[grad].outputs)
    seed = helper.make_attribute("seed", 2)
    with_mask = _run(_model(fwd, [seed]), fwd)
    without = _run(_model(fwd, [seed], with_mask=False), fwd)
    assert all(len(r) == 1 for r in without) and all(len(r) == 2 for r in with_mask)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(with_mask, without))
    # training needs the mask (refused at session creation without it); test mode takes either
    assert D.mask_required_message(LABEL[grad]) in _native_error(_model(grad, with_mask=False))
    test = [helper.make_attribute("is_test", 1)]
    (dx,) = _run(_model(grad, test, with_mask=False), grad, runs=1, with_mask=False)[0]
    (dx_masked,) = _run(_model(grad, test), grad, runs=1)[0]
    assert np.array_equal(dx, _feeds(grad)["dY"]) and np.array_equal(dx_masked, dx)
    (dx_train,) = _run(_model(grad), grad, runs=1)[0]
    f = _feeds(grad)
    ref = R.bitmask_dropout_grad if fmt == "bits" else R.dropout_grad
    assert np.array_equal(dx_train, ref(f["dY"], f["mask"]))


def test_mask_count_message_is_the_tables():
    sess = session(_model("DropoutGrad"))
    with pytest.raises(Exception) as e:
        sess.run(None, {"dY": np.ones(6, np.float32), "mask": np.ones(5, bool)})
    assert D.mask_count_message(LABEL["DropoutGrad"], 5, 6) in str(e.value)


@pytest.mark.parametrize("n,words", [(33, 1), (33, 3), (32, 2), (1, 0), (0, 1)])
def test_bitmask_count_message_is_the_tables(n, words):
    sess = session(_model("BitmaskDropoutGrad"))
    with pytest.raises(Exception) as e:
        sess.run(None, {"dY": np.ones(n, np.float32), "mask": np.ones(words, np.uint32)})
    expected = D.bitmask_count_message(LABEL["BitmaskDropoutGrad"], words, n)
    assert expected == (f"{LABEL['BitmaskDropoutGrad']}: mask has {words} words but dY has {n} elements, which need "
                        f"{-(-n // 32)} words")
    assert expected in str(e.value)


# ------------------------------------------------------------------- the Python paths use the table


@pytest.mark.parametrize("ratio", [1.5, -0.1, math.nan, math.inf])
def test_reference_dropout_validates_like_the_kernel(ratio):
    expected = f"ai.caffe2 Dropout: ratio = {D.format_float(ratio)} is out of range; valid: 0 <= ratio <= 1"
    with pytest.raises(ValueError) as e:
        R.dropout(np.ones(4, np.float32), ratio=ratio)
    assert str(e.value) == expected
    native = _native_error(_model("Dropout", [helper.make_attribute("ratio", ratio)]))
    assert expected.replace("ai.caffe2 Dropout", LABEL["Dropout"]) in native
    with pytest.raises(ValueError, match="out of range"):
        R.dropout_grad(np.ones(4, np.float32), np.ones(4, bool), ratio=ratio)
    with pytest.raises(ValueError, match="out of range"):
        R.DropoutStream(1).run(np.ones(4, np.float32), ratio=ratio)


def test_reference_refuses_wrong_kinds_and_values():
    with pytest.raises(TypeError, match="attribute ratio must be FLOAT, got STRING"):
        R.dropout(np.ones(4, np.float32), ratio="0.5")
    with pytest.raises(TypeError, match="attribute is_test must be INT, got FLOAT"):
        R.dropout(np.ones(4, np.float32), is_test=0.0)
    with pytest.raises(ValueError, match="engine = 'MKL' is not supported"):
        D.DROPOUT.validate({"engine": "MKL"})
    with pytest.raises(ValueError, match=r"rng = 'caffe2_mt19937\\x00' is not supported"):
        R.dropout(np.ones(4, np.float32), rng=b"caffe2_mt19937\0")


def test_reference_ops_and_pyop_and_graph_helpers_use_the_table():
    bad = _model("Dropout", [helper.make_attribute("ratio", [0.5])])
    expected = D.kind_message(LABEL["Dropout"], D.DROPOUT.attr("ratio"), "FLOATS")
    with pytest.raises(ValueError) as e:  # onnx.reference would bury a TypeError raised in the op
        RO.evaluator(bad)
    assert expected in str(e.value)
    with pytest.raises(TypeError) as e:
        RO.prepare_for_pyop(bad)
    assert expected in str(e.value)
    with pytest.raises(ValueError, match=r"ai.caffe2 Dropout node 'n': rng = 'mt' is not supported"):
        caffe2_ort.graph.make_dropout("X", "Y", rng="mt", name="n")
    node = caffe2_ort.graph.make_dropout("X", "Y", rng=D.RNG_CAFFE2, seed=2**64 - 1)
    values, _kinds = D.node_attributes(node)
    assert values["rng"] == D.RNG_CAFFE2.encode() and values["seed"] == -1  # uint64 written as int64
    # PyOp: every declared attribute gets the table's default
    prepared = RO.prepare_for_pyop(_model("Dropout"))
    values, _kinds = D.node_attributes(prepared.graph.node[0])
    for name, default in D.DROPOUT.defaults().items():
        v = values[name]
        assert (v.decode() if isinstance(v, bytes) else v) == default
    assert -(2**63) <= values["seed"] < 2**63


@pytest.mark.skipif(not schemas.is_registered(), reason="needs onnx >= 1.19 (Python schemas)")
def test_schema_inference_uses_the_tables_messages():
    from onnx.shape_inference import InferenceError

    m = _model("Dropout", [helper.make_attribute("rng", "bad")])
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim.add().dim_value = 4
    with pytest.raises(InferenceError) as e:
        onnx.checker.check_model(m, full_check=True)
    assert "rng = 'bad' is not supported; accepted: '' (default), 'philox', 'caffe2_mt19937'" in str(e.value)


def test_fresh_seeds_are_64_bit():
    seeds = [D.fresh_seed() for _ in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2**64 for s in seeds)
    assert max(seeds) >= 2**63  # 64 random bits: the top bit is set in about half of them
    assert D.seed_as_int64(2**64 - 1) == -1 and D.seed_as_int64(2**63 - 1) == 2**63 - 1


def test_escape_matches_the_native_rule():
    assert D.escape(b"CUDNN\0junk") == "CUDNN\\x00junk"
    assert D.escape(b"\xff\xfe") == "\\xff\\xfe"
    assert D.escape("a\\b\n\u00e9") == "a\\\\b\\x0a\u00e9"
    assert D.escape(b"\xc0\xaf\xed\xa0\x80") == "\\xc0\\xaf\\xed\\xa0\\x80"  # overlong and surrogate: not UTF-8


def test_reference_seed_none_is_a_fresh_seed():
    x = np.ones(4096, np.float32)
    assert not np.array_equal(R.dropout(x, seed=None)[1], R.dropout(x, seed=None)[1])
    assert np.array_equal(R.dropout(x)[1], R.dropout(x, seed=0)[1])
