"""ai.caffe2 Dropout and DropoutGrad on ORT's CPU execution provider against Caffe2's semantics and
the numpy reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto

from caffe2_ort import reference as R
from ort_helpers import (
    DTYPES,
    bits,
    dropout_model,
    grad_cast_model,
    grad_model,
    np_dtype,
    plain_dropout_model,
    session,
)

ALL_DTYPES = list(DTYPES)


def run_dropout(x, dtype="float32", **attrs):
    sess = session(dropout_model(dtype, **attrs))
    xt, y, mask = sess.run(None, {"X": x})
    return xt, y, mask


def reference_y(xt, dtype, keep, ratio):
    """The reference result, brought to the float32/float64 form the test graph outputs."""
    y = R.apply_mask(xt.astype(np_dtype(dtype)), keep, ratio)
    return y.astype(np.float64 if dtype == "float64" else np.float32)


def assert_same(a, b, dtype):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape
    if dtype in ("float16", "bfloat16"):
        # NaN payloads of 16-bit conversions are not part of the contract; everything else is exact.
        nan = np.isnan(a)
        assert np.array_equal(nan, np.isnan(b))
        assert np.array_equal(bits(a[~nan]), bits(b[~nan]))
    else:
        assert np.array_equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("seed", [0, 7, -3, (1 << 40) + 11])
def test_masks_match_reference_bit_for_bit(dtype, ratio, seed):
    rng = np.random.default_rng(abs(seed) % 1000)
    x = rng.standard_normal((3, 4097)).astype(np.float64 if dtype == "float64" else np.float32)
    xt, y, mask = run_dropout(x, dtype, ratio=ratio, seed=seed)
    keep = R.keep_mask(seed, 0, x.shape, ratio)
    assert np.array_equal(mask, keep)
    assert_same(y, reference_y(xt, dtype, keep, ratio), dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (1,), (3,), (5,), (7, 3), (63,), (65,), (2, 3, 5, 7), (70001,)])
def test_shapes_including_empty_and_rank0(dtype, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float64 if dtype == "float64" else np.float32)
    xt, y, mask = run_dropout(x, dtype, ratio=0.3, seed=5)
    assert y.shape == x.shape and mask.shape == x.shape
    keep = R.keep_mask(5, 0, x.shape, 0.3)
    assert np.array_equal(mask, keep)
    assert_same(y, reference_y(xt, dtype, keep, 0.3), dtype)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_cpu_path_gives_the_same_result(monkeypatch, isa, dtype):
    # The ISA is chosen when the kernel is created; the variable caps it (a CPU without AVX-512 uses its best).
    monkeypatch.setenv("CAFFE2_ORT_CPU_ISA", isa)
    x = np.random.default_rng(2).standard_normal(100003).astype(np.float64 if dtype == "float64" else np.float32)
    x[:4] = [np.nan, np.inf, -np.inf, -0.0]
    xt, y, mask = run_dropout(x, dtype, ratio=0.4, seed=99)
    keep = R.keep_mask(99, 0, x.shape, 0.4)
    assert np.array_equal(mask, keep)
    assert_same(y, reference_y(xt, dtype, keep, 0.4), dtype)


def test_dropped_elements_give_signed_zeros_and_nan():
    x = np.array([-1.0, 1.0, np.inf, -np.inf, np.nan, -0.0, 3.0, -5.0], dtype=np.float32)
    sess = session(plain_dropout_model(ratio=1.0, seed=1))
    y, mask = sess.run(None, {"X": x})
    assert not mask.any()
    with np.errstate(invalid="ignore"):
        expected = (x * np.float32(0)) * np.float32(0)
    assert np.array_equal(bits(y), bits(expected))
    assert np.signbit(y[0]) and np.signbit(y[7]) and not np.signbit(y[1])
    assert np.isnan(y[2:5]).all()


def test_test_mode_is_an_exact_copy_with_nan_payloads():
    payloads = np.array([0x7FC12345, 0x7F800001, 0xFFC00001, 0x80000000, 0x3F800000], dtype=np.uint32)
    x = payloads.view(np.float32)
    for ratio in (0.0, 0.5, 0.999, 1.0):
        y, mask = session(plain_dropout_model(ratio=ratio, is_test=1)).run(None, {"X": x})
        assert np.array_equal(y.view(np.uint32), payloads)
        assert mask.all() and mask.shape == x.shape


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    ratio=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**31),
)
def test_caffe2_properties(shape, ratio, seed):
    """Caffe2's own checks: Y == X * mask / (1 - ratio) in training, Y == X in test mode."""
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    y, mask = session(plain_dropout_model(ratio=ratio, seed=seed)).run(None, {"X": x})
    assert mask.dtype == bool and mask.shape == x.shape
    np.testing.assert_allclose(y, x * mask / (1 - np.float32(ratio)), rtol=1e-4, atol=1e-4)
    (y_test,) = session(plain_dropout_model(outputs=("Y",), ratio=ratio, is_test=1)).run(None, {"X": x})
    assert np.array_equal(y_test, x)


