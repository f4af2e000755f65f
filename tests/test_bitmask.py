"""Bit-packed masks: ai.caffe2 BitmaskDropout / BitmaskDropoutGrad on the Python side. The table entries and
their schemas, the numpy reference and the onnx.reference ops against the native kernels, the graph
helpers and the gradient rule, the converter and CLI flag (--mask-format bits) with its refusals, and the
decisive property: a training step with bit-packed masks follows the bool-mask trajectory bit for bit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import caffe2_ort
from caffe2_ort import graph as G
from caffe2_ort import gradients as GR
from caffe2_ort import opdefs as D
from caffe2_ort import reference as R
from caffe2_ort import reference_ops as RO
from caffe2_ort import training as T
from caffe2_ort.caffe2 import netdef
from caffe2_ort.caffe2.converter import convert
from caffe2_ort.caffe2.errors import Caffe2Error
from caffe2_ort.caffe2.training_net import convert_training_net

from caffe2_helpers import MODELS, make_net, run_cli, shared_file
from ort_helpers import DTYPES, bits, make_model, np_dtype, session

MT = D.RNG_CAFFE2
RNGS = ["philox", MT]
# around word boundaries (32 bits) and the CPU kernels' 64-bit words, plus a large odd size
SIZES = [0, 1, 31, 32, 33, 63, 64, 65, 95, 127, 128, 129, 1001]
TRAIN_NET = MODELS / "train_dropout_net"


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _forward_model(op, dtype="float32", shape=(None,), with_mask=True, **attrs):
    """X (wide float) -> Cast(dtype) -> op -> Cast back: outputs Y (exact in the wide type) and the mask."""
    t = DTYPES[dtype]
    ft = TensorProto.DOUBLE if dtype == "float64" else TensorProto.FLOAT
    outs = ["Yt", "mask"] if with_mask else ["Yt"]
    nodes = [helper.make_node("Cast", ["X"], ["Xt"], to=t),
             helper.make_node(op, ["Xt"], outs, domain=caffe2_ort.DOMAIN, name="drop", **attrs),
             helper.make_node("Cast", ["Yt"], ["Y"], to=ft)]
    mask_type = TensorProto.UINT32 if D.mask_format_of(op) == "bits" else TensorProto.BOOL
    outputs = [_vi("Y", ft, list(shape))] + ([_vi("mask", mask_type, [None])] if with_mask else [])
    return make_model(nodes, [_vi("X", ft, list(shape))], outputs)


def _grad_model(dtype="float32", **attrs):
    t = DTYPES[dtype]
    ft = TensorProto.DOUBLE if dtype == "float64" else TensorProto.FLOAT
    nodes = [helper.make_node("Cast", ["dY"], ["dYt"], to=t),
             helper.make_node("BitmaskDropoutGrad", ["dYt", "mask"], ["dXt"], domain=caffe2_ort.DOMAIN, name="grad",
                              **attrs),
             helper.make_node("Cast", ["dYt"], ["dYr"], to=ft),
             helper.make_node("Cast", ["dXt"], ["dX"], to=ft)]
    return make_model(nodes, [_vi("dY", ft, [None]), _vi("mask", TensorProto.UINT32, [None])],
                      [_vi("dYr", ft, [None]), _vi("dX", ft, [None])])


def _x(n, dtype, seed=0):
    wide = np.float64 if dtype == "float64" else np.float32
    return np.random.default_rng(seed).standard_normal(n).astype(np_dtype(dtype)).astype(wide)


# --------------------------------------------------------------------------------------------- the table


def test_the_table_has_both_formats_and_their_pairs():
    assert D.MASK_FORMATS == {"bool": ("Dropout", "DropoutGrad"), "bits": ("BitmaskDropout", "BitmaskDropoutGrad")}
    assert D.GRADIENT_OF == {"Dropout": "DropoutGrad", "BitmaskDropout": "BitmaskDropoutGrad"}
    assert [a.name for a in D.BITMASK_DROPOUT.attrs] == ["ratio", "is_test", "seed", "rng"]
    assert [a.name for a in D.BITMASK_DROPOUT_GRAD.attrs] == ["ratio", "is_test"]
    for name in ("ratio", "is_test", "seed", "rng"):  # exactly Dropout's attributes: same defaults and checks
        assert D.BITMASK_DROPOUT.attr(name) is D.DROPOUT.attr(name)
    assert D.mask_format_of("BitmaskDropoutGrad") == "bits" and D.mask_format_of("Dropout") == "bool"
    with pytest.raises(KeyError, match="'Relu' is not a dropout op"):
        D.mask_format_of("Relu")
    with pytest.raises(ValueError, match="mask_format must be one of 'bool', 'bits', not 'bytes'"):
        D.check_mask_format("bytes")
    assert [D.bitmask_words(n) for n in (0, 1, 32, 33, 64, 65)] == [0, 1, 1, 2, 2, 3]


def test_bitmask_ops_validate_like_dropout_with_their_own_name():
    with pytest.raises(ValueError) as e:
        D.BITMASK_DROPOUT.validate({"ratio": 1.5}, node="n")
    assert str(e.value) == "ai.caffe2 BitmaskDropout node 'n': ratio = 1.5 is out of range; valid: 0 <= ratio <= 1"
    with pytest.raises(ValueError) as e:
        D.BITMASK_DROPOUT.validate({"engine": "DEFAULT"}, node="n")  # any engine, even the default one
    assert str(e.value) == ("ai.caffe2 BitmaskDropout node 'n': BitmaskDropout has no attribute engine (cuDNN's "
                            "reserve space is not a bit mask; use Dropout with engine 'CUDNN')")
    with pytest.raises(TypeError, match="ai.caffe2 BitmaskDropoutGrad: attribute is_test must be INT, got FLOAT"):
        D.BITMASK_DROPOUT_GRAD.validate({"is_test": 0.0})


# ------------------------------------------------------------------------------------------------ packing


@pytest.mark.parametrize("n", SIZES)
def test_pack_mask_is_the_contracts_layout(n):
    keep = np.random.default_rng(n).random(n) < 0.5
    words = R.pack_mask(keep)
    assert words.dtype == np.uint32 and words.shape == (D.bitmask_words(n),)
    for i in range(n):  # bit j (LSB = 0) of word w is element 32 w + j
        assert bool((int(words[i // 32]) >> (i % 32)) & 1) == keep[i]
    if n % 32:
        assert int(words[-1]) >> (n % 32) == 0  # padding bits are 0
    packed = np.packbits(keep, bitorder="little")  # the contract's numpy recipe
    packed = np.concatenate([packed, np.zeros(-len(packed) % 4, np.uint8)])
    assert np.array_equal(words, packed.view("<u4"))
    assert np.array_equal(R.unpack_mask(words, (n,)), keep)


def test_unpack_reads_no_padding_bits_and_keeps_the_shape():
    keep = np.random.default_rng(3).random((3, 5, 7)) < 0.4
    words = R.pack_mask(keep)
    words[-1] |= np.uint32(0xFFFFFFFF) << np.uint32(105 % 32)
    assert np.array_equal(R.unpack_mask(words, keep.shape), keep)
    assert R.pack_mask(np.ones((), bool)).tolist() == [1]


# ----------------------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("rng", RNGS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_reference_bitmask_dropout_is_dropout_packed(dtype, rng):
    for n in SIZES:
        x = _x(n, dtype).astype(np_dtype(dtype))
        for base in (0, 5, 1000):
            y, words = R.bitmask_dropout(x, ratio=0.3, seed=77, base=base, rng=rng)
            y_ref, keep = R.dropout(x, ratio=0.3, seed=77, base=base, rng=rng)
            assert np.array_equal(bits(y), bits(y_ref)) and np.array_equal(words, R.pack_mask(keep))
            dx = R.bitmask_dropout_grad(x, words, ratio=0.3)
            assert np.array_equal(bits(dx), bits(R.dropout_grad(x, keep, ratio=0.3)))


def test_reference_test_mode_and_errors():
    x = np.arange(40, dtype=np.float32).reshape(5, 8)
    y, words = R.bitmask_dropout(x, is_test=1)
    assert np.array_equal(y, x) and words.tolist() == [0xFFFFFFFF, 0xFF]  # valid bits 1, padding 0
    assert np.array_equal(R.bitmask_dropout_grad(x, None, is_test=1), x)
    with pytest.raises(ValueError) as e:
        R.bitmask_dropout_grad(x)
    assert str(e.value) == D.mask_required_message("ai.caffe2 BitmaskDropoutGrad")
    with pytest.raises(ValueError) as e:
        R.bitmask_dropout_grad(x, np.zeros(1, np.uint32))
    assert str(e.value) == "ai.caffe2 BitmaskDropoutGrad: mask has 1 words but dY has 40 elements, which need 2 words"
    with pytest.raises(ValueError, match=r"ai.caffe2 BitmaskDropout: rng = 'mt' is not supported"):
        R.bitmask_dropout(x, rng="mt")
    with pytest.raises(ValueError, match="BitmaskDropoutGrad: ratio = 2 is out of range"):
        R.bitmask_dropout_grad(x, np.zeros(2, np.uint32), ratio=2.0)


def test_reference_grad_of_a_huge_dropped_value_is_a_signed_zero():
    dy = np.array([3e38, -3e38, 3e38, 1.0], np.float32)
    dx = R.bitmask_dropout_grad(dy, R.pack_mask([False, False, True, True]), ratio=0.9)
    assert dx[:2].tolist() == [0.0, 0.0] and np.signbit(dx[1]) and dx[2] == np.inf and not np.isnan(dx).any()


# ------------------------------------------------------------------------------------------------ schemas


def _inferred(model):
    m = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {vi.name: vi.type.tensor_type for vi in list(m.graph.value_info) + list(m.graph.output)}


def _dims(tt):
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


@pytest.mark.parametrize("shape,words", [([3, 37], [4]), ([], [1]), ([0, 5], [0]), ([64], [2]), ([65], [3]),
                                         (["N", 4], [None])])
def test_shape_inference_of_the_bit_mask(shape, words):
    nodes = [helper.make_node("BitmaskDropout", ["X"], ["Y", "M"], domain=caffe2_ort.DOMAIN, seed=1),
             helper.make_node("BitmaskDropoutGrad", ["Y", "M"], ["dX"], domain=caffe2_ort.DOMAIN)]
    m = make_model(nodes, [_vi("X", TensorProto.FLOAT16, shape)], [_vi("dX", TensorProto.FLOAT16, shape)])
    onnx.checker.check_model(m, full_check=True)
    t = _inferred(m)
    assert t["M"].elem_type == TensorProto.UINT32 and _dims(t["M"]) == words
    for name in ("Y", "dX"):
        assert t[name].elem_type == TensorProto.FLOAT16 and len(t[name].shape.dim) == len(shape)


def _bad_model(nodes, inputs, outputs):
    m = make_model(nodes, inputs, outputs)
    with pytest.raises((onnx.shape_inference.InferenceError, onnx.checker.ValidationError)) as e:
        onnx.checker.check_model(m, full_check=True)
    return str(e.value)


def test_checker_refuses_what_the_kernels_refuse():
    x, dx = _vi("X", TensorProto.FLOAT, [40]), _vi("dX", TensorProto.FLOAT, [40])
    engine = [helper.make_node("BitmaskDropout", ["X"], ["dX"], domain=caffe2_ort.DOMAIN, name="b", engine="CUDNN")]
    assert "Unrecognized attribute: engine for operator BitmaskDropout" in _bad_model(engine, [x], [dx])
    with pytest.raises(onnx.shape_inference.InferenceError) as e:  # shape inference says the kernels' words
        _inferred(make_model(engine, [x], [dx]))
    assert "BitmaskDropout has no attribute engine (cuDNN's reserve space is not a bit mask" in str(e.value)
    mask = _vi("M", TensorProto.UINT32, [1])
    msg = _bad_model([helper.make_node("BitmaskDropoutGrad", ["X", "M"], ["dX"], domain=caffe2_ort.DOMAIN)],
                     [x, mask], [dx])
    assert "mask has 1 words but dY has 40 elements, which need 2 words" in msg
    msg = _bad_model([helper.make_node("BitmaskDropoutGrad", ["X"], ["dX"], domain=caffe2_ort.DOMAIN)], [x], [dx])
    assert "training mode (is_test = 0) needs the mask input" in msg
    bool_mask = _vi("M", TensorProto.BOOL, [40])  # a bool mask is not a bit mask
    _bad_model([helper.make_node("BitmaskDropoutGrad", ["X", "M"], ["dX"], domain=caffe2_ort.DOMAIN)],
               [x, bool_mask], [dx])
    with pytest.raises(onnx.shape_inference.InferenceError) as e:
        _inferred(make_model([helper.make_node("BitmaskDropoutGrad", ["X", "M"], ["dX"], domain=caffe2_ort.DOMAIN,
                                               seed=3)], [x, mask], [dx]))
    assert "BitmaskDropoutGrad has no attribute seed (it belongs to the forward Dropout" in str(e.value)


# ------------------------------------------------------------------------------------ native vs reference


@pytest.mark.parametrize("rng", RNGS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_native_bitmask_dropout_matches_the_reference_and_dropout(dtype, rng):
    for n in SIZES:
        x = _x(n, dtype, seed=n)
        bit_sess = session(_forward_model("BitmaskDropout", dtype, ratio=0.4, seed=9, rng=rng))
        bool_sess = session(_forward_model("Dropout", dtype, ratio=0.4, seed=9, rng=rng))
        stream = R.DropoutStream(9, rng=rng)
        for run in range(3):
            y, words = bit_sess.run(None, {"X": x})
            y_bool, keep = bool_sess.run(None, {"X": x})
            y_ref, keep_ref = stream.run(x.astype(np_dtype(dtype)), ratio=0.4)
            assert words.dtype == np.uint32 and words.shape == (D.bitmask_words(n),), (n, run)
            assert np.array_equal(words, R.pack_mask(keep_ref)), (n, run)
            assert np.array_equal(R.unpack_mask(words, (n,)), keep), (n, run)
            assert np.array_equal(bits(y), bits(y_bool)) and np.array_equal(bits(y), bits(y_ref.astype(y.dtype)))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_native_bitmask_dropout_grad_matches_the_reference(dtype):
    sess = session(_grad_model(dtype, ratio=0.25))
    for n in SIZES:
        dy = _x(n, dtype, seed=n + 1)
        keep = np.random.default_rng(n).random(n) < 0.7
        words = R.pack_mask(keep)
        if n % 32:
            words[-1] |= np.uint32(0xFFFFFFFF) << np.uint32(n % 32)  # padding bits are not read
        dyr, dx = sess.run(None, {"dY": dy, "mask": words})
        expected = R.bitmask_dropout_grad(dyr.astype(np_dtype(dtype)), words, ratio=0.25)
        assert np.array_equal(bits(dx), bits(expected.astype(dx.dtype))), n


def test_native_test_mode_and_huge_dropped_gradients():
    x = np.random.default_rng(0).standard_normal(70).astype(np.float32)
    y, words = session(_forward_model("BitmaskDropout", is_test=1, seed=1)).run(None, {"X": x})
    assert np.array_equal(bits(y), bits(x)) and words.tolist() == [0xFFFFFFFF, 0xFFFFFFFF, 0x3F]
    dy = np.array([3e38, -3e38, 3e38, 2.0], np.float32)
    _, dx = session(_grad_model(ratio=0.9)).run(None, {"dY": dy, "mask": R.pack_mask([0, 0, 0, 1])})
    assert np.array_equal(bits(dx), bits(R.bitmask_dropout_grad(dy, R.pack_mask([0, 0, 0, 1]), ratio=0.9)))
    assert not np.isnan(dx).any() and np.signbit(dx[1])


# ------------------------------------------------------------------------------------- onnx.reference ops


@pytest.mark.parametrize("rng", RNGS)
def test_reference_ops_follow_the_native_stream(rng):
    m = _forward_model("BitmaskDropout", shape=[7, 11], ratio=0.5, seed=21, rng=rng)
    ref, sess = RO.evaluator(m), session(m)
    x = np.random.default_rng(1).standard_normal((7, 11)).astype(np.float32)
    for _ in range(3):
        for a, b in zip(ref.run(None, {"X": x}), sess.run(None, {"X": x})):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert RO.dropout_nodes(ref)["drop"].counter == (3 * 2 * 77 if rng == MT else 3 * R.blocks_for(77))
    g = _grad_model(ratio=0.5)
    words = R.pack_mask(np.random.default_rng(2).random(77) < 0.5)
    dy = x.reshape(-1)
    assert np.array_equal(RO.evaluator(g).run(None, {"dY": dy, "mask": words})[1],
                          session(g).run(None, {"dY": dy, "mask": words})[1])


def test_reference_ops_refuse_like_the_kernels():
    with pytest.raises(ValueError, match="BitmaskDropout has no attribute engine"):
        RO.evaluator(_forward_model("BitmaskDropout", engine="CUDNN"))
    bad = make_model([helper.make_node("BitmaskDropoutGrad", ["dY"], ["dX"], domain=caffe2_ort.DOMAIN, name="g")],
                     [_vi("dY", TensorProto.FLOAT, [3])], [_vi("dX", TensorProto.FLOAT, [3])])
    with pytest.raises(ValueError) as e:
        RO.evaluator(bad)
    assert D.mask_required_message(D.where("BitmaskDropoutGrad", "g")) in str(e.value)
    with pytest.raises(ValueError, match="'drop': the PyOp fallback has no bit-packed masks"):
        RO.prepare_for_pyop(_forward_model("BitmaskDropout"))


# ---------------------------------------------------------------------------------------- graph helpers


def _mlp(mask_format="bool", rng="", training=True, batch=8, hidden=40):
    """Gemm -> Relu -> dropout -> Gemm -> SoftmaxCrossEntropyLoss, dropout from add_dropout."""
    r = np.random.RandomState(0)
    inits = {"W1": r.standard_normal((4, hidden)).astype(np.float32) * 0.5, "b1": np.zeros(hidden, np.float32),
             "W2": r.standard_normal((hidden, 3)).astype(np.float32) * 0.5, "b2": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
             helper.make_node("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["loss"])]
    g = helper.make_graph(nodes, "mlp", [_vi("X", TensorProto.FLOAT, [batch, 4]), _vi("labels", TensorProto.INT64, [batch])],
                          [_vi("probs", TensorProto.FLOAT, [batch, 3]), _vi("loss", TensorProto.FLOAT, [])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    G.add_dropout(m, "a1", output="d1", training=training, ratio=0.3, seed=12, rng=rng, expose_mask=False,
                  mask_format=mask_format)
    x = r.standard_normal((batch, 4)).astype(np.float32)
    return m, {"X": x, "labels": ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))}


def test_builders_take_the_mask_format():
    node = G.make_dropout("X", "Y", "M", seed=3, rng=MT, mask_format="bits", name="n")
    assert node.op_type == "BitmaskDropout" and {a.name for a in node.attribute} == {"ratio", "is_test", "seed", "rng"}
    grad = G.make_dropout_grad("dY", "dX", "M", ratio=0.2, mask_format="bits")
    assert grad.op_type == "BitmaskDropoutGrad" and {a.name for a in grad.attribute} == {"ratio", "is_test"}
    with pytest.raises(ValueError) as e:
        G.make_dropout("X", "Y", engine="CUDNN", mask_format="bits", name="n")
    assert str(e.value) == D.BITMASK_DROPOUT.refusal_message("engine", "n")
    with pytest.raises(ValueError, match="mask_format must be one of"):
        G.make_dropout_grad("dY", "dX", mask_format="packed")
    m = make_model([], [_vi("A", TensorProto.FLOAT, [5, 13])], [_vi("A", TensorProto.FLOAT, [5, 13])])
    y, mask = G.add_dropout(m, "A", training=True, seed=1, mask_format="bits")
    out = {o.name: o.type.tensor_type for o in m.graph.output}[mask]
    assert out.elem_type == TensorProto.UINT32 and _dims(out) == [3]
    assert [n.op_type for n in G.dropout_nodes(m)] == ["BitmaskDropout"]
    words = session(m).run([mask], {"A": np.ones((5, 13), np.float32)})[0]
    assert words.shape == (3,) and np.array_equal(R.unpack_mask(words, (5, 13)), R.dropout(np.ones((5, 13), np.float32),
                                                                                         seed=1)[1])


def test_inference_training_and_mc_forms_keep_the_format():
    m, _ = _mlp("bits", training=False)
    tr = G.to_training(m)
    node = G.dropout_nodes(tr)[0]
    assert node.op_type == "BitmaskDropout" and D.BITMASK_DROPOUT.validate_node(node)["is_test"] == 0
    mask_out = {o.name: o.type.tensor_type for o in tr.graph.output}[node.output[1]]
    assert mask_out.elem_type == TensorProto.UINT32 and _dims(mask_out) == [D.bitmask_words(8 * 40)]
    inf = G.to_inference(tr)
    assert len(G.dropout_nodes(inf)[0].output) == 1 and node.output[1] not in {o.name for o in inf.graph.output}
    assert len(G.dropout_nodes(G.mc_dropout(m))[0].output) == 1


def test_set_mask_format_round_trip_and_declared_types():
    m = make_model([], [_vi("A", TensorProto.FLOAT, [4, 9])], [_vi("A", TensorProto.FLOAT, [4, 9])])
    y, mask = G.add_dropout(m, "A", training=True, seed=5, engine="DEFAULT")
    m.graph.node.append(G.make_dropout_grad(y, "dA", mask, ratio=0.5))
    m.graph.node.append(G.make_dropout_grad(y, "dA_test", is_test=True))
    m.graph.output.extend([_vi(n, TensorProto.FLOAT, [4, 9]) for n in (y, "dA", "dA_test")])
    b = G.set_mask_format(m, "bits")
    assert [n.op_type for n in b.graph.node] == ["BitmaskDropout", "BitmaskDropoutGrad", "BitmaskDropoutGrad"]
    assert all(a.name != "engine" for n in b.graph.node for a in n.attribute)
    assert G.mask_format_nodes(b) == {"bool": 0, "bits": 3} and G.mask_format_nodes(m) == {"bool": 3, "bits": 0}
    out = {o.name: o.type.tensor_type for o in b.graph.output}[mask]
    assert out.elem_type == TensorProto.UINT32 and _dims(out) == [2]
    onnx.checker.check_model(b, full_check=True)
    back = G.set_mask_format(b, "bool")
    assert [n.op_type for n in back.graph.node] == ["Dropout", "DropoutGrad", "DropoutGrad"]
    assert {o.name: o.type.tensor_type for o in back.graph.output}[mask].elem_type == TensorProto.BOOL
    x = np.random.default_rng(0).standard_normal((4, 9)).astype(np.float32)
    got_bits = dict(zip([o.name for o in b.graph.output], session(b).run(None, {"A": x})))
    got_bool = dict(zip([o.name for o in m.graph.output], session(m).run(None, {"A": x})))
    assert np.array_equal(R.unpack_mask(got_bits[mask], (4, 9)), got_bool[mask])
    for k in (y, "dA", "dA_test"):
        assert np.array_equal(bits(got_bits[k]), bits(got_bool[k])), k
    assert m.graph.node[0].op_type == "Dropout"  # the argument is left untouched


def test_set_mask_format_refuses_masks_it_cannot_convert():
    x = _vi("X", TensorProto.FLOAT, [8])
    foreign = make_model([G.make_dropout_grad("X", "dX", "M", name="g")], [x, _vi("M", TensorProto.BOOL, [8])],
                         [_vi("dX", TensorProto.FLOAT, [8])])
    with pytest.raises(G.MaskFormatError) as e:
        G.set_mask_format(foreign, "bits")
    assert str(e.value) == ("DropoutGrad node 'g' reads mask 'M', which no ai.caffe2 Dropout of the graph writes: "
                            "its mask cannot be converted to mask_format 'bits'")
    reader = make_model([G.make_dropout("X", "Y", "M", seed=1), helper.make_node("Cast", ["M"], ["Mf"], to=1, name="c")],
                        [x], [_vi("Mf", TensorProto.FLOAT, [8])])
    with pytest.raises(G.MaskFormatError, match=r"node 'c' \(Cast\) reads the dropout mask 'M'; only a dropout gradient"):
        G.set_mask_format(reader, "bits")
    cudnn = make_model([G.make_dropout("X", "Y", engine="CUDNN", name="d")], [x], [_vi("Y", TensorProto.FLOAT, [8])])
    with pytest.raises(G.MaskFormatError) as e:
        G.set_mask_format(cudnn, "bits")
    assert str(e.value) == D.BITMASK_DROPOUT.refusal_message("engine", "d")
    b = G.set_mask_format(_mlp()[0], "bits")
    for fn in (G.with_fixed_masks, G.to_onnx_dropout):
        with pytest.raises(ValueError, match="has a bit-packed mask; turn the model back with set_mask_format"):
            fn(b)


# ----------------------------------------------------------------------------------------- gradient rule


def test_gradient_rule_maps_the_pair():
    for training in (True, False):
        m, _ = _mlp("bits", training=training)
        gm = G.build_training_model(m, "loss")
        grads = [n for n in gm.graph.node if n.op_type in D.GRADIENT_OPS]
        assert [n.op_type for n in grads] == ["BitmaskDropoutGrad"]
        fwd = G.dropout_nodes(gm)[0]
        assert list(grads[0].input[1:]) == ([fwd.output[1]] if training else [])
    assert GR.RULES[(caffe2_ort.DOMAIN, "BitmaskDropout")] is not GR.RULES[(caffe2_ort.DOMAIN, "Dropout")]
    e = GR.Emitter({}, lambda base: base)
    node = G.make_dropout_grad("dY", "dX", "M", ratio=0.2, mask_format="bits")
    (out, none) = GR.RULES[(caffe2_ort.DOMAIN, "BitmaskDropoutGrad")](e, node, ["g"], [True, False])
    assert none is None and e.nodes[0].op_type == "BitmaskDropoutGrad" and list(e.nodes[0].input) == ["g", "M"]


# ------------------------------------------------------------------------ the decisive one: trajectories


def _trajectory(model, feeds, steps):
    sess = T.TrainingSession(model)
    out = []
    for _ in range(steps):
        result = sess.step(feeds)
        out.append((result, sess.state()))
    return out


def _same_trajectory(bool_run, bits_run, loss="loss"):
    for k, ((r_bool, s_bool), (r_bits, s_bits)) in enumerate(zip(bool_run, bits_run)):
        assert r_bool[loss].tobytes() == r_bits[loss].tobytes(), k
        assert s_bool.keys() == s_bits.keys()
        for name in s_bool:
            assert s_bool[name].tobytes() == s_bits[name].tobytes(), (k, name)


@pytest.mark.parametrize("rng", ["", MT])
def test_onnx_training_step_with_bit_masks_follows_the_bool_trajectory(rng):
    model, feeds = _mlp("bool", rng=rng)
    kw = dict(optimizer="momentum", lr=0.1, outputs=["d1_mask"])
    bool_tm = T.make_training_model(model, "loss", **kw)
    bits_tm = T.make_training_model(model, "loss", mask_format="bits", **kw)
    assert "BitmaskDropoutGrad" in {n.op_type for n in bits_tm.graph.node}
    assert not {"Dropout", "DropoutGrad"} & {n.op_type for n in bits_tm.graph.node}
    bool_run, bits_run = _trajectory(bool_tm, feeds, 4), _trajectory(bits_tm, feeds, 4)
    _same_trajectory(bool_run, bits_run)
    for (r_bool, _), (r_bits, _) in zip(bool_run, bits_run):
        keep, words = r_bool["d1_mask"], r_bits["d1_mask"]
        assert keep.dtype == bool and keep.shape == (8, 40)
        assert words.dtype == np.uint32 and words.shape == (10,)  # ceil(320 / 32)
        assert keep.nbytes == 8 * words.nbytes and np.array_equal(R.unpack_mask(words, keep.shape), keep)
    assert not np.array_equal(bool_run[0][0]["d1_mask"], bool_run[1][0]["d1_mask"])  # a fresh draw each step
    # the model built from BitmaskDropout directly is the same model
    direct = T.make_training_model(_mlp("bits", rng=rng)[0], "loss", **kw)
    _same_trajectory(bits_run, _trajectory(direct, feeds, 2))
    exported = T.TrainingSession(bits_tm).export()
    assert [n.op_type for n in G.dropout_nodes(exported)] == ["BitmaskDropout"]
    assert D.BITMASK_DROPOUT.validate_node(G.dropout_nodes(exported)[0])["is_test"] == 1


def _shared_train_net(name):
    d = shared_file("caffe2_train_nets", name)
    traj = np.load(d / "trajectory.npz")
    return (netdef.read_netdef(d / "train_net.pbtxt"), netdef.read_netdef(d / "init_values.pb"),
            netdef.read_value_info(d / "value_info.json"), {k[4:]: traj[k] for k in traj.files if k.startswith("fed/")},
            traj)


@pytest.mark.parametrize("name", ["mlp_dropout_sgd", "lenet_dropout_momentum"])
def test_converted_caffe2_training_net_with_bit_masks_follows_the_bool_trajectory(name):
    net, init, vi, fed, traj = _shared_train_net(name)
    bool_model, _ = convert_training_net(net, init, vi, rng="caffe2")
    bits_model, _ = convert_training_net(net, init, vi, rng="caffe2", mask_format="bits")
    ops = {n.op_type for n in bits_model.graph.node}
    assert {"BitmaskDropout", "BitmaskDropoutGrad"} <= ops and not {"Dropout", "DropoutGrad"} & ops
    loss = T.metadata(bool_model)[1]
    bool_run, bits_run = _trajectory(bool_model, fed, 3), _trajectory(bits_model, fed, 3)
    _same_trajectory(bool_run, bits_run, loss)
    for k, ((r_bool, _), (r_bits, _)) in enumerate(zip(bool_run, bits_run)):
        masks = [o for o in r_bool if o != loss]
        assert masks
        for m in masks:
            recorded = traj[f"step{k}/{m}"]  # real Caffe2's mask of this step
            assert r_bits[m].dtype == np.uint32 and r_bits[m].shape == (D.bitmask_words(recorded.size),)
            assert np.array_equal(R.unpack_mask(r_bits[m], recorded.shape), recorded)
            assert r_bool[m].nbytes >= 8 * r_bits[m].nbytes


# ------------------------------------------------------------------------------------------- converter


def _train_dropout_net():
    net = netdef.read_netdef(TRAIN_NET / "predict_net.pbtxt")
    return net, netdef.read_netdef(TRAIN_NET / "init_net.pb"), netdef.read_value_info(TRAIN_NET / "value_info.json")


def test_converter_writes_the_bitmask_ops_and_the_same_outputs():
    net, init, vi = _train_dropout_net()
    bool_conv, bits_conv = convert(net, init, vi), convert(net, init, vi, mask_format="bits")
    assert {n.op_type for n in bits_conv.model.graph.node if n.domain == caffe2_ort.DOMAIN} == {
        "BitmaskDropout", "BitmaskDropoutGrad"}
    assert not any(a.name == "engine" for n in bits_conv.model.graph.node for a in n.attribute)
    assert ("engine CUDNN dropped from 1 Dropout/DropoutGrad node(s): bit-packed masks have no cuDNN form (cuDNN's "
            "reserve space is not a bit mask)") in bits_conv.notes
    assert not any("engine CUDNN" in note for note in bool_conv.notes)
    feeds = {"data": np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32),
             "h_grad": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    names = bool_conv.outputs
    assert bits_conv.outputs == names
    got_bool = dict(zip(names, session(bool_conv.model).run(names, feeds)))
    got_bits = dict(zip(names, session(bits_conv.model).run(names, feeds)))
    for k in names:
        if got_bool[k].dtype == bool:
            assert got_bits[k].dtype == np.uint32 and np.array_equal(R.pack_mask(got_bool[k]), got_bits[k])
        else:
            assert np.array_equal(bits(got_bool[k]), bits(got_bits[k])), k


def test_converter_refuses_a_mask_from_elsewhere_and_the_onnx_lowering():
    net = make_net(ops=[("DropoutGrad", ["dy", "m"], ["dx"], {"ratio": 0.5})], inputs=["dy", "m"], outputs=["dx"])
    vi = {"dy": (np.float32, (2, 3)), "m": (np.dtype(bool), (2, 3))}
    assert convert(net, None, vi).model  # bool masks: fine
    with pytest.raises(Caffe2Error) as e:
        convert(net, None, vi, mask_format="bits")
    assert str(e.value) == ("DropoutGrad node 'DropoutGrad_0' reads mask 'm', which no ai.caffe2 Dropout of the graph "
                            "writes: its mask cannot be converted to mask_format 'bits'")
    net2, init, vi2 = _train_dropout_net()
    with pytest.raises(Caffe2Error) as e:
        convert(net2, init, vi2, dropout="onnx", mask_format="bits")
    assert str(e.value) == "mask format 'bits' needs dropout='caffe2': standard ONNX Dropout has no bit-packed mask"
    with pytest.raises(Caffe2Error, match="mask_format must be one of 'bool', 'bits', not 'bytes'"):
        convert(net2, init, vi2, mask_format="bytes")


def test_cli_convert_and_run_with_bit_masks(tmp_path, capsys):
    tiny = MODELS / "tiny_dropout_net"
    rc, out, err = run_cli(capsys, "convert", tiny / "predict_net.pbtxt", "--init", tiny / "init_net.pb", "--value-info",
                        tiny / "value_info.json", "--mask-format", "bits", "-o", tmp_path / "m.onnx")
    assert rc == 0, err
    assert "ai.caffe2::BitmaskDropout x1" in out and "ai.caffe2::Dropout " not in out
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    common = [TRAIN_NET / "predict_net.pbtxt", "--init", TRAIN_NET / "init_net.pb", "--value-info",
              TRAIN_NET / "value_info.json"]
    rc, out, err = run_cli(capsys, "run", *common, "--mask-format", "bits", "--compare", "--rng", "caffe2")
    assert rc == 0, err
    assert "ai.caffe2::BitmaskDropout x2" in out and "ai.caffe2::BitmaskDropoutGrad x2" in out
    assert "  h_mask: shape [1] uint32" in out and "  h_mask: identical" in out
    assert "  h_cudnn_mask: identical" in out  # engine CUDNN dropped: the default kernel's Caffe2 stream


def test_cli_refusals_are_one_line(tmp_path, capsys):
    net = make_net(ops=[("DropoutGrad", ["dy", "m"], ["dx"], {"ratio": 0.5})], inputs=["dy", "m"], outputs=["dx"])
    netdef.write_netdef(net, tmp_path / "p.pbtxt")
    (tmp_path / "vi.json").write_text('{"dy": [1, [2, 3]], "m": [9, [2, 3]]}')
    rc, out, err = run_cli(capsys, "run", tmp_path / "p.pbtxt", "--value-info", tmp_path / "vi.json",
                        "--mask-format", "bits")
    assert rc == 2 and err == ("error: DropoutGrad node 'DropoutGrad_0' reads mask 'm', which no ai.caffe2 Dropout of "
                               "the graph writes: its mask cannot be converted to mask_format 'bits'\n")
    # convert: a net with a gradient op is a training net, whose DropoutGrad must match an earlier Dropout
    rc, out, err = run_cli(capsys, "convert", tmp_path / "p.pbtxt", "--value-info", tmp_path / "vi.json",
                        "--mask-format", "bits", "-o", tmp_path / "m.onnx")
    assert rc == 2 and err.count("\n") == 1 and "no earlier Dropout op reads or writes 'm'" in err
    tiny = MODELS / "tiny_dropout_net"
    rc, out, err = run_cli(capsys, "convert", tiny / "predict_net.pbtxt", "--init", tiny / "init_net.pb",
                        "--value-info", tiny / "value_info.json", "--dropout", "onnx", "--mask-format", "bits",
                        "-o", tmp_path / "m.onnx")
    assert rc == 2 and err == ("error: mask format 'bits' needs dropout='caffe2': standard ONNX Dropout has no "
                               "bit-packed mask\n")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_convert_and_train_a_training_net_with_bit_masks(tmp_path):
    d = shared_file("caffe2_train_nets", "mlp_dropout_sgd")
    traj = np.load(d / "trajectory.npz")
    np.savez(tmp_path / "batch.npz", **{k[4:]: traj[k] for k in traj.files if k.startswith("fed/")})
    losses = {}
    for fmt in ("bool", "bits"):
        out = tmp_path / f"{fmt}.onnx"
        r = subprocess.run([sys.executable, "-m", "caffe2_ort", "convert", d / "train_net.pbtxt", "--init",
                            d / "init_values.pb", "--value-info", d / "value_info.json", "--rng", "caffe2",
                            "--mask-format", fmt, "-o", out], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert ("BitmaskDropout" in {n.op_type for n in onnx.load(str(out)).graph.node}) == (fmt == "bits")
        r = subprocess.run([sys.executable, "-m", "caffe2_ort", "train", out, "--data", tmp_path / "batch.npz",
                            "--steps", "3"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        losses[fmt] = r.stdout.strip().splitlines()[-1]
    assert losses["bool"] == losses["bits"]
    # train --mask-format turns a training-step model around too
    r = subprocess.run([sys.executable, "-m", "caffe2_ort", "train", tmp_path / "bool.onnx", "--data",
                        tmp_path / "batch.npz", "--steps", "3", "--mask-format", "bits", "--save", tmp_path / "s.onnx"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == losses["bool"]
    assert "BitmaskDropoutGrad" in {n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node}


def test_check_command_runs_the_bitmask_ops():
    from caffe2_ort.check import run_checks
    import io

    out = io.StringIO()
    assert run_checks(out) == 0, out.getvalue()
    text = out.getvalue()
    for label in ("BitmaskDropout on CPUExecutionProvider", "BitmaskDropoutGrad on CPUExecutionProvider",
                  f"BitmaskDropout rng={MT} on CPUExecutionProvider"):
        assert f"ok    {label}: matches the numpy reference bit for bit" in text
