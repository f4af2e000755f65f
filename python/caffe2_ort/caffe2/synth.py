"""Random init_nets of consistent shapes for a Caffe2 predict net, so any net runs without its weights.

:func:`synthesize` walks the predict net with known input shapes and chooses every weight's shape
from Caffe2's rules: a Conv weight is ``[M, C/group, *kernel]`` with ``C`` from the incoming blob and
the output width ``M`` chosen (``width``, rounded up to a multiple of the group); an FC weight is
``[N, K]`` with ``K`` the flattened feature count at ``axis`` (written with leading 1-dims when the op
flattens the weight at ``axis_w`` > 1), ``N = fc_width``; SpatialBN parameters follow the channel
count; broadcast operands follow the blob they broadcast onto.

Widths that the net ties together (a residual ``Sum`` of two convs, a ``Sum`` of a conv and a
concatenation, a grouped conv reading a conv's output) are made consistent by pinning: the shape
walk restarts with the free width set to the value the tie needs, until nothing conflicts. Choices
that cannot be reconciled raise :class:`ShapeError` naming the op.

Values are He-scaled normals (so deep nets neither vanish nor overflow), and SpatialBN's running
mean and variance are calibrated on a random input (``calibrate=True``): they are set to the batch
statistics the layer sees, as a trained net's would be, which keeps ResNet-style nets' activations
and logits of order one.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from . import ops
from . import schema
from . import shapes as S
from .errors import Caffe2Error, MissingValueInfoError, ShapeError, UnsupportedOpsError
from .limits import Budget
from .netdef import Args, make_given_fill

class _Pin(Exception):
    def __init__(self, key, value):
        self.key, self.value = key, value


class _Walk:
    """One shape walk over the net with the current pins; raises _Pin when a tie needs a new pin."""

    def __init__(self, net, data, width, fc_width, pins, budget):
        self.net, self.width, self.fc_width, self.pins = net, width, fc_width, pins
        self.budget = Budget(budget.max_bytes)  # weights count against the limit per walk
        self.infos = {b: S.Info(np.dtype(dt), self.budget.check(f"input {b!r}", sh, dt, claim=False)) for b, (dt, sh) in data.items()}
        self.origin = {}  # blob -> (pin key, axis) of a width this walk chose
        self.weights = {}  # blob -> (Info, kind, fan_in, op index)

    def free(self, blob, axis):
        """(pin key, axis) when ``blob``'s dim ``axis`` is a width this walk chose and may still change."""
        o = self.origin.get(blob)
        return o if o is not None and o[1] == axis and o[0] not in self.pins else None

    @staticmethod
    def pin(key, value):
        """Restart the walk with width ``key`` set to ``value``."""
        raise _Pin(key, value)

    @staticmethod
    def unread(where, missing):
        raise ops.unread_error(where, missing[0][1])

    def tie(self, where, blobs):
        """All ``blobs`` must have the same shape (Sum, same-shape binary ops)."""
        ref = self.infos[blobs[0]].shape
        for b in blobs[1:]:
            s = self.infos[b].shape
            if len(s) != len(ref):
                raise ShapeError(f"{where}: inputs of ranks {len(ref)} and {len(s)} cannot be made equal")
            for d in range(len(s)):
                if s[d] == ref[d]:
                    continue
                fb = self.free(b, d)
                if fb:
                    raise _Pin(fb[0], ref[d])
                fa = self.free(blobs[0], d)
                if fa:
                    raise _Pin(fa[0], s[d])
                raise ShapeError(f"{where}: shapes {list(ref)} and {list(s)} differ in dim {d} and neither width is free")

    def weight(self, op, k, blob, shape, kind, fan_in=1):
        if blob in self.weights:
            prev = self.weights[blob][0].shape
            if tuple(prev) != tuple(shape):
                raise ShapeError(f"{op.type} op #{k}: weight {blob!r} is shared with shape {list(prev)}, here it needs {list(shape)}")
            return
        info = S.Info(np.dtype(np.float32), self.budget.check(f"{op.type} op #{k}: weight {blob!r}", shape, np.float32))
        self.weights[blob] = (info, kind, fan_in, k)
        self.infos[blob] = info

    def run(self):
        for k, op in enumerate(self.net.op):
            self.step(k, op)
        return self

    def step(self, k, op):
        """One op: its registered synthesiser rule chooses the weights it reads, then its shape rule runs."""
        args = Args(op)
        where = f"{op.type} op #{k}" + (f" ({op.name})" if op.name else "")
        label = ops.unsupported_variant(op, args)
        if label:
            raise Caffe2Error(f"{where}: cannot synthesise weights for {label}")
        d = ops.REGISTRY[S.canonical(op.type)]
        missing = [(s, b) for s, b in enumerate(op.input) if b not in self.infos]
        if missing and missing[0][0] == 0:
            self.unread(where, missing)
        ops.check_arity(op, where)
        x = self.infos[op.input[0]]
        in_origin = self.origin.get(op.input[0]) if op.input else None
        if d.synth is not None:
            d.synth(self, op, k, args, x, missing, where)
        elif missing:
            self.unread(where, missing)
        ins = [self.infos.get(b) for b in op.input]
        outs = ops.infer(op, ins, where, self.budget)
        for b, info in zip(op.output, outs):
            self.infos[b] = info
            self.origin.pop(b, None)
        key = ("op", k)
        if d.width == "new_channels":
            self.origin[op.output[0]] = (key, 1)
        elif d.width == "new_last":
            self.origin[op.output[0]] = (key, len(outs[0].shape) - 1)
        elif in_origin is not None and (d.width == "keep" or (d.width == "channels" and in_origin[1] == 1)):
            self.origin[op.output[0]] = in_origin


