"""Backward graphs in standard ONNX ops (plus ai.caffe2 DropoutGrad) that plain onnxruntime runs.

One gradient rule per forward op, registered by ``(domain, op_type)`` in :data:`RULES`. A rule is a
function ``rule(e, node, dys, needs) -> grads``:

- ``e`` is an :class:`Emitter`: it knows every tensor's type and static shape, makes fresh names and
  collects the nodes the rule emits (``e.node``, ``e.const``, ``e.reduce_sum``, ``e.unbroadcast``, ...);
- ``node`` is the forward ``NodeProto`` (its inputs and outputs are the forward tensor names);
- ``dys`` holds, per forward output, the name of its upstream gradient or ``None``;
- ``needs`` holds, per forward input, whether its gradient is wanted;
- the rule returns, per forward input, the name of its gradient (or ``None``).

:func:`emit_gradient` runs one rule on its own, which is how a Caffe2 gradient op (ConvGradient,
FCGradient, MaxPoolGradient, ...) is lowered: build the forward node it stands for and call the
rule, so each gradient has one implementation. A rule may come with a forward lowering (:data:`FORWARD`,
LRN's): in a differentiated graph the forward node is replaced by it and the rule reuses its tensors;
:func:`restore_forward` undoes that for exports. :func:`add_backward` differentiates a whole model;
:func:`build_gradient_model` is the gradients-only training form (``graph.build_training_model``).

Emitted ops run on onnxruntime 1.17: the model's default opset is raised to 17 when it is lower
(13 at least is required, where Softmax works on one axis); every emitted op is valid at 17 and
later opsets. Shapes must be static on the differentiated path (converted Caffe2 nets are).
"""

from __future__ import annotations

import base64
import copy
import json
from collections import OrderedDict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import opdefs as _defs
from ._library import DOMAIN
from .graph import _Names, _attrs, _infer, _is_ours, _text, ensure_opset

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
MIN_OPSET = 13
EMIT_OPSET = 17
OFFSET_KERNEL_LIMIT = 9  # Conv dW by kernel offsets up to this many kernel elements (see conv_weight_grad)
# Which small-kernel dW form (see small_kernel_weight_grad_form): output positions per image up to this: the batch
# folded into the MatMuls' K; kernels of more than one element from IM2COL_MIN_POSITIONS with at most
# IM2COL_MAX_GROUP_OUT output channels per group: im2col by a one-hot Conv and one MatMul.
BATCH_IN_K_MAX_POSITIONS = 28 * 28
IM2COL_MIN_POSITIONS = 112 * 112
IM2COL_MAX_GROUP_OUT = 32

# Ops that never carry a gradient (their outputs are integers, booleans, shapes or constants).
NO_GRADIENT = frozenset(
    [("", op) for op in (
        "Shape", "Size", "Constant", "ConstantOfShape", "ArgMax", "ArgMin", "Equal", "Greater", "Less",
        "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "Range", "OneHot", "RandomNormal",
        "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "IsNaN", "IsInf", "Sign", "Floor",
        "Ceil", "Round",
    )]
)


class UnsupportedGradientError(NotImplementedError):
    """Ops without a gradient rule on the path from the parameters to the loss (all of them at once)."""

    def __init__(self, missing):
        self.missing = missing  # {op label: [node names]}
        parts = [f"{op} x{len(names)} ({', '.join(names)})" for op, names in missing.items()]
        super().__init__("no gradient rule for " + "; ".join(parts))


def _op_label(domain, op_type):
    return op_type if domain in ("", "ai.onnx") else f"{domain}::{op_type}"


def _key(node):
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


# ----------------------------------------------------------------------------------------------------------
# the emitter


class Emitter:
    """Collects backward nodes; knows the types and static shapes of the graph's tensors."""

    def __init__(self, types, names, opset=EMIT_OPSET, constants=None):
        self.types, self.names, self.opset = types, names, opset
        self.constants = {} if constants is None else constants  # tensor -> numpy value of known constants
        self.nodes = []
        self.saved = {}  # forward output -> {key: tensor} its lowered forward left for the rule (FORWARD)

    # types and shapes ---------------------------------------------------------------------------------
    def elem(self, t):
        tp = self.types.get(t)
        if tp is None or not tp.tensor_type.elem_type:
            raise ValueError(f"the element type of {t!r} is unknown (give the graph inputs types)")
        return tp.tensor_type.elem_type

    def shape(self, t):
        tp = self.types.get(t)
        if tp is not None and tp.tensor_type.HasField("shape"):
            dims = tp.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                return tuple(int(d.dim_value) for d in dims)
        raise ValueError(f"the shape of {t!r} is not static: gradients need static shapes (fix the input shapes)")

    def dims(self, t):
        """Dims of ``t`` (int, or None where symbolic); raises when even the rank is unknown."""
        tp = self.types.get(t)
        if tp is None or not tp.tensor_type.HasField("shape"):
            raise ValueError(f"the rank of {t!r} is unknown: gradients need tensor shapes (give the inputs shapes)")
        return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tp.tensor_type.shape.dim)

    def np_dtype(self, t):
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem(t)))

    def set_type(self, t, elem, shape):
        self.types[t] = helper.make_tensor_type_proto(elem, list(shape))
        return t

    # emitting -----------------------------------------------------------------------------------------
    def node(self, op, inputs, base="g", outputs=1, domain="", **attrs):
        """Emit one node; returns its output name (or the list of names when ``outputs`` > 1 or a list)."""
        outs = [self.names(f"{base}_{k}" if k else base) for k in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.names(f"{base}_{op}"), domain=domain,
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype, base="c"):
        name = self.names(base)
        arr = np.asarray(value, dtype=dtype)
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name),
                                           name=self.names(f"{base}_Constant")))
        self.set_type(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape)
        return name

    def scalar(self, value, like, base="c"):
        """A rank-0 constant of ``like``'s element type."""
        return self.const(value, self.np_dtype(like), base)

    def ints(self, values, base="i"):
        return self.const(np.asarray(values, np.int64).reshape(-1), np.int64, base)

    def reduce_sum(self, x, axes, keepdims, base):
        return self.node("ReduceSum", [x, self.ints(axes, f"{base}_axes")], base, keepdims=int(keepdims))

    def reshape(self, x, shape, base):
        return self.node("Reshape", [x, self.ints(shape, f"{base}_shape")], base)

    def transpose(self, x, perm, base):
        return self.node("Transpose", [x], base, perm=list(perm))

    def unbroadcast(self, g, g_shape, target, base, target_shape=None):
        """Sum ``g`` (dims ``g_shape``, None where symbolic) down to the shape of tensor ``target`` (or
        ``target_shape``) by numpy's broadcasting rules."""
        g_shape = tuple(g_shape)
        target_shape = tuple(self.dims(target) if target_shape is None else target_shape)
        lead = len(g_shape) - len(target_shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(target_shape) if d == 1 and g_shape[lead + i] != 1]
        if not axes:
            return g
        out = self.reduce_sum(g, axes, True, base)
        if lead == 0:
            return out
        return self.reshape_like(out, target, target_shape, f"{base}_reshape")

    def reshape_like(self, g, target, target_shape, base):
        """Reshape ``g`` to ``target``'s shape: a constant shape when static, else Shape(target)."""
        if all(d is not None for d in target_shape):
            return self.reshape(g, target_shape, base)
        return self.node("Reshape", [g, self.node("Shape", [target], f"{base}_shape")], base)

    def expand_to(self, g, shape, base):
        return self.node("Expand", [g, self.ints(shape, f"{base}_shape")], base)

    def zeros(self, shape, dtype, base):
        return self.node("ConstantOfShape", [self.ints(shape, f"{base}_shape")], base,
                         value=numpy_helper.from_array(np.zeros(1, dtype)))


# ----------------------------------------------------------------------------------------------------------
# the registry

RULES = {}
PREPARE = {}  # (domain, op_type) -> hook(node, names) that adds outputs a rule wants (indices, masks)
# (domain, op_type) -> lower(e, node) -> {key: tensor}: in a differentiated graph, the forward node is
# replaced by the nodes ``lower`` emits on ``e`` (writing the node's outputs), and the rule finds the
# tensors it returns in ``e.saved[node.output[0]]`` instead of computing them again.
FORWARD = {}
LOWERED_KEY = "caffe2_ort.lowered_forward"  # metadata: JSON {output: base64 NodeProto the lowering replaced}


def rule(op_type, domain="", prepare=None, forward=None):
    """Decorator registering a gradient rule for ``(domain, op_type)``."""

    def deco(fn):
        RULES[(domain, op_type)] = fn
        if prepare is not None:
            PREPARE[(domain, op_type)] = prepare
        if forward is not None:
            FORWARD[(domain, op_type)] = forward
        return fn

    return deco


def supported_ops():
    """Sorted op labels that have a gradient rule."""
    return sorted(_op_label(d, o) for d, o in RULES)


