"""Caffe2's sizing helpers (conv/pool geometry, FC flattening, legacy broadcast, Reshape targets).

The per-op shape rules that use them live in :mod:`.ops`, next to each op's ONNX lowering and
synthesiser rule.

Everything here follows Caffe2's own sizing (``ConvPoolOpBase::ComputeSizeAndPad``, FC's flattening
at ``axis``/``axis_w``, legacy broadcasting, ...). The numpy executor does not use this module: it
sizes its outputs by its own code, so the two stay independent checks of each other.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from .errors import ShapeError
from .limits import numel
from .netdef import Args

Info = namedtuple("Info", "dtype shape")

NOTSET, VALID, SAME, CAFFE_LEGACY_POOLING = 0, 1, 2, 3
LEGACY_PAD_NAMES = {NOTSET: "NOTSET", VALID: "VALID", SAME: "SAME", CAFFE_LEGACY_POOLING: "CAFFE_LEGACY_POOLING"}

ALIASES = {
    "Conv1D": "Conv", "Conv2D": "Conv", "Conv3D": "Conv",
    "ConvTranspose1D": "ConvTranspose", "ConvTranspose2D": "ConvTranspose", "ConvTranspose3D": "ConvTranspose",
    "MaxPool1D": "MaxPool", "MaxPool2D": "MaxPool", "MaxPool3D": "MaxPool",
    "AveragePool1D": "AveragePool", "AveragePool2D": "AveragePool", "AveragePool3D": "AveragePool",
}  # fmt: skip
BINARY_OPS = ("Add", "Sub", "Mul", "Div")


def canonical(op_type: str) -> str:
    return ALIASES.get(op_type, op_type)


# ----------------------------------------------------------------------------------------------
# conv / pool geometry


def _per_dim(args: Args, plural: str, singular: str, h: str, w: str, nd: int, default: int, where: str):
    if args.has(plural):
        v = args.ints(plural)
        if len(v) != nd:
            raise ShapeError(f"{where}: '{plural}' has {len(v)} values for {nd} spatial dims")
        return v
    if args.has(singular):
        return [args.int(singular)] * nd
    if args.has(h) or args.has(w):
        if nd != 2:
            raise ShapeError(f"{where}: '{h}'/'{w}' need 2 spatial dims, the input has {nd}")
        return [args.int(h, default), args.int(w, default)]
    return [default] * nd


def conv_pool_params(op, x_shape, where: str = ""):
    """Kernel, strides, dilations, pads (begin, end), output spatial size and flags of a conv/pool op,
    for an input of ``x_shape`` (NCHW...), following Caffe2's sizing rules."""
    t = canonical(op.type)
    args = Args(op)
    where = where or f"{op.type} op"
    nd = len(x_shape) - 2
    if nd < 1:
        raise ShapeError(f"{where}: input of rank {len(x_shape)}; conv and pool ops need N, C and spatial dims")
    spatial = list(x_shape[2:])
    global_pool = t in ("MaxPool", "AveragePool") and bool(args.int("global_pooling", 0))
    if global_pool:
        kernel = spatial
    else:
        kernel = _per_dim(args, "kernels", "kernel", "kernel_h", "kernel_w", nd, 0, where)
        if t in ("Conv", "ConvTranspose") and not any(args.has(a) for a in ("kernels", "kernel", "kernel_h", "kernel_w")):
            kernel = None  # from the weight's shape
    stride = _per_dim(args, "strides", "stride", "stride_h", "stride_w", nd, 1, where)
    dilation = _per_dim(args, "dilations", "dilation", "dilation_h", "dilation_w", nd, 1, where)
    if args.has("pads"):
        pads = args.ints("pads")
        if len(pads) != 2 * nd:
            raise ShapeError(f"{where}: 'pads' has {len(pads)} values for {nd} spatial dims (needs {2 * nd})")
        begin, end = pads[:nd], pads[nd:]
    elif args.has("pad"):
        begin = [args.int("pad")] * nd
        end = list(begin)
    elif any(args.has(a) for a in ("pad_t", "pad_l", "pad_b", "pad_r")):
        missing = [a for a in ("pad_t", "pad_l", "pad_b", "pad_r") if not args.has(a)]
        if missing or nd != 2:
            raise ShapeError(f"{where}: pad_t/pad_l/pad_b/pad_r must all be given, for 2 spatial dims")
        begin = [args.int("pad_t"), args.int("pad_l")]
        end = [args.int("pad_b"), args.int("pad_r")]
    else:
        begin, end = [0] * nd, [0] * nd
    if global_pool:
        stride, dilation, begin, end = [1] * nd, [1] * nd, [0] * nd, [0] * nd
    adj = _per_dim(args, "adjs", "adj", "adj_h", "adj_w", nd, 0, where) if t == "ConvTranspose" else [0] * nd
    legacy = args.int("legacy_pad", NOTSET)
    if legacy not in LEGACY_PAD_NAMES:
        raise ShapeError(f"{where}: unknown legacy_pad {legacy}")
    group = args.int("group", 1)
    if group < 1:
        raise ShapeError(f"{where}: group must be at least 1, got {group}")
    if kernel is not None and any(k < 1 for k in kernel):
        raise ShapeError(f"{where}: kernel sizes must be positive, got {kernel}")
    if any(a < 0 for a in adj):
        raise ShapeError(f"{where}: negative adj {adj}")
    if any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise ShapeError(f"{where}: strides and dilations must be positive (strides {stride}, dilations {dilation})")
    if any(p < 0 for p in begin + end):
        raise ShapeError(f"{where}: negative padding {begin + end}")
    return dict(
        nd=nd, kernel=kernel, stride=stride, dilation=dilation, begin=begin, end=end, adj=adj,
        legacy=legacy, group=group, global_pool=global_pool,
    )  # fmt: skip


