"""The converter's op knowledge, one entry per Caffe2 op type: arity, weight slots, unsupported
variants, shape rule, ONNX lowering and synthesiser rule side by side.

:data:`REGISTRY` maps a canonical op type to its :class:`OpDef`. The shape pass (:func:`infer`), the
converter (``converter._emit`` calls ``OpDef.lower``) and the synthesiser (``synth._Walk.step`` calls
``OpDef.synth``) all dispatch here, so adding an op is one block in this file. The numpy executor
(``executor.py``) is deliberately separate: it is the oracle these rules are tested against.

Signatures:

- ``shape(op, args, ins, where) -> [Info]``: output infos from input infos (``ins[0]`` known);
- ``lower(c)``: emit ONNX nodes for one op; ``c`` is a :class:`Lowering` (graph, names, infos, ...);
- ``synth(w, op, k, args, x, missing, where)``: choose shapes of the weights the op reads that
  nothing gives (``w`` is the synthesiser's walk) and tie widths the op forces equal;
- ``variant(op, args) -> label | None``: a supported type used in a way the tools do not handle;
- ``width``: how the synthesiser's free widths flow through the op: ``"keep"`` (output 0 keeps
  input 0's), ``"channels"`` (kept only when it is the channel axis), ``"new_channels"`` /
  ``"new_last"`` (the op chooses a new width on axis 1 / the last axis), None (the width is lost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from onnx import numpy_helper

from . import netdef
from . import shapes as S
from .errors import ArgumentError, MissingValueInfoError, ShapeError
from .limits import numel
from .netdef import NUMPY_TO_ONNX, Args
from .shapes import Info, need

from .._library import DOMAIN as CAFFE2_DOMAIN


@dataclass
class OpDef:
    type: str
    arity: tuple  # (fewest inputs, most inputs, fewest outputs, most outputs); None: no limit
    weight_slots: tuple = ()
    width: Optional[str] = None
    shape: Optional[Callable] = None
    lower: Optional[Callable] = None
    synth: Optional[Callable] = None
    variant: Optional[Callable] = None


@dataclass
class Lowering:
    """What an ONNX lowering sees of one Caffe2 op."""

    g: object  # converter._Graph: fresh names, const(), node(), infos
    net: object
    op: object
    k: int
    args: Args
    xin: list  # ONNX names of the inputs
    xout: list  # ONNX names of the outputs
    ins: list  # input Infos
    outs: list  # output Infos
    where: str
    node_name: str
    dropout: str
    rng: str
    inits: dict  # initializer name -> numpy value
    notes: list
    readers: object  # Counter: Caffe2 blob -> number of reads

    def used(self, slot):
        """Whether output ``slot`` of the op is read by a later op or is an external output."""
        b = self.op.output[slot]
        return bool(self.readers[b]) or b in self.net.external_output


REGISTRY: dict = {}


def define(types, arity, *, weight_slots=(), width=None, variant=None):
    for t in (types,) if isinstance(types, str) else types:
        REGISTRY[t] = OpDef(t, arity, tuple(weight_slots), width, variant=variant)


def _aspect(field, types):
    def deco(fn):
        for t in (types,) if isinstance(types, str) else types:
            setattr(REGISTRY[t], field, fn)
        return fn

    return deco


def shape(types):
    return _aspect("shape", types)


def lower(types):
    return _aspect("lower", types)


def synth(types):
    return _aspect("synth", types)


# ----------------------------------------------------------------------------------------------
# dispatch


def canonical(op_type):
    return S.canonical(op_type)


def supported_ops():
    return frozenset(REGISTRY)


def _count(lo, hi):
    return f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"


def check_arity(op, where: str = "") -> None:
    """Caffe2's input and output counts for the op (its schema refused others at op creation)."""
    t = canonical(op.type)
    d = REGISTRY.get(t)
    if d is None:
        return
    lo_in, hi_in, lo_out, hi_out = d.arity
    where = where or f"{op.type} op"
    if len(op.input) < lo_in or (hi_in is not None and len(op.input) > hi_in):
        raise ShapeError(f"{where}: {len(op.input)} input(s); Caffe2's {t} takes {_count(lo_in, hi_in)}")
    if len(op.output) < lo_out or (hi_out is not None and len(op.output) > hi_out):
        raise ShapeError(f"{where}: {len(op.output)} output(s); Caffe2's {t} has {_count(lo_out, hi_out)}")
    if any(not b for b in op.output):
        raise ShapeError(f"{where}: an output has an empty name")