def emit_gradient(node, dys, needs, *, types, names, opset=EMIT_OPSET, constants=None):
    """Run the rule for one forward ``node``: returns ``(nodes, grads)``, ``grads`` one name or None per input.

    ``types``: ``{tensor: TypeProto}`` covering the node's inputs and outputs (static shapes);
    ``names``: a callable giving fresh names (e.g. ``graph._Names(graph)``). A Caffe2 gradient op is
    lowered by building the forward node it stands for and calling this.
    """
    fn = RULES.get(_key(node))
    if fn is None:
        raise UnsupportedGradientError({_op_label(*_key(node)): [node.name or node.output[0]]})
    e = Emitter(types, names, opset, constants)
    grads = list(fn(e, node, list(dys), list(needs)))
    grads += [None] * (len(node.input) - len(grads))
    return e.nodes, grads


def backprop(e, nodes, seeds, wanted):
    """Chain the registered rules backwards through ``nodes`` (a forward sub-graph, in order) on Emitter ``e``.

    ``seeds``: ``{forward tensor: its upstream gradient}``; returns ``{t: gradient or None}`` for each
    tensor of ``wanted``. This is how a Caffe2 gradient op (FCGradient, ConvGradient, ...) is lowered: the
    nodes its forward op was converted to, differentiated by the same rules :func:`add_backward` uses.
    """
    partial = {t: [g] for t, g in seeds.items()}

    def grad_of(t):
        parts = partial.get(t)
        if not parts:
            return None
        if len(parts) > 1:
            partial[t] = [e.node("Sum", parts, f"{t}_grad_sum")]
        return partial[t][0]

    for n in reversed(list(nodes)):
        if _key(n) in NO_GRADIENT:
            continue
        dys = [grad_of(o) if o else None for o in n.output]
        if all(d is None for d in dys):
            continue
        fn = RULES.get(_key(n))
        if fn is None:
            raise UnsupportedGradientError({_op_label(*_key(n)): [n.name or n.output[0]]})
        needs = [bool(i) and _is_float(e.types, i) for i in n.input]
        for i, gname in zip(n.input, fn(e, n, dys, needs)):
            if gname is not None and i:
                partial.setdefault(i, []).append(gname)
    return {t: grad_of(t) for t in wanted}


# ----------------------------------------------------------------------------------------------------------
# elementwise and linear algebra


@rule("Identity")
def _identity(e, n, dys, needs):
    return [dys[0]]


@rule("Cast")
def _cast(e, n, dys, needs):
    return [e.node("Cast", [dys[0]], f"{n.input[0]}_grad", to=e.elem(n.input[0]))]


@rule("Neg")
def _neg(e, n, dys, needs):
    return [e.node("Neg", [dys[0]], f"{n.input[0]}_grad")]


@rule("Relu")
def _relu(e, n, dys, needs):
    y = n.output[0]  # dY * (Y > 0): Greater, Cast, Mul run ~4x faster in ORT than one Where
    pos = e.node("Greater", [y, e.scalar(0, y, "zero")], f"{n.input[0]}_relu_pos")
    posf = e.node("Cast", [pos], f"{n.input[0]}_relu_pos_f", to=e.elem(y))
    return [e.node("Mul", [dys[0], posf], f"{n.input[0]}_grad")]


@rule("Log")
def _log(e, n, dys, needs):
    return [e.node("Div", [dys[0], n.input[0]], f"{n.input[0]}_grad")]


@rule("Clip")
def _clip(e, n, dys, needs):
    """dY where min <= X <= max (bounds from constant inputs; absent bounds are open)."""
    x = n.input[0]
    keep = None
    for slot, op in ((1, "GreaterOrEqual"), (2, "LessOrEqual")):
        if len(n.input) > slot and n.input[slot]:
            inside = e.node(op, [x, n.input[slot]], f"{x}_clip_{op}")
            keep = inside if keep is None else e.node("And", [keep, inside], f"{x}_clip_inside")
    if keep is None:
        return [dys[0]]
    return [e.node("Mul", [dys[0], e.node("Cast", [keep], f"{x}_clip_inside_f", to=e.elem(x))], f"{x}_grad"), None, None]


@rule("Sigmoid")
def _sigmoid(e, n, dys, needs):
    y = n.output[0]
    one_minus = e.node("Sub", [e.scalar(1, y, "one"), y], f"{y}_one_minus")
    d = e.node("Mul", [y, one_minus], f"{y}_dsigmoid")
    return [e.node("Mul", [dys[0], d], f"{n.input[0]}_grad")]


@rule("Tanh")
def _tanh(e, n, dys, needs):
    y = n.output[0]
    d = e.node("Sub", [e.scalar(1, y, "one"), e.node("Mul", [y, y], f"{y}_sq")], f"{y}_dtanh")
    return [e.node("Mul", [dys[0], d], f"{n.input[0]}_grad")]


def _binary(e, n, dys, needs):
    op = n.op_type
    a, b = n.input[0], n.input[1]
    y, dy = n.output[0], dys[0]
    ys = e.dims(y)
    out = [None, None]
    if needs[0]:
        if op in ("Add", "Sub"):
            g = dy
        elif op == "Mul":
            g = e.node("Mul", [dy, b], f"{a}_grad_full")
        else:  # Div
            g = e.node("Div", [dy, b], f"{a}_grad_full")
        out[0] = e.unbroadcast(g, ys, a, f"{a}_grad")
    if needs[1]:
        if op == "Add":
            g = dy
        elif op == "Sub":
            g = e.node("Neg", [dy], f"{b}_grad_full")
        elif op == "Mul":
            g = e.node("Mul", [dy, a], f"{b}_grad_full")
        else:  # d(a/b)/db = -y/b
            g = e.node("Neg", [e.node("Div", [e.node("Mul", [dy, y], f"{b}_dy_y"), b], f"{b}_dy_y_b")], f"{b}_grad_full")
        out[1] = e.unbroadcast(g, ys, b, f"{b}_grad")
    return out


for _op in ("Add", "Sub", "Mul", "Div"):
    rule(_op)(_binary)


@rule("Sum")
def _sum(e, n, dys, needs):
    ys = e.dims(n.output[0])
    return [e.unbroadcast(dys[0], ys, x, f"{x}_grad") if need else None for x, need in zip(n.input, needs)]


@rule("Gemm")
def _gemm(e, n, dys, needs):
    a = _attrs(n)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    A, B = n.input[0], n.input[1]
    dy = dys[0]
    out = [None] * len(n.input)
    if needs[0]:
        if not ta:
            out[0] = e.node("Gemm", [dy, B], f"{A}_grad", alpha=alpha, transB=0 if tb else 1)
        else:
            out[0] = e.node("Gemm", [B, dy], f"{A}_grad", alpha=alpha, transA=tb, transB=1)
    if needs[1]:
        if not tb:
            out[1] = e.node("Gemm", [A, dy], f"{B}_grad", alpha=alpha, transA=0 if ta else 1)
        else:
            out[1] = e.node("Gemm", [dy, A], f"{B}_grad", alpha=alpha, transA=1, transB=ta)
    if len(n.input) > 2 and n.input[2] and needs[2]:
        C = n.input[2]
        g = e.unbroadcast(dy, e.dims(n.output[0]), C, f"{C}_grad")
        if beta != 1.0:
            g = e.node("Mul", [g, e.scalar(beta, C, "beta")], f"{C}_grad_beta")
        out[2] = g
    return out


@rule("MatMul")
def _matmul(e, n, dys, needs):
    A, B = n.input
    dy = dys[0]
    if len(e.dims(A)) == 2 and len(e.dims(B)) == 2:
        return [e.node("Gemm", [dy, B], f"{A}_grad", transB=1) if needs[0] else None,
                e.node("Gemm", [A, dy], f"{B}_grad", transA=1) if needs[1] else None]
    # Promote 1-D operands as numpy does, then batch-broadcast.
    sa, sb = e.shape(A), e.shape(B)
    a2 = (1,) + sa if len(sa) == 1 else sa
    b2 = sb + (1,) if len(sb) == 1 else sb
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    y2 = batch + (a2[-2], b2[-1])
    A2 = e.reshape(A, a2, f"{A}_2d") if a2 != sa else A
    B2 = e.reshape(B, b2, f"{B}_2d") if b2 != sb else B
    dy2 = e.reshape(dy, y2, f"{n.output[0]}_grad_nd") if y2 != e.shape(n.output[0]) else dy

    def swap(r):
        return list(range(r - 2)) + [r - 1, r - 2]

    out = [None, None]
    if needs[0]:
        g = e.node("MatMul", [dy2, e.transpose(B2, swap(len(b2)), f"{B}_T")], f"{A}_grad_full")
        g = e.unbroadcast(g, y2[:-2] + a2[-2:], A, f"{A}_grad_sum", a2)
        out[0] = e.reshape(g, sa, f"{A}_grad") if a2 != sa else g
    if needs[1]:
        g = e.node("MatMul", [e.transpose(A2, swap(len(a2)), f"{A}_T"), dy2], f"{B}_grad_full")
        g = e.unbroadcast(g, y2[:-2] + b2[-2:], B, f"{B}_grad_sum", b2)
        out[1] = e.reshape(g, sb, f"{B}_grad") if b2 != sb else g
    return out


# ----------------------------------------------------------------------------------------------------------
# shape ops


def _reshape_back(e, n, dys, needs):
    x = n.input[0]
    return [e.reshape_like(dys[0], x, e.dims(x), f"{x}_grad")] + [None] * (len(n.input) - 1)