def compute_size_and_pad(in_size, stride, kernel, dilation, legacy, pad_head, pad_tail, where=""):
    """Caffe2's ComputeSizeAndPad for one spatial dim: returns (out_size, pad_head, pad_tail)."""
    dk = dilation * (kernel - 1) + 1
    if legacy == NOTSET:
        if in_size + pad_head + pad_tail < dk:
            raise ShapeError(f"{where}: window {dk} larger than the padded input {in_size + pad_head + pad_tail}")
        return (in_size + pad_head + pad_tail - dk) // stride + 1, pad_head, pad_tail
    if legacy == VALID:
        if in_size < dk:
            raise ShapeError(f"{where}: window {dk} larger than the input {in_size} (legacy_pad VALID)")
        return (in_size - dk) // stride + 1, 0, 0
    if legacy == SAME:
        if dilation != 1:
            raise ShapeError(f"{where}: legacy_pad SAME does not allow dilation")
        target = (in_size + stride - 1) // stride
        needed = (target - 1) * stride + kernel - in_size
        if needed < 0:
            raise ShapeError(f"{where}: legacy_pad SAME with kernel {kernel} < stride {stride} is not supported")
        head = needed // 2  # Caffe2 puts the odd pixel at the end
        return (in_size + needed - dk) // stride + 1, head, needed - head
    # CAFFE_LEGACY_POOLING: Caffe's ceil sizing, expressed as a larger tail pad (exact integer
    # forms of Caffe's ceil(float(span) / stride) and int(float(span) / stride), which truncates)
    if dilation != 1:
        raise ShapeError(f"{where}: legacy_pad CAFFE_LEGACY_POOLING does not allow dilation")
    span = in_size + 2 * pad_head - kernel
    out = -(-span // stride) + 1
    if pad_head > 0 and (out - 1) * stride >= in_size + pad_head:
        out -= 1
    standard = (span // stride if span >= 0 else -(-span // stride)) + 1
    if out < standard or out < 1:
        raise ShapeError(f"{where}: legacy pooling gives output size {out} for input {in_size}")
    return out, pad_head, pad_head + stride * (out - standard)


def resolve_conv_pool(op, x_shape, w_shape=None, where=""):
    """conv_pool_params plus the output spatial size and the effective pads, for known shapes."""
    p = conv_pool_params(op, x_shape, where)
    where = where or f"{op.type} op"
    t = canonical(op.type)
    if p["kernel"] is None:
        if w_shape is None or len(w_shape) != len(x_shape):
            raise ShapeError(f"{where}: no kernel argument and no weight of rank {len(x_shape)} to take it from")
        p["kernel"] = list(w_shape[2:])
        if any(k < 1 for k in p["kernel"]):
            raise ShapeError(f"{where}: the weight {list(w_shape)} gives kernel sizes {p['kernel']}; they must be positive")
    out, begin, end = [], [], []
    for d in range(p["nd"]):
        if t == "ConvTranspose":
            o = (x_shape[2 + d] - 1) * p["stride"][d] + p["kernel"][d] + p["adj"][d] - p["begin"][d] - p["end"][d]
            if o < 1:
                raise ShapeError(f"{where}: output size {o} in spatial dim {d}")
            out.append(o)
            begin.append(p["begin"][d])
            end.append(p["end"][d])
            continue
        o, b, e = compute_size_and_pad(
            x_shape[2 + d], p["stride"][d], p["kernel"][d], p["dilation"][d], p["legacy"], p["begin"][d], p["end"][d], where
        )
        out.append(o)
        begin.append(b)
        end.append(e)
    p.update(out=out, begin=begin, end=end)
    return p


# ----------------------------------------------------------------------------------------------
# legacy broadcast


def legacy_broadcast_axis(a_shape, b_shape, axis, where=""):
    """Where B's dims sit inside A's under Caffe2's legacy broadcast (broadcast=1); checks the match."""
    if len(b_shape) > len(a_shape):
        raise ShapeError(f"{where}: broadcast operand of rank {len(b_shape)} is larger than rank {len(a_shape)}")
    if axis is None or axis == -1:
        axis = len(a_shape) - len(b_shape)
    if not 0 <= axis <= len(a_shape) - len(b_shape):
        raise ShapeError(f"{where}: broadcast axis {axis} out of range for shapes {list(a_shape)} and {list(b_shape)}")
    start, stop = 0, len(b_shape) - 1
    while start < len(b_shape) and b_shape[start] == 1:
        start += 1
    while stop >= start and b_shape[stop] == 1:
        stop -= 1
    for i in range(start, stop + 1):
        if a_shape[axis + i] != b_shape[i]:
            raise ShapeError(
                f"{where}: broadcast dimension mismatch: B {list(b_shape)} does not fit A {list(a_shape)} at axis {axis}"
            )
    return axis


def numpy_broadcast(shapes, where=""):
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ShapeError(f"{where}: shapes {[list(s) for s in shapes]} do not broadcast") from None


# ----------------------------------------------------------------------------------------------
# per-op output shapes


def need(ins, k, where):
    if k >= len(ins) or ins[k] is None:
        raise ShapeError(f"{where}: input {k} has no known shape")
    return ins[k]


def flatten2d(shape, axis):
    return (numel(shape[:axis]), numel(shape[axis:]))


def canonical_axis(axis, rank, where):
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < max(rank, 1):
        raise ShapeError(f"{where}: axis {axis} out of range for rank {rank}")
    return a


def concat_axis(args: Args, where):
    if args.has("axis"):
        if args.has("order"):
            raise ShapeError(f"{where}: both 'axis' and 'order' given (Caffe2 rejects this)")
        return args.int("axis")
    order = args.str("order", "NCHW")
    return 1 if order == "NCHW" else 3


def reshape_target(in_shape, new_shape, where):
    """Caffe2 Reshape's output shape: 0 copies the input dim at that index, -1 is inferred."""
    out = []
    for i, d in enumerate(new_shape):
        if d == 0:
            if i >= len(in_shape):
                raise ShapeError(f"{where}: shape {new_shape} copies dim {i} that the input (rank {len(in_shape)}) lacks")
            out.append(in_shape[i])
        else:
            out.append(d)
    total = numel(in_shape)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ShapeError(f"{where}: invalid shape {new_shape}")
    if -1 in out:
        known = numel([d for d in out if d != -1])
        if known == 0 or total % known:
            raise ShapeError(f"{where}: cannot reshape {list(in_shape)} to {new_shape}")
        out[out.index(-1)] = total // known
    if numel(out) != total:
        raise ShapeError(f"{where}: cannot reshape {list(in_shape)} ({total} elements) to {new_shape}")
    return tuple(out)
