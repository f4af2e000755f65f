"""Caffe2 NetDef (predict_net + init_net + value_info) -> ONNX model.

:func:`convert` does the whole job:

1. init_net fill ops become initializers (their ONNX element types mapped from Caffe2's); blobs that
   value_info (or ``input_shapes``) describes stay graph inputs even when init_net also fills them.
2. Every blob the predict net reads before writing is classified: data input (needs value info),
   weight (needs a fill op) or an error that names it.
3. SSA renaming: a blob written k times gets k versions. Graph inputs and initializers keep their
   names (version 0); the last version of any other blob keeps its name, so external outputs keep
   theirs; intermediate versions are ``<name>_<version>``.
4. Ops are translated one by one with Caffe2's sizing rules (static shapes are known throughout).
   Dropout / DropoutGrad become ``ai.caffe2`` nodes (or standard ONNX ops with ``dropout="onnx"``);
   with ``mask_format="bits"`` the pairs become BitmaskDropout / BitmaskDropoutGrad (bit-packed masks).
5. The model gets a non-empty graph name, opset imports, an explicit ``ir_version`` and is checked
   with ``onnx.checker`` (with the ai.caffe2 schemas registered when the package provides them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import ops
from . import shapes as S
from .errors import Caffe2Error, MissingValueInfoError, MissingWeightError, ShapeError, UnsupportedOpsError
from . import netdef
from .limits import Budget, check_shape
from .netdef import NUMPY_TO_ONNX, Args, evaluate_init_net

from .._library import DOMAIN as CAFFE2_DOMAIN
CAFFE2_OPSET = 1
DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax on one axis, Dropout's ratio/training_mode inputs
# IR 8 goes with opset 17 and is accepted by every onnxruntime from 1.14 on (1.16 reads up to IR 9).
DEFAULT_IR_VERSION = 8
DROPOUT_MODES = ("caffe2", "onnx")
# --rng: the mask stream written on every converted Dropout (its rng attribute; "" = the default, Philox)
RNG_MODES = {"philox": "", "caffe2": "caffe2_mt19937"}


@dataclass
class Conversion:
    """The result of :func:`convert`."""

    model: onnx.ModelProto
    names: dict  # Caffe2 blob -> ONNX name of its last version
    op_outputs: list  # per Caffe2 op: the ONNX names of its outputs (SSA versions)
    inputs: dict  # graph input name -> (numpy dtype, shape)
    outputs: list  # graph output names
    notes: list = field(default_factory=list)  # things the user may want to know (dropped outputs, ...)


def _first_readers(net):
    """Blob -> (op index, slot) of its first read, for blobs read before any op writes them."""
    written, first = set(), {}
    for k, op in enumerate(net.op):
        for slot, name in enumerate(op.input):
            if name not in written and name not in first:
                first[name] = (k, slot)
        written.update(op.output)
    return first


def _ssa_names(net, initial):
    """ONNX names per op output, per op input, and the final name of each blob."""
    writes = Counter(b for op in net.op for b in op.output)
    taken = set(initial) | set(writes) | {b for op in net.op for b in op.input}
    version_name = {}

    def name_for(blob, v):
        has_initial = blob in initial
        last = writes[blob]
        if v == 0 or (v == last and not has_initial):
            return blob
        key = (blob, v)
        if key not in version_name:
            cand = f"{blob}_{v}"
            while cand in taken:
                cand += "_"
            taken.add(cand)
            version_name[key] = cand
        return version_name[key]

    ver = {b: 0 for b in initial}
    op_inputs, op_outputs = [], []
    for op in net.op:
        op_inputs.append([name_for(b, ver.get(b, 0)) if b else "" for b in op.input])
        outs = []
        for b in op.output:
            ver[b] = ver.get(b, 0) + 1
            outs.append(name_for(b, ver[b]))
        op_outputs.append(outs)
    final = {b: name_for(b, v) for b, v in ver.items()}
    return op_inputs, op_outputs, final


class _Graph:
    def __init__(self, taken):
        self.nodes, self.initializers = [], []
        self.taken = set(taken)
        self.infos = {}
        self.used_caffe2 = False

    def fresh(self, hint):
        cand, k = hint, 0
        while cand in self.taken:
            k += 1
            cand = f"{hint}_{k}"
        self.taken.add(cand)
        return cand

    def const(self, hint, arr):
        name = self.fresh(hint)
        arr = np.asarray(arr)
        self.initializers.append(numpy_helper.from_array(arr, name))
        self.infos[name] = S.Info(arr.dtype, tuple(arr.shape))
        return name

    def node(self, op_type, inputs, outputs, name, domain="", **attrs):
        node = helper.make_node(op_type, inputs, outputs, name=self.fresh(name), domain=domain or None, **attrs)
        if domain == CAFFE2_DOMAIN:
            self.used_caffe2 = True
        self.nodes.append(node)
        return node


def _check_opset(opset):
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise Caffe2Error(f"opset {opset} is not supported: use {MIN_OPSET}..{newest} (the installed onnx's newest)")


MIN_IR_VERSION = 7  # the first IR version of opset 13


def _check_ir_version(ir_version):
    newest = onnx.IR_VERSION
    if isinstance(ir_version, bool) or not isinstance(ir_version, int) or not MIN_IR_VERSION <= ir_version <= newest:
        raise Caffe2Error(f"ir_version {ir_version} is not supported: use {MIN_IR_VERSION}..{newest} (the installed onnx's newest)")


def convert(
    predict_net,
    init_net=None,
    value_info=None,
    *,
    input_shapes=None,
    init_blobs=None,
    dropout="caffe2",
    rng="philox",
    mask_format="bool",
    opset=DEFAULT_OPSET,
    ir_version=DEFAULT_IR_VERSION,
    name=None,
    extra_outputs=(),
    check=True,
    budget=None,
) -> Conversion:
    """Convert a Caffe2 predict net to an ONNX model.

    ``value_info``: ``{name: (numpy dtype, shape)}`` for the data inputs (see ``read_value_info``).
    ``input_shapes``: ``{name: shape}`` overriding or adding data inputs (float32 unless value_info
    types them). ``init_blobs``: already evaluated weights, instead of ``init_net``.
    ``dropout``: "caffe2" (ai.caffe2 nodes) or "onnx" (standard ONNX ops, see docs/converter.md).
    ``rng``: "philox" (default) or "caffe2": every Dropout gets rng="caffe2_mt19937", real Caffe2's own
    CPU mask stream (needs dropout="caffe2").
    ``mask_format``: "bool" (default, Caffe2's masks) or "bits": Dropout/DropoutGrad pairs become
    BitmaskDropout/BitmaskDropoutGrad, whose masks are uint32 of ceil(numel / 32) words (needs
    dropout="caffe2"; every training DropoutGrad must read the mask of a Dropout of the net; engine CUDNN
    is dropped, with a note).
    ``extra_outputs``: Caffe2 blob names to expose as graph outputs too (their last versions).
    ``budget``: a :class:`~caffe2_ort.caffe2.limits.Budget` or a byte count (None: the default limit):
    init_net fills count against it, and no input or intermediate blob may be larger.
    """
    if dropout not in DROPOUT_MODES:
        raise Caffe2Error(f"dropout mode must be one of {', '.join(DROPOUT_MODES)}, not {dropout!r}")
    if rng not in RNG_MODES:
        raise Caffe2Error(f"rng must be one of {', '.join(RNG_MODES)}, not {rng!r}")
    if RNG_MODES[rng] and dropout != "caffe2":
        raise Caffe2Error(f"rng {rng!r} needs dropout='caffe2': standard ONNX Dropout draws its own masks")
    check_mask_format(mask_format, dropout)
    _check_opset(opset)
    _check_ir_version(ir_version)
    budget = Budget.of(budget)
    netdef.check_net(predict_net, "predict_net")
    data = {k: (np.dtype(v[0]), check_shape(f"input {k!r}", v[1])) for k, v in (value_info or {}).items()}
    for k, shape in (input_shapes or {}).items():
        dtype = data[k][0] if k in data else np.dtype(np.float32)
        data[k] = (dtype, check_shape(f"input {k!r}", shape))
    for k, (dtype, shape) in data.items():
        budget.check(f"input {k!r}", shape, dtype, claim=False)
    if init_blobs is not None:
        weights = {k: np.asarray(v) for k, v in init_blobs.items() if k not in data}
    elif init_net is not None:
        weights = evaluate_init_net(init_net, skip=set(data), budget=budget)
    else:
        weights = {}

    # 1. unsupported op types and variants, all at once
    readers = Counter(b for op in predict_net.op for b in op.input)
    external_out = set(predict_net.external_output)
    bad = Counter()
    for op in predict_net.op:
        label = ops.unsupported_variant(op, Args(op))
        if label is None and S.canonical(op.type) == "LRN" and len(op.output) > 1:
            if readers[op.output[1]] or op.output[1] in external_out:
                label = "LRN(scale output used)"
        if label:
            bad[label] += 1
    if bad:
        raise UnsupportedOpsError(bad)

    # 2. what the net reads before writing: graph inputs, initializers, or errors
    first = _first_readers(predict_net)
    order = [b for b in predict_net.external_input if b in first]
    order += [b for b in first if b not in set(order)]
    inputs, inits, no_fill, no_info = {}, {}, [], []
    for b in order:
        if b in data:
            inputs[b] = data[b]
        elif b in weights:
            inits[b] = weights[b]
        else:
            k, slot = first[b]
            op = predict_net.op[k]
            (no_fill if ops.is_weight_slot(op, slot) else no_info).append(f"{b!r} (input {slot} of {op.type} op #{k})")
    if no_info:
        more = f" and {len(no_info) - 3} more" if len(no_info) > 3 else ""
        raise MissingValueInfoError(
            f"no value info for input {', '.join(no_info[:3])}{more}: give --value-info value_info.json or --input NAME:d0,d1,..."
        )
    if no_fill:
        more = f" and {len(no_fill) - 3} more" if len(no_fill) > 3 else ""
        hint = "no init_net was given (make one with synth-init)" if init_net is None and init_blobs is None else "init_net has no fill op for it"
        raise MissingWeightError(f"weight {', '.join(no_fill[:3])}{more}: {hint}")

    # 3. SSA
    initial = list(inputs) + list(inits)
    overwritten_io = [b for b in predict_net.external_output if b in initial and any(b in op.output for op in predict_net.op)]
    if overwritten_io:
        raise Caffe2Error(
            f"blob {overwritten_io[0]!r} is a graph input or weight and an external output written by the net; "
            "ONNX needs distinct names for the two"
        )
    op_inputs, op_outputs, final = _ssa_names(predict_net, initial)

    # 4. translate
    g = _Graph(set(final) | {n for outs in op_outputs for n in outs} | set(initial) | set(weights))
    for b, (dtype, shape) in inputs.items():
        g.infos[b] = S.Info(dtype, shape)
    for b, arr in inits.items():
        g.initializers.append(numpy_helper.from_array(arr, b))
        g.infos[b] = S.Info(arr.dtype, tuple(arr.shape))
    notes = []
    for k, op in enumerate(predict_net.op):
        where = f"{op.type} op #{k}" + (f" ({op.name})" if op.name else "")
        ins = [g.infos.get(n) if n else None for n in op_inputs[k]]
        out_infos = ops.infer(op, ins, where, budget)
        for n, info in zip(op_outputs[k], out_infos):
            g.infos[n] = info
        _emit(g, predict_net, op, k, op_inputs[k], op_outputs[k], ins, out_infos, where, dropout, inits, notes, readers,
              RNG_MODES[rng])

    # 5. outputs
    outputs = [final[b] for b in predict_net.external_output if b in final]
    missing = [b for b in predict_net.external_output if b not in final]  # external inputs no op reads
    if missing:
        notes.append(f"external outputs that are unread external inputs, left out: {', '.join(missing)}")
    if not predict_net.external_output:
        produced = [n for outs in op_outputs for n in outs]
        consumed = {n for ins_ in op_inputs for n in ins_}
        outputs = [n for n in produced if n not in consumed]
    for b in extra_outputs:
        if b not in final:
            raise Caffe2Error(f"extra output {b!r} is not a blob of the net")
        if final[b] not in outputs:
            outputs.append(final[b])
    if not outputs:
        raise Caffe2Error("the converted model would have no outputs (the net produces none of its external outputs)")
    # initializers replaced by reshaped copies (FC weights, broadcast operands) and never read
    used = {n for node in g.nodes for n in node.input} | set(outputs)
    g.initializers = [t for t in g.initializers if t.name in used]
    graph_name = name or predict_net.name or "caffe2_net"
    graph = helper.make_graph(
        g.nodes,
        graph_name,
        [helper.make_tensor_value_info(b, NUMPY_TO_ONNX[dt], list(sh)) for b, (dt, sh) in inputs.items()],
        [_value_info(n, g.infos[n]) for n in outputs],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    if g.used_caffe2:
        opsets.append(helper.make_opsetid(CAFFE2_DOMAIN, CAFFE2_OPSET))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="caffe2-ort", producer_version=_version())
    model.ir_version = ir_version
    model = apply_mask_format(model, mask_format, notes)
    if check:
        check_model(model)
    return Conversion(model, final, op_outputs, dict(inputs), outputs, notes)


def check_mask_format(mask_format, dropout="caffe2"):
    """A converter's ``mask_format`` argument, checked (Caffe2Error) against the table and ``dropout``."""
    from .. import opdefs

    try:
        opdefs.check_mask_format(mask_format)
    except ValueError as e:
        raise Caffe2Error(str(e)) from None
    if mask_format != "bool" and dropout != "caffe2":
        raise Caffe2Error(f"mask format {mask_format!r} needs dropout='caffe2': standard ONNX Dropout has no "
                          "bit-packed mask")
    return mask_format


def apply_mask_format(model, mask_format, notes):
    """``model`` with its ai.caffe2 Dropout/DropoutGrad pairs in ``mask_format`` (graph.set_mask_format);
    a net that cannot be converted is a Caffe2Error naming the node. Bit masks have no cuDNN form: engine
    CUDNN is dropped from the nodes (the default kernels run, as Caffe2's CPU op did), with a note."""
    if mask_format == "bool":
        return model
    from ..graph import MaskFormatError, set_mask_format

    cudnn = 0
    for n in model.graph.node:
        if n.domain == CAFFE2_DOMAIN and any(a.name == "engine" and a.s == b"CUDNN" for a in n.attribute):
            kept = [a for a in n.attribute if a.name != "engine"]
            del n.attribute[:]
            n.attribute.extend(kept)
            cudnn += 1
    if cudnn:
        notes.append(f"engine CUDNN dropped from {cudnn} Dropout/DropoutGrad node(s): bit-packed masks have no cuDNN "
                     "form (cuDNN's reserve space is not a bit mask)")
    try:
        return set_mask_format(model, mask_format)
    except MaskFormatError as e:
        raise Caffe2Error(str(e)) from None


def _value_info(name, info):
    shape = None if info.shape is None else list(info.shape)
    return helper.make_tensor_value_info(name, NUMPY_TO_ONNX[info.dtype], shape)


def _version():
    try:
        from .. import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return ""


def register_schemas() -> bool:
    """Register the ai.caffe2 ONNX schemas when the package provides them; True if registered."""
    try:
        from ..schemas import register_schemas as reg
    except ImportError:
        return False
    reg()
    return True


def check_model(model) -> None:
    """onnx.checker (full check, so shape inference too) with the ai.caffe2 schemas registered."""
    full = register_schemas()
    try:
        onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Caffe2Error(f"the converted model fails the ONNX checker: {first}") from None


# ----------------------------------------------------------------------------------------------
# per-op translation: the lowering registered for the op type in ops.REGISTRY


def _emit(g, net, op, k, xin, xout, ins, outs, where, dropout, inits, notes, readers, rng=""):
    d = ops.REGISTRY.get(S.canonical(op.type))
    if d is None or d.lower is None:  # pragma: no cover - filtered earlier
        raise ShapeError(f"{where}: no ONNX translation for {op.type}")
    d.lower(ops.Lowering(g, net, op, k, Args(op, where), xin, xout, ins, outs, where, op.name or f"{op.type}_{k}",
                         dropout, rng, inits, notes, readers))