for _op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
    rule(_op)(_reshape_back)


@rule("Transpose")
def _transpose(e, n, dys, needs):
    x = n.input[0]
    r = len(e.dims(x))
    perm = list(_attrs(n).get("perm", list(range(r))[::-1]))
    inv = [0] * r
    for i, p in enumerate(perm):
        inv[p] = i
    return [e.transpose(dys[0], inv, f"{x}_grad")]


@rule("Concat")
def _concat(e, n, dys, needs):
    r = len(e.shape(n.output[0]))
    axis = int(_attrs(n)["axis"]) % r
    sizes = [e.shape(x)[axis] for x in n.input]
    if len(n.input) == 1:
        return [dys[0]]
    outs = [e.names(f"{x}_grad") for x in n.input]
    e.nodes.append(helper.make_node("Split", [dys[0], e.ints(sizes, f"{n.output[0]}_split")], outs,
                                    name=e.names(f"{n.output[0]}_grad_Split"), axis=axis))
    return [o if need else None for o, need in zip(outs, needs)]


@rule("Split")
def _split(e, n, dys, needs):
    x = n.input[0]
    r = len(e.shape(x))
    axis = int(_attrs(n).get("axis", 0)) % r
    parts = []
    for y, dy in zip(n.output, dys):
        parts.append(dy if dy is not None else e.zeros(e.shape(y), e.np_dtype(y), f"{y}_grad_zero"))
    g = parts[0] if len(parts) == 1 else e.node("Concat", parts, f"{x}_grad", axis=axis)
    return [g] + [None] * (len(n.input) - 1)


# ----------------------------------------------------------------------------------------------------------
# softmax, reductions, losses


def _axis(n, rank, default):
    return int(_attrs(n).get("axis", default)) % rank


@rule("Softmax")
def _softmax(e, n, dys, needs):
    y, dy = n.output[0], dys[0]
    axis = _axis(n, len(e.dims(y)), -1)
    s = e.reduce_sum(e.node("Mul", [dy, y], f"{y}_dy_y"), [axis], True, f"{y}_dy_y_sum")
    return [e.node("Mul", [y, e.node("Sub", [dy, s], f"{y}_dy_centred")], f"{n.input[0]}_grad")]


@rule("LogSoftmax")
def _log_softmax(e, n, dys, needs):
    y, dy = n.output[0], dys[0]
    axis = _axis(n, len(e.dims(y)), -1)
    s = e.reduce_sum(dy, [axis], True, f"{y}_dy_sum")
    p = e.node("Exp", [y], f"{y}_prob")
    return [e.node("Sub", [dy, e.node("Mul", [p, s], f"{y}_p_sum")], f"{n.input[0]}_grad")]


def _reduce_axes(e, n, opset_with_input_axes):
    """Canonical reduced axes of ReduceSum/ReduceMean (attribute or constant input), or None for identity."""
    a = _attrs(n)
    r = len(e.shape(n.input[0]))
    if e.opset >= opset_with_input_axes:
        axes = None
        if len(n.input) > 1 and n.input[1]:
            axes = e.constants.get(n.input[1])
            if axes is None:
                raise ValueError(f"{n.op_type} {n.name!r}: its axes input must be a constant")
            axes = [int(v) for v in np.asarray(axes).reshape(-1)]
    else:
        axes = a.get("axes")
    if not axes:
        if int(a.get("noop_with_empty_axes", 0)):
            return None
        return list(range(r))
    return sorted(int(v) % r for v in axes)


def _reduce(e, n, dys, needs, mean):
    x = n.input[0]
    xs = e.shape(x)
    axes = _reduce_axes(e, n, 13 if not mean else 18)
    if axes is None:
        return [dys[0]]
    keep = tuple(1 if i in axes else d for i, d in enumerate(xs))
    g = e.reshape(dys[0], keep, f"{x}_grad_kept") if e.shape(n.output[0]) != keep else dys[0]
    if mean:
        count = int(np.prod([xs[i] for i in axes]))
        g = e.node("Mul", [g, e.scalar(1.0 / count, x, "inv_count")], f"{x}_grad_mean")
    return [e.expand_to(g, xs, f"{x}_grad")] + [None] * (len(n.input) - 1)


rule("ReduceSum")(lambda e, n, dys, needs: _reduce(e, n, dys, needs, False))
rule("ReduceMean")(lambda e, n, dys, needs: _reduce(e, n, dys, needs, True))