def choose_shapes(net, data, *, width=16, fc_width=32, max_pins=256, budget=None):
    """The shape walk with pinning; returns the final _Walk (weights and all blob infos)."""
    pins = {}
    budget = Budget.of(budget)
    for _ in range(max_pins):
        walk = _Walk(net, data, width, fc_width, pins, budget)
        try:
            return walk.run()
        except _Pin as pin:
            if pin.key in pins:
                raise ShapeError(f"cannot make widths consistent: {pin.key} needs both {pins[pin.key]} and {pin.value}") from None
            pins[pin.key] = int(pin.value)
    raise ShapeError(f"cannot make widths consistent after {max_pins} adjustments")  # pragma: no cover


def _values(rng, info, kind, fan_in):
    shape = info.shape
    if kind in ("conv", "fc"):
        std = math.sqrt(2.0 / max(fan_in, 1)) if kind == "conv" else math.sqrt(1.0 / max(fan_in, 1))
        return rng.normal(0.0, std, shape)
    if kind == "bias":
        return rng.normal(0.0, 0.05, shape)
    if kind == "bn_scale":
        return rng.uniform(0.5, 1.5, shape)
    if kind in ("bn_bias", "bn_mean", "offset"):
        return rng.normal(0.0, 0.1, shape)
    if kind == "bn_var":
        return rng.uniform(0.5, 1.5, shape)
    if kind == "scale":
        return rng.uniform(0.5, 1.5, shape)
    raise AssertionError(kind)  # pragma: no cover


def synthesize(predict_net, data, *, seed=0, width=16, fc_width=32, calibrate=True, name=None, budget=None):
    """A random init_net for ``predict_net``.

    ``data``: ``{input name: (numpy dtype, shape)}`` for the data inputs (value_info plus --input).
    ``budget``: a limits.Budget or byte count (None: the default limit) that the weights, and every
    blob of the calibration run, must fit. Returns ``(init_net, blobs)``: a NetDef of GivenTensorFill
    ops (in first-use order) and the same values as ``{name: float32 array}``.
    """
    if width < 1 or fc_width < 1:
        raise Caffe2Error("width and fc_width must be positive")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Caffe2Error(f"the seed must be a non-negative integer, not {seed!r}")
    budget = Budget.of(budget)
    bad = Counter(label for op in predict_net.op if (label := ops.unsupported_variant(op, Args(op))))
    if bad:
        raise UnsupportedOpsError(bad, where="predict_net (synth-init)")
    walk = choose_shapes(predict_net, data, width=width, fc_width=fc_width, budget=budget)
    for b, (info, _kind, _fan_in, k) in walk.weights.items():
        budget.check(f"weight {b!r}", info.shape, info.dtype)
    if calibrate:
        for b, (dt, sh) in data.items():
            budget.check(f"calibration input {b!r}", sh, dt)
    rng = np.random.default_rng(seed)
    blobs = {}
    for b, (info, kind, fan_in, _k) in walk.weights.items():
        blobs[b] = _values(rng, info, kind, fan_in).astype(np.float32)
    if calibrate and any(S.canonical(op.type) == "SpatialBN" for op in predict_net.op):
        _calibrate(predict_net, data, blobs, walk.weights, rng)
    init = schema.NetDef(name=name or f"{predict_net.name or 'net'}_init")
    for b, arr in blobs.items():
        init.op.append(make_given_fill(b, arr))
    init.external_output.extend(blobs)
    return init, blobs


def _calibrate(net, data, blobs, weights, rng):
    """Set each SpatialBN's mean and variance (when synthesised) to the statistics of its input on a
    random data batch, layer by layer, as a trained net's running statistics would be."""
    from .executor import Executor

    inputs = {b: rng.standard_normal(sh).astype(dt) for b, (dt, sh) in data.items()}

    def hook(k, op, ws):
        if S.canonical(op.type) != "SpatialBN":
            return
        x = np.asarray(ws[op.input[0]], dtype=np.float64)
        axes = (0,) + tuple(range(2, x.ndim))
        if op.input[3] in weights and weights[op.input[3]][1] == "bn_mean":
            blobs[op.input[3]][...] = x.mean(axis=axes)
            ws[op.input[3]] = blobs[op.input[3]]
        if op.input[4] in weights and weights[op.input[4]][1] == "bn_var":
            blobs[op.input[4]][...] = x.var(axis=axes) + 1e-3
            ws[op.input[4]] = blobs[op.input[4]]

    Executor(net, dict(blobs)).run(inputs, before_op=hook)