def test_ratio_zero_in_training_keeps_everything():
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    y, mask = session(plain_dropout_model(ratio=0.0)).run(None, {"X": x})
    assert mask.all()
    assert np.array_equal(y, x)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_kept_fraction_within_statistical_bound(ratio):
    n = 1 << 20
    _, mask = session(plain_dropout_model(ratio=ratio)).run(None, {"X": np.ones(n, np.float32)})
    sigma = np.sqrt(ratio * (1 - ratio) / n)
    assert abs(mask.mean() - (1 - ratio)) < 6 * sigma


def test_mean_is_preserved_like_brew_test():
    # Caffe2's brew test: x = 0.8 everywhere, default ratio 0.5, |mean(out) - 0.8| < 0.05
    x = np.full((100, 100), 0.8, np.float32)
    (y,) = session(plain_dropout_model(outputs=("Y",))).run(None, {"X": x})
    assert abs(y.mean() - 0.8) < 0.05


def test_mask_output_is_optional():
    x = np.random.default_rng(4).standard_normal(1000).astype(np.float32)
    (y,) = session(plain_dropout_model(outputs=("Y",), ratio=0.5, seed=3)).run(None, {"X": x})
    y2, _ = session(plain_dropout_model(ratio=0.5, seed=3)).run(None, {"X": x})
    assert np.array_equal(y, y2)


def test_output_shape_is_inferred_by_ort():
    from onnx import helper

    model = plain_dropout_model(outputs=("Y",), ratio=0.5)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, "n"]))
    sess = session(model)
    assert sess.get_outputs()[0].shape[0] == 2 or sess.get_outputs()[0].shape == [2, "n"]


# ----------------------------------------------------------------- DropoutGrad


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_grad_training_matches_reference(dtype):
    rng = np.random.default_rng(5)
    dy = rng.standard_normal((3, 1001)).astype(np.float64 if dtype == "float64" else np.float32)
    dy[0, :3] = [np.inf, np.nan, -0.0]
    mask = rng.random((3, 1001)) > 0.3
    dyt, dx = session(grad_cast_model(dtype, ratio=0.3)).run(None, {"dY": dy, "mask": mask})
    expected = R.dropout_grad(dyt.astype(np_dtype(dtype)), mask, ratio=0.3).astype(dx.dtype)
    assert_same(dx, expected, dtype)


def test_grad_test_mode_with_one_input_is_identity():
    dy = np.random.default_rng(6).standard_normal((4, 7)).astype(np.float32)
    dy[0, 0] = np.nan
    (dx,) = session(grad_model(with_mask=False, ratio=0.5, is_test=1)).run(None, {"dY": dy})
    assert np.array_equal(bits(dx), bits(dy))


def test_grad_test_mode_ignores_a_given_mask():
    dy = np.ones(8, np.float32)
    (dx,) = session(grad_model(ratio=0.5, is_test=1)).run(None, {"dY": dy, "mask": np.zeros(8, bool)})
    assert np.array_equal(dx, dy)


def test_grad_compares_counts_not_shapes():
    dy = np.ones((2, 6), np.float32)
    (dx,) = session(grad_model(ratio=0.5)).run(None, {"dY": dy, "mask": np.ones((3, 4), bool)})
    assert dx.shape == (2, 6) and np.all(dx == 2.0)


def test_forward_backward_finite_difference_gradient():
    """Caffe2's gradient check (step 0.05, threshold 0.005) of Dropout through DropoutGrad with the
    mask wired in: loss = sum(Y * W), so dL/dY = W."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (3, 5)).astype(np.float64)
    w = rng.uniform(-1, 1, (3, 5)).astype(np.float64)
    model = plain_dropout_model(TensorProto.DOUBLE, ratio=0.4, seed=11)

    def loss(xv):
        y, _ = session(model).run(None, {"X": xv})  # a fresh session draws at base 0 every time
        return float((y * w).sum())

    _, mask = session(model).run(None, {"X": x})
    (dx,) = session(grad_model(TensorProto.DOUBLE, ratio=0.4)).run(None, {"dY": w, "mask": mask})
    step = 0.05
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += step
        xm[idx] -= step
        numeric[idx] = (loss(xp) - loss(xm)) / (2 * step)
    assert np.max(np.abs(numeric - dx)) < 0.005
    assert mask.any() and not mask.all()
