"""ai.caffe2 BitmaskDropout / BitmaskDropoutGrad (bit-packed uint32 masks) on the CPU execution provider.

The oracle is the library's own Dropout / DropoutGrad, which the rest of the suite checks against the
RNG contract and Caffe2: a BitmaskDropout node and a Dropout node with the same attributes and seed,
in one session, must give bit-identical Y on every run, and the packed mask must be numpy's
packbits of Dropout's bool mask (little bit order, padded to whole uint32 words with zero bits).
Models are built with onnx.helper directly, so these tests depend on the native library only.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import caffe2_ort
from ort_helpers import DTYPES, bits, make_model, session

D = caffe2_ort.DOMAIN
ISAS = ["scalar", "avx2", "avx512", "avx512ifma"]
# Around packed words (32), keep-bit words (64), slices (256) and ORT tasks (2^15 elements).
SIZES = [0, 1, 31, 32, 33, 63, 64, 65, 300, 2**15 - 1, 2**15 + 1, 2**17 + 5]


def wide_type(dtype):
    """The type the model's inputs and outputs travel in: 16-bit types go through exact float32 casts."""
    return TensorProto.DOUBLE if dtype == "float64" else TensorProto.FLOAT


def wide_np(dtype):
    return np.float64 if dtype == "float64" else np.float32


def packed(mask):
    """numpy's bit-packed form of a bool mask: little bit order, zero-padded to uint32 words."""
    b = np.packbits(np.asarray(mask, bool).ravel(), bitorder="little")
    return np.pad(b, (0, -len(b) % 4)).view("<u4")


def unpacked(words, n):
    return np.unpackbits(np.asarray(words, "<u4").view(np.uint8), bitorder="little")[:n].astype(bool)


def pair_model(dtype, shapes, with_bool_mask=True, **attrs):
    """For each input Xi (of the given shapes): Cast(dtype) -> Dropout and -> BitmaskDropout with the
    same attributes; outputs Yi_d, Mi_d (bool), Yi_b, Mi_b (uint32), the Ys cast back to the wide type."""
    t, wt = DTYPES[dtype], wide_type(dtype)
    nodes, inputs, outputs = [], [], []
    for i, shape in enumerate(shapes):
        nodes.append(helper.make_node("Cast", [f"X{i}"], [f"Xt{i}"], to=t))
        d_outs = [f"Yt{i}_d", f"M{i}_d"] if with_bool_mask else [f"Yt{i}_d"]
        nodes.append(helper.make_node("Dropout", [f"Xt{i}"], d_outs, domain=D, name=f"drop{i}", **attrs))
        nodes.append(helper.make_node("BitmaskDropout", [f"Xt{i}"], [f"Yt{i}_b", f"M{i}_b"], domain=D,
                                      name=f"bitmask{i}", **attrs))
        for k in "db":
            nodes.append(helper.make_node("Cast", [f"Yt{i}_{k}"], [f"Y{i}_{k}"], to=wt))
        inputs.append(helper.make_tensor_value_info(f"X{i}", wt, list(shape)))
        outputs.append(helper.make_tensor_value_info(f"Y{i}_d", wt, None))
        if with_bool_mask:
            outputs.append(helper.make_tensor_value_info(f"M{i}_d", TensorProto.BOOL, None))
        outputs.append(helper.make_tensor_value_info(f"Y{i}_b", wt, None))
        outputs.append(helper.make_tensor_value_info(f"M{i}_b", TensorProto.UINT32, None))
    return make_model(nodes, inputs, outputs)