def is_weight_slot(op, slot: int) -> bool:
    t = canonical(op.type)
    d = REGISTRY.get(t)
    if d is not None and slot in d.weight_slots:
        return True
    return t in S.BINARY_OPS and slot == 1 and Args(op).int("broadcast", 0) == 1


_NCHW_ONLY = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LRN", "SpatialBN", "Concat")


def unsupported_variant(op, args: Args):
    """A short label when the op type is unknown or used in a way the tools do not handle, else None."""
    t = canonical(op.type)
    d = REGISTRY.get(t)
    if d is None:
        return op.type
    order = args.str("order", "NCHW")
    if order != "NCHW" and t in _NCHW_ONLY and not (t == "Concat" and args.has("axis")):
        return f"{op.type}(order={order})"
    return d.variant(op, args) if d.variant else None


def infer(op, ins, where="", budget=None):
    """Output Infos of one op from its input Infos (all known). With ``budget`` (a limits.Budget), each
    output's size is checked against the per-tensor limit, so a claimed shape never reaches an allocator."""
    where = where or f"{op.type} op"
    check_arity(op, where)
    t = canonical(op.type)
    d = REGISTRY.get(t)
    if d is None or d.shape is None:
        raise ShapeError(f"{where}: no shape rule for op type {op.type}")
    need(ins, 0, where)
    outs = d.shape(op, Args(op), ins, where)
    if budget is not None:
        for b, info in zip(op.output, outs):
            if info.shape is not None and None not in info.shape:
                budget.check(f"{where}: output {b!r}", info.shape, info.dtype, claim=False)
    return outs


def reshape_to(c, src, info_src, shape, hint, name):
    """``src`` with ``shape``: reshaped in place when it is an initializer, else through a Reshape node."""
    g = c.g
    shape = tuple(int(d) for d in shape)
    if tuple(info_src.shape) == shape:
        return src
    if src in c.inits:
        return g.const(f"{src}_{'x'.join(map(str, shape)) or 'scalar'}", np.asarray(c.inits[src]).reshape(shape))
    out = g.fresh(hint)
    g.node("Reshape", [src, g.const(f"{hint}_shape", np.asarray(shape, dtype=np.int64))], [out], name)
    g.infos[out] = Info(info_src.dtype, shape)
    return out


# ----------------------------------------------------------------------------------------------
# Conv, ConvTranspose

define(("Conv", "ConvTranspose"), (2, 3, 1, 1), weight_slots=(1, 2), width="new_channels",
       variant=lambda op, a: "ConvTranspose(legacy_pad)" if canonical(op.type) == "ConvTranspose"
       and a.int("legacy_pad", S.NOTSET) != S.NOTSET else None)


@shape(("Conv", "ConvTranspose"))
def _conv_shape(op, args, ins, where):
    t = canonical(op.type)
    x, w = ins[0], need(ins, 1, where)
    p = S.resolve_conv_pool(op, x.shape, w.shape, where)
    g = p["group"]
    if len(w.shape) != len(x.shape):
        raise ShapeError(f"{where}: weight rank {len(w.shape)} differs from input rank {len(x.shape)}")
    c = x.shape[1]
    if t == "Conv":
        if c % g or w.shape[0] % g or w.shape[1] * g != c:
            raise ShapeError(f"{where}: input has {c} channels, weight {list(w.shape)}, group {g}: inconsistent")
        m = w.shape[0]
    else:
        if c % g or w.shape[0] != c:
            raise ShapeError(f"{where}: input has {c} channels, weight {list(w.shape)}, group {g}: inconsistent")
        m = w.shape[1] * g
    if list(w.shape[2:]) != list(p["kernel"]):
        raise ShapeError(f"{where}: weight {list(w.shape)} does not match kernel {p['kernel']}")
    if len(ins) > 2 and ins[2] is not None and tuple(ins[2].shape) != (m,):
        raise ShapeError(f"{where}: bias shape {list(ins[2].shape)}, expected [{m}]")
    return [Info(x.dtype, (x.shape[0], m, *p["out"]))]