@rule("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(e, n, dys, needs):
    """d loss / d scores = (softmax(scores) - onehot(labels)) * w_i * (dloss_i or dloss / normaliser)."""
    if len(dys) > 1 and dys[1] is not None:
        raise NotImplementedError(f"SoftmaxCrossEntropyLoss {n.name!r}: no gradient through its log_prob output")
    a = _attrs(n)
    red = _text(a.get("reduction", "mean"))
    scores, labels = n.input[0], n.input[1]
    weights = n.input[2] if len(n.input) > 2 and n.input[2] else None
    ss = e.dims(scores)
    if ss[1] is None:
        raise ValueError(f"SoftmaxCrossEntropyLoss {n.name!r}: the class count of {scores!r} must be static")
    b = n.name or n.output[0]
    p = e.node("Softmax", [scores], f"{b}_prob", axis=1)
    classes = e.const(np.arange(ss[1]).reshape((1, ss[1]) + (1,) * (len(ss) - 2)), np.int64, f"{b}_classes")
    lab = e.node("Unsqueeze", [labels, e.ints([1], f"{b}_axis1")], f"{b}_labels_col")
    onehot = e.node("Cast", [e.node("Equal", [lab, classes], f"{b}_onehot_b")], f"{b}_onehot", to=e.elem(scores))
    diff = e.node("Sub", [p, onehot], f"{b}_p_minus_y")
    w = None  # per-sample weight, shaped like labels
    if weights is not None or "ignore_index" in a:
        safe = labels
        if "ignore_index" in a:
            ii = e.const(int(a["ignore_index"]), e.np_dtype(labels), f"{b}_ignore")
            ignored = e.node("Equal", [labels, ii], f"{b}_ignored")
            safe = e.node("Where", [ignored, e.const(0, e.np_dtype(labels), f"{b}_zero_label"), labels], f"{b}_safe_labels")
        w = e.node("Gather", [weights, safe], f"{b}_w", axis=0) if weights is not None else None
        if "ignore_index" in a:
            keep = e.node("Cast", [e.node("Not", [ignored], f"{b}_kept")], f"{b}_kept_f", to=e.elem(scores))
            w = keep if w is None else e.node("Mul", [w, keep], f"{b}_w_kept")
    dy = dys[0]
    if red == "mean":
        if w is None:
            norm = e.node("Cast", [e.node("Size", [labels], f"{b}_size")], f"{b}_count", to=e.elem(scores))
        else:
            norm = e.reduce_sum(w, list(range(len(e.dims(labels)))), False, f"{b}_w_sum")
        dy = e.node("Div", [dy, norm], f"{b}_dloss_over_n")
    elif red not in ("sum", "none"):
        raise ValueError(f"SoftmaxCrossEntropyLoss {n.name!r}: unknown reduction {red!r}")
    scale = dy if w is None else e.node("Mul", [dy, w], f"{b}_dy_w")
    if w is not None or red == "none":  # per sample: broadcast over the class axis
        scale = e.node("Unsqueeze", [scale, e.ints([1], f"{b}_axis1s")], f"{b}_scale_col")
    return [e.node("Mul", [diff, scale], f"{scores}_grad"), None, None][: len(n.input)]


# ----------------------------------------------------------------------------------------------------------
# convolution and pooling


def _conv_geometry(e, n, x, k_shape):
    """(strides, dilations, pads_begin, pads_end) of a Conv/pool node with auto_pad resolved."""
    a = _attrs(n)
    r = len(k_shape)
    s = list(a.get("strides", [1] * r))
    d = list(a.get("dilations", [1] * r))
    auto = _text(a.get("auto_pad", "NOTSET"))
    xs = e.shape(x)[2:]
    if auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * (2 * r)))
        return s, d, pads[:r], pads[r:]
    if auto == "VALID":
        return s, d, [0] * r, [0] * r
    pb, pe = [], []
    for i in range(r):
        out = -(-xs[i] // s[i])
        total = max((out - 1) * s[i] + (k_shape[i] - 1) * d[i] + 1 - xs[i], 0)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        pb.append(lo)
        pe.append(total - lo)
    return s, d, pb, pe


def _pad_end(e, t, extra, base):
    """Zero-pad the spatial dims of ``t`` at their ends by ``extra``."""
    if not any(extra):
        return t
    r = len(extra) + 2
    pads = [0] * r + [0, 0] + list(extra)
    return e.node("Pad", [t, e.ints(pads, f"{base}_pads")], base)


def transposed_conv(e, dy, y_shape, w, w_shape, x_shape, strides, dilations, pb, pe, group, base):
    """The adjoint of Conv(X, w) with respect to X: ConvTranspose of ``dy`` with ``w``, sized to ``x_shape``."""
    ks = tuple(w_shape)[2:]
    ys = tuple(y_shape)[2:]
    r = len(ks)
    full = [(ys[i] - 1) * strides[i] + (ks[i] - 1) * dilations[i] + 1 - pb[i] - pe[i] for i in range(r)]
    extra = [x_shape[2 + i] - full[i] for i in range(r)]
    if any(v < 0 for v in extra):
        raise ValueError(f"{base}: input size {x_shape} smaller than the windows cover")
    op = [v if v < strides[i] else 0 for i, v in enumerate(extra)]
    rest = [v - o for v, o in zip(extra, op)]
    attrs = dict(strides=strides, dilations=dilations, pads=list(pb) + list(pe), group=group)
    if any(op):
        attrs["output_padding"] = op
    g = e.node("ConvTranspose", [dy, w], base if not any(rest) else f"{base}_core", **attrs)
    return _pad_end(e, g, rest, base)


def conv_input_grad(e, dy, y_shape, w, w_shape, x_shape, strides, dilations, pb, pe, group, base):
    """dX of Y = Conv(X, W). Stride 1: a Conv of dY with W flipped and transposed per group (ORT runs it
    about 2x faster than the equivalent ConvTranspose); otherwise :func:`transposed_conv`."""
    ks = tuple(w_shape)[2:]
    r = len(ks)
    qb = [(ks[i] - 1) * dilations[i] - pb[i] for i in range(r)]
    qe = [(ks[i] - 1) * dilations[i] - pe[i] for i in range(r)]
    if any(v != 1 for v in strides) or min(qb + qe) < 0:
        return transposed_conv(e, dy, y_shape, w, w_shape, x_shape, strides, dilations, pb, pe, group, base)
    o, cg = w_shape[0], w_shape[1]
    g = group
    sp = list(range(2, 2 + r))
    if g == 1:
        wt = e.transpose(w, [1, 0] + sp, f"{base}_w_t")
    else:
        w5 = e.reshape(w, (g, o // g, cg) + ks, f"{base}_w_g")
        wt = e.reshape(e.transpose(w5, [0, 2, 1] + [i + 1 for i in sp], f"{base}_w_gt"), (g * cg, o // g) + ks, f"{base}_w_t")
    big = np.iinfo(np.int64).min
    flipped = e.node("Slice", [wt, e.ints([-1] * r, f"{base}_flip_starts"), e.ints([big] * r, f"{base}_flip_ends"),
                               e.ints(sp, f"{base}_flip_axes"), e.ints([-1] * r, f"{base}_flip_steps")], f"{base}_w_flipped")
    return e.node("Conv", [dy, flipped], base, strides=[1] * r, dilations=list(dilations), pads=qb + qe, group=g)


def conv_weight_grad(e, x, xs, dy, ys, k_shape, strides, dilations, pb, pe, group, base):
    """dW of Y = Conv(X, W) in W's layout (O, C/g, *k).

    Kernels of up to 9 elements: the products of X's windows with dY that im2col + GEMM computes, in one
    of three forms chosen by :func:`small_kernel_weight_grad_form` (each ~2x to 15x faster in ORT than the
    Conv form). Larger kernels: a Conv of X (channels as batch) with dY as the kernel."""
    xs, ys = tuple(xs), tuple(ys)
    if int(np.prod(k_shape)) <= OFFSET_KERNEL_LIMIT:
        return _small_kernel_weight_grad(e, x, xs, dy, ys, k_shape, strides, dilations, pb, pe, group, base)
    st = strides[0] if strides else 1
    if (len(k_shape) == 2 and group == 1 and st > 1 and all(v == st for v in strides) and all(v == 1 for v in dilations)
            and int(np.prod([-(-k // st) for k in k_shape])) <= OFFSET_KERNEL_LIMIT):
        return _space_to_depth_weight_grad(e, x, xs, dy, ys, k_shape, st, pb, pe, base)
    n, c, o, g = xs[0], xs[1], ys[1], group
    cg, og = c // g, o // g
    sp = list(range(2, len(xs)))
    if g == 1:
        xt = e.transpose(x, [1, 0] + sp, f"{base}_x_t")
        dyt = e.transpose(dy, [1, 0] + sp, f"{base}_dy_t")
    else:
        x5 = e.reshape(x, (n, g, cg) + xs[2:], f"{base}_x_g")
        xt = e.reshape(e.transpose(x5, [2, 1, 0] + [i + 1 for i in sp], f"{base}_x_gt"), (cg, g * n) + xs[2:], f"{base}_x_t")
        y5 = e.reshape(dy, (n, g, og) + ys[2:], f"{base}_dy_g")
        dyt = e.reshape(e.transpose(y5, [1, 2, 0] + [i + 1 for i in sp], f"{base}_dy_gt"), (o, n) + ys[2:], f"{base}_dy_t")
    got = [(xs[2 + i] + pb[i] + pe[i] - ((ys[2 + i] - 1) * strides[i] + 1)) // dilations[i] + 1 for i in range(len(k_shape))]
    wt = e.node("Conv", [xt, dyt], f"{base}_cw", strides=list(dilations), dilations=list(strides),
                pads=list(pb) + list(pe), group=g)
    if list(got) != list(k_shape):
        r = len(k_shape)
        wt = e.node("Slice", [wt, e.ints([0] * r, f"{base}_starts"), e.ints(k_shape, f"{base}_ends"),
                              e.ints(list(range(2, 2 + r)), f"{base}_axes")], f"{base}_cw_sliced")
    return e.transpose(wt, [1, 0] + sp, base)


def small_kernel_weight_grad_form(k_shape, ys, group):
    """The dW form for a kernel of up to OFFSET_KERNEL_LIMIT elements, from its shape, dY's shape (N, O, *out) and
    the group count. Measured in ORT 1.32 on one thread (batch 8, 3x3 and 1x1 kernels, 16 to 512 channels):

    - ``batch_in_k`` where an image has few output positions (<= BATCH_IN_K_MAX_POSITIONS): X and dY with the
      batch moved next to the positions, so that each offset's MatMul sums over batch and positions (K = N*P)
      in one GEMM; a batched MatMul there has a short K and leaves an (N, C, O) product per offset to sum
      (1.3x-2x faster at 7x7 and 14x14 with 64 to 512 channels, even for 1x1 kernels, which need no Slice);
    - ``im2col`` for kernels of more than one element with many positions (>= IM2COL_MIN_POSITIONS) and few
      output channels per group (<= IM2COL_MAX_GROUP_OUT): a grouped Conv with one-hot kernels writes the
      im2col columns, then one batched MatMul with all the kernel offsets as rows; the per-offset
      MatMuls there are too thin and their strided Slices run on one thread (1.3x-1.5x faster at 224x224 and
      112x112 with 16 and 32 channels; slower from 56x56 down);
    - ``offsets`` otherwise: per kernel offset, X's strided window times dY as a MatMul batched over N."""
    p = int(np.prod(ys[2:]))
    if p <= BATCH_IN_K_MAX_POSITIONS:
        return "batch_in_k"
    if int(np.prod(k_shape)) > 1 and p >= IM2COL_MIN_POSITIONS and ys[1] // group <= IM2COL_MAX_GROUP_OUT:
        return "im2col"
    return "offsets"


def _small_kernel_weight_grad(e, x, xs, dy, ys, k_shape, strides, dilations, pb, pe, group, base):
    lower = {"batch_in_k": _batch_in_k_weight_grad, "im2col": _im2col_weight_grad, "offsets": _offset_weight_grad}
    return lower[small_kernel_weight_grad_form(k_shape, ys, group)](e, x, xs, dy, ys, k_shape, strides, dilations, pb, pe, group, base)


def _windows(e, src, k_shape, ys, strides, dilations, pb, pe, base):
    """Per kernel offset, the strided window of ``src`` (padded X, spatial axes from 2) that meets dY's positions;
    ``src`` itself for a 1x1 kernel at stride 1 without pads."""
    import itertools

    r = len(k_shape)
    if all(v == 1 for v in k_shape) and not any(pb) and not any(pe) and all(v == 1 for v in strides):
        return [src]
    out = []
    for off in itertools.product(*[range(k) for k in k_shape]):
        starts = [off[i] * dilations[i] for i in range(r)]
        ends = [starts[i] + (ys[2 + i] - 1) * strides[i] + 1 for i in range(r)]
        out.append(e.node("Slice", [src, e.ints(starts, f"{base}_st"), e.ints(ends, f"{base}_en"),
                                    e.ints(list(range(2, 2 + r)), f"{base}_ax"), e.ints(strides, f"{base}_steps")],
                          f"{base}_win"))
    return out


def _batch_in_k_weight_grad(e, x, xs, dy, ys, k_shape, strides, dilations, pb, pe, group, base):
    """dW with the batch in the MatMuls' K: X and dY as (C, N, ...) and (O, N*P); per kernel offset,
    dY times the window transposed, (g, O/g, N*P) x (g, N*P, C/g), then the offsets stacked last."""
    n, c, o, g = xs[0], xs[1], ys[1], group
    cg, og = c // g, o // g
    r = len(k_shape)
    p = int(np.prod(ys[2:]))
    sp = list(range(2, 2 + r))
    xp = x
    if any(pb) or any(pe):
        xp = e.node("Pad", [x, e.ints([0, 0] + list(pb) + [0, 0] + list(pe), f"{base}_pads")], f"{base}_x_padded")
    xt = e.transpose(xp, [1, 0] + sp, f"{base}_x_t")  # (C, N, *padded)
    dyt = e.reshape(e.transpose(dy, [1, 0] + sp, f"{base}_dy_t"), (g, og, n * p), f"{base}_dy_2d")
    parts = []
    for win in _windows(e, xt, k_shape, ys, strides, dilations, pb, pe, base):
        win = e.transpose(e.reshape(win, (g, cg, n * p), f"{base}_win_2d"), [0, 2, 1], f"{base}_win_t")
        parts.append(e.node("MatMul", [dyt, win], f"{base}_dy_win"))  # (g, O/g, C/g)
    if len(parts) == 1:
        return e.reshape(parts[0], (o, cg) + tuple(k_shape), base)
    cols = e.node("Concat", [e.node("Unsqueeze", [q, e.ints([3], f"{base}_ax3")], f"{base}_col") for q in parts],
                  f"{base}_cols", axis=3)  # (g, O/g, C/g, K)
    return e.reshape(cols, (o, cg) + tuple(k_shape), base)


def _im2col_weight_grad(e, x, xs, dy, ys, k_shape, strides, dilations, pb, pe, group, base):
    """dW by im2col: a Conv with C groups and one-hot kernels writes X's windows as (N, C*K, P), channel-major
    like W; one MatMul by dY transposed, batched over N and the groups, gives (g, C/g*K, O/g) once summed over N."""
    n, c, o, g = xs[0], xs[1], ys[1], group
    cg, og = c // g, o // g
    ks = tuple(k_shape)
    kk = int(np.prod(ks))
    p = int(np.prod(ys[2:]))
    eye = np.zeros((c, kk, kk), e.np_dtype(x))
    eye[:, np.arange(kk), np.arange(kk)] = 1
    onehot = e.const(eye.reshape((c * kk, 1) + ks), eye.dtype, f"{base}_onehot")
    cols = e.node("Conv", [x, onehot], f"{base}_im2col", kernel_shape=list(ks), strides=list(strides),
                  dilations=list(dilations), pads=list(pb) + list(pe), group=c)  # (N, C*K, *out)
    cols = e.reshape(cols, (n, g, cg * kk, p), f"{base}_cols")
    dyt = e.transpose(e.reshape(dy, (n, g, og, p), f"{base}_dy_3d"), [0, 1, 3, 2], f"{base}_dy_t")
    prod = e.reduce_sum(e.node("MatMul", [cols, dyt], f"{base}_cols_dy"), [0], False, f"{base}_sum")  # (g, C/g*K, O/g)
    return e.reshape(e.transpose(prod, [0, 2, 1], f"{base}_w_g"), (o, cg) + ks, base)


def _space_to_depth_weight_grad(e, x, xs, dy, ys, k_shape, st, pb, pe, base):
    """Strided large kernels (AlexNet's 11x11/4): SpaceToDepth turns the conv into a stride-1 conv with a
    ceil(k/s) kernel over C*s*s channels, whose dW comes by kernel offsets; then back to W's layout."""
    n, c = xs[0], xs[1]
    o = ys[1]
    kq = [-(-k // st) for k in k_shape]
    size = [(ys[2 + i] - 1 + kq[i]) * st for i in range(2)]  # rows the blocked conv reads
    extra = [size[i] - (xs[2 + i] + pb[i] + pe[i]) for i in range(2)]
    xp = x
    if any(pb) or any(pe) or any(v > 0 for v in extra):
        pads = [0, 0, pb[0], pb[1], 0, 0, pe[0] + max(extra[0], 0), pe[1] + max(extra[1], 0)]
        xp = e.node("Pad", [x, e.ints(pads, f"{base}_s2d_pads")], f"{base}_s2d_padded")
    if any(v < 0 for v in extra):
        xp = e.node("Slice", [xp, e.ints([0, 0], f"{base}_s2d_st"), e.ints(size, f"{base}_s2d_en"),
                              e.ints([2, 3], f"{base}_s2d_ax")], f"{base}_s2d_cropped")
    bs = (n, st * st * c, size[0] // st, size[1] // st)
    blocked = e.set_type(e.node("SpaceToDepth", [xp], f"{base}_s2d", blocksize=st), e.elem(x), bs)
    dwb = _small_kernel_weight_grad(e, blocked, bs, dy, ys, kq, [1, 1], [1, 1], [0, 0], [0, 0], 1, f"{base}_s2d_dw")
    # dwb[o, (b1*s + b2)*C + c, i, j] = dW[o, c, i*s + b1, j*s + b2]
    w6 = e.reshape(dwb, (o, st, st, c, kq[0], kq[1]), f"{base}_s2d_w6")
    w6 = e.transpose(w6, [0, 3, 4, 1, 5, 2], f"{base}_s2d_wt")  # (O, C, i, b1, j, b2)
    full = e.reshape(w6, (o, c, kq[0] * st, kq[1] * st), f"{base}_s2d_full")
    if [kq[0] * st, kq[1] * st] == list(k_shape):
        return full
    return e.node("Slice", [full, e.ints([0, 0], f"{base}_k_st"), e.ints(k_shape, f"{base}_k_en"),
                            e.ints([2, 3], f"{base}_k_ax")], base)


def _offset_weight_grad(e, x, xs, dy, ys, k_shape, strides, dilations, pb, pe, group, base):
    """dW per kernel offset: X's strided window times dY as a MatMul batched over N, summed over N."""
    n, c, o, g = xs[0], xs[1], ys[1], group
    cg, og = c // g, o // g
    p = int(np.prod(ys[2:]))
    xp = x
    if any(pb) or any(pe):
        xp = e.node("Pad", [x, e.ints([0, 0] + list(pb) + [0, 0] + list(pe), f"{base}_pads")], f"{base}_x_padded")
    # dY as (N, g, P, O/g), once
    dyt = e.transpose(e.reshape(dy, (n, g, og, p), f"{base}_dy_3d"), [0, 1, 3, 2], f"{base}_dy_t")
    parts = []
    for win in _windows(e, xp, k_shape, ys, strides, dilations, pb, pe, base):
        win = e.reshape(win, (n, g, cg, p), f"{base}_win_3d")
        prod = e.node("MatMul", [win, dyt], f"{base}_win_dy")  # (N, g, C/g, O/g)
        parts.append(e.reduce_sum(prod, [0], False, f"{base}_win_sum"))
    stacked = parts[0] if len(parts) == 1 else e.node("Concat", [e.node("Unsqueeze", [q, e.ints([3], f"{base}_ax3")], f"{base}_col")
                                                                for q in parts], f"{base}_cols", axis=3)
    if len(parts) == 1:
        stacked = e.reshape(stacked, (g, cg, og, 1), f"{base}_cols")
    w4 = e.transpose(stacked, [0, 2, 1, 3], f"{base}_w_g")  # (g, O/g, C/g, K)
    return e.reshape(w4, (o, cg) + tuple(k_shape), base)


def _bias_grad(e, dy, r, base):
    return e.reduce_sum(dy, [0] + list(range(2, r)), False, base)


@rule("Conv")
def _conv(e, n, dys, needs):
    x, w = n.input[0], n.input[1]
    ks = e.shape(w)[2:]
    s, d, pb, pe = _conv_geometry(e, n, x, ks)
    g = int(_attrs(n).get("group", 1))
    dy, ys = dys[0], e.shape(n.output[0])
    out = [None] * len(n.input)
    if needs[0]:
        out[0] = conv_input_grad(e, dy, ys, w, e.shape(w), e.shape(x), s, d, pb, pe, g, f"{x}_grad")
    if needs[1]:
        out[1] = conv_weight_grad(e, x, e.shape(x), dy, ys, ks, s, d, pb, pe, g, f"{w}_grad")
    if len(n.input) > 2 and n.input[2] and needs[2]:
        out[2] = _bias_grad(e, dy, len(ys), f"{n.input[2]}_grad")
    return out


@rule("ConvTranspose")
def _conv_transpose(e, n, dys, needs):
    a = _attrs(n)
    if "output_shape" in a or _text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", ""):
        raise NotImplementedError(f"ConvTranspose {n.name!r}: gradients need explicit pads (no output_shape/auto_pad)")
    x, w = n.input[0], n.input[1]
    ks = e.shape(w)[2:]
    r = len(ks)
    s = list(a.get("strides", [1] * r))
    d = list(a.get("dilations", [1] * r))
    pads = list(a.get("pads", [0] * 2 * r))
    g = int(a.get("group", 1))
    dy = dys[0]
    out = [None] * len(n.input)
    if needs[0]:
        gx = e.node("Conv", [dy, w], f"{x}_grad_full", strides=s, dilations=d, pads=pads, group=g)
        e.set_type(gx, e.elem(x), e.shape(x))
        out[0] = gx
    if needs[1]:
        out[1] = conv_weight_grad(e, dy, e.shape(n.output[0]), x, e.shape(x), ks, s, d, pads[:r], pads[r:], g, f"{w}_grad")
    if len(n.input) > 2 and n.input[2] and needs[2]:
        out[2] = _bias_grad(e, dy, len(ks) + 2, f"{n.input[2]}_grad")
    return out


def _pool_geometry(e, n):
    a = _attrs(n)
    ks = list(a["kernel_shape"])
    if int(a.get("ceil_mode", 0)) and _text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", ""):
        raise NotImplementedError(f"{n.op_type} {n.name!r}: ceil_mode with auto_pad")
    s, d, pb, pe = _conv_geometry(e, n, n.input[0], ks)
    return ks, s, d, pb, pe


def _add_indices(node, names):
    if len(node.output) < 2 or not node.output[1]:
        del node.output[1:]
        node.output.append(names(f"{node.output[0]}_indices"))


@rule("MaxPool", prepare=_add_indices)
def _max_pool(e, n, dys, needs):
    """Scatter-add dY at the flat Indices of each window's first maximum (overlapping windows accumulate)."""
    if int(_attrs(n).get("storage_order", 0)):
        raise NotImplementedError(f"MaxPool {n.name!r}: gradients need storage_order 0")
    x = n.input[0]
    xs = e.shape(x)
    if len(n.output) > 1 and n.output[1]:
        idx = n.output[1]
    else:  # lowered on its own (a Caffe2 MaxPoolGradient): recompute the pool with indices
        idx = e.node("MaxPool", [x], f"{x}_pool_indices", outputs=2,
                     **{k: v for k, v in _attrs(n).items()})[1]
    total = int(np.prod(xs))
    flat_idx = e.reshape(idx, (-1,), f"{x}_flat_indices")
    flat_dy = e.reshape(dys[0], (-1,), f"{x}_flat_dy")
    zeros = e.zeros((total,), e.np_dtype(x), f"{x}_grad_zeros")
    g = e.node("ScatterElements", [zeros, flat_idx, flat_dy], f"{x}_grad_flat", axis=0, reduction="add")
    return [e.reshape(g, xs, f"{x}_grad")]


def _pool_counts(xs, ys, ks, s, pb, pe, include_pad):
    """Per output position, how many elements its window averages (Caffe2/ONNX rules), shaped (1, 1, *Y)."""
    per_dim = []
    for i in range(len(ks)):
        lo_lim, hi_lim = (-pb[i], xs[i] + pe[i]) if include_pad else (0, xs[i])
        c = [max(0, min(o * s[i] - pb[i] + ks[i], hi_lim) - max(o * s[i] - pb[i], lo_lim)) for o in range(ys[i])]
        per_dim.append(np.asarray(c, np.float64))
    counts = per_dim[0]
    for c in per_dim[1:]:
        counts = np.multiply.outer(counts, c)
    return counts.reshape((1, 1) + tuple(ys))


@rule("AveragePool")
def _average_pool(e, n, dys, needs):
    a = _attrs(n)
    x, y = n.input[0], n.output[0]
    ks, s, d, pb, pe = _pool_geometry(e, n)
    if any(v != 1 for v in d):
        raise NotImplementedError(f"AveragePool {n.name!r}: gradients for dilated pooling")
    xs, ys = e.shape(x), e.shape(y)
    counts = _pool_counts(xs[2:], ys[2:], ks, s, pb, pe, int(a.get("count_include_pad", 0)))
    scaled = e.node("Div", [dys[0], e.const(counts, e.np_dtype(x), f"{y}_counts")], f"{y}_grad_scaled")
    c = xs[1]
    ones = e.const(np.ones((c, 1) + tuple(ks)), e.np_dtype(x), f"{y}_ones_kernel")
    return [transposed_conv(e, scaled, ys, ones, (c, 1) + tuple(ks), xs, s, [1] * len(ks), pb, pe, c, f"{x}_grad")]


@rule("GlobalAveragePool")
def _global_average_pool(e, n, dys, needs):
    x = n.input[0]
    xs = e.shape(x)
    g = e.node("Mul", [dys[0], e.scalar(1.0 / float(np.prod(xs[2:])), x, "inv_area")], f"{x}_grad_scaled")
    return [e.expand_to(g, xs, f"{x}_grad")]


@rule("GlobalMaxPool")
def _global_max_pool(e, n, dys, needs):
    x = n.input[0]
    xs = e.shape(x)
    p = int(np.prod(xs[2:]))
    flat = e.reshape(x, (xs[0], xs[1], p), f"{x}_planes")
    first = e.node("ArgMax", [flat], f"{x}_argmax", axis=2, keepdims=1)
    hit = e.node("Equal", [e.ints(np.arange(p), f"{x}_positions"), first], f"{x}_is_max")
    dy = e.reshape(dys[0], (xs[0], xs[1], 1), f"{x}_dy_planes")
    g = e.node("Where", [hit, dy, e.scalar(0, x, "zero")], f"{x}_grad_planes")
    return [e.reshape(g, xs, f"{x}_grad")]


LRN_BAND_CHANNELS = 256  # channel-window sums as one banded 1x1 Conv up to this many channels (see below)


def _channel_window_sum(e, t, shape, before, after, base, scale=1.0, bias=None):
    """For each channel c: ``scale`` times the sum over channels [c - before, c + after] of t (zeros
    outside), plus ``bias``. Up to LRN_BAND_CHANNELS channels one 1x1 Conv whose weight is the banded
    C x C matrix does it all (measured in ORT: ~2x faster than Pad + a Slice per window position + Sum
    at 16 to 96 channels, even at 256); above, the Slice form (exact, unlike a running CumSum)."""
    c, r = shape[1], len(shape)
    dtype = e.np_dtype(t)
    if c <= LRN_BAND_CHANNELS and r >= 3:  # Conv needs a spatial axis
        band = np.zeros((c, c) + (1,) * (r - 2))
        for o in range(c):
            band[o, max(0, o - before):min(c, o + after + 1)] = scale
        inputs = [t, e.const(band, dtype, f"{base}_band")]
        if bias is not None:
            inputs.append(e.const(np.full(c, bias), dtype, f"{base}_bias"))
        return e.node("Conv", inputs, base, kernel_shape=[1] * (r - 2))
    pads, pads_end = [0] * r, [0] * r
    pads[1], pads_end[1] = before, after
    tp = e.node("Pad", [t, e.ints(pads + pads_end, f"{base}_pads")], f"{base}_padded") if before or after else t
    axis = e.ints([1], f"{base}_axis")
    parts = [e.node("Slice", [tp, e.ints([j], f"{base}_st"), e.ints([j + c], f"{base}_en"), axis], f"{base}_sl")
             for j in range(before + after + 1)] if before or after else [t]
    out = parts[0] if len(parts) == 1 else e.node("Sum", parts, f"{base}_sum")
    if scale != 1.0:
        out = e.node("Mul", [out, e.scalar(scale, t, "window_scale")], f"{base}_scaled")
    if bias is not None:
        out = e.node("Add", [out, e.scalar(bias, t, "window_bias")], f"{base}_biased")
    return out


def _neg_pow(e, s, beta, base):
    """s^-beta for s > 0: by square roots where beta is 1/2 or 3/4 (exact to rounding, and cheaper in
    ORT than Exp(-beta Log s), which is itself ~3x cheaper than ORT's Pow), else by Exp and Log."""
    if beta == 0.5:
        return e.node("Reciprocal", [e.node("Sqrt", [s], f"{base}_sqrt")], base)
    if beta == 0.75:
        r2 = e.node("Sqrt", [s], f"{base}_sqrt")
        r4 = e.node("Sqrt", [r2], f"{base}_sqrt_sqrt")
        return e.node("Reciprocal", [e.node("Mul", [r2, r4], f"{base}_pow34")], base)
    log_s = e.node("Log", [s], f"{base}_log")
    return e.node("Exp", [e.node("Mul", [log_s, e.scalar(-beta, s, "neg_beta")], f"{base}_log_pow")], base)


def _lrn_params(n):
    a = _attrs(n)
    size = int(a["size"])
    return size, float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0))


def lrn_terms(e, n):
    """``(s, s^-beta)`` of LRN node ``n`` on its input: s = bias + alpha/size * the sum of x^2 over
    channels [c - (size-1)//2, c + size-1 - (size-1)//2] (ONNX's window). The one decomposition both
    the forward rewrite (:func:`_lower_lrn`) and the gradient rule read."""
    size, alpha, beta, bias = _lrn_params(n)
    x = n.input[0]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    elem, xs = e.elem(x), e.shape(x)
    sq = e.set_type(e.node("Mul", [x, x], f"{x}_sq"), elem, xs)
    s = e.set_type(_channel_window_sum(e, sq, xs, lo, hi, f"{x}_lrn_s", scale=alpha / size, bias=bias), elem, xs)
    return s, e.set_type(_neg_pow(e, s, beta, f"{x}_lrn_s_pow"), elem, xs)


def _lower_lrn(e, n):
    """The forward LRN of a training graph as x * s^-beta (:func:`lrn_terms`): ORT's own LRN kernel is
    ~3x to 5x slower than these ops (AlexNet's LRN shapes), and the gradient reuses s and s^-beta."""
    s, s_pow = lrn_terms(e, n)
    e.node("Mul", [n.input[0], s_pow], f"{n.output[0]}_lrn", outputs=[n.output[0]])
    return {"s": s, "s_pow": s_pow}


@rule("LRN", forward=_lower_lrn)
def _lrn(e, n, dys, needs):
    """y = x * s^-beta (:func:`lrn_terms`); dx = dy * s^-beta - 2 alpha beta / size * x * sum over the
    reverse window of dy * y / s. s and s^-beta come from the lowered forward when it was lowered
    (``e.saved``), else are computed here (a Caffe2 LRNGradient lowered on its own)."""
    size, alpha, beta, bias = _lrn_params(n)
    x, y, dy = n.input[0], n.output[0], dys[0]
    saved = e.saved.get(y)
    s, s_pow = (saved["s"], saved["s_pow"]) if saved else lrn_terms(e, n)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    direct = e.node("Mul", [dy, s_pow], f"{x}_lrn_direct")
    t = e.set_type(e.node("Div", [e.node("Mul", [dy, y], f"{x}_lrn_dy_y"), s], f"{x}_lrn_t"), e.elem(x), e.shape(x))
    back = _channel_window_sum(e, t, e.shape(x), hi, lo, f"{x}_lrn_back", scale=2.0 * alpha * beta / size)
    cross = e.node("Mul", [back, x], f"{x}_lrn_cross")
    return [e.node("Sub", [direct, cross], f"{x}_grad")]


@rule("BatchNormalization")
def _batch_norm(e, n, dys, needs):
    """Inference form: mean and var are constants. Training form (training_mode=1): batch statistics.

    With c = x - mean, inv = 1/sqrt(var + eps), k = scale * inv and sums S() over all axes but the channels:
    dbias = S(dy), dscale = inv * S(dy * c) and, in training, dx = k * (dy - S(dy)/m) - c * (k * inv^2 * S(dy * c)/m)
    (inference: dx = k * dy). x-hat is never formed: only c and dy * c take a pass over the tensor each."""
    a = _attrs(n)
    eps = float(a.get("epsilon", 1e-5))
    x, scale, bias, mean, var = n.input[:5]
    xs = e.shape(x)
    r = len(xs)
    axes = [0] + list(range(2, r))
    cshape = (1, xs[1]) + (1,) * (r - 2)
    dy = dys[0]
    training = int(a.get("training_mode", 0))
    inv_m = e.scalar(1.0 / float(np.prod([xs[i] for i in axes])), x, "inv_m")
    if training:
        mu = e.node("Mul", [e.reduce_sum(x, axes, True, f"{x}_bn_sum"), inv_m], f"{x}_bn_mean")
        centred = e.node("Sub", [x, mu], f"{x}_bn_centred")
        if e.opset >= 18:  # ReduceSumSquare takes its axes as an input from opset 18, an attribute before
            sq = e.node("ReduceSumSquare", [centred, e.ints(axes, f"{x}_bn_sq_axes")], f"{x}_bn_sq_sum", keepdims=1)
        else:
            sq = e.node("ReduceSumSquare", [centred], f"{x}_bn_sq_sum", axes=axes, keepdims=1)
        v = e.node("Mul", [sq, inv_m], f"{x}_bn_var")
    else:
        centred = e.node("Sub", [x, e.reshape(mean, cshape, f"{mean}_bn_c")], f"{x}_bn_centred")
        v = e.reshape(var, cshape, f"{var}_bn_c")
    inv = e.node("Reciprocal", [e.node("Sqrt", [e.node("Add", [v, e.scalar(eps, x, "eps")], f"{x}_bn_var_eps")],
                                       f"{x}_bn_std")], f"{x}_bn_inv_std")
    out = [None] * len(n.input)
    sum_dy_c = None  # S(dy * c), keepdims
    if needs[1] or (needs[0] and training):
        sum_dy_c = e.reduce_sum(e.node("Mul", [dy, centred], f"{x}_bn_dy_c"), axes, True, f"{x}_bn_sum_dy_c")
    sum_dy = None
    if needs[2] or (needs[0] and training):
        sum_dy = e.reduce_sum(dy, axes, True, f"{x}_bn_dbias")
    if needs[0]:
        k = e.node("Mul", [e.reshape(scale, cshape, f"{scale}_bn_c"), inv], f"{x}_bn_k")
        if training:
            dy_c = e.node("Sub", [dy, e.node("Mul", [sum_dy, inv_m], f"{x}_bn_mean_dy")], f"{x}_bn_dy_less_mean")
            b = e.node("Mul", [e.node("Mul", [k, e.node("Mul", [inv, inv], f"{x}_bn_inv_sq")], f"{x}_bn_k_inv_sq"),
                               e.node("Mul", [sum_dy_c, inv_m], f"{x}_bn_mean_dy_c")], f"{x}_bn_b")
            out[0] = e.node("Sub", [e.node("Mul", [dy_c, k], f"{x}_bn_k_dy"), e.node("Mul", [centred, b], f"{x}_bn_b_c")],
                            f"{x}_grad")
        else:
            out[0] = e.node("Mul", [dy, k], f"{x}_grad")
    if needs[1]:
        out[1] = e.reshape(e.node("Mul", [sum_dy_c, inv], f"{x}_bn_dscale"), e.shape(scale), f"{scale}_grad")
    if needs[2]:
        out[2] = e.reshape(sum_dy, e.shape(bias), f"{bias}_grad")
    return out


# ----------------------------------------------------------------------------------------------------------
# dropout


def _add_mask(node, names):
    if not int(_attrs(node).get("is_test", 0)) and (len(node.output) < 2 or not node.output[1]):
        del node.output[1:]
        node.output.append(names(f"{node.output[0]}_mask"))


def _caffe2_dropout_rule(grad_op):
    """Caffe2's gradient maker for a forward dropout op whose gradient op is ``grad_op``: grad_op(dY, mask) in
    training, grad_op(dY) in test (Dropout -> DropoutGrad, BitmaskDropout -> BitmaskDropoutGrad)."""

    def rule_fn(e, n, dys, needs):
        a = _attrs(n)
        is_test = int(a.get("is_test", 0))
        kw = {"ratio": float(a.get("ratio", 0.5)), "is_test": is_test}
        if "engine" in a:
            kw["engine"] = _text(a["engine"])
        inputs = [dys[0]] if is_test else [dys[0], n.output[1]]
        return [e.node(grad_op, inputs, f"{n.input[0]}_grad", domain=n.domain or DOMAIN, **kw)]

    rule_fn.__doc__ = f"{grad_op}(dY, mask) in training, {grad_op}(dY) in test."
    return rule_fn


def _caffe2_dropout_grad(e, n, dys, needs):
    """A dropout gradient op is linear in dY: its gradient is the same op again with the same mask and attributes."""
    kw = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    kw = {k: (_text(v) if isinstance(v, bytes) else v) for k, v in kw.items()}
    return [e.node(n.op_type, [dys[0]] + list(n.input[1:2]), f"{n.input[0]}_grad", domain=n.domain or DOMAIN, **kw),
            None]


for _forward_op, _grad_op in _defs.MASK_FORMATS.values():
    rule(_forward_op, domain=DOMAIN, prepare=_add_mask)(_caffe2_dropout_rule(_grad_op))
    rule(_grad_op, domain=DOMAIN)(_caffe2_dropout_grad)


def _onnx_dropout_training(node, constants):
    """Whether a standard Dropout runs in training mode (its training_mode input, a constant; default off)."""
    if len(node.input) < 3 or not node.input[2]:
        return False
    value = constants.get(node.input[2])
    if value is None:
        raise ValueError(f"Dropout {node.name or node.output[0]!r}: its training_mode input must be a constant")
    return bool(np.asarray(value).reshape(-1)[0])


@rule("Dropout")
def _onnx_dropout(e, n, dys, needs):
    """Standard Dropout: dX = dY * mask / (1 - ratio) in training mode (mask: the bool output), dY in inference."""
    if not _onnx_dropout_training(n, e.constants):
        return [dys[0], None, None][: len(n.input)]
    if len(n.output) < 2 or not n.output[1]:
        raise ValueError(f"Dropout {n.name or n.output[0]!r}: a training-mode Dropout needs its mask output for the gradient")
    ratio_name = n.input[1] if len(n.input) > 1 and n.input[1] else None
    ratio = 0.5 if ratio_name is None else e.constants.get(ratio_name)
    if ratio is None:
        raise ValueError(f"Dropout {n.name!r}: its ratio input must be a constant")
    ratio = float(np.asarray(ratio).reshape(-1)[0])
    x = n.input[0]
    maskf = e.node("Cast", [n.output[1]], f"{x}_mask_f", to=e.elem(x))
    scale = e.scalar(1.0 / (1.0 - ratio) if ratio < 1 else 0.0, x, "drop_scale")
    masked = e.node("Mul", [dys[0], maskf], f"{x}_grad_masked")
    return [e.node("Mul", [masked, scale], f"{x}_grad"), None, None][: len(n.input)]


# ----------------------------------------------------------------------------------------------------------
# whole graphs


def _constants(graph):
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    out[n.output[0]] = np.asarray(helper.get_attribute_value(a))
    return out


def _default_opset(model):
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o
    return None


def raise_opset(model):
    """Raise the model's default opset to 17 (what every emitted op is written for) when lower; 13 is the least."""
    o = _default_opset(model)
    if o is None:
        model.opset_import.append(helper.make_opsetid("", EMIT_OPSET))
        return EMIT_OPSET
    if o.version < MIN_OPSET:
        raise ValueError(f"gradients need opset {MIN_OPSET} or later (Softmax over one axis); the model has {o.version}")
    o.version = max(o.version, EMIT_OPSET)
    if model.ir_version < 8:
        model.ir_version = 8
    return o.version


def _is_float(types, t):
    tp = types.get(t)
    return tp is not None and tp.tensor_type.elem_type in FLOAT_TYPES


def add_backward(model, loss, wrt, *, seed_name="loss_grad_seed", reserve=(), lower_forward=True):
    """Append the backward graph of scalar ``loss`` with respect to tensors ``wrt`` to a copy of ``model``.

    Returns ``(model, grads, types)``: ``grads`` maps each name of ``wrt`` to its gradient tensor, or
    None when the loss does not depend on it through differentiable ops; ``types`` holds every tensor's
    type. Nodes that need a rule and have none raise :class:`UnsupportedGradientError` naming all of
    them. Forward nodes may gain outputs (Dropout masks, MaxPool indices) that rules read. ``reserve``:
    names the backward must not use (the caller's output names). ``lower_forward``: replace forward
    nodes that have a lowering (:data:`FORWARD`: LRN) on the differentiated path by it, so the
    backward reuses its intermediate tensors; the replaced nodes are recorded in ``metadata_props``
    for :func:`restore_forward`.
    """
    model = copy.deepcopy(model)
    g = model.graph
    opset = raise_opset(model)
    names = _Names(g)
    names.used.update(reserve)
    types = _infer(model)
    if loss not in types:
        raise ValueError(f"loss {loss!r} is not a tensor of the graph")
    wrt = list(wrt)
    for t in wrt:
        if t not in types:
            raise ValueError(f"{t!r} is not a tensor of the graph")
        if not _is_float(types, t):
            raise ValueError(f"{t!r} is not a floating-point tensor: it has no gradient")
    if not _is_float(types, loss):
        raise ValueError(f"loss {loss!r} is not a floating-point tensor")
    lshape = Emitter(types, names).shape(loss)
    if any(d != 1 for d in lshape):
        raise ValueError(f"loss {loss!r} must be a scalar, its shape is {list(lshape)}")

    depends = set(wrt)
    for n in g.node:
        if _key(n) in NO_GRADIENT:
            continue
        if any(i in depends for i in n.input):
            depends.update(o for o in n.output if o and _is_float(types, o))
    feeds_loss, on_path = {loss}, []
    for n in reversed(g.node):
        if any(o in feeds_loss for o in n.output) and _key(n) not in NO_GRADIENT:
            ins = [i for i in n.input if i and i in depends and _is_float(types, i)]
            if ins:
                feeds_loss.update(ins)
                on_path.append(n)
    missing = OrderedDict()
    for n in reversed(on_path):
        if _key(n) not in RULES:
            missing.setdefault(_op_label(*_key(n)), []).append(n.name or n.output[0])
    if missing:
        raise UnsupportedGradientError(missing)
    prepared = False
    consts = _constants(g)
    for n in on_path:
        if _key(n) == ("", "Dropout") and _onnx_dropout_training(n, consts) and (len(n.output) < 2 or not n.output[1]):
            del n.output[1:]
            n.output.append(names(f"{n.output[0]}_mask"))
            prepared = True
        hook = PREPARE.get(_key(n))
        if hook is not None:
            before = list(n.output)
            hook(n, names)
            prepared |= list(n.output) != before
    if prepared:
        types.update(_infer(model))

    def needs(t):
        return bool(t) and t in depends and t in feeds_loss

    e = Emitter(types, names, opset, consts)
    lowered = {}  # forward output -> the nodes replacing its node (FORWARD)
    if lower_forward:
        for n in reversed(on_path):  # forward order
            lower = FORWARD.get(_key(n))
            if lower is not None:
                e.saved[n.output[0]] = lower(e, n)
                lowered[n.output[0]], e.nodes = e.nodes, []
    partial = {}

    def grad_of(t):
        parts = partial.get(t)
        if not parts:
            return None
        if len(parts) > 1:
            partial[t] = [e.node("Sum", parts, f"{t}_grad_sum")]
        return partial[t][0]

    partial[loss] = [e.const(np.ones(lshape), e.np_dtype(loss), seed_name)]
    for n in on_path:  # reverse topological order
        dys = [grad_of(o) if o else None for o in n.output]
        if all(d is None for d in dys):
            continue
        grads = RULES[_key(n)](e, n, dys, [needs(i) for i in n.input])
        for i, gname in zip(n.input, grads):
            if gname is not None and needs(i):
                e.types.setdefault(gname, types[i])
                partial.setdefault(i, []).append(gname)
    grads = {t: grad_of(t) for t in wrt}
    if lowered:
        originals = {n.output[0]: base64.b64encode(n.SerializeToString()).decode() for n in g.node
                     if n.output and n.output[0] in lowered}
        forward = [copy.deepcopy(m) for n in g.node for m in (lowered.get(n.output[0], [n]) if n.output else [n])]
        del g.node[:]
        g.node.extend(forward)
        model.metadata_props.add(key=LOWERED_KEY, value=json.dumps(originals))
    g.node.extend(e.nodes)
    ensure_opset(model, DOMAIN)
    return model, grads, types


def restore_forward(model):
    """Put back, in place, the forward nodes :func:`add_backward` lowered (recorded in ``metadata_props``
    under LOWERED_KEY): each replaces the node that writes its output, leaving the lowering's other
    nodes unused. Exports of a trained model so hold the same nodes as a fresh conversion."""
    props = [p for p in model.metadata_props if p.key != LOWERED_KEY]
    recorded = [p.value for p in model.metadata_props if p.key == LOWERED_KEY]
    if not recorded:
        return model
    originals = {}
    for value in recorded:
        originals.update({y: onnx.NodeProto.FromString(base64.b64decode(v)) for y, v in json.loads(value).items()})
    for i, n in enumerate(model.graph.node):
        if n.output and n.output[0] in originals:
            model.graph.node[i].CopyFrom(originals[n.output[0]])
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    return model


def _value_info(name, tp):
    vi = onnx.ValueInfoProto()
    vi.name = name
    vi.type.CopyFrom(tp)
    return vi


def build_gradient_model(model, loss, params=None, *, wrt_inputs=(), keep_outputs=True, grad_suffix="_grad",
                         domain=DOMAIN):
    """One model computing the loss and the gradient of every parameter, runnable by plain onnxruntime.

    ``loss``: name of a scalar tensor of the forward graph. ``params``: names of the parameters to
    differentiate (default: every floating-point initializer); they are moved from the initializers to
    the graph inputs so a numpy optimiser can feed updated values each step. ``wrt_inputs``: other graph
    inputs to differentiate too. Outputs: ``loss``, then ``<p>_grad`` for each parameter and input (same
    order), then, with ``keep_outputs``, the forward model's outputs and every exposed dropout mask.
    A parameter the loss does not depend on gets a zero gradient.
    """
    model = copy.deepcopy(model)
    g = model.graph
    if params is None:
        params = [t.name for t in g.initializer if t.data_type in FLOAT_TYPES]
    params = list(params)
    init = {t.name: t for t in g.initializer}
    input_names = {i.name for i in g.input}
    for p in params:
        if p in init:
            if p not in input_names:
                g.input.append(helper.make_tensor_value_info(p, init[p].data_type, list(init[p].dims)))
        elif p not in input_names:
            raise ValueError(f"parameter {p!r} is neither an initializer nor a graph input")
    kept = [t for t in g.initializer if t.name not in set(params)]
    del g.initializer[:]
    g.initializer.extend(kept)
    for n in g.node:  # training-mode masks are outputs of the gradients-only form
        if n.domain == domain and n.op_type in _defs.FORWARD_OPS:
            _add_mask(n, _Names(g))
    targets = params + list(wrt_inputs)
    model, grads, types = add_backward(model, loss, targets, reserve=[f"{t}{grad_suffix}" for t in targets])
    g = model.graph
    names = _Names(g)
    outputs = [_value_info(loss, types[loss])]
    extra = []
    for t in targets:
        out = f"{t}{grad_suffix}"
        gname = grads[t]
        if gname is None:
            zero = names(f"{t}_grad_zero")
            extra.append(helper.make_node("Mul", [t, zero + "_c"], [zero], name=names(f"{zero}_Mul")))
            arr = np.zeros((), helper.tensor_dtype_to_np_dtype(types[t].tensor_type.elem_type))
            extra.insert(-1, helper.make_node("Constant", [], [zero + "_c"], value=numpy_helper.from_array(arr)))
            gname = zero
        extra.append(helper.make_node("Identity", [gname], [out], name=names(f"{out}_out")))
        outputs.append(_value_info(out, types[t]))
    g.node.extend(extra)
    if keep_outputs:
        have = {o.name for o in outputs}
        outputs += [o for o in g.output if o.name not in have]
        have |= {o.name for o in outputs}
        masks = [n.output[1] for n in g.node if len(n.output) > 1 and n.output[1]
                 and ((n.op_type in _defs.FORWARD_OPS and n.domain == domain)
                      or (n.op_type == "Dropout" and n.domain in ("", "ai.onnx")))]
        outputs += [_value_info(m, types[m]) for m in masks if m not in have and m in types]
    del g.output[:]
    g.output.extend(outputs)
    return model