def inputs_for(dtype, shapes, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, shape in enumerate(shapes):
        x = np.asarray((rng.standard_normal(shape) * 3).astype(wide_np(dtype)))
        flat = x.reshape(-1)
        specials = [np.nan, np.inf, -np.inf, -0.0, 0.0]
        flat[: min(len(flat), len(specials))] = specials[: len(flat)]
        feeds[f"X{i}"] = x
    return feeds


def check_pair(out, names, shapes):
    res = dict(zip(names, out))
    for i, shape in enumerate(shapes):
        n = int(np.prod(shape, dtype=np.int64))
        y_d, m_d, y_b, m_b = res[f"Y{i}_d"], res[f"M{i}_d"], res[f"Y{i}_b"], res[f"M{i}_b"]
        assert y_b.shape == tuple(shape) and m_b.dtype == np.uint32 and m_b.shape == ((n + 31) // 32,)
        assert np.array_equal(bits(y_b), bits(y_d)), f"Y differs for shape {shape}"
        assert np.array_equal(m_b, packed(m_d)), f"mask differs for shape {shape}"
        if n % 32:  # padding bits are zero
            assert m_b[-1] >> (n % 32) == 0


@pytest.mark.parametrize("rng", ["philox", "caffe2_mt19937"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("isa", ISAS)
def test_bitmask_dropout_equals_dropout_on_every_path(monkeypatch, isa, dtype, rng):
    """Every ISA cap (a cap above this CPU's best runs its best), every dtype, both rngs, sizes around
    word and task boundaries, 1 and 2 threads, three consecutive runs (each a fresh draw, run k of
    BitmaskDropout equal to run k of Dropout)."""
    monkeypatch.setenv("CAFFE2_ORT_CPU_ISA", isa)
    shapes = [(s,) for s in SIZES] + [(), (3, 0, 2), (5, 7, 3)]
    model = pair_model(dtype, shapes, ratio=0.3, seed=1234, rng=rng)
    feeds = inputs_for(dtype, shapes)
    for threads in (1, 2):
        sess = session(model, threads=threads)
        names = [o.name for o in sess.get_outputs()]
        previous = None
        for _ in range(3):
            out = sess.run(None, feeds)
            check_pair(out, names, shapes)
            big = dict(zip(names, out))[f"M{SIZES.index(2**17 + 5)}_b"]
            assert previous is None or not np.array_equal(big, previous), "a training run repeated its mask"
            previous = big


@pytest.mark.parametrize("rng", ["philox", "caffe2_mt19937"])
@pytest.mark.parametrize("ratio", [0.0, 1.0, 1e-10, 0.999])
def test_edge_ratios(rng, ratio):
    shapes = [(s,) for s in (1, 33, 65, 2**15 + 1)]
    model = pair_model("float32", shapes, ratio=ratio, seed=7, rng=rng)
    sess = session(model, threads=2)
    names = [o.name for o in sess.get_outputs()]
    feeds = inputs_for("float32", shapes, seed=1)
    for _ in range(2):
        out = sess.run(None, feeds)
        check_pair(out, names, shapes)
        res = dict(zip(names, out))
        if ratio == 0.0:
            for i, (n,) in enumerate(shapes):
                assert np.array_equal(unpacked(res[f"M{i}_b"], n), np.ones(n, bool))
        if ratio == 1.0:
            assert all(not res[f"M{i}_b"].any() for i in range(len(shapes)))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_test_mode_copies_x_and_keeps_every_valid_bit(dtype):
    shapes = [(s,) for s in (0, 1, 31, 32, 33, 64, 65, 2**15 + 3)] + [()]
    model = pair_model(dtype, shapes, ratio=0.5, is_test=1, seed=3)
    sess = session(model, threads=2)
    names = [o.name for o in sess.get_outputs()]
    feeds = inputs_for(dtype, shapes, seed=2)
    out = dict(zip(names, sess.run(None, feeds)))
    for i, shape in enumerate(shapes):
        n = int(np.prod(shape, dtype=np.int64))
        x = feeds[f"X{i}"]
        # Y = X through the casts: the Dropout node's Y is X cast to dtype and back.
        assert np.array_equal(bits(out[f"Y{i}_b"]), bits(out[f"Y{i}_d"]))
        if dtype in ("float32", "float64"):
            assert np.array_equal(bits(out[f"Y{i}_b"]), bits(x))
        expected = np.full((n + 31) // 32, 0xFFFFFFFF, np.uint32)
        if n % 32:
            expected[-1] = (1 << (n % 32)) - 1
        assert np.array_equal(out[f"M{i}_b"], expected)


def test_without_the_mask_output_y_is_unchanged():
    n = 2**15 + 77
    nodes = [helper.make_node("BitmaskDropout", ["X"], ["Y"], domain=D, ratio=0.4, seed=11),
             helper.make_node("Dropout", ["X"], ["Yd"], domain=D, ratio=0.4, seed=11)]
    f = TensorProto.FLOAT
    model = make_model(nodes, [helper.make_tensor_value_info("X", f, [n])],
                       [helper.make_tensor_value_info("Y", f, None), helper.make_tensor_value_info("Yd", f, None)])
    sess = session(model, threads=2)
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    for _ in range(2):
        y, yd = sess.run(None, {"X": x})
        assert np.array_equal(bits(y), bits(yd))


def test_unseeded_nodes_draw_different_masks():
    n = 4096
    node = helper.make_node("BitmaskDropout", ["X"], ["Y", "M"], domain=D, ratio=0.5)
    f = TensorProto.FLOAT
    model = make_model([node], [helper.make_tensor_value_info("X", f, [n])],
                       [helper.make_tensor_value_info("Y", f, None),
                        helper.make_tensor_value_info("M", TensorProto.UINT32, None)])
    x = np.ones(n, np.float32)
    m1 = session(model).run(None, {"X": x})[1]
    m2 = session(model).run(None, {"X": x})[1]
    assert not np.array_equal(m1, m2)


# ---------------------------------------------------------------- BitmaskDropoutGrad


def grad_pair_model(dtype, **attrs):
    """dY (wide) -> Cast(dtype) -> DropoutGrad(bool mask) and -> BitmaskDropoutGrad(packed mask)."""
    t, wt = DTYPES[dtype], wide_type(dtype)
    nodes = [
        helper.make_node("Cast", ["dY"], ["dYt"], to=t),
        helper.make_node("DropoutGrad", ["dYt", "M"], ["dXt_d"], domain=D, name="grad", **attrs),
        helper.make_node("BitmaskDropoutGrad", ["dYt", "W"], ["dXt_b"], domain=D, name="bitgrad", **attrs),
        helper.make_node("Cast", ["dXt_d"], ["dX_d"], to=wt),
        helper.make_node("Cast", ["dXt_b"], ["dX_b"], to=wt),
    ]
    inputs = [helper.make_tensor_value_info("dY", wt, None), helper.make_tensor_value_info("M", TensorProto.BOOL, None),
              helper.make_tensor_value_info("W", TensorProto.UINT32, None)]
    outputs = [helper.make_tensor_value_info("dX_d", wt, None), helper.make_tensor_value_info("dX_b", wt, None)]
    return make_model(nodes, inputs, outputs)


def padded_words(mask, rng):
    """The packed mask with random padding bits (BitmaskDropoutGrad must not read them)."""
    w = packed(mask).copy()
    n = mask.size
    if n % 32:
        # Python ints: numpy 1 (the onnxruntime 1.17 venv) refuses uint64 & int.
        w[-1] |= np.uint32(int(rng.integers(0, 2**32)) & ~((1 << (n % 32)) - 1) & 0xFFFFFFFF)
    return w


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("isa", ISAS)
def test_bitmask_grad_equals_dropout_grad(monkeypatch, isa, dtype):
    monkeypatch.setenv("CAFFE2_ORT_CPU_ISA", isa)
    rng = np.random.default_rng(5)
    huge = 65504.0 if dtype == "float16" else 3e38
    for threads in (1, 2):
        sess = session(grad_pair_model(dtype, ratio=0.25), threads=threads)
        for n in SIZES + [2**16 + 40]:
            dy = (rng.standard_normal(n) * 2).astype(wide_np(dtype))
            specials = [np.nan, np.inf, -np.inf, huge, -huge, -0.0, 0.0, np.nan]
            dy[: min(n, 8)] = specials[: min(n, 8)]
            mask = rng.random(n) < 0.6
            mask[:8] = [False, False, True, False, False, True, False, True][: min(n, 8)]
            dx_d, dx_b = sess.run(None, {"dY": dy, "M": mask, "W": padded_words(mask, rng)})
            assert dx_b.shape == (n,)
            assert np.array_equal(bits(dx_b), bits(dx_d)), f"dX differs at n = {n}"
            if n >= 8:
                # dY * 0 first: a dropped huge value is a zero of its sign, a dropped Inf or NaN is NaN;
                # a kept Inf stays Inf.
                assert np.isnan(dx_b[0]) and np.isnan(dx_b[1]) and dx_b[2] == -np.inf
                assert dx_b[3] == 0 and not np.signbit(dx_b[3]) and dx_b[4] == 0 and np.signbit(dx_b[4])
                assert dx_b[5] == 0 and np.signbit(dx_b[5]) and np.isnan(dx_b[7])
            # the formula itself, in float32 / float64 (NaN payloads aside)
            if dtype in ("float32", "float64"):
                with np.errstate(invalid="ignore", over="ignore"):
                    want = (dy * mask.astype(dy.dtype)) * dy.dtype.type(np.float32(1 / 0.75))
                nan = np.isnan(want)
                assert np.array_equal(np.isnan(dx_b), nan) and np.array_equal(bits(dx_b[~nan]), bits(want[~nan]))


def test_bitmask_grad_rank0_and_multi_dim():
    sess = session(grad_pair_model("float32", ratio=0.5))
    for shape in [(), (4, 0), (3, 5, 7)]:
        dy = np.asarray(np.random.default_rng(6).standard_normal(shape).astype(np.float32))
        mask = np.asarray(np.random.default_rng(7).random(shape) < 0.5)
        dx_d, dx_b = sess.run(None, {"dY": dy, "M": mask, "W": packed(mask)})
        assert dx_b.shape == shape and np.array_equal(bits(dx_b), bits(dx_d))


def test_bitmask_grad_in_test_mode_copies_dy_and_ignores_the_mask():
    dy = np.random.default_rng(8).standard_normal(1000).astype(np.float32)
    dy[0] = np.float32(np.nan)
    sess = session(grad_pair_model("float32", ratio=0.5, is_test=1))
    _, dx = sess.run(None, {"dY": dy, "M": np.zeros(1000, bool), "W": np.zeros(3, np.uint32)})  # wrong count too
    assert np.array_equal(bits(dx), bits(dy))
    node = helper.make_node("BitmaskDropoutGrad", ["dY"], ["dX"], domain=D, ratio=0.5, is_test=1)
    f = TensorProto.FLOAT
    model = make_model([node], [helper.make_tensor_value_info("dY", f, None)],
                       [helper.make_tensor_value_info("dX", f, None)])
    (dx,) = session(model).run(None, {"dY": dy})
    assert np.array_equal(bits(dx), bits(dy))


def test_forward_then_backward_in_one_graph():
    """BitmaskDropout's mask feeds BitmaskDropoutGrad; dX equals DropoutGrad's with Dropout's mask."""
    n = 3 * 2**15 + 9
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("BitmaskDropout", ["X"], ["Y", "W"], domain=D, ratio=0.5, seed=21),
        helper.make_node("BitmaskDropoutGrad", ["Y", "W"], ["dX"], domain=D, ratio=0.5),
        helper.make_node("Dropout", ["X"], ["Yd", "M"], domain=D, ratio=0.5, seed=21),
        helper.make_node("DropoutGrad", ["Yd", "M"], ["dXd"], domain=D, ratio=0.5),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("X", f, [n])],
                       [helper.make_tensor_value_info("dX", f, None), helper.make_tensor_value_info("dXd", f, None)])
    x = np.random.default_rng(9).standard_normal(n).astype(np.float32)
    sess = session(model, threads=2)
    for _ in range(2):
        dx, dxd = sess.run(None, {"X": x})
        assert np.array_equal(bits(dx), bits(dxd))


# ---------------------------------------------------------------- errors


def creation_error(model):
    with pytest.raises(Exception) as info:
        session(model)
    return str(info.value)


def forward_model(name="bm", **attrs):
    node = helper.make_node("BitmaskDropout", ["X"], ["Y", "M"], domain=D, name=name, **attrs)
    f = TensorProto.FLOAT
    return make_model([node], [helper.make_tensor_value_info("X", f, None)],
                      [helper.make_tensor_value_info("Y", f, None),
                       helper.make_tensor_value_info("M", TensorProto.UINT32, None)])


def grad_model(name="bg", with_mask=True, **attrs):
    ins = ["dY", "M"] if with_mask else ["dY"]
    node = helper.make_node("BitmaskDropoutGrad", ins, ["dX"], domain=D, name=name, **attrs)
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("dY", f, None)]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("M", TensorProto.UINT32, None))
    return make_model([node], inputs, [helper.make_tensor_value_info("dX", f, None)])


ENGINE_REFUSED = ("has no attribute engine (cuDNN's reserve space is not a bit mask; use Dropout with engine "
                  "'CUDNN')")


@pytest.mark.parametrize("engine", ["CUDNN", "", "DEFAULT", 1])
def test_engine_is_refused(engine):
    msg = creation_error(forward_model(name="f1", ratio=0.5, engine=engine))
    assert f"ai.caffe2 BitmaskDropout node 'f1': BitmaskDropout {ENGINE_REFUSED}" in msg
    msg = creation_error(grad_model(name="g1", ratio=0.5, engine=engine))
    assert f"ai.caffe2 BitmaskDropoutGrad node 'g1': BitmaskDropoutGrad {ENGINE_REFUSED}" in msg


@pytest.mark.parametrize("attr,value", [("seed", 3), ("rng", "philox")])
def test_seed_and_rng_are_refused_on_the_grad(attr, value):
    msg = creation_error(grad_model(name="g2", ratio=0.5, **{attr: value}))
    assert (f"ai.caffe2 BitmaskDropoutGrad node 'g2': BitmaskDropoutGrad has no attribute {attr} "
            "(it belongs to the forward Dropout; the mask input carries its draw)") in msg


def test_training_grad_without_mask_is_refused():
    msg = creation_error(grad_model(name="g3", with_mask=False, ratio=0.5))
    assert ("ai.caffe2 BitmaskDropoutGrad node 'g3': training mode (is_test = 0) needs the mask input "
            "(input 1, the forward Dropout's mask)") in msg


@pytest.mark.parametrize("op", ["BitmaskDropout", "BitmaskDropoutGrad"])
def test_ratio_and_rng_validation_name_the_op(op):
    model = forward_model(name="r", ratio=1.5) if op == "BitmaskDropout" else grad_model(name="r", ratio=1.5)
    msg = creation_error(model)
    assert f"ai.caffe2 {op} node 'r': ratio = 1.5 is out of range; valid: 0 <= ratio <= 1" in msg
    msg = creation_error(forward_model(name="r2", ratio=0.5, rng="mt"))
    assert ("ai.caffe2 BitmaskDropout node 'r2': rng = 'mt' is not supported; accepted: '' (default), 'philox', "
            "'caffe2_mt19937'") in msg


@pytest.mark.parametrize("n,words", [(33, 1), (33, 3), (32, 2), (0, 1), (1, 0), (64, 64)])
def test_wrong_word_count_is_a_runtime_invalid_argument(n, words):
    sess = session(grad_model(name="g4", ratio=0.5))
    with pytest.raises(Exception) as info:
        sess.run(None, {"dY": np.ones(n, np.float32), "M": np.zeros(words, np.uint32)})
    msg = str(info.value)
    assert "INVALID_ARGUMENT" in msg
    need = (n + 31) // 32
    assert (f"ai.caffe2 BitmaskDropoutGrad node 'g4': mask has {words} words but dY has {n} elements, "
            f"which need {need} words") in msg
    # the session is still usable
    (dx,) = sess.run(None, {"dY": np.ones(n, np.float32), "M": np.full(need, 0xFFFFFFFF, np.uint32)})
    assert np.all(dx == 2)