@lower(("Conv", "ConvTranspose"))
def _conv_lower(c):
    t = canonical(c.op.type)
    p = S.resolve_conv_pool(c.op, c.ins[0].shape, c.ins[1].shape, c.where)
    attrs = dict(kernel_shape=p["kernel"], strides=p["stride"], pads=p["begin"] + p["end"], group=p["group"])
    if t == "Conv":
        attrs["dilations"] = p["dilation"]
    elif any(p["adj"]):
        attrs["output_padding"] = p["adj"]
    if t == "ConvTranspose" and any(d != 1 for d in p["dilation"]):
        attrs["dilations"] = p["dilation"]
    c.g.node(t, [n for n in c.xin[:3] if n], c.xout[:1], c.node_name, **attrs)


@synth(("Conv", "ConvTranspose"))
def _conv_synth(w, op, k, args, x, missing, where):
    t = canonical(op.type)
    p = S.conv_pool_params(op, x.shape, where)
    if p["kernel"] is None:
        raise ShapeError(f"{where}: no kernel argument, so the weight shape cannot be chosen")
    g, c = p["group"], x.shape[1]
    if c % g:
        free = w.free(op.input[0], 1)
        if free:
            w.pin(free[0], _round_up(c, g))
        raise ShapeError(f"{where}: {c} input channels cannot be split into {g} groups")
    m = w.pins.get(("op", k), _round_up(w.width, g))
    if m % g:
        raise ShapeError(f"{where}: width {m} is not a multiple of group {g}")
    kernel = list(p["kernel"])
    if t == "Conv":
        w_shape, fan_in = (m, c // g, *kernel), (c // g) * math.prod(kernel)
    else:
        w_shape, fan_in = (c, m // g, *kernel), (c // g) * math.prod(kernel)
    for slot, b in missing:
        if slot == 1:
            w.weight(op, k, b, w_shape, "conv", fan_in)
        elif slot == 2:
            w.weight(op, k, b, (m,), "bias")


def _round_up(v, m):
    return ((v + m - 1) // m) * m


# ----------------------------------------------------------------------------------------------
# MaxPool, AveragePool


def _pool_variant(op, args):
    dil = args.ints("dilations") or [args.int("dilation", 1), args.int("dilation_h", 1), args.int("dilation_w", 1)]
    return f"{op.type}(dilation)" if any(d != 1 for d in dil) else None


define(("MaxPool", "AveragePool"), (1, 1, 1, 1), width="channels", variant=_pool_variant)


@shape(("MaxPool", "AveragePool"))
def _pool_shape(op, args, ins, where):
    x = ins[0]
    p = S.resolve_conv_pool(op, x.shape, None, where)
    return [Info(x.dtype, (x.shape[0], x.shape[1], *p["out"]))]


@lower(("MaxPool", "AveragePool"))
def _pool_lower(c):
    t, x = canonical(c.op.type), c.ins[0]
    p = S.resolve_conv_pool(c.op, x.shape, None, c.where)
    if p["global_pool"]:
        c.g.node("Global" + t, c.xin[:1], c.xout[:1], c.node_name)
        return
    # Caffe2's tail pad for legacy pooling can reach the kernel size, which ORT refuses; the
    # smallest tail that gives the same output size covers the same windows, so use that.
    end = [
        max(0, min(e, (o - 1) * s + k - i - b))
        for e, o, s, k, i, b in zip(p["end"], p["out"], p["stride"], p["kernel"], x.shape[2:], p["begin"])
    ]
    attrs = dict(kernel_shape=p["kernel"], strides=p["stride"], pads=p["begin"] + end)
    if t == "AveragePool":
        attrs["count_include_pad"] = 1 if c.args.int("count_include_pad", 0) else 0
    c.g.node(t, c.xin[:1], c.xout[:1], c.node_name, **attrs)
    if p["legacy"] == S.CAFFE_LEGACY_POOLING:
        c.notes.append(f"{c.where}: legacy_pad CAFFE_LEGACY_POOLING expressed as explicit end pads {end}")


# ----------------------------------------------------------------------------------------------
# FC

define("FC", (3, 3, 1, 1), weight_slots=(1, 2), width="new_last",
       variant=lambda op, a: "FC(without bias)" if len(op.input) != 3 else None)


@shape("FC")
def _fc_shape(op, args, ins, where):
    x, w, b = ins[0], need(ins, 1, where), need(ins, 2, where)
    axis = S.canonical_axis(args.int("axis", 1), len(x.shape), where)
    axis_w = S.canonical_axis(args.int("axis_w", 1), len(w.shape), where)
    m, k = S.flatten2d(x.shape, axis)
    n, kw = S.flatten2d(w.shape, axis_w)
    if k != kw:
        raise ShapeError(f"{where}: input {list(x.shape)} at axis {axis} has {k} features, weight {list(w.shape)} at axis_w {axis_w} has {kw}")
    if numel(b.shape) != n:
        raise ShapeError(f"{where}: bias {list(b.shape)} does not have {n} elements")
    return [Info(x.dtype, (*x.shape[:axis], n))]


@lower("FC")
def _fc_lower(c):
    g, x, w, b = c.g, c.ins[0], c.ins[1], c.ins[2]
    axis = S.canonical_axis(c.args.int("axis", 1), len(x.shape), c.where)
    axis_w = S.canonical_axis(c.args.int("axis_w", 1), len(w.shape), c.where)
    m, kk = S.flatten2d(x.shape, axis)
    n, _ = S.flatten2d(w.shape, axis_w)
    x2 = reshape_to(c, c.xin[0], x, (m, kk), f"{c.xin[0]}_2d", c.node_name + "_flatten")
    w2 = reshape_to(c, c.xin[1], w, (n, kk), f"{c.xin[1]}_2d", c.node_name + "_flatten_w")
    b1 = reshape_to(c, c.xin[2], b, (n,), f"{c.xin[2]}_1d", c.node_name + "_flatten_b")
    final_shape = c.outs[0].shape
    if tuple(final_shape) == (m, n):
        g.node("Gemm", [x2, w2, b1], c.xout[:1], c.node_name, transB=1)
    else:
        tmp = g.fresh(f"{c.xout[0]}_2d")
        g.infos[tmp] = Info(x.dtype, (m, n))
        g.node("Gemm", [x2, w2, b1], [tmp], c.node_name, transB=1)
        g.node("Reshape", [tmp, g.const(f"{c.xout[0]}_shape", np.asarray(final_shape, np.int64))], c.xout[:1],
               c.node_name + "_reshape")


@synth("FC")
def _fc_synth(w, op, k, args, x, missing, where):
    axis = S.canonical_axis(args.int("axis", 1), len(x.shape), where)
    kk = numel(x.shape[axis:])
    n = w.pins.get(("op", k), w.fc_width)
    axis_w = args.int("axis_w", 1)
    if axis_w < 1:
        raise ShapeError(f"{where}: axis_w {axis_w} is not supported when synthesising")
    for slot, b in missing:
        if slot == 1:
            w.weight(op, k, b, (1,) * (axis_w - 1) + (n, kk), "fc", kk)
        elif slot == 2:
            w.weight(op, k, b, (n,), "bias")


# ----------------------------------------------------------------------------------------------
# elementwise: Relu, Sigmoid, Tanh, Copy

define(("Relu", "Sigmoid", "Tanh", "Copy"), (1, 1, 1, 1), width="keep")


@shape(("Relu", "Sigmoid", "Tanh", "Copy"))
def _same_shape(op, args, ins, where):
    return [ins[0]]


@lower(("Relu", "Sigmoid", "Tanh", "Copy"))
def _unary_lower(c):
    t = canonical(c.op.type)
    c.g.node("Identity" if t == "Copy" else t, c.xin[:1], c.xout[:1], c.node_name)


# ----------------------------------------------------------------------------------------------
# LRN


def _lrn_variant(op, args):
    return None  # the scale output is refused in the converter only when something reads it


define("LRN", (1, 1, 1, 2), width="keep", variant=_lrn_variant)


@shape("LRN")
def _lrn_shape(op, args, ins, where):
    x = ins[0]
    size = args.int("size", 0)
    if size <= 0 or size % 2 == 0:
        raise ShapeError(f"{where}: LRN size must be a positive odd number, got {size}")
    if len(x.shape) != 4:
        raise ShapeError(f"{where}: LRN needs a 4-D NCHW input, got rank {len(x.shape)}")
    return [x] + [x] * (len(op.output) - 1)


@lower("LRN")
def _lrn_lower(c):
    # Caffe2's defaults (alpha 0, beta 0, bias 1) are not ONNX's, and ONNX Runtime's LRN refuses
    # alpha <= 0 and beta <= 0. Y = X * (bias + alpha/size * sum(X^2))^-beta is then exactly
    # X (beta = 0) or X * bias^-beta (alpha = 0); negative values have no ORT form.
    g, x, args = c.g, c.ins[0], c.args
    alpha, beta, bias = args.float("alpha", 0.0), args.float("beta", 0.0), args.float("bias", 1.0)
    if alpha < 0 or beta < 0 or not all(np.isfinite([alpha, beta, bias])):
        raise ArgumentError(
            f"{c.where}: LRN alpha {alpha:g}, beta {beta:g}, bias {bias:g}: ONNX Runtime's LRN needs alpha > 0 and "
            "beta > 0 (alpha = 0 and beta = 0 are written as exact equivalents; negative or non-finite values are not supported)"
        )
    if beta == 0:
        g.node("Identity", c.xin[:1], c.xout[:1], c.node_name)
        c.notes.append(f"{c.where}: LRN with beta 0 is the identity; written as Identity")
    elif alpha == 0:
        with np.errstate(all="ignore"):
            factor = np.asarray(np.float64(bias) ** -np.float64(beta), dtype=x.dtype)
        g.node("Mul", [c.xin[0], g.const(f"{c.node_name}_factor", factor)], c.xout[:1], c.node_name)
        c.notes.append(f"{c.where}: LRN with alpha 0 is X * bias^-beta; written as a Mul by {float(factor):g}")
    else:
        g.node("LRN", c.xin[:1], c.xout[:1], c.node_name, size=args.int("size"), alpha=alpha, beta=beta, bias=bias)
    if len(c.xout) > 1:
        c.notes.append(f"{c.where}: scale output {c.op.output[1]!r} dropped (nothing reads it)")


# ----------------------------------------------------------------------------------------------
# Softmax, Flatten, Reshape

define("Softmax", (1, 1, 1, 1))
define("Flatten", (1, 1, 1, 1))
define("Reshape", (1, 2, 1, 2), variant=lambda op, a: "Reshape(shape from an input)" if len(op.input) > 1 else None)


@shape("Softmax")
def _softmax_shape(op, args, ins, where):
    S.canonical_axis(args.int("axis", 1), len(ins[0].shape), where)
    return [ins[0]]


@lower("Softmax")
def _softmax_lower(c):
    g, x = c.g, c.ins[0]
    rank = len(x.shape)
    axis = S.canonical_axis(c.args.int("axis", 1), rank, c.where)
    if axis == rank - 1:
        g.node("Softmax", c.xin[:1], c.xout[:1], c.node_name, axis=axis)
    else:  # Caffe2 coerces to 2-D at axis
        flat = g.fresh(f"{c.xout[0]}_2d")
        sm = g.fresh(f"{c.xout[0]}_2d_softmax")
        g.infos[flat] = g.infos[sm] = Info(x.dtype, S.flatten2d(x.shape, axis))
        g.node("Flatten", c.xin[:1], [flat], c.node_name + "_flatten", axis=axis)
        g.node("Softmax", [flat], [sm], c.node_name, axis=1)
        g.node("Reshape", [sm, g.const(f"{c.xout[0]}_shape", np.asarray(x.shape, np.int64))], c.xout[:1],
               c.node_name + "_reshape")


@shape("Flatten")
def _flatten_shape(op, args, ins, where):
    x = ins[0]
    axis = S.canonical_axis(args.int("axis", 1), len(x.shape) + 1, where)
    return [Info(x.dtype, S.flatten2d(x.shape, axis))]


@lower("Flatten")
def _flatten_lower(c):
    axis = S.canonical_axis(c.args.int("axis", 1), len(c.ins[0].shape) + 1, c.where)
    c.g.node("Flatten", c.xin[:1], c.xout[:1], c.node_name, axis=axis)


@shape("Reshape")
def _reshape_shape(op, args, ins, where):
    x = ins[0]
    if not args.has("shape"):
        raise ShapeError(f"{where}: Reshape without a 'shape' argument")
    out = [Info(x.dtype, S.reshape_target(x.shape, args.ints("shape"), where))]
    if len(op.output) > 1:
        out.append(Info(np.dtype(np.int64), (len(x.shape),)))
    return out


@lower("Reshape")
def _reshape_lower(c):
    g = c.g
    g.node("Reshape", [c.xin[0], g.const(f"{c.xout[0]}_shape", np.asarray(c.outs[0].shape, np.int64))], c.xout[:1],
           c.node_name)
    if len(c.xout) > 1 and c.used(1):
        g.node("Constant", [], [c.xout[1]], c.node_name + "_old_shape",
               value=numpy_helper.from_array(np.asarray(c.ins[0].shape, np.int64)))


# ----------------------------------------------------------------------------------------------
# Concat

define("Concat", (1, None, 1, 2))


@shape("Concat")
def _concat_shape(op, args, ins, where):
    x = ins[0]
    axis = S.concat_axis(args, where)
    add_axis = bool(args.int("add_axis", 0))
    shapes = [need(ins, k, where).shape for k in range(len(op.input))]
    rank = len(shapes[0]) + (1 if add_axis else 0)
    a = S.canonical_axis(axis, rank, where)
    for s in shapes[1:]:
        if len(s) != len(shapes[0]):
            raise ShapeError(f"{where}: inputs of ranks {[len(s) for s in shapes]}")
        for d in range(len(s)):
            if (add_axis or d != a) and s[d] != shapes[0][d]:
                raise ShapeError(f"{where}: input shapes {[list(s) for s in shapes]} differ off the concat axis {a}")
    if add_axis:
        out_shape = (*shapes[0][:a], len(shapes), *shapes[0][a:])
    else:
        out_shape = (*shapes[0][:a], sum(s[a] for s in shapes), *shapes[0][a + 1 :])
    out = [Info(x.dtype, out_shape)]
    if len(op.output) > 1:
        out.append(Info(np.dtype(np.int32), (len(shapes),)))
    return out


@lower("Concat")
def _concat_lower(c):
    g, x = c.g, c.ins[0]
    add_axis = bool(c.args.int("add_axis", 0))
    rank = len(x.shape) + (1 if add_axis else 0)
    axis = S.canonical_axis(S.concat_axis(c.args, c.where), rank, c.where)
    parts = list(c.xin)
    if add_axis:
        parts = [
            reshape_to(c, n, info, (*info.shape[:axis], 1, *info.shape[axis:]), f"{n}_expanded", f"{c.node_name}_expand_{j}")
            for j, (n, info) in enumerate(zip(c.xin, c.ins))
        ]
    g.node("Concat", parts, c.xout[:1], c.node_name, axis=axis)
    if len(c.xout) > 1 and c.used(1):
        sizes = [1 if add_axis else int(info.shape[axis]) for info in c.ins]
        g.node("Constant", [], [c.xout[1]], c.node_name + "_split_info",
               value=numpy_helper.from_array(np.asarray(sizes, np.int32)))


@synth("Concat")
def _concat_synth(w, op, k, args, x, missing, where):
    if missing:
        w.unread(where, missing)
    axis = S.concat_axis(args, where)
    add_axis = bool(args.int("add_axis", 0))
    first = w.infos[op.input[0]].shape
    a = axis + len(first) + (1 if add_axis else 0) if axis < 0 else axis
    for b in op.input[1:]:
        s = w.infos[b].shape
        for d in range(min(len(s), len(first))):
            if (add_axis or d != a) and s[d] != first[d]:
                fb = w.free(b, d) or w.free(op.input[0], d)
                if fb:
                    w.pin(fb[0], first[d] if w.free(b, d) else s[d])


# ----------------------------------------------------------------------------------------------
# SpatialBN (inference form; the training form is handled by caffe2/training_net.py)


def _bn_variant(op, args):
    if not args.int("is_test", 0):
        return "SpatialBN(is_test=0, training mode)"
    if len(op.output) != 1:
        return "SpatialBN(more than 1 output)"
    return None


define("SpatialBN", (5, 5, 1, 1), weight_slots=(1, 2, 3, 4), width="keep", variant=_bn_variant)


@shape("SpatialBN")
def _bn_shape(op, args, ins, where):
    x = ins[0]
    c = x.shape[1]
    for k in range(1, 5):
        s = need(ins, k, where).shape
        if tuple(s) != (c,):
            raise ShapeError(f"{where}: input {k} has shape {list(s)}, expected [{c}] (channels)")
    return [x]


@lower("SpatialBN")
def _bn_lower(c):
    c.g.node("BatchNormalization", c.xin[:5], c.xout[:1], c.node_name, epsilon=c.args.float("epsilon", 1e-5))


@synth("SpatialBN")
def _bn_synth(w, op, k, args, x, missing, where):
    kinds = {1: "bn_scale", 2: "bn_bias", 3: "bn_mean", 4: "bn_var"}
    for slot, b in missing:
        w.weight(op, k, b, (x.shape[1],), kinds.get(slot, "bias"))


# ----------------------------------------------------------------------------------------------
# Sum and the binary ops (Add, Sub, Mul, Div) with Caffe2's legacy broadcast

define("Sum", (1, None, 1, 1), width="keep")
define(S.BINARY_OPS, (2, 2, 1, 1), width="keep",
       variant=lambda op, a: f"{op.type}({len(op.input)} inputs)" if len(op.input) != 2 else None)


@shape("Sum")
def _sum_shape(op, args, ins, where):
    x = ins[0]
    for k in range(1, len(op.input)):
        if tuple(need(ins, k, where).shape) != tuple(x.shape):
            raise ShapeError(f"{where}: Sum inputs have shapes {[list(i.shape) for i in ins]}; Caffe2 Sum needs equal shapes")
    return [x]


@lower("Sum")
def _sum_lower(c):
    c.g.node("Sum" if len(c.xin) > 1 else "Identity", list(c.xin), c.xout[:1], c.node_name)


@synth("Sum")
def _sum_synth(w, op, k, args, x, missing, where):
    for slot, b in missing:
        w.weight(op, k, b, x.shape, "offset")
    w.tie(where, list(op.input))


@shape(S.BINARY_OPS)
def _binary_shape(op, args, ins, where):
    x, b = ins[0], need(ins, 1, where)
    if args.int("broadcast", 0):
        S.legacy_broadcast_axis(x.shape, b.shape, args.int("axis", -1), where)
        return [x]
    return [Info(x.dtype, S.numpy_broadcast([x.shape, b.shape], where))]


def legacy_broadcast_target(args, a_shape, b_shape, where):
    """B's shape aligned to A's under Caffe2's legacy broadcast (broadcast=1): 1-dims around B's."""
    axis = S.legacy_broadcast_axis(a_shape, b_shape, args.int("axis", -1), where)
    return (1,) * axis + tuple(b_shape) + (1,) * (len(a_shape) - axis - len(b_shape))


@lower(S.BINARY_OPS)
def _binary_lower(c):
    bname = c.xin[1]
    if c.args.int("broadcast", 0):
        target = legacy_broadcast_target(c.args, c.ins[0].shape, c.ins[1].shape, c.where)
        bname = reshape_to(c, bname, c.ins[1], target, f"{bname}_aligned", c.node_name + "_align")
    c.g.node(canonical(c.op.type), [c.xin[0], bname], c.xout[:1], c.node_name)


@synth(S.BINARY_OPS)
def _binary_synth(w, op, k, args, x, missing, where):
    t = canonical(op.type)
    if missing:
        if args.int("broadcast", 0):
            axis = args.int("axis", -1)
            shape_ = (x.shape[axis],) if axis != -1 else (x.shape[-1],) if x.shape else ()
        else:
            shape_ = x.shape
        w.weight(op, k, missing[0][1], shape_, "scale" if t in ("Mul", "Div") else "offset")
    if not args.int("broadcast", 0):
        a, b = w.infos[op.input[0]], w.infos[op.input[1]]
        if not (len(a.shape) == len(b.shape) and all(p == q or 1 in (p, q) for p, q in zip(a.shape, b.shape))):
            w.tie(where, list(op.input[:2]))


# ----------------------------------------------------------------------------------------------
# Dropout, DropoutGrad

define("Dropout", (1, 1, 1, 2), width="keep")
define("DropoutGrad", (1, 2, 1, 1), width="keep")


@shape("Dropout")
def _dropout_shape(op, args, ins, where):
    x = ins[0]
    out = [x]
    if len(op.output) > 1:
        # under engine CUDNN the mask is cuDNN's reserve space on CUDA: rank 1, length unknown
        out.append(Info(np.dtype(bool), (None,) if op.engine == "CUDNN" else x.shape))
    return out


@lower("Dropout")
def _dropout_lower(c):
    g, x, xin, xout, node_name = c.g, c.ins[0], c.xin, c.xout, c.node_name
    ratio = c.args.float("ratio", 0.5)
    is_test = c.args.int("is_test", 0)
    seed = netdef.dropout_seed(c.op, c.net)
    if c.dropout == "caffe2":
        attrs = dict(ratio=ratio, is_test=is_test)
        if c.op.engine:
            attrs["engine"] = c.op.engine
        if seed is not None:
            attrs["seed"] = seed
        if c.rng:
            attrs["rng"] = c.rng
        g.node("Dropout", xin[:1], list(xout[:2]), node_name, domain=CAFFE2_DOMAIN, **attrs)
    elif not is_test and ratio >= 1.0:
        # ONNX Dropout needs ratio < 1. Caffe2's ratio = 1 gives Y = (X * 0) * 0 (signed zeros,
        # NaN for inf/nan) and an all-false mask: write exactly that.
        zero = g.const(f"{node_name}_zero", np.asarray(0, dtype=x.dtype))
        scaled = g.fresh(f"{xout[0]}_scaled")
        g.node("Mul", [xin[0], zero], [scaled], node_name + "_scale")
        g.node("Mul", [scaled, zero], xout[:1], node_name)
        if len(xout) > 1 and xout[1]:
            shape_ = g.fresh(f"{xout[1]}_shape")
            g.node("Shape", [xin[0]], [shape_], node_name + "_shape")
            g.node("ConstantOfShape", [shape_], [xout[1]], node_name + "_mask",
                   value=numpy_helper.from_array(np.zeros(1, dtype=bool)))
            g.infos[xout[1]] = Info(np.dtype(bool), tuple(x.shape))
    else:
        # In inference ONNX Dropout ignores ratio, but ORT still demands ratio < 1.
        r = g.const(f"{node_name}_ratio", np.asarray(0.0 if ratio >= 1.0 else ratio, dtype=x.dtype))
        tm = g.const(f"{node_name}_training_mode", np.asarray(not is_test, dtype=bool))
        attrs = {} if seed is None else {"seed": seed}
        g.node("Dropout", [xin[0], r, tm], list(xout[:2]), node_name, **attrs)
        if len(xout) > 1:  # a bool mask of X's shape, whatever the engine
            g.infos[xout[1]] = Info(np.dtype(bool), tuple(x.shape))


@shape("DropoutGrad")
def _dropout_grad_shape(op, args, ins, where):
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None and None not in ins[1].shape and not args.int("is_test", 0):
        if numel(ins[1].shape) != numel(x.shape):
            raise ShapeError(f"{where}: mask has {numel(ins[1].shape)} elements, dY {numel(x.shape)}")
    return [x]


@lower("DropoutGrad")
def _dropout_grad_lower(c):
    g, x, xin, xout, node_name = c.g, c.ins[0], c.xin, c.xout, c.node_name
    ratio = c.args.float("ratio", 0.5)
    is_test = c.args.int("is_test", 0)
    if c.dropout == "caffe2":
        attrs = dict(ratio=ratio, is_test=is_test)
        if c.op.engine:
            attrs["engine"] = c.op.engine
        g.node("DropoutGrad", list(xin[:2]), xout[:1], node_name, domain=CAFFE2_DOMAIN, **attrs)
        return
    # standard ONNX has no DropoutGrad: dX = dY (test), else (dY * mask) * scale
    if is_test:
        g.node("Identity", xin[:1], xout[:1], node_name)
        return
    if len(xin) < 2 or not xin[1]:
        raise ShapeError(f"{c.where}: training-mode DropoutGrad needs the mask input")
    from ..reference import drop_scale

    m = g.fresh(f"{xout[0]}_mask_as_{x.dtype.name}")
    mask = xin[1]
    if tuple(c.ins[1].shape) != tuple(x.shape):
        mask = reshape_to(c, mask, c.ins[1], x.shape, f"{mask}_reshaped", node_name + "_mask_reshape")
    g.node("Cast", [mask], [m], node_name + "_cast", to=NUMPY_TO_ONNX[x.dtype])
    masked = g.fresh(f"{xout[0]}_masked")
    g.node("Mul", [xin[0], m], [masked], node_name + "_mask")
    scale = g.const(f"{node_name}_scale", np.asarray(drop_scale(ratio), dtype=x.dtype))
    g.node("Mul", [masked, scale], xout[:1], node_name)


def unread_error(where, blob):
    return MissingValueInfoError(f"{where} reads {blob!r}, which no earlier op writes and no --input / value info gives")
