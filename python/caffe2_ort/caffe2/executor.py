"""A numpy executor of Caffe2 NetDefs with Caffe2's semantics: the oracle for the converter.

It runs a predict net op by op in a workspace (a dict of blobs, overwritten in place as Caffe2 does)
and shares no code with the ONNX path: output sizes come from its own reading of Caffe2's
``ComputeSizeAndPad``, pooling divides by the window clipped to the image, LRN uses Caffe2's
``bias + alpha/size * sum of squares`` over a centred channel window, FC flattens at ``axis`` /
``axis_w``, binary ops with ``broadcast=1`` use the legacy (pre, n, post) blocking, Softmax coerces
to 2-D at ``axis``. Float ops are computed in float64 and rounded once to the input's type per op, so
each op's result is the correctly rounded Caffe2 value.

Dropout and DropoutGrad use :mod:`caffe2_ort.reference` (the RNG contract of the ai.caffe2 ops);
each Dropout op keeps its own counter across :meth:`Executor.run` calls, like a kernel in a session.
Test-mode Dropout writes an all-true mask when asked for one (the plugin's choice; Caffe2 left it
unwritten).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import reference
from .errors import Caffe2Error, ShapeError, UnsupportedOpsError
from . import netdef
from .netdef import Args

_OPS = {}


def _op(*names):
    def deco(fn):
        for n in names:
            _OPS[n] = fn
        return fn

    return deco


def supported_ops():
    return sorted(_OPS)


class Executor:
    """Runs a predict net on numpy inputs. ``init_blobs``: ``{name: array}`` (e.g. from an init_net).
    ``rng``: the Dropout mask stream, as the converted model's rng attribute ("caffe2_mt19937": Caffe2's)."""

    def __init__(self, predict_net, init_blobs=None, *, default_seed=None, rng=""):
        self.net = predict_net
        self.init_blobs = {k: np.asarray(v) for k, v in (init_blobs or {}).items()}
        bad = Counter(op.type for op in predict_net.op if op.type not in _OPS)
        if bad:
            raise UnsupportedOpsError(bad, where="predict_net (numpy executor)")
        self._streams = {}
        self._default_seed = default_seed
        self._rng = rng  # the Dropout mask stream: "" (Philox) or "caffe2_mt19937" (Caffe2's own)
        self.history = []  # per op of the last run: the values of its outputs

    def _stream(self, k, op):
        if k not in self._streams:
            seed = netdef.dropout_seed(op, self.net)
            if seed is None and self._default_seed is not None:
                seed = int(self._default_seed)
            self._streams[k] = reference.DropoutStream(seed, rng=self._rng)  # None: a fresh 64-bit seed
        return self._streams[k]

    def run(self, inputs, *, before_op=None):
        """Run the net once; returns the workspace (every blob's last value).

        ``before_op(k, op, workspace)`` is called before each op (the synthesiser's calibration uses it).
        """
        ws = dict(self.init_blobs)
        ws.update({k: np.asarray(v) for k, v in inputs.items()})
        self.history = []
        for k, op in enumerate(self.net.op):
            if before_op is not None:
                before_op(k, op, ws)
            where = f"{op.type} op #{k}" + (f" ({op.name})" if op.name else "")
            try:
                xs = [ws[b] for b in op.input]
            except KeyError as e:
                raise Caffe2Error(f"{where}: blob {e.args[0]!r} has no value (not an input, weight or earlier output)") from None
            ctx = _Ctx(self, k, op, where)
            outs = _OPS[op.type](ctx, xs, Args(op, where))
            if len(outs) < len(op.output):
                raise Caffe2Error(f"{where}: the executor produced {len(outs)} outputs, the op names {len(op.output)}")
            for b, v in zip(op.output, outs):
                ws[b] = v
            self.history.append([outs[j] for j in range(len(op.output))])
        return ws


class _Ctx:
    def __init__(self, ex, k, op, where):
        self.ex, self.k, self.op, self.where = ex, k, op, where
        self.n_out = len(op.output)


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _round(v, like):
    return np.asarray(v).astype(np.asarray(like).dtype)


# ----------------------------------------------------------------------------------------------
# conv / pool sizing (Caffe2 ConvPoolOpBase)


def _spatial_args(args, nd, plural, single, h, w, default):
    if args.has(plural):
        return list(args.ints(plural))
    if args.has(single):
        return [args.int(single)] * nd
    if args.has(h) or args.has(w):
        return [args.int(h, default), args.int(w, default)]
    return [default] * nd


def _geometry(ctx, args, x_shape, w_shape=None, transpose=False):
    nd = len(x_shape) - 2
    pool = ctx.op.type.startswith(("MaxPool", "AveragePool"))
    if pool and args.int("global_pooling", 0):
        return dict(kernel=list(x_shape[2:]), stride=[1] * nd, dil=[1] * nd, head=[0] * nd, tail=[0] * nd,
                    out=[1] * nd, adj=[0] * nd)  # fmt: skip
    kernel = _spatial_args(args, nd, "kernels", "kernel", "kernel_h", "kernel_w", 0)
    if not pool and not any(args.has(a) for a in ("kernels", "kernel", "kernel_h", "kernel_w")):
        kernel = list(w_shape[2:])
    stride = _spatial_args(args, nd, "strides", "stride", "stride_h", "stride_w", 1)
    dil = _spatial_args(args, nd, "dilations", "dilation", "dilation_h", "dilation_w", 1)
    adj = _spatial_args(args, nd, "adjs", "adj", "adj_h", "adj_w", 0)
    if args.has("pads"):
        pads = args.ints("pads")
        head, tail = pads[:nd], pads[nd:]
    elif args.has("pad"):
        head, tail = [args.int("pad")] * nd, [args.int("pad")] * nd
    elif args.has("pad_t"):
        head, tail = [args.int("pad_t"), args.int("pad_l")], [args.int("pad_b"), args.int("pad_r")]
    else:
        head, tail = [0] * nd, [0] * nd
    legacy = args.int("legacy_pad", 0)
    out = []
    for d in range(nd):
        i, s, k, dl = x_shape[2 + d], stride[d], kernel[d], dil[d]
        if transpose:
            out.append((i - 1) * s + k + adj[d] - head[d] - tail[d])
            continue
        dk = dl * (k - 1) + 1
        if legacy == 0:  # NOTSET
            o = (i + head[d] + tail[d] - dk) // s + 1
        elif legacy == 1:  # VALID
            head[d] = tail[d] = 0
            o = (i - dk) // s + 1
        elif legacy == 2:  # SAME, odd pixel at the end
            target = (i + s - 1) // s
            need = (target - 1) * s + k - i
            head[d] = need // 2
            tail[d] = need - head[d]
            o = (i + need - dk) // s + 1
        else:  # CAFFE_LEGACY_POOLING: Caffe's ceil sizing
            p = head[d]
            o = int(math.ceil((i + 2 * p - k) / float(s))) + 1
            if p > 0 and (o - 1) * s >= i + p:
                o -= 1
            std = int((i + 2 * p - k) / float(s)) + 1
            tail[d] = p + s * (o - std)
        if o < 1:
            raise ShapeError(f"{ctx.where}: output size {o} in spatial dim {d}")
        out.append(o)
    return dict(kernel=kernel, stride=stride, dil=dil, head=head, tail=tail, out=out, adj=adj)


def _windows(xp, geo):
    """(N, C, *out, *kernel) view of a padded input for the given geometry."""
    nd = len(geo["out"])
    dks = [geo["dil"][d] * (geo["kernel"][d] - 1) + 1 for d in range(nd)]
    v = sliding_window_view(xp, dks, axis=tuple(range(2, 2 + nd)))
    sl = [slice(None), slice(None)]
    sl += [slice(0, (geo["out"][d] - 1) * geo["stride"][d] + 1, geo["stride"][d]) for d in range(nd)]
    sl += [slice(None, None, geo["dil"][d]) for d in range(nd)]
    return v[tuple(sl)]


def _pad(x, geo, value):
    nd = len(geo["out"])
    return np.pad(x, [(0, 0), (0, 0)] + [(geo["head"][d], max(geo["tail"][d], 0)) for d in range(nd)], constant_values=value)


# ----------------------------------------------------------------------------------------------
# ops


@_op("Conv", "Conv1D", "Conv2D", "Conv3D")
def _conv(ctx, xs, args):
    x, w = _f64(xs[0]), _f64(xs[1])
    geo = _geometry(ctx, args, x.shape, w.shape)
    g = args.int("group", 1)
    nd = x.ndim - 2
    win = _windows(_pad(x, geo, 0.0), geo)  # N, C, *out, *k
    cg, mg = x.shape[1] // g, w.shape[0] // g
    parts = []
    for gi in range(g):
        wi = w[gi * mg : (gi + 1) * mg]  # Mg, Cg, *k
        xi = win[:, gi * cg : (gi + 1) * cg]
        y = np.tensordot(xi, wi, axes=([1] + list(range(2 + nd, 2 + 2 * nd)), list(range(1, 2 + nd))))
        parts.append(np.moveaxis(y, -1, 1))  # N, Mg, *out
    y = np.concatenate(parts, axis=1)
    if len(xs) > 2:
        y = y + _f64(xs[2]).reshape((1, -1) + (1,) * nd)
    return [_round(y, xs[0])]


@_op("ConvTranspose", "ConvTranspose1D", "ConvTranspose2D", "ConvTranspose3D")
def _conv_transpose(ctx, xs, args):
    x, w = _f64(xs[0]), _f64(xs[1])
    geo = _geometry(ctx, args, x.shape, w.shape, transpose=True)
    g = args.int("group", 1)
    nd = x.ndim - 2
    n, c = x.shape[:2]
    cg, mg = c // g, w.shape[1]
    full = [(x.shape[2 + d] - 1) * geo["stride"][d] + geo["kernel"][d] + geo["adj"][d] for d in range(nd)]
    buf = np.zeros((n, mg * g, *full))
    for gi in range(g):
        xi = x[:, gi * cg : (gi + 1) * cg]
        contrib = np.tensordot(xi, w[gi * cg : (gi + 1) * cg], axes=([1], [0]))  # N, *in, Mg, *k
        contrib = np.moveaxis(contrib, 1 + nd, 1)  # N, Mg, *in, *k
        for kidx in np.ndindex(*geo["kernel"]):
            dst = [slice(None), slice(gi * mg, (gi + 1) * mg)]
            dst += [slice(kidx[d], kidx[d] + (x.shape[2 + d] - 1) * geo["stride"][d] + 1, geo["stride"][d]) for d in range(nd)]
            buf[tuple(dst)] += contrib[(Ellipsis,) + tuple(kidx)]
    crop = [slice(None), slice(None)] + [slice(geo["head"][d], geo["head"][d] + geo["out"][d]) for d in range(nd)]
    y = buf[tuple(crop)]
    if len(xs) > 2:
        y = y + _f64(xs[2]).reshape((1, -1) + (1,) * nd)
    return [_round(y, xs[0])]


@_op("MaxPool", "MaxPool1D", "MaxPool2D", "MaxPool3D")
def _max_pool(ctx, xs, args):
    x = _f64(xs[0])
    nd = x.ndim - 2
    if args.int("global_pooling", 0):
        return [_round(x.max(axis=tuple(range(2, x.ndim)), keepdims=True), xs[0])]
    geo = _geometry(ctx, args, x.shape)
    win = _windows(_pad(x, geo, -np.inf), geo)
    return [_round(win.max(axis=tuple(range(2 + nd, 2 + 2 * nd))), xs[0])]


@_op("AveragePool", "AveragePool1D", "AveragePool2D", "AveragePool3D")
def _avg_pool(ctx, xs, args):
    x = _f64(xs[0])
    nd = x.ndim - 2
    if args.int("global_pooling", 0):
        return [_round(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True), xs[0])]
    geo = _geometry(ctx, args, x.shape)
    kaxes = tuple(range(2 + nd, 2 + 2 * nd))
    total = _windows(_pad(x, geo, 0.0), geo).sum(axis=kaxes)
    if args.int("count_include_pad", 0):
        count = float(np.prod(geo["kernel"]))
    else:  # the window clipped to the image
        ones = np.ones((1, 1) + x.shape[2:])
        count = _windows(_pad(ones, geo, 0.0), geo).sum(axis=kaxes)
    return [_round(total / count, xs[0])]


@_op("FC")
def _fc(ctx, xs, args):
    x, w, b = _f64(xs[0]), _f64(xs[1]), _f64(xs[2])
    axis = args.int("axis", 1) % max(x.ndim, 1)
    axis_w = args.int("axis_w", 1) % max(w.ndim, 1)
    m, k = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    n = int(np.prod(w.shape[:axis_w]))
    if int(np.prod(w.shape[axis_w:])) != k or b.size != n:
        raise ShapeError(f"{ctx.where}: X {list(x.shape)}, W {list(w.shape)}, b {list(b.shape)} do not fit")
    y = x.reshape(m, k) @ w.reshape(n, k).T + b.reshape(1, n)
    return [_round(y.reshape(x.shape[:axis] + (n,)), xs[0])]


@_op("Relu")
def _relu(ctx, xs, args):
    x = np.asarray(xs[0])
    return [np.where(x > 0, x, np.zeros_like(x))]


@_op("Sigmoid")
def _sigmoid(ctx, xs, args):
    return [_round(1.0 / (1.0 + np.exp(-_f64(xs[0]))), xs[0])]


@_op("Tanh")
def _tanh(ctx, xs, args):
    return [_round(np.tanh(_f64(xs[0])), xs[0])]


@_op("Copy")
def _copy(ctx, xs, args):
    return [np.array(xs[0], copy=True)]


@_op("LRN")
def _lrn(ctx, xs, args):
    x = _f64(xs[0])
    size = args.int("size")
    alpha, beta, bias = args.float("alpha", 0.0), args.float("beta", 0.0), args.float("bias", 1.0)
    pre = (size - 1) // 2
    sq = np.pad(x * x, [(0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)])
    c = x.shape[1]
    acc = sum(sq[:, j : j + c] for j in range(size))
    scale = bias + (alpha / size) * acc
    y = x * scale ** (-beta)
    return [_round(y, xs[0]), _round(scale, xs[0])]


@_op("Softmax")
def _softmax(ctx, xs, args):
    x = _f64(xs[0])
    axis = args.int("axis", 1) % max(x.ndim, 1)
    x2 = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))  # explicit: -1 fails on empty tensors
    if x2.size == 0:
        return [np.array(xs[0], copy=True)]
    e = np.exp(x2 - x2.max(axis=1, keepdims=True))
    return [_round((e / e.sum(axis=1, keepdims=True)).reshape(x.shape), xs[0])]


@_op("Concat")
def _concat(ctx, xs, args):
    axis = args.int("axis") if args.has("axis") else (1 if args.str("order", "NCHW") == "NCHW" else 3)
    if args.int("add_axis", 0):
        y = np.stack(xs, axis=axis)
        sizes = [1] * len(xs)
    else:
        y = np.concatenate(xs, axis=axis)
        sizes = [x.shape[axis] for x in xs]
    return [y, np.asarray(sizes, dtype=np.int32)]


@_op("SpatialBN")
def _spatial_bn(ctx, xs, args):
    x, scale, bias, mean, var = (_f64(v) for v in xs[:5])
    if not args.int("is_test", 0):
        raise Caffe2Error(f"{ctx.where}: SpatialBN in training mode is not supported by the executor")
    eps = args.float("epsilon", 1e-5)
    alpha = scale / np.sqrt(var + eps)
    beta = bias - alpha * mean
    shp = (1, -1) + (1,) * (x.ndim - 2)
    return [_round(x * alpha.reshape(shp) + beta.reshape(shp), xs[0])]


@_op("Sum")
def _sum(ctx, xs, args):
    for v in xs[1:]:
        if v.shape != xs[0].shape:
            raise ShapeError(f"{ctx.where}: Sum of shapes {[list(v.shape) for v in xs]}")
    return [_round(sum(_f64(v) for v in xs), xs[0])]


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


def _binary(ctx, xs, args):
    fn = _BINARY[ctx.op.type]
    a, b = _f64(xs[0]), _f64(xs[1])
    if not args.int("broadcast", 0):
        return [_round(fn(a, b), xs[0])]
    axis = args.int("axis", -1)
    if axis == -1:
        axis = a.ndim - b.ndim
    lo, hi = 0, b.ndim - 1
    while lo < b.ndim and b.shape[lo] == 1:
        lo += 1
    while hi >= lo and b.shape[hi] == 1:
        hi -= 1
    pre = int(np.prod(a.shape[: axis + lo]))
    n = 1
    for i in range(lo, hi + 1):
        if a.shape[axis + i] != b.shape[i]:
            raise ShapeError(f"{ctx.where}: broadcast dimension mismatch ({list(a.shape)} vs {list(b.shape)} at axis {axis})")
        n *= b.shape[i]
    post = int(np.prod(a.shape[axis + hi + 1 :]))
    y = fn(a.reshape(pre, n, post), b.reshape(1, n, 1))
    return [_round(y.reshape(a.shape), xs[0])]


for _name in _BINARY:
    _OPS[_name] = _binary


@_op("Reshape")
def _reshape(ctx, xs, args):
    x = np.asarray(xs[0])
    new = list(args.ints("shape"))
    for i, d in enumerate(new):
        if d == 0:
            new[i] = x.shape[i]
    if -1 in new:
        rest = int(np.prod([d for d in new if d != -1]))
        new[new.index(-1)] = x.size // rest
    return [x.reshape(new).copy(), np.asarray(x.shape, dtype=np.int64)]


@_op("Flatten")
def _flatten(ctx, xs, args):
    x = np.asarray(xs[0])
    axis = args.int("axis", 1)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:])).copy()]


@_op("Dropout")
def _dropout(ctx, xs, args):
    ratio, is_test = args.float("ratio", 0.5), args.int("is_test", 0)
    y, mask = ctx.ex._stream(ctx.k, ctx.op).run(np.asarray(xs[0]), ratio=ratio, is_test=is_test)
    return [y, mask]


@_op("DropoutGrad")
def _dropout_grad(ctx, xs, args):
    ratio, is_test = args.float("ratio", 0.5), args.int("is_test", 0)
    mask = xs[1] if len(xs) > 1 else None
    return [reference.dropout_grad(xs[0], mask, ratio=ratio, is_test=is_test)]
