"""Caffe2 training nets -> training-step models (the format of :mod:`caffe2_ort.training`).

A Caffe2 training net holds, in order, the forward ops, the loss-gradient seed (``ConstantFill``
of the loss), the gradient ops Caffe2's gradient makers emitted, and the optimizer's ops.
:func:`convert_training_net` translates each op in that order into one ONNX graph:

- forward ops through the converter's per-op registry (:mod:`.ops`), plus the loss ops
  (``SoftmaxWithLoss``, ``LabelCrossEntropy``, ``AveragedLoss``), ``Accuracy`` and ``StopGradient``;
- each gradient op is matched to the forward op it differentiates (same blobs, the type its gradient
  maker emits) and lowered by differentiating the ONNX nodes that forward op became, with the rules of
  :mod:`caffe2_ort.gradients` (:func:`~caffe2_ort.gradients.backprop`): one implementation per rule;
- the optimizer ops with :mod:`caffe2_ort.optimizers`' builders, or their Caffe2 formulas directly
  (``WeightedSum``, ``RmsProp``).

Blobs: the fed blobs (value info; data-reader outputs become fed inputs too) are graph inputs; every
blob the net reads before writing and also writes (parameters, momenta, moments, the iteration
counter, SpatialBN running statistics) is a state tensor whose initial value comes from the init
net; blobs read and never written (``ONE``, weight-decay constants) are initializers; mutexes vanish.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import gradients as GR
from .. import optimizers as OPT
from .. import training as TR
from . import netdef, ops
from . import random_fills as RF
from . import shapes as S
from .errors import Caffe2Error, FillError, ShapeError, UnsupportedOpsError
from .limits import Budget, check_shape
from .netdef import NUMPY_TO_ONNX, Args
from .shapes import Info


class TrainingNetError(Caffe2Error):
    """A training net whose gradient or optimizer ops do not fit its forward ops or its init net."""


# ----------------------------------------------------------------------------------------------
# what a training net is made of

OPTIMIZER_OPS = frozenset(["Iter", "AtomicIter", "LearningRate", "WeightedSum", "MomentumSGDUpdate", "MomentumSGD",
                           "Adagrad", "Adam", "RmsProp"])
DATA_READERS = frozenset(["TensorProtosDBInput", "ImageInput", "DBInput", "CreateDB", "ReadNextBatch",
                          "VideoInput"])
LOSS_OPS = frozenset(["SoftmaxWithLoss", "LabelCrossEntropy", "AveragedLoss", "Accuracy", "StopGradient"])
# Learning-rate policies this converter knows (docs/caffe2-training.md; Caffe2 1.8.1 has no multistep).
LR_POLICIES = ("fixed", "step", "exp", "inv", "poly")


class Grad:
    """How a Caffe2 gradient op relates to its forward op.

    ``forward``: the forward op types it differentiates; ``inputs``: how many inputs it takes (a
    tuple of allowed counts); ``dy``: ``[(gradient-op input slot, forward output slot)]``;
    ``outs(fwd)``: per gradient-op output, the forward input slot whose gradient it is.
    """

    def __init__(self, forward, inputs, dy, outs):
        self.forward = (forward,) if isinstance(forward, str) else tuple(forward)
        self.inputs = inputs
        self.dy = dy
        self.outs = outs if callable(outs) else (lambda fwd, _o=tuple(outs): _o)


def _conv_outs(fwd):
    return (1, 2, 0) if len(fwd.input) == 3 else (1, 0)


GRADIENT_OPS = {
    "FCGradient": Grad("FC", (3,), [(2, 0)], (1, 2, 0)),
    "ConvGradient": Grad("Conv", (3,), [(2, 0)], _conv_outs),
    "ConvTransposeGradient": Grad("ConvTranspose", (3,), [(2, 0)], _conv_outs),
    "ReluGradient": Grad("Relu", (2,), [(1, 0)], (0,)),
    "SigmoidGradient": Grad("Sigmoid", (2,), [(1, 0)], (0,)),
    "TanhGradient": Grad("Tanh", (2,), [(1, 0)], (0,)),
    "SoftmaxGradient": Grad("Softmax", (2,), [(1, 0)], (0,)),
    "MaxPoolGradient": Grad("MaxPool", (3,), [(2, 0)], (0,)),
    "AveragePoolGradient": Grad("AveragePool", (3,), [(2, 0)], (0,)),
    "LRNGradient": Grad("LRN", (3,), [(2, 0)], (0,)),  # (X, Y, dY)
    "SpatialBNGradient": Grad("SpatialBN", (5,), [(2, 0)], (0, 1, 2)),
    "DropoutGrad": Grad("Dropout", (1, 2), [(0, 0)], (0,)),
    "SoftmaxWithLossGradient": Grad("SoftmaxWithLoss", (4,), [(3, 1)], (0,)),
    "LabelCrossEntropyGradient": Grad("LabelCrossEntropy", (3,), [(2, 0)], (0,)),
    "AveragedLossGradient": Grad("AveragedLoss", (2,), [(1, 0)], (0,)),
    "AddGradient": Grad("Add", (3,), [(0, 0)], (0, 1)),
    "SubGradient": Grad("Sub", (3,), [(0, 0)], (0, 1)),
    "MulGradient": Grad("Mul", (3,), [(0, 0)], (0, 1)),
}
# Forward op types that Caffe2's gradient makers also emit as gradient ops (is_gradient_op set):
# Reshape(dY, old_shape) -> (dX, dims) for Reshape; Split(dY, split_info) -> (dA, dB, ...) for Concat.
GRADIENT_FORMS = {
    "Reshape": Grad("Reshape", (2,), [(0, 0)], (0,)),
    "Split": Grad("Concat", (2,), [(0, 0)], lambda fwd: tuple(range(len(fwd.input)))),
}
GRADIENT_OPS["ResizeLike"] = Grad("Flatten", (2,), [(0, 0)], (0,))  # ResizeLike(dY, X) -> dX for Flatten


def gradient_spec(op):
    """The :class:`Grad` of a gradient op, or None for any other op."""
    spec = GRADIENT_OPS.get(op.type)
    if spec is None and op.is_gradient_op:
        spec = GRADIENT_FORMS.get(op.type)
    return spec


for _alias, _t in S.ALIASES.items():
    if _t + "Gradient" in GRADIENT_OPS:
        GRADIENT_OPS[_alias + "Gradient"] = GRADIENT_OPS[_t + "Gradient"]


def is_training_net(net) -> bool:
    """A net holding gradient or optimizer ops."""
    return any(op.is_gradient_op or gradient_spec(op) or op.type in OPTIMIZER_OPS for op in net.op)


# ----------------------------------------------------------------------------------------------
# init nets: Given*Fill, ConstantFill, random fills drawn as Caffe2 draws them, CreateMutex

DEFAULT_SEED = 0


def evaluate_training_init(init_net, *, seed=DEFAULT_SEED, skip=(), budget=None):
    """``({blob: array}, mutexes, notes)`` of a training init net. Random fills are drawn with
    Caffe2's own generator (caffe2/random_fills.py) from each op's device_option.random_seed, so a
    seeded init net gives Caffe2's initial values; an op with no seed (Caffe2 would draw a fresh one)
    uses ``seed + its op index``. ``CreateMutex`` outputs are returned as mutexes."""
    budget = Budget.of(budget)
    bad = Counter(op.type for op in init_net.op
                  if op.type not in netdef.FILL_OPS and op.type not in RF.RANDOM_FILLS and op.type != "CreateMutex")
    if bad:
        raise UnsupportedOpsError(bad, where="init_net")
    blobs, mutexes, drawn = {}, [], []
    for k, op in enumerate(init_net.op):
        desc = f"init_net op #{k} {op.type} for {op.output[0] if op.output else '?'!r}"
        if op.type == "CreateMutex":
            mutexes.extend(op.output)
            continue
        if op.type in RF.RANDOM_FILLS:
            op_seed = RF.op_seed(op, init_net)
            value = RF.random_fill(op, seed + k if op_seed is None else op_seed, desc, budget)
            if op_seed is None:
                drawn.append(op.output[0])
        else:
            value = netdef.evaluate_fill(op, blobs, index=k, budget=budget)
        if op.output[0] not in skip:
            blobs[op.output[0]] = value
    notes = []
    if drawn:
        notes.append(f"init_net: {len(drawn)} random fill(s) carry no random_seed (Caffe2 would draw fresh seeds); "
                     f"seeded with --init-seed {seed} + op index: {', '.join(drawn)}")
    return blobs, mutexes, notes


# ----------------------------------------------------------------------------------------------
# the conversion


class _Ctx:
    """The graph being built (converter._Graph), the Emitter sharing its node list, and per-op records."""

    def __init__(self, g, budget):
        self.g = g
        self.budget = budget
        self.e = GR.Emitter({}, g.fresh)
        self.e.nodes = g.nodes
        self.op_nodes = {}  # Caffe2 op index -> (first node, end node) in g.nodes
        self.notes = []
        self._known_consts = []

    def types(self):
        """Sync the Emitter's types and known constants with the graph's infos and initializers."""
        for n, info in self.g.infos.items():
            if n not in self.e.types and info.shape is not None and None not in info.shape:
                self.e.types[n] = helper.make_tensor_type_proto(NUMPY_TO_ONNX[np.dtype(info.dtype)], list(info.shape))
        for t in self.g.initializers[len(self._known_consts):]:
            self.e.constants[t.name] = numpy_helper.to_array(t)
            self._known_consts.append(t.name)
        return self.e.types

    def alias(self, src, dst, info):
        """``dst`` = ``src`` (an Identity; Caffe2 blob versions keep their SSA names)."""
        self.g.node("Identity", [src], [dst], f"{dst}_out")
        self.g.infos[dst] = info


def _where(op, k):
    return f"{op.type} op #{k}" + (f" ({op.name})" if op.name else "")


def convert_training_net(train_net, init_net, value_info, *, rng="caffe2", seed=DEFAULT_SEED, opset=None,
                         ir_version=None, name=None, budget=None, check=True, mask_format="bool"):
    """A training-step model from a Caffe2 training net; returns ``(model, notes)``.

    ``value_info``: ``{blob: (numpy dtype, shape)}`` for the fed blobs. ``rng``: the converter's
    Dropout mask stream ("caffe2" = Caffe2's own, "philox"). ``seed``: numpy seed of the init
    net's random fills. ``mask_format="bits"``: BitmaskDropout/BitmaskDropoutGrad instead of
    Dropout/DropoutGrad (the same steps bit for bit, masks 8x smaller).
    """
    from . import converter as C

    opset = opset or C.DEFAULT_OPSET
    ir_version = ir_version or C.DEFAULT_IR_VERSION
    if rng not in C.RNG_MODES:
        raise Caffe2Error(f"rng must be one of {', '.join(C.RNG_MODES)}, not {rng!r}")
    C.check_mask_format(mask_format)
    C._check_opset(opset)
    C._check_ir_version(ir_version)
    budget = Budget.of(budget)
    netdef.check_net(train_net, "train_net")
    data = {k: (np.dtype(v[0]), check_shape(f"input {k!r}", v[1])) for k, v in (value_info or {}).items()}
    notes = []

    # data readers: their outputs become fed inputs
    net = type(train_net)()
    net.CopyFrom(train_net)
    readers = [op for op in net.op if op.type in DATA_READERS]
    if readers:
        fed = [b for op in readers for b in op.output if b not in op.input]
        missing = [b for b in fed if b not in data]
        if missing:
            raise TrainingNetError(f"{readers[0].type} op: its output(s) {', '.join(map(repr, missing))} become fed inputs "
                                   "and need value info (--value-info)")
        kept = [op for op in net.op if op.type not in DATA_READERS]
        del net.op[:]
        net.op.extend(kept)
        notes.append(f"data readers become fed inputs: {', '.join(f'{op.type} -> {list(op.output)}' for op in readers)}")

    # Dropout's engine CUDNN: on CUDA its mask is cuDNN's reserve space; the training-step model keeps
    # the X-shaped boolean mask of Caffe2's CPU op (which Caffe2 runs for engine CUDNN on the CPU)
    cudnn = [k for k, op in enumerate(net.op) if op.type in ("Dropout", "DropoutGrad") and op.engine == "CUDNN"]
    for k in cudnn:
        net.op[k].engine = ""
    if cudnn:
        notes.append(f"engine CUDNN dropped from {len(cudnn)} Dropout/DropoutGrad op(s): the model keeps Caffe2's CPU "
                     "mask (a bool tensor of X's shape)")

    # unsupported op types, all at once
    bad = Counter()
    for op in net.op:
        t = S.canonical(op.type)
        if gradient_spec(op) or op.type in OPTIMIZER_OPS or op.type in LOSS_OPS or op.type == "ConstantFill":
            continue
        if t == "SpatialBN":
            if len(op.output) not in (1, 5):
                bad["SpatialBN(2 to 4 outputs)"] += 1
            continue
        label = ops.unsupported_variant(op, Args(op))
        if label:
            bad[label] += 1
    if bad:
        raise UnsupportedOpsError(bad, where="train_net")

    init_values, mutexes, init_notes = evaluate_training_init(init_net, seed=seed, skip=set(data), budget=budget) \
        if init_net is not None else ({}, [], [])
    notes += init_notes

    # blobs: fed, state (read before written and written), constants (read, never written)
    first = C._first_readers(net)
    written = {b for op in net.op for b in op.output}
    mutex_set = set(mutexes)
    inputs, state, consts = {}, [], {}
    for b in first:
        if b in data:
            inputs[b] = data[b]
        elif b in mutex_set:
            continue
        elif b in init_values:
            (state.append(b) if b in written else consts.__setitem__(b, init_values[b]))
        else:
            k, slot = first[b]
            op = net.op[k]
            if op.type in OPTIMIZER_OPS:
                raise TrainingNetError(f"{_where(op, k)} updates {b!r}, which nothing initialises (no init_net fill, "
                                       "no value info)")
            raise TrainingNetError(f"{_where(op, k)} reads {b!r} (input {slot}), which no earlier op writes, no init_net "
                                   "op fills and no value info gives")
    initial = list(inputs) + state + list(consts) + mutexes
    op_inputs, op_outputs, final = C._ssa_names(net, initial)

    g = C._Graph(set(final) | {n for outs in op_outputs for n in outs} | set(initial))
    ctx = _Ctx(g, budget)
    for b, (dt, sh) in inputs.items():
        g.infos[b] = Info(dt, sh)
    for b in state:
        v = np.asarray(init_values[b])
        g.infos[b] = Info(v.dtype, tuple(v.shape))
    for b, v in consts.items():
        g.initializers.append(numpy_helper.from_array(np.asarray(v), b))
        g.infos[b] = Info(np.asarray(v).dtype, tuple(np.asarray(v).shape))
    read_counts = Counter(b for op in net.op for b in op.input)
    rng_attr = C.RNG_MODES[rng]

    loss_blob = None
    for k, op in enumerate(net.op):
        where = _where(op, k)
        xin, xout = op_inputs[k], op_outputs[k]
        start = len(g.nodes)
        if gradient_spec(op):
            _lower_gradient(ctx, net, k, op, op_inputs, op_outputs, where)
        elif op.type in OPTIMIZER_OPS:
            _lower_optimizer(ctx, op, xin, xout, where)
        elif op.type == "ConstantFill":
            _lower_constant_fill(ctx, op, xin, xout, where)
        elif op.type in LOSS_OPS:
            _lower_loss(ctx, op, xin, xout, where)
            if op.type == "AveragedLoss" or op.type == "SoftmaxWithLoss":
                loss_blob = op.output[-1]
        elif S.canonical(op.type) == "SpatialBN" and not Args(op).int("is_test", 0):
            _lower_spatial_bn_train(ctx, op, xin, xout, where)
        else:
            ins = [g.infos.get(n) if n else None for n in xin]
            outs = ops.infer(op, ins, where, budget)
            if S.canonical(op.type) == "Dropout" and len(outs) > 1:
                outs[1] = Info(np.dtype(bool), tuple(ins[0].shape))  # the CPU mask, whatever the engine
            for n, info in zip(xout, outs):
                g.infos[n] = info
            C._emit(g, net, op, k, xin, xout, ins, outs, where, "caffe2", {}, ctx.notes, read_counts, rng_attr)
        ctx.op_nodes[k] = (start, len(g.nodes))
    if "loss" in final:
        loss_blob = "loss"
    if loss_blob is None:
        raise TrainingNetError("train_net has no 'loss' blob and no AveragedLoss or SoftmaxWithLoss op")
    notes += ctx.notes
    model = _assemble(ctx, net, inputs, state, init_values, final, loss_blob, op_outputs, opset, ir_version,
                      name or net.name or "caffe2_train_net")
    kept = {t.name for t in model.graph.initializer}
    TR._set_meta(model, TR.CAFFE2_INIT_KEY, json.dumps({"constants": [b for b in consts if b in kept], "mutexes": mutexes}))
    model = C.apply_mask_format(model, mask_format, notes)
    if check:
        C.check_model(model)
    return model, notes


def _assemble(ctx, net, inputs, state, init_values, final, loss_blob, op_outputs, opset, ir_version, graph_name):
    from . import converter as C

    g = ctx.g
    masks = [op_outputs[k][1] for k, op in enumerate(net.op)
             if S.canonical(op.type) == "Dropout" and len(op.output) > 1 and not Args(op).int("is_test", 0)]
    state_map = {b: final[b] for b in state}
    for b in state:
        if final[b] == b:
            raise TrainingNetError(f"state blob {b!r} is read but never rewritten")
    metrics = [op_outputs[k][0] for k, op in enumerate(net.op) if op.type == "Accuracy"]
    outputs = [final[loss_blob]] + masks + metrics + [state_map[b] for b in state]
    inits = list(g.initializers) + [numpy_helper.from_array(np.ascontiguousarray(init_values[b]), b) for b in state]
    used = {n for node in g.nodes for n in node.input} | set(outputs)
    inits = [t for t in inits if t.name in used or t.name in state_map or t.name in init_values]
    graph = helper.make_graph(
        g.nodes, graph_name,
        [helper.make_tensor_value_info(b, NUMPY_TO_ONNX[dt], list(sh)) for b, (dt, sh) in inputs.items()]
        + [C._value_info(b, g.infos[b]) for b in state],
        [C._value_info(n, g.infos[n]) for n in outputs],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(C.CAFFE2_DOMAIN, C.CAFFE2_OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="caffe2-ort", producer_version=C._version())
    model.ir_version = ir_version
    TR._set_meta(model, TR.STATE_KEY, json.dumps(state_map))
    TR._set_meta(model, TR.LOSS_KEY, final[loss_blob])
    fwd = [op_outputs[k][0] for k, op in enumerate(net.op) if op.type == "SoftmaxWithLoss"] or \
          [op_outputs[k][0] for k, op in enumerate(net.op) if S.canonical(op.type) == "Softmax"]
    if fwd:
        TR._set_meta(model, TR.INFERENCE_KEY, json.dumps(fwd[-1:]))
    return model


# ----------------------------------------------------------------------------------------------
# forward ops that only training nets hold


def _lower_constant_fill(ctx, op, xin, xout, where):
    """The loss-gradient seed: ConstantFill(loss) -> value everywhere, the input's shape (or 'shape')."""
    g, args = ctx.g, Args(op, where)
    code = args.int("dtype", netdef.C2_FLOAT)
    dtype = netdef.C2_TO_NUMPY.get(code)
    if dtype is None or dtype == object:
        raise TrainingNetError(f"{where}: unsupported dtype {code}")
    if xin:
        info = g.infos.get(xin[0])
        if info is None:
            raise TrainingNetError(f"{where}: its input {op.input[0]!r} has no known shape")
        shape = tuple(info.shape) + tuple(args.ints("extra_shape", []))
    else:
        shape = tuple(args.ints("shape", []))
    value = np.full(shape, args.values.get("value", 0.0), dtype=dtype)
    g.node("Constant", [], xout[:1], f"{xout[0]}_fill", value=numpy_helper.from_array(value))
    g.infos[xout[0]] = Info(dtype, shape)


def _lower_loss(ctx, op, xin, xout, where):
    g, args = ctx.g, Args(op, where)
    x = g.infos.get(xin[0])
    if x is None:
        raise TrainingNetError(f"{where}: input {op.input[0]!r} has no known shape")
    f32 = x.dtype
    if op.type == "SoftmaxWithLoss":
        if len(op.input) != 2 or len(op.output) != 2:
            raise TrainingNetError(f"{where}: SoftmaxWithLoss takes (X, label) -> (softmax, loss); it has "
                                   f"{len(op.input)} input(s) and {len(op.output)} output(s)")
        if args.int("label_prob", 0) or args.has("scale") and args.float("scale") != 1.0:
            raise UnsupportedOpsError({"SoftmaxWithLoss(label_prob or scale)": 1}, where="train_net")
        if len(x.shape) != 2:
            raise TrainingNetError(f"{where}: X must be 2-D (N, classes), it is {list(x.shape)}")
        g.node("Softmax", xin[:1], xout[:1], f"{xout[0]}_softmax", axis=1)
        g.infos[xout[0]] = x
        lab = _labels64(ctx, xin[1], where)
        g.node("SoftmaxCrossEntropyLoss", [xin[0], lab], xout[1:2], f"{xout[1]}_loss", reduction="mean")
        g.infos[xout[1]] = Info(f32, ())
    elif op.type == "LabelCrossEntropy":
        if len(x.shape) != 2:
            raise TrainingNetError(f"{where}: X must be 2-D (N, classes), it is {list(x.shape)}")
        n, classes = x.shape
        lab = _labels64(ctx, xin[1], where)
        onehot = _onehot(ctx, lab, classes, f32, xout[0])
        picked = g.fresh(f"{xout[0]}_picked")
        g.node("Mul", [xin[0], onehot], [picked], f"{picked}_mul")
        g.infos[picked] = x
        summed = g.fresh(f"{xout[0]}_p")
        g.node("ReduceSum", [picked, g.const(f"{summed}_axes", np.asarray([1], np.int64))], [summed], f"{summed}_sum",
               keepdims=0)
        clipped = g.fresh(f"{xout[0]}_p_clipped")
        g.node("Clip", [summed, g.const(f"{clipped}_min", np.asarray(1e-20, f32))], [clipped], f"{clipped}_clip")
        logp = g.fresh(f"{xout[0]}_logp")
        g.node("Log", [clipped], [logp], f"{logp}_log")
        g.node("Neg", [logp], xout[:1], f"{xout[0]}_neg")
        for t in (summed, clipped, logp, xout[0]):
            g.infos[t] = Info(f32, (n,))
    elif op.type == "AveragedLoss":
        g.node("ReduceMean", xin[:1], xout[:1], f"{xout[0]}_mean", keepdims=0)
        g.infos[xout[0]] = Info(f32, ())
    elif op.type == "StopGradient":
        g.node("Identity", xin[:1], xout[:1], f"{xout[0]}_stop")  # no rule is run through it: see _lower_gradient
        g.infos[xout[0]] = x
    elif op.type == "Accuracy":
        top_k = args.int("top_k", 1)
        if top_k != 1:
            raise UnsupportedOpsError({"Accuracy(top_k > 1)": 1}, where="train_net")
        am = g.fresh(f"{xout[0]}_argmax")
        g.node("ArgMax", xin[:1], [am], f"{am}_op", axis=1, keepdims=0)
        lab = _labels64(ctx, xin[1], where)
        eq = g.fresh(f"{xout[0]}_hit")
        g.node("Equal", [am, lab], [eq], f"{eq}_op")
        eqf = g.fresh(f"{xout[0]}_hit_f")
        g.node("Cast", [eq], [eqf], f"{eqf}_op", to=onnx.TensorProto.FLOAT)
        g.node("ReduceMean", [eqf], xout[:1], f"{xout[0]}_mean", keepdims=0)
        g.infos[xout[0]] = Info(np.dtype(np.float32), ())


def _labels64(ctx, lab, where):
    g = ctx.g
    info = g.infos.get(lab)
    if info is None or info.dtype.kind not in "iu":
        raise TrainingNetError(f"{where}: the label blob {lab!r} must be an integer tensor of known shape")
    if info.dtype == np.int64:
        return lab
    out = g.fresh(f"{lab}_int64")
    g.node("Cast", [lab], [out], f"{out}_cast", to=onnx.TensorProto.INT64)
    g.infos[out] = Info(np.dtype(np.int64), info.shape)
    return out


def _onehot(ctx, lab64, classes, dtype, base):
    g = ctx.g
    col = g.fresh(f"{base}_label_col")
    g.node("Unsqueeze", [lab64, g.const(f"{col}_axes", np.asarray([1], np.int64))], [col], f"{col}_op")
    eq = g.fresh(f"{base}_onehot_b")
    g.node("Equal", [col, g.const(f"{base}_classes", np.arange(classes, dtype=np.int64).reshape(1, classes))], [eq],
           f"{eq}_op")
    oh = g.fresh(f"{base}_onehot")
    g.node("Cast", [eq], [oh], f"{oh}_op", to=NUMPY_TO_ONNX[np.dtype(dtype)])
    return oh


def _lower_spatial_bn_train(ctx, op, xin, xout, where):
    """SpatialBN(is_test=0): ONNX BatchNormalization in training mode. ONNX's running variance uses the
    biased batch variance; Caffe2 feeds the unbiased one (n/(n-1)) into it, so the running variance is
    recomputed here the Caffe2 way (docs/caffe2-training.md)."""
    g, args = ctx.g, Args(op, where)
    if len(op.input) != 5:
        raise TrainingNetError(f"{where}: {len(op.input)} input(s); Caffe2's SpatialBN takes 5")
    x = g.infos[xin[0]]
    c = x.shape[1]
    for s in range(1, 5):
        info = g.infos.get(xin[s])
        if info is None or tuple(info.shape) != (c,):
            raise ShapeError(f"{where}: input {s} {op.input[s]!r} must have shape [{c}]")
    eps, mom = args.float("epsilon", 1e-5), args.float("momentum", 0.9)
    y = xout[0]
    r = len(x.shape)
    axes = [0] + list(range(2, r))
    n = int(np.prod([x.shape[a] for a in axes]))
    mean_b, var_b = g.fresh(f"{y}_batch_mean"), g.fresh(f"{y}_batch_var")
    # ONNX BatchNormalization for Y (its training form normalises with the batch statistics). Its running
    # statistics are not Caffe2's (biased variance) and ORT may write them over its inputs' buffers, so
    # it gets placeholder statistics and its running outputs go unused; Caffe2's are computed below.
    placeholders = [g.const(f"{y}_unused_mean", np.zeros(c, x.dtype)), g.const(f"{y}_unused_var", np.ones(c, x.dtype))]
    unused = [g.fresh(f"{y}_unused_running_mean"), g.fresh(f"{y}_unused_running_var")]
    g.node("BatchNormalization", xin[:3] + placeholders, [y] + unused, f"{y}_bn", epsilon=eps, momentum=mom,
           training_mode=1)
    g.infos[y] = x
    for t in unused:
        g.infos[t] = Info(x.dtype, (c,))
    if len(xout) == 1:
        return
    # Caffe2's running statistics and saved outputs from the batch statistics
    axes_c = g.const(f"{y}_axes", np.asarray(axes, np.int64))
    inv_n = g.const(f"{y}_inv_n", np.asarray(1.0 / n, x.dtype))
    sum_x, sum_sq = g.fresh(f"{y}_sum"), g.fresh(f"{y}_sq_sum")
    g.node("ReduceSum", [xin[0], axes_c], [sum_x], f"{sum_x}_op", keepdims=0)
    g.node("Mul", [sum_x, inv_n], [mean_b], f"{mean_b}_op")
    cshape = g.const(f"{y}_cshape", np.asarray([1, c] + [1] * (r - 2), np.int64))
    mean_c, centred, sq = g.fresh(f"{y}_mean_c"), g.fresh(f"{y}_centred"), g.fresh(f"{y}_sq")
    g.node("Reshape", [mean_b, cshape], [mean_c], f"{mean_c}_op")
    g.node("Sub", [xin[0], mean_c], [centred], f"{centred}_op")
    g.node("Mul", [centred, centred], [sq], f"{sq}_op")
    g.node("ReduceSum", [sq, axes_c], [sum_sq], f"{sum_sq}_op", keepdims=0)
    g.node("Mul", [sum_sq, inv_n], [var_b], f"{var_b}_op")
    f = x.dtype

    def k(v, nm):
        return g.const(f"{y}_{nm}", np.asarray(v, f))

    rm_new, rv_new, inv_std = xout[1], xout[2], xout[4] if len(xout) > 4 else g.fresh(f"{y}_inv_std")
    a, b_ = g.fresh(f"{y}_rm_a"), g.fresh(f"{y}_rm_b")
    g.node("Mul", [xin[3], k(mom, "mom")], [a], f"{a}_op")
    g.node("Mul", [mean_b, k(1 - np.float32(mom), "one_m_mom")], [b_], f"{b_}_op")
    g.node("Add", [a, b_], [rm_new], f"{rm_new}_op")
    unb, a2, b2 = g.fresh(f"{y}_var_unbiased"), g.fresh(f"{y}_rv_a"), g.fresh(f"{y}_rv_b")
    g.node("Mul", [var_b, k(n / (n - 1) if n > 1 else 1.0, "bessel")], [unb], f"{unb}_op")
    g.node("Mul", [xin[4], k(mom, "mom2")], [a2], f"{a2}_op")
    g.node("Mul", [unb, k(1 - np.float32(mom), "one_m_mom2")], [b2], f"{b2}_op")
    g.node("Add", [a2, b2], [rv_new], f"{rv_new}_op")
    if len(xout) > 3:
        g.node("Identity", [mean_b], [xout[3]], f"{xout[3]}_op")
    ve, sd = g.fresh(f"{y}_var_eps"), g.fresh(f"{y}_std")
    g.node("Add", [var_b, k(eps, "eps")], [ve], f"{ve}_op")
    g.node("Sqrt", [ve], [sd], f"{sd}_op")
    g.node("Reciprocal", [sd], [inv_std], f"{inv_std}_op")
    for t in [sum_x, sum_sq, mean_b, var_b, unb, a, b_, a2, b2, ve, sd, inv_std] + list(xout[1:]):
        g.infos[t] = Info(f, (c,))


# ----------------------------------------------------------------------------------------------
# gradient ops: the forward op's ONNX nodes differentiated by the gradients module's rules


def _find_forward(net, k, op, spec, where):
    dy_slots = {s for s, _ in spec.dy}
    blobs = [b for s, b in enumerate(op.input) if s not in dy_slots]
    for j in range(k - 1, -1, -1):
        f = net.op[j]
        if S.canonical(f.type) not in spec.forward or f.is_gradient_op:
            continue
        known = set(f.input) | set(f.output)
        if all(b in known for b in blobs):
            return j
    fwd = " or ".join(spec.forward)
    missing = next((b for b in blobs if not any(b in set(f.input) | set(f.output) for f in net.op[:k]
                                               if S.canonical(f.type) in spec.forward)), blobs[0] if blobs else "?")
    raise TrainingNetError(f"{where}: no earlier {fwd} op reads or writes {missing!r}: the gradient op does not match "
                           "the forward ops")


def _lower_gradient(ctx, net, k, op, op_inputs, op_outputs, where):
    spec = gradient_spec(op)
    if len(op.input) not in spec.inputs:
        allowed = " or ".join(map(str, spec.inputs))
        outs = f" (computing {', '.join(map(repr, op.output))})" if op.output else ""
        raise TrainingNetError(f"{where}: {len(op.input)} input(s); Caffe2's {op.type} takes {allowed}{outs}")
    j = _find_forward(net, k, op, spec, where)
    fwd = net.op[j]
    slots = spec.outs(fwd)
    extra = []
    if spec.forward == ("Reshape",) and len(op.output) == 2:  # (dX, the shape dY had)
        extra, op_outs = [op_outputs[k][1]], op_outputs[k][:1]
    else:
        op_outs = op_outputs[k]
    if len(op_outs) > len(slots):
        raise TrainingNetError(f"{where}: {len(op.output)} output(s); the gradient of its {fwd.type} op #{j} has at most "
                               f"{len(slots)}")
    g = ctx.g
    fin, fout = op_inputs[j], op_outputs[j]
    seeds = {fout[fs]: op_inputs[k][gs] for gs, fs in spec.dy}
    for gs, fs in spec.dy:
        if op_inputs[k][gs] not in g.infos:
            raise TrainingNetError(f"{where}: its gradient input {op.input[gs]!r} is not computed by an earlier op")
    wanted = [fin[s] for s in slots[: len(op_outs)]]
    start, end = ctx.op_nodes[j]
    ctx.types()
    try:
        grads = GR.backprop(ctx.e, g.nodes[start:end], seeds, wanted)
    except GR.UnsupportedGradientError as e:
        raise TrainingNetError(f"{where}: {e}") from None
    for out in extra:
        dims = np.asarray(g.infos[fout[0]].shape, np.int64)
        g.node("Constant", [], [out], f"{out}_dims", value=numpy_helper.from_array(dims))
        g.infos[out] = Info(dims.dtype, dims.shape)
    for out, src_slot, gname in zip(op_outs, slots, (grads[w] for w in wanted)):
        info = g.infos[fin[src_slot]]
        if gname is None:
            g.node("Constant", [], [out], f"{out}_zero", value=numpy_helper.from_array(np.zeros(info.shape, info.dtype)))
            g.infos[out] = info
        else:
            ctx.alias(gname, out, info)


# ----------------------------------------------------------------------------------------------
# optimizer ops


def _lower_optimizer(ctx, op, xin, xout, where):
    g, e, args = ctx.g, ctx.e, Args(op, where)
    t = op.type
    ctx.types()

    def info(n, blob):
        i = g.infos.get(n)
        if i is None:
            raise TrainingNetError(f"{where}: input {blob!r} is not initialised")
        return i

    for n, b in zip(xin[1:] if t == "AtomicIter" else xin, op.input[1:] if t == "AtomicIter" else op.input):
        info(n, b)
    if t in ("Iter", "AtomicIter"):
        it_in = xin[-1]
        ctx.alias(OPT.iteration(e, it_in, f"{xout[0]}_iter"), xout[0], g.infos[it_in])
    elif t == "LearningRate":
        policy = args.str("policy", "fixed")
        if policy not in LR_POLICIES:
            raise TrainingNetError(f"{where}: learning-rate policy {policy!r} for {op.output[0]!r} is not supported; "
                                   f"known: {', '.join(LR_POLICIES)}")
        if not args.has("base_lr"):
            raise TrainingNetError(f"{where}: no base_lr for {op.output[0]!r}")
        lr = _learning_rate(ctx, xin[0], args, policy, where, xout[0])
        ctx.alias(lr, xout[0], Info(np.dtype(np.float32), ()))
    elif t == "WeightedSum":
        if len(op.input) < 2 or len(op.input) % 2:
            raise TrainingNetError(f"{where}: WeightedSum needs pairs (X, weight), it has {len(op.input)} inputs")
        x0 = info(xin[0], op.input[0])
        acc = None
        for i in range(0, len(xin), 2):
            w = _scalar(ctx, xin[i + 1], x0.dtype)
            term = e.node("Mul", [xin[i], w], f"{xout[0]}_term{i // 2}")
            acc = term if acc is None else e.node("Add", [acc, term], f"{xout[0]}_acc{i // 2}")
        ctx.alias(acc, xout[0], x0)
    elif t in ("MomentumSGDUpdate", "MomentumSGD"):
        grad, mom, lr = xin[0], xin[1], _scalar(ctx, xin[2], np.float32)
        mu, nesterov = args.float("momentum", 0.0), bool(args.int("nesterov", 0))
        if t == "MomentumSGDUpdate":
            adjusted, new_m, new_p = OPT.momentum_sgd_update(e, xin[3], grad, mom, lr, mu, nesterov, xout[2])
            outs = [adjusted, new_m, new_p]
        else:
            zero = e.node("Mul", [mom, e.scalar(0.0, mom, f"{xout[1]}_zero")], f"{xout[1]}_zeros")
            adjusted, new_m, _ = OPT.momentum_sgd_update(e, zero, grad, mom, lr, mu, nesterov, xout[1])
            outs = [adjusted, new_m]
        for src, dst, n in zip(outs, xout, (xin[0], xin[1], xin[-1])):
            ctx.alias(src, dst, g.infos[n])
    elif t == "Adagrad":
        p, h, grad, lr = xin[0], xin[1], xin[2], _scalar(ctx, xin[3], np.float32)
        new_p, new_h = OPT.adagrad(e, p, grad, h, lr, args.float("epsilon", 1e-5), args.float("decay", 1.0), xout[0])
        ctx.alias(new_p, xout[0], g.infos[p])
        ctx.alias(new_h, xout[1], g.infos[h])
    elif t == "Adam":
        if len(op.output) != 3:
            raise UnsupportedOpsError({"Adam(4 outputs)": 1}, where="train_net")
        p, m1, m2, grad, lr, it = xin[:6]
        new_p, new_m1, new_m2 = OPT.adam(e, p, grad, m1, m2, _scalar(ctx, lr, np.float32), it, args.float("beta1", 0.9),
                                         args.float("beta2", 0.999), args.float("epsilon", 1e-8), xout[0])
        for src, dst, n in zip((new_p, new_m1, new_m2), xout, (p, m1, m2)):
            ctx.alias(src, dst, g.infos[n])
    elif t == "RmsProp":
        grad, ms, mom, lr = xin[0], xin[1], xin[2], _scalar(ctx, xin[3], np.float32)
        decay, mu, eps = args.float("decay", 0.9), args.float("momentum", 0.0), args.float("epsilon", 1e-5)
        f32 = np.float32
        g2 = e.node("Mul", [grad, grad], f"{xout[1]}_g_sq")
        diff = e.node("Sub", [g2, ms], f"{xout[1]}_diff")
        new_ms = e.node("Add", [ms, e.node("Mul", [diff, e.const(1 - f32(decay), f32, f"{xout[1]}_one_m_decay")],
                                           f"{xout[1]}_step")], f"{xout[1]}_new")
        denom = e.node("Sqrt", [e.node("Add", [new_ms, e.const(eps, f32, f"{xout[2]}_eps")], f"{xout[2]}_eps_ms")],
                       f"{xout[2]}_denom")
        lr_g = e.node("Div", [e.node("Mul", [lr, grad], f"{xout[2]}_lr_g"), denom], f"{xout[2]}_scaled")
        new_mom = e.node("Add", [e.node("Mul", [mom, e.const(mu, f32, f"{xout[2]}_mu")], f"{xout[2]}_mu_m"), lr_g],
                         f"{xout[2]}_new")
        for src, dst, n in zip((new_mom, new_ms, new_mom), xout, (grad, ms, mom)):
            ctx.alias(src, dst, g.infos[n])


def _scalar(ctx, name, dtype):
    """A 1-element blob (lr, WeightedSum weight) as a rank-0 tensor, so products keep the other's shape."""
    info = ctx.g.infos[name]
    if int(np.prod(info.shape)) != 1:
        raise TrainingNetError(f"blob {name!r} must hold one value, its shape is {list(info.shape)}")
    if tuple(info.shape) == ():
        return name
    return ctx.e.reshape(name, (), f"{name}_scalar")


def _learning_rate(ctx, it, args, policy, where, base):
    """Caffe2's LearningRate: base_lr * factor(iter) in float32, rank 0 (docs/caffe2-training.md)."""
    e = ctx.e
    f32 = np.float32
    base_lr = args.float("base_lr")
    if policy == "poly":
        itf = e.node("Cast", [it], f"{base}_it_f", to=1)
        frac = e.node("Div", [itf, e.const(np.full(1, args.int("max_iter"), f32), f32, f"{base}_max_iter")], f"{base}_frac")
        one_m = e.node("Sub", [e.const(np.ones(1, f32), f32, f"{base}_one"), frac], f"{base}_one_m")
        mult = e.node("Pow", [one_m, e.const(np.full(1, args.float("power"), f32), f32, f"{base}_power")], f"{base}_mult")
        lr = e.node("Mul", [e.const(np.full(1, base_lr, f32), f32, f"{base}_base"), mult], f"{base}_lr")
    else:
        kw = {}
        for key in ("gamma", "power"):
            if args.has(key):
                kw[key] = args.float(key)
        if args.has("stepsize"):
            kw["stepsize"] = args.int("stepsize")
        try:
            lr = OPT.learning_rate(e, it, base_lr, policy, base=f"{base}_lr", **kw)
        except ValueError as err:
            raise TrainingNetError(f"{where}: {err}") from None
    return e.reshape(lr, (), f"{base}_rank0")
