"""The numpy executor against Caffe2's semantics written out by hand here (naive loops and known
sizes), so the oracle the converter is compared with is itself checked without ONNX."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from caffe2_ort import reference as R
from caffe2_ort.caffe2.errors import ShapeError, UnsupportedOpsError
from caffe2_ort.caffe2.executor import Executor

from caffe2_helpers import make_net

RNG = np.random.default_rng(0)


def run1(op_type, inputs, args=None, n_out=1, blobs=None):
    names = [f"i{k}" for k in range(len(inputs))]
    outs = [f"o{k}" for k in range(n_out)]
    net = make_net(ops=[(op_type, names, outs, args or {})], inputs=names, outputs=outs)
    ws = Executor(net, blobs).run(dict(zip(names, inputs)))
    return [ws[o] for o in outs] if n_out > 1 else ws[outs[0]]


def naive_conv(x, w, b, stride, pads, dil, group):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (h + pads[0] + pads[2] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + pads[1] + pads[3] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for ni, mi, i, j in itertools.product(range(n), range(m), range(oh), range(ow)):
        g = mi // mg
        acc = b[mi]
        for ci, a, bb in itertools.product(range(cg), range(kh), range(kw)):
            acc += xp[ni, g * cg + ci, i * stride[0] + a * dil[0], j * stride[1] + bb * dil[1]] * w[mi, ci, a, bb]
        y[ni, mi, i, j] = acc
    return y


@pytest.mark.parametrize("group, dil", [(1, 1), (2, 1), (1, 2)])
def test_conv_against_naive_loop(group, dil):
    x = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = RNG.standard_normal((4, 4 // group, 3, 2)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    y = run1("Conv", [x, w, b], {"kernels": [3, 2], "strides": [2, 1], "pads": [1, 0, 2, 1], "group": group, "dilation": dil})
    np.testing.assert_allclose(y, naive_conv(x, w, b, (2, 1), (1, 0, 2, 1), (dil, dil), group), rtol=1e-5, atol=1e-5)


def test_conv_transpose_against_scatter_loop():
    x = RNG.standard_normal((1, 2, 3, 3)).astype(np.float32)
    w = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    y = run1("ConvTranspose", [x, w, b], {"kernel": 3, "stride": 2, "pad": 1, "adj": 1})
    full = np.zeros((1, 3, (3 - 1) * 2 + 3 + 1, (3 - 1) * 2 + 3 + 1))
    for c, i, j, m, a, bb in itertools.product(range(2), range(3), range(3), range(3), range(3), range(3)):
        full[0, m, i * 2 + a, j * 2 + bb] += x[0, c, i, j] * w[c, m, a, bb]
    expected = full[:, :, 1 : 1 + 6, 1 : 1 + 6] + b.reshape(1, 3, 1, 1)
    assert y.shape == (1, 3, 6, 6)  # (3-1)*2 + 3 + 1 - 1 - 1
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "size, args, expected",
    [
        (112, dict(kernel=3, stride=2), 55),  # Caffe2 floor sizing
        (112, dict(kernel=3, stride=2, legacy_pad=3), 56),  # Caffe's ceil sizing
        (10, dict(kernel=3, stride=2, pad=1, legacy_pad=3), 6),
        (9, dict(kernel=3, stride=2, pad=1, legacy_pad=3), 5),  # the last window would start in the padding
        (10, dict(kernel=3, stride=2, legacy_pad=2), 5),  # SAME: ceil(in / stride)
        (10, dict(kernel=3, stride=2, pad=4, legacy_pad=1), 4),  # VALID ignores pads
    ],
)
def test_pool_output_sizes(size, args, expected):
    y = run1("MaxPool", [np.zeros((1, 1, size, size), np.float32)], args)
    assert y.shape == (1, 1, expected, expected)


def test_average_pool_divides_by_the_clipped_window():
    x = np.ones((1, 1, 4, 4), np.float32)
    y = run1("AveragePool", [x], {"kernel": 3, "stride": 1, "pad": 1})
    np.testing.assert_array_equal(y, np.ones((1, 1, 4, 4)))  # padding excluded from the count
    y = run1("AveragePool", [x], {"kernel": 3, "stride": 1, "pad": 1, "count_include_pad": 1})
    assert y[0, 0, 0, 0] == np.float32(4 / 9) and y[0, 0, 1, 1] == 1
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = run1("AveragePool", [x], {"kernel": 3, "stride": 2, "legacy_pad": 3})  # ceil: 2x2, last window clipped
    assert y.shape == (1, 1, 2, 2) and y[0, 0, 1, 1] == np.mean([10, 11, 14, 15])


def test_max_pool_ignores_padding():
    x = -np.ones((1, 1, 3, 3), np.float32)
    assert (run1("MaxPool", [x], {"kernel": 3, "stride": 1, "pad": 1}) == -1).all()


def test_lrn_formula():
    x = RNG.standard_normal((1, 5, 2, 2)).astype(np.float32)
    y, scale = run1("LRN", [x], {"size": 3, "alpha": 0.3, "beta": 0.75, "bias": 2.0}, n_out=2)
    xd = x.astype(np.float64)
    for c in range(5):
        s = sum(xd[0, j] ** 2 for j in range(max(0, c - 1), min(5, c + 2)))
        sc = 2.0 + 0.3 / 3 * s
        np.testing.assert_allclose(scale[0, c], sc, rtol=1e-6)
        np.testing.assert_allclose(y[0, c], xd[0, c] * sc**-0.75, rtol=1e-6)


def test_fc_flattens_at_axis_and_axis_w():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    w = RNG.standard_normal((5, 1, 12)).astype(np.float32)  # axis_w=1: N = 5, K = 12
    b = RNG.standard_normal(5).astype(np.float32)
    y = run1("FC", [x, w, b])
    np.testing.assert_allclose(y, x.reshape(2, 12) @ w.reshape(5, 12).T + b, rtol=1e-5, atol=1e-5)
    w2 = RNG.standard_normal((1, 5, 4)).astype(np.float32)
    y = run1("FC", [x, w2, b], {"axis": 2, "axis_w": 2})
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y, x @ w2.reshape(5, 4).T + b, rtol=1e-5, atol=1e-5)


def test_legacy_broadcast():
    a = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    np.testing.assert_allclose(run1("Mul", [a, b], {"broadcast": 1, "axis": 1}), a * b.reshape(1, 3, 1, 1))
    b2 = RNG.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(run1("Sub", [a, b2], {"broadcast": 1}), a - b2)
    b3 = RNG.standard_normal((1, 3, 4, 1)).astype(np.float32)  # leading/trailing 1s broadcast
    np.testing.assert_allclose(run1("Div", [a, b3], {"broadcast": 1, "axis": 0}), a / b3, rtol=1e-6)
    with pytest.raises(ShapeError, match="broadcast dimension mismatch"):
        run1("Add", [a, np.zeros((3, 1, 5), np.float32)], {"broadcast": 1, "axis": 1})


def test_softmax_coerces_to_2d():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    y = run1("Softmax", [x])
    np.testing.assert_allclose(y.reshape(2, 12).sum(axis=1), 1, rtol=1e-6)
    e = np.exp(x.reshape(2, 12) - x.reshape(2, 12).max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, (e / e.sum(axis=1, keepdims=True)).reshape(x.shape), rtol=1e-6)


def test_spatial_bn_test_mode():
    x = RNG.standard_normal((2, 3, 2, 2)).astype(np.float32)
    s, o, m, v = (RNG.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4))
    y = run1("SpatialBN", [x, s, o, m, v], {"is_test": 1, "epsilon": 1e-3})
    sh = (1, 3, 1, 1)
    np.testing.assert_allclose(y, (x - m.reshape(sh)) / np.sqrt(v.reshape(sh) + 1e-3) * s.reshape(sh) + o.reshape(sh), rtol=1e-5)


def test_reshape_concat_flatten():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y, old = run1("Reshape", [x], {"shape": [0, -1]}, n_out=2)
    assert y.shape == (2, 12) and old.tolist() == [2, 3, 4] and old.dtype == np.int64
    y, info = run1("Concat", [x, x[:, :1]], {"axis": 1}, n_out=2)
    assert y.shape == (2, 4, 4) and info.tolist() == [3, 1] and info.dtype == np.int32
    y, info = run1("Concat", [x, x], {"order": "NCHW", "add_axis": 1}, n_out=2)
    assert y.shape == (2, 2, 3, 4) and info.tolist() == [1, 1]
    assert run1("Flatten", [x], {"axis": 2}).shape == (6, 4)


def test_dropout_follows_the_rng_contract_and_advances():
    x = RNG.standard_normal((5, 7)).astype(np.float32)
    net = make_net(ops=[("Dropout", ["x"], ["y", "m"], {"ratio": 0.4, "is_test": 0})], inputs=["x"], outputs=["y", "m"])
    net.op[0].device_option.random_seed = 99
    ex = Executor(net)
    first, second = ex.run({"x": x}), ex.run({"x": x})
    np.testing.assert_array_equal(first["m"], R.keep_mask(99, 0, x.shape, 0.4))
    np.testing.assert_array_equal(second["m"], R.keep_mask(99, R.blocks_for(x.size), x.shape, 0.4))
    np.testing.assert_array_equal(first["y"], R.apply_mask(x, first["m"], 0.4))
    test = make_net(ops=[("Dropout", ["x"], ["x", "m"], {"ratio": 0.4, "is_test": 1})], inputs=["x"], outputs=["x"])
    ws = Executor(test).run({"x": x})
    np.testing.assert_array_equal(ws["x"], x)
    assert ws["m"].all()


def test_unsupported_ops_listed():
    net = make_net(ops=[("Gather", ["a", "b"], ["c"]), ("Gather", ["c", "b"], ["d"]), ("Foo", ["d"], ["e"])])
    with pytest.raises(UnsupportedOpsError, match="Foo x1, Gather x2"):
        Executor(net)
