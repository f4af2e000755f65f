"""Graph helpers for the ai.caffe2 ops: add Dropout, switch models between inference and training form,
convert to and from standard ONNX Dropout, hold masks fixed, and build backward (gradient) graphs that
plain onnxruntime can run.

Every function that takes a ``ModelProto`` returns a new model and leaves its argument untouched, except
:func:`add_dropout`, which edits the graph or model it is given (it is a builder step).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import opdefs as _defs
from . import reference as _ref

from ._library import DOMAIN, OPSET_VERSION

_RATIO, _ENGINE, _RNG = (_defs.DROPOUT.attr(n).default for n in ("ratio", "engine", "rng"))


# ----------------------------------------------------------------------------------------------------------
# small utilities


def _opset(model, domain=""):
    for o in model.opset_import:
        if o.domain == domain or (domain == "" and o.domain == "ai.onnx"):
            return o.version
    return None


def ensure_opset(model, domain=DOMAIN, version=OPSET_VERSION):
    """Add ``domain`` (default ai.caffe2 v1) to the model's opset imports when it is missing."""
    if _opset(model, domain) is None:
        model.opset_import.append(helper.make_opsetid(domain, version))
    return model


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_attr(node, name, value):
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _is_ours(node, op, domain=DOMAIN):
    return node.domain == domain and node.op_type == op


def _is_onnx(node, op):
    return node.domain in ("", "ai.onnx") and node.op_type == op


class _Names:
    """Fresh tensor/node names that collide with nothing in a graph."""

    def __init__(self, graph):
        self.used = set()
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            self.used.add(vi.name)
        for t in graph.initializer:
            self.used.add(t.name)
        for n in graph.node:
            self.used.update(n.input)
            self.used.update(n.output)
            self.used.add(n.name)

    def __call__(self, base):
        name, k = base, 1
        while name in self.used or not name:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name


def _infer(model):
    """Every tensor's TypeProto (inputs, initializers, inferred value_info, outputs), with our schemas."""
    from .schemas import try_register_schemas

    try_register_schemas()
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type
    for t in inferred.graph.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return types


def _elem_type(types, name):
    t = types.get(name)
    if t is None or not t.tensor_type.elem_type:
        raise ValueError(f"the element type of {name!r} is unknown (give the graph inputs types)")
    return t.tensor_type.elem_type


def _dims(types, name):
    """Static dims (int, or the dim_param string, or None) of a tensor, or None when the rank is unknown."""
    t = types.get(name)
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim]


def _value_info(name, types):
    vi = onnx.ValueInfoProto()
    vi.name = name
    vi.type.CopyFrom(types[name])
    return vi


def _np_dtype(elem_type):
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _compute_elem(elem_type):
    return TensorProto.DOUBLE if elem_type == TensorProto.DOUBLE else TensorProto.FLOAT


def _producer_index(graph):
    return {o: i for i, n in enumerate(graph.node) for o in n.output if o}


# ----------------------------------------------------------------------------------------------------------
# building Dropout nodes


def make_dropout(x, y, mask=None, *, ratio=_RATIO, is_test=False, seed=None, engine=_ENGINE, rng=_RNG, name=None,
                 domain=DOMAIN):
    """A ``NodeProto`` for ai.caffe2 Dropout (X) -> (Y, mask?). ``seed=None``: a random seed per session;
    ``rng="caffe2_mt19937"``: Caffe2's own CPU mask stream. Attributes are checked by the op table
    (:mod:`caffe2_ort.opdefs`), with the native kernels' messages."""
    a = _defs.DROPOUT.validate({"ratio": ratio, "is_test": int(bool(is_test)), "seed": seed, "engine": engine,
                                "rng": rng}, node=name)
    kw = {"ratio": a["ratio"], "is_test": a["is_test"]}
    if seed is not None:
        kw["seed"] = _defs.seed_as_int64(a["seed"])
    if a["engine"]:
        kw["engine"] = a["engine"]
    if a["rng"]:
        kw["rng"] = a["rng"]
    outputs = [y] + ([mask] if mask else [])
    return helper.make_node("Dropout", [x], outputs, name=name or f"{y}_dropout", domain=domain, **kw)


def make_dropout_grad(dy, dx, mask=None, *, ratio=_RATIO, is_test=False, engine=_ENGINE, name=None, domain=DOMAIN):
    """A ``NodeProto`` for ai.caffe2 DropoutGrad (dY, mask?) -> dX."""
    a = _defs.DROPOUT_GRAD.validate({"ratio": ratio, "is_test": int(bool(is_test)), "engine": engine}, node=name)
    kw = {"ratio": a["ratio"], "is_test": a["is_test"]}
    if a["engine"]:
        kw["engine"] = a["engine"]
    inputs = [dy] + ([mask] if mask else [])
    return helper.make_node("DropoutGrad", inputs, [dx], name=name or f"{dx}_dropout_grad", domain=domain, **kw)


def add_dropout(
    model_or_graph,
    x,
    *,
    output=None,
    training=False,
    ratio=_RATIO,
    seed=None,
    engine=_ENGINE,
    rng=_RNG,
    mask=None,
    expose_mask=True,
    rewire=True,
    name=None,
    domain=DOMAIN,
):
    """Insert an ai.caffe2 Dropout on tensor ``x`` (in place) and return ``(y, mask_name_or_None)``.

    The node goes right after ``x``'s producer (first, for graph inputs and initializers), so the graph
    stays topologically sorted. ``rewire=True`` makes every existing consumer of ``x`` read the dropout's
    output instead (graph outputs named ``x`` keep their producer). ``training=True`` builds the training
    form (is_test=0) with a mask output named ``mask`` (default ``<y>_mask``), which ``expose_mask`` adds to
    the graph outputs (it needs ``x``'s type, so give the graph its input types). ``training=False``
    builds the inference form (is_test=1, no mask). Given a ``ModelProto``, the ai.caffe2 opset is
    imported too. ``rng``: the mask stream ("caffe2_mt19937" = Caffe2's own CPU stream).
    """
    model = model_or_graph if isinstance(model_or_graph, onnx.ModelProto) else None
    graph = model.graph if model is not None else model_or_graph
    names = _Names(graph)
    y = output or names(f"{x}_dropout")
    names.used.add(y)
    m = (mask or names(f"{y}_mask")) if training else None
    node = make_dropout(x, y, m, ratio=ratio, is_test=not training, seed=seed, engine=engine, rng=rng,
                        name=name or names(f"{y}_node"), domain=domain)
    if rewire:
        for n in graph.node:
            for i, inp in enumerate(n.input):
                if inp == x:
                    n.input[i] = y
    prod = _producer_index(graph).get(x)
    graph.node.insert(0 if prod is None else prod + 1, node)
    if model is not None:
        ensure_opset(model, domain)
    if training and expose_mask:
        mask_vi = onnx.ValueInfoProto()
        mask_vi.name = m
        src = None
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.name == x:
                src = vi
        if src is None and model is not None:
            src_t = _infer(model).get(x)
        else:
            src_t = src.type if src is not None else None
        mask_vi.type.tensor_type.elem_type = TensorProto.BOOL
        if src_t is not None and src_t.tensor_type.HasField("shape") and engine != "CUDNN":
            mask_vi.type.tensor_type.shape.CopyFrom(src_t.tensor_type.shape)
        else:
            mask_vi.type.tensor_type.shape.dim.add()
        graph.output.append(mask_vi)
    return y, m


# ----------------------------------------------------------------------------------------------------------
# inference / training form


def dropout_nodes(model, domain=DOMAIN):
    """The ai.caffe2 Dropout nodes of a model's main graph."""
    return [n for n in model.graph.node if _is_ours(n, "Dropout", domain)]


def to_inference(model, *, domain=DOMAIN):
    """A copy with every ai.caffe2 Dropout in inference form (is_test=1, mask output dropped).

    DropoutGrad nodes become test-mode gradients too (is_test=1, mask input dropped), as Caffe2's gradient
    maker wires them. Masks dropped from Dropout nodes are removed from the graph outputs; a mask read by
    any node other than a DropoutGrad is an error.
    """
    model = copy.deepcopy(model)
    g = model.graph
    dropped = set()
    for n in g.node:
        if _is_ours(n, "Dropout", domain):
            _set_attr(n, "is_test", 1)
            if len(n.output) > 1:
                dropped.update(o for o in n.output[1:] if o)
                del n.output[1:]
    for n in g.node:
        if _is_ours(n, "DropoutGrad", domain):
            _set_attr(n, "is_test", 1)
            del n.input[1:]
        elif any(i in dropped for i in n.input):
            raise ValueError(f"node {n.name or n.op_type!r} reads a dropout mask; it has no inference form")
    outs = [o for o in g.output if o.name not in dropped]
    del g.output[:]
    g.output.extend(outs)
    return model


def to_training(model, *, expose_masks=True, domain=DOMAIN):
    """A copy with every ai.caffe2 Dropout in training form (is_test=0) and a mask output on each.

    Masks get the name ``<Y>_mask`` when a node had none; ``expose_masks`` adds them to the graph outputs
    with full types. With ``expose_masks=False`` nodes keep only the outputs they had (a Dropout without a
    mask writes no mask memory): that is the MC-dropout form. Test-mode DropoutGrad nodes cannot be turned
    around (they do not say which forward they belong to): rebuild the backward with
    :func:`build_training_model` instead.
    """
    model = copy.deepcopy(model)
    g = model.graph
    names = _Names(g)
    for n in g.node:
        if _is_ours(n, "DropoutGrad", domain) and _attrs(n).get("is_test", 0):
            raise ValueError(f"DropoutGrad {n.name!r} is in test form; rebuild the backward graph instead")
    exposed = []
    for n in g.node:
        if _is_ours(n, "Dropout", domain):
            _set_attr(n, "is_test", 0)
            if expose_masks:
                if len(n.output) < 2 or not n.output[1]:
                    del n.output[1:]
                    n.output.append(names(f"{n.output[0]}_mask"))
                exposed.append(n.output[1])
    if exposed:
        types = _infer(model)
        have = {o.name for o in g.output}
        g.output.extend(_value_info(m, types) for m in exposed if m not in have)
    return model


def mc_dropout(model, *, domain=DOMAIN):
    """The MC-dropout form: every ai.caffe2 Dropout in training mode, no masks (``to_training`` without
    exposing masks, and dropping the masks nobody reads). Each run of a session draws fresh masks."""
    model = to_training(model, expose_masks=False, domain=domain)
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in model.graph.node:
        if _is_ours(n, "Dropout", domain) and len(n.output) > 1 and n.output[1] not in read:
            del n.output[1:]
    return model


# ----------------------------------------------------------------------------------------------------------
# holding masks fixed


def _exact_mask_apply(names, x, m, out, elem_type, ratio, prefix):
    """Standard-ONNX nodes computing out = (x * scale) * m in the kernels' precision, rounded once."""
    ct = _compute_elem(elem_type)
    nodes = []
    xc, mc = x, names(f"{prefix}_mask_f")
    if elem_type != ct:
        xc = names(f"{prefix}_x_f")
        nodes.append(helper.make_node("Cast", [x], [xc], to=ct, name=names(f"{prefix}_cast_x")))
    nodes.append(helper.make_node("Cast", [m], [mc], to=ct, name=names(f"{prefix}_cast_mask")))
    scale = names(f"{prefix}_scale")
    sval = np.array(_ref.drop_scale(ratio), dtype=_np_dtype(ct))
    nodes.append(helper.make_node("Constant", [], [scale], value=numpy_helper.from_array(sval, scale),
                                  name=names(f"{prefix}_scale_const")))
    xs = names(f"{prefix}_scaled")
    nodes.append(helper.make_node("Mul", [xc, scale], [xs], name=names(f"{prefix}_mul_scale")))
    res = out if elem_type == ct else names(f"{prefix}_out_f")
    nodes.append(helper.make_node("Mul", [xs, mc], [res], name=names(f"{prefix}_mul_mask")))
    if elem_type != ct:
        nodes.append(helper.make_node("Cast", [res], [out], to=elem_type, name=names(f"{prefix}_cast_out")))
    return nodes


def with_fixed_masks(model, *, domain=DOMAIN):
    """A copy where each training-mode ai.caffe2 Dropout reads its mask from a graph input instead of drawing it.

    The node becomes ``Y = (X * scale) * Cast(mask)`` in standard ONNX ops, computed in float32 (float64
    for double) and rounded once, i.e. bit-identical to the kernel for that mask; the mask (``<Y>_mask`` if
    the node had none) becomes a bool graph input of X's shape and DropoutGrad nodes keep reading it. Use it
    to check gradients with finite differences while the mask stays fixed, or to replay recorded masks.
    Test-mode nodes are left alone.
    """
    model = copy.deepcopy(model)
    g = model.graph
    names = _Names(g)
    types = _infer(model)
    new_nodes, mask_inputs = [], []
    for n in g.node:
        if not (_is_ours(n, "Dropout", domain) and not _defs.DROPOUT.validate_node(n)["is_test"]):
            new_nodes.append(n)
            continue
        a = _defs.DROPOUT.validate_node(n)
        m = n.output[1] if len(n.output) > 1 and n.output[1] else names(f"{n.output[0]}_mask")
        et = _elem_type(types, n.input[0])
        new_nodes.extend(_exact_mask_apply(names, n.input[0], m, n.output[0], et, a["ratio"],
                                           n.name or n.output[0]))
        vi = helper.make_tensor_value_info(m, TensorProto.BOOL, None)
        if types.get(n.input[0]) is not None and types[n.input[0]].tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.CopyFrom(types[n.input[0]].tensor_type.shape)
        mask_inputs.append(vi)
    del g.node[:]
    g.node.extend(new_nodes)
    g.input.extend(mask_inputs)
    fed = {vi.name for vi in mask_inputs}
    outs = [o for o in g.output if o.name not in fed]
    del g.output[:]
    g.output.extend(outs)
    return model


# ----------------------------------------------------------------------------------------------------------
# ai.caffe2 Dropout <-> standard ONNX Dropout


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did: converted node names, nodes left alone (with why), and what was lost."""

    converted: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)  # (node name, reason)
    lost: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"converted {len(self.converted)} node(s)"]
        lines += [f"left {n!r}: {why}" for n, why in self.skipped]
        lines += [f"lost: {what}" for what in self.lost]
        return "\n".join(lines)


def _constant_value(graph, name):
    """The numpy value of an initializer or Constant-node output, else None."""
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute:
            a = n.attribute[0]
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name in ("value_float", "value_int"):
                return np.array(helper.get_attribute_value(a))
    return None


def _drop_unused_constants(graph, candidates):
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = {c for c in candidates if c and c not in read}
    keep_init = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    keep_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in dead)]
    del graph.node[:]
    graph.node.extend(keep_nodes)


def to_onnx_dropout(model, *, lower_grads=True, warn=True, domain=DOMAIN):
    """Replace ai.caffe2 Dropout with standard ONNX Dropout (opset >= 12 form: ratio and training_mode
    inputs). Returns ``(model, ConversionReport)``; warns about what is lost unless ``warn=False``.

    Kept: ratio, is_test (as training_mode), the Y and mask outputs (bool, true = kept), test-mode
    outputs bit for bit. Lost: the masks themselves (ONNX Runtime's Dropout uses its own generator; a
    ``seed`` is copied to ONNX's seed attribute, which seeds that other generator), the per-node RNG
    counter contract or Caffe2's stream (``rng``), and ``engine`` (a CUDNN mask becomes an X-shaped bool
    mask). Not converted: ratio = 1
    in training (ONNX allows ratio in [0, 1) only). ``lower_grads``: DropoutGrad (no standard op)
    becomes Identity (test) or ``(dY * Cast(mask)) * scale`` in the kernel's precision, bit-exact.
    The default-domain opset must be >= 12.
    """
    if (_opset(model) or 0) < 12:
        raise ValueError("standard ONNX Dropout takes ratio/training_mode inputs from opset 12; the model "
                         f"imports opset {_opset(model)} (convert it with onnx.version_converter first)")
    model = copy.deepcopy(model)
    g = model.graph
    names = _Names(g)
    report = ConversionReport()
    types = None
    new_nodes, seeds, engines, rngs = [], False, set(), set()
    for n in g.node:
        label = n.name or n.output[0]
        if _is_ours(n, "Dropout", domain):
            a = _defs.DROPOUT.validate_node(n)  # the table's checks and defaults
            ratio, is_test = a["ratio"], a["is_test"]
            if not is_test and ratio >= 1.0:
                report.skipped.append((label, "ratio = 1 in training: ONNX Dropout needs ratio < 1"))
                new_nodes.append(n)
                continue
            r, tm = names(f"{label}_ratio"), names(f"{label}_training_mode")
            # In inference ONNX Dropout ignores ratio, but ORT still demands ratio < 1.
            onnx_ratio = 0.0 if ratio >= 1.0 else ratio
            g.initializer.extend([numpy_helper.from_array(np.array(onnx_ratio, np.float32), r),
                                  numpy_helper.from_array(np.array(not is_test), tm)])
            kw = {"seed": int(a["seed"])} if a["seed"] is not None else {}
            seeds |= a["seed"] is not None
            eng = a["engine"]
            if eng not in ("", "DEFAULT"):
                engines.add(eng)
            if a["rng"] not in ("", _defs.RNG_PHILOX):
                rngs.add(a["rng"])
            new_nodes.append(helper.make_node("Dropout", [n.input[0], r, tm], list(n.output), name=n.name, **kw))
            report.converted.append(label)
        elif _is_ours(n, "DropoutGrad", domain):
            if not lower_grads:
                report.skipped.append((label, "DropoutGrad has no standard ONNX op (lower_grads=False)"))
                new_nodes.append(n)
                continue
            a = _defs.DROPOUT_GRAD.validate_node(n)
            if a["is_test"]:
                new_nodes.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
            else:
                types = types or _infer(model)
                new_nodes.extend(_exact_mask_apply(names, n.input[0], n.input[1], n.output[0],
                                                   _elem_type(types, n.input[0]), a["ratio"], label))
            report.converted.append(label)
        else:
            new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    if any(_is_ours(n, "Dropout", domain) for n in new_nodes):
        report.lost.append("some ai.caffe2 Dropout nodes remain; the model still needs the ai.caffe2 library")
    else:
        keep = [o for o in model.opset_import if o.domain != domain]
        if not any(n.domain == domain for n in new_nodes):
            del model.opset_import[:]
            model.opset_import.extend(keep)
    if report.converted:
        report.lost.append("training masks: ONNX Runtime's Dropout draws from its own generator, not the "
                           "Philox stream of the RNG contract (test mode stays exact)")
        report.lost.append("the per-node counter contract (run k of a session reproducible on any device)")
    if seeds:
        report.lost.append("seed semantics: copied to ONNX Dropout's seed, which seeds a different generator")
    if engines:
        report.lost.append(f"engine {sorted(engines)}: a CUDNN mask (reserve space) becomes an X-shaped bool mask")
    if rngs:
        report.lost.append(f"rng {sorted(rngs)}: ONNX Dropout draws its own masks, not Caffe2's stream")
    if warn and report.lost:
        warnings.warn("to_onnx_dropout: " + "; ".join(report.lost), stacklevel=2)
    return model, report


def from_onnx_dropout(model, *, seed=None, engine=_ENGINE, rng=_RNG, warn=True, domain=DOMAIN):
    """Replace standard ONNX Dropout with ai.caffe2 Dropout. Returns ``(model, ConversionReport)``.

    ``ratio`` and ``training_mode`` must be constants (initializers or Constant nodes) or absent (0.5, and
    inference); older opsets' ``ratio``/``is_test`` attributes are read too. ``seed``: an int gives every
    converted node that seed plus its index (distinct streams); None keeps ONNX's seed attribute where
    present (with the Philox contract, so masks differ from ORT's Dropout for it) and leaves the others
    seedless. Lost: the exact masks of ONNX Runtime's generator. A node whose mask is not bool (opset 7)
    or whose ratio/training_mode is computed at run time is left alone and reported. ``rng``: the mask
    stream the new nodes draw ("caffe2_mt19937" = Caffe2's own CPU stream).
    """
    model = copy.deepcopy(model)
    g = model.graph
    report = ConversionReport()
    new_nodes, orphans, k = [], [], 0
    for n in g.node:
        if not _is_onnx(n, "Dropout"):
            new_nodes.append(n)
            continue
        label = n.name or n.output[0]
        a = _attrs(n)
        ratio, training = a.get("ratio", 0.5), bool(a.get("is_test", 1) == 0) if "is_test" in a else False
        why = None
        if len(n.input) > 1 and n.input[1]:
            v = _constant_value(g, n.input[1])
            why = why or (None if v is not None else "ratio is computed at run time")
            ratio = float(v) if v is not None else ratio
        if len(n.input) > 2 and n.input[2]:
            v = _constant_value(g, n.input[2])
            why = why or (None if v is not None else "training_mode is computed at run time")
            training = bool(v) if v is not None else training
        if (_opset(model) or 0) < 10 and len(n.output) > 1 and n.output[1]:
            why = why or "its mask has X's type (opset < 10), not bool"
        if why:
            report.skipped.append((label, why))
            new_nodes.append(n)
            continue
        node_seed = (int(seed) + k) if seed is not None else a.get("seed")
        k += 1
        new_nodes.append(make_dropout(n.input[0], n.output[0], n.output[1] if len(n.output) > 1 else None,
                                      ratio=ratio, is_test=not training, seed=node_seed, engine=engine, rng=rng,
                                      name=n.name or None, domain=domain))
        orphans.extend(n.input[1:])
        report.converted.append(label)
    del g.node[:]
    g.node.extend(new_nodes)
    _drop_unused_constants(g, orphans)
    if report.converted:
        ensure_opset(model, domain)
        report.lost.append("exact training masks: the Philox stream of the RNG contract replaces ONNX "
                           "Runtime's generator (test mode stays exact)")
    if warn and report.lost:
        warnings.warn("from_onnx_dropout: " + "; ".join(report.lost), stacklevel=2)
    return model, report


# ----------------------------------------------------------------------------------------------------------
# backward graphs

SUPPORTED_GRADIENT_OPS = (
    "Gemm", "MatMul (2-D)", "Add", "Sub", "Mul", "Neg", "Relu", "Sigmoid", "Tanh", "Identity",
    "ai.caffe2 Dropout", "SoftmaxCrossEntropyLoss (2-D scores, reduction mean or sum, no weights)",
)


class _Backward:
    def __init__(self, model, types, names, domain):
        self.model, self.types, self.names, self.domain = model, types, names, domain
        self.opset = _opset(model) or 13
        self.nodes = []
        self.grads = {}  # tensor -> list of partial gradient names

    # emit helpers -----------------------------------------------------------------------------------
    def node(self, op, inputs, outputs=None, base="g", **kw):
        outputs = outputs or [self.names(base)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.names(f"{base}_{op}"), **kw))
        return outputs[0]

    def const(self, value, elem_type, base="c"):
        name = self.names(base)
        arr = np.asarray(value, dtype=_np_dtype(elem_type))
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name),
                                           name=self.names(f"{base}_Constant")))
        return name

    def reduce_sum(self, x, axes, base):
        if self.opset >= 13:
            ax = self.const(np.array(axes, np.int64), TensorProto.INT64, f"{base}_axes")
            return self.node("ReduceSum", [x, ax], base=base, keepdims=1)
        return self.node("ReduceSum", [x], base=base, axes=list(axes), keepdims=1)

    def add_grad(self, tensor, g):
        self.grads.setdefault(tensor, []).append(g)

    def grad_of(self, tensor):
        parts = self.grads.get(tensor)
        if not parts:
            return None
        if len(parts) > 1:
            total = self.node("Sum", parts, base=f"{tensor}_grad_sum")
            self.grads[tensor] = [total]
        return self.grads[tensor][0]

    def unbroadcast(self, g, g_like, target, base):
        """Sum ``g`` (shaped like ``g_like``) down to ``target``'s shape (numpy broadcasting rules)."""
        td, gd = _dims(self.types, target), _dims(self.types, g_like)
        if td is None or gd is None:
            raise NotImplementedError(f"rank of {target!r} or {g_like!r} unknown: cannot reduce a broadcast gradient")
        if td == gd and all(d is not None for d in td):
            return g
        lead = len(gd) - len(td)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(td) if d == 1]
        out = self.reduce_sum(g, axes, base) if axes else g
        shape = self.node("Shape", [target], base=f"{base}_shape")
        return self.node("Reshape", [out, shape], base=f"{base}_reshape")

    # rules ------------------------------------------------------------------------------------------
    def backprop(self, n, needs):
        outs_g = [self.grad_of(o) if o else None for o in n.output]
        if outs_g[0] is None:
            return
        dy = outs_g[0]
        y = n.output[0]
        et = self.types[y].tensor_type.elem_type if y in self.types else None
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        a = _attrs(n)
        ins = list(n.input)
        b = n.name or y
        if op == "Gemm":
            alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
            ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
            A, B = ins[0], ins[1]
            if needs(A):
                if not ta:
                    ga = self.node("Gemm", [dy, B], base=f"{A}_grad_part", alpha=alpha, transB=0 if tb else 1)
                else:
                    ga = self.node("Gemm", [B, dy], base=f"{A}_grad_part", alpha=alpha, transA=tb, transB=1)
                self.add_grad(A, ga)
            if needs(B):
                if not tb:
                    gb = self.node("Gemm", [A, dy], base=f"{B}_grad_part", alpha=alpha, transA=0 if ta else 1)
                else:
                    gb = self.node("Gemm", [dy, A], base=f"{B}_grad_part", alpha=alpha, transA=1, transB=ta)
                self.add_grad(B, gb)
            if len(ins) > 2 and ins[2] and needs(ins[2]):
                gc = self.unbroadcast(dy, y, ins[2], f"{ins[2]}_grad_part")
                if beta != 1.0:
                    gc = self.node("Mul", [gc, self.const(beta, et, "beta")], base=f"{ins[2]}_grad_part")
                self.add_grad(ins[2], gc)
        elif op == "MatMul":
            A, B = ins
            if _dims(self.types, A) is None or len(_dims(self.types, A)) != 2 or len(_dims(self.types, B) or []) != 2:
                raise NotImplementedError(f"MatMul {b!r}: gradients are implemented for 2-D operands only")
            if needs(A):
                self.add_grad(A, self.node("Gemm", [dy, B], base=f"{A}_grad_part", transB=1))
            if needs(B):
                self.add_grad(B, self.node("Gemm", [A, dy], base=f"{B}_grad_part", transA=1))
        elif op in ("Add", "Sub"):
            for k, t in enumerate(ins[:2]):
                if needs(t):
                    g = self.unbroadcast(dy, y, t, f"{t}_grad_part")
                    if op == "Sub" and k == 1:
                        g = self.node("Neg", [g], base=f"{t}_grad_part")
                    self.add_grad(t, g)
        elif op == "Mul":
            for k, t in enumerate(ins[:2]):
                if needs(t):
                    prod = self.node("Mul", [dy, ins[1 - k]], base=f"{t}_grad_full")
                    self.add_grad(t, self.unbroadcast(prod, y, t, f"{t}_grad_part"))
        elif op == "Relu":
            if needs(ins[0]):
                pos = self.node("Greater", [y, self.const(0, et, "zero")], base=f"{b}_positive")
                posf = self.node("Cast", [pos], base=f"{b}_positive_f", to=et)
                self.add_grad(ins[0], self.node("Mul", [dy, posf], base=f"{ins[0]}_grad_part"))
        elif op == "Sigmoid":
            if needs(ins[0]):
                one_minus = self.node("Sub", [self.const(1, et, "one"), y], base=f"{b}_one_minus")
                d = self.node("Mul", [y, one_minus], base=f"{b}_dsigmoid")
                self.add_grad(ins[0], self.node("Mul", [dy, d], base=f"{ins[0]}_grad_part"))
        elif op == "Tanh":
            if needs(ins[0]):
                sq = self.node("Mul", [y, y], base=f"{b}_sq")
                d = self.node("Sub", [self.const(1, et, "one"), sq], base=f"{b}_dtanh")
                self.add_grad(ins[0], self.node("Mul", [dy, d], base=f"{ins[0]}_grad_part"))
        elif op == "Identity":
            if needs(ins[0]):
                self.add_grad(ins[0], dy)
        elif op == "Neg":
            if needs(ins[0]):
                self.add_grad(ins[0], self.node("Neg", [dy], base=f"{ins[0]}_grad_part"))
        elif op == f"{self.domain}::Dropout":
            if needs(ins[0]):
                is_test = int(a.get("is_test", 0))
                kw = {"ratio": float(a.get("ratio", 0.5)), "is_test": is_test}
                if "engine" in a:
                    kw["engine"] = _text(a["engine"])
                # Caffe2's gradient maker: [GO(0), O(1)] in training, [GO(0)] in test.
                g_inputs = [dy] if is_test else [dy, n.output[1]]
                gx = self.names(f"{ins[0]}_grad_part")
                self.nodes.append(helper.make_node("DropoutGrad", g_inputs, [gx], domain=self.domain,
                                                   name=self.names(f"{b}_DropoutGrad"), **kw))
                self.add_grad(ins[0], gx)
        elif op == "SoftmaxCrossEntropyLoss":
            red = _text(a.get("reduction", "mean"))
            if red not in ("mean", "sum") or "ignore_index" in a or (len(ins) > 2 and ins[2]):
                raise NotImplementedError(f"SoftmaxCrossEntropyLoss {b!r}: only reduction mean/sum without "
                                          "weights or ignore_index")
            scores, labels = ins[0], ins[1]
            sd = _dims(self.types, scores)
            if sd is None or len(sd) != 2 or not isinstance(sd[1], int):
                raise NotImplementedError(f"SoftmaxCrossEntropyLoss {b!r}: scores must be 2-D with a static class count")
            if needs(scores):
                et = self.types[scores].tensor_type.elem_type
                p = self.node("Softmax", [scores], base=f"{b}_prob", axis=1)
                classes = self.const(np.arange(sd[1], dtype=np.int64), TensorProto.INT64, f"{b}_classes")
                lab2 = self.node("Unsqueeze", [labels, self.const([1], TensorProto.INT64, "axis1")]
                                 if self.opset >= 13 else [labels], base=f"{b}_labels_col",
                                 **({} if self.opset >= 13 else {"axes": [1]}))
                onehot = self.node("Cast", [self.node("Equal", [lab2, classes], base=f"{b}_onehot_b")],
                                   base=f"{b}_onehot", to=et)
                diff = self.node("Sub", [p, onehot], base=f"{b}_p_minus_y")
                scale = dy
                if red == "mean":
                    count = self.node("Cast", [self.node("Shape", [labels], base=f"{b}_n")], base=f"{b}_n_f", to=et)
                    scale = self.node("Div", [dy, count], base=f"{b}_dloss_over_n")
                self.add_grad(scores, self.node("Mul", [diff, scale], base=f"{scores}_grad_part"))
        else:
            raise NotImplementedError(
                f"no gradient for {op} (node {b!r}); supported: {', '.join(SUPPORTED_GRADIENT_OPS)}"
            )


def build_training_model(model, loss, params=None, *, wrt_inputs=(), keep_outputs=True, grad_suffix="_grad",
                         domain=DOMAIN):
    """One model computing the loss and the gradient of every parameter, runnable by plain onnxruntime.

    ``loss``: name of a scalar tensor of the forward graph. ``params``: names of the parameters to
    differentiate (default: every floating-point initializer); they are moved from the initializers to
    the graph inputs so a numpy optimiser can feed updated values each step. ``wrt_inputs``: other graph
    inputs to differentiate too. Outputs: ``loss``, then ``<p>_grad`` for each parameter and input (same
    order), then, with ``keep_outputs``, the forward model's outputs and every exposed dropout mask.

    Dropout nodes keep their is_test: a training-mode node gets a mask output if it had none and a
    ``DropoutGrad(dY, mask)``; a test-mode node gets ``DropoutGrad(dY)`` (Caffe2's gradient maker), with
    ratio, is_test and engine copied. Supported ops: see ``SUPPORTED_GRADIENT_OPS``; anything else on a
    path from a parameter to the loss raises NotImplementedError.
    """
    model = copy.deepcopy(model)
    g = model.graph
    names = _Names(g)
    float_types = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    if params is None:
        params = [t.name for t in g.initializer if t.data_type in float_types]
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
    masks = []
    for n in g.node:
        if _is_ours(n, "Dropout", domain) and not _attrs(n).get("is_test", 0):
            if len(n.output) < 2 or not n.output[1]:
                del n.output[1:]
                n.output.append(names(f"{n.output[0]}_mask"))
            masks.append(n.output[1])
    types = _infer(model)
    if loss not in types:
        raise ValueError(f"loss {loss!r} is not a tensor of the graph")
    ld = _dims(types, loss)
    if ld not in ([], None) and any(d != 1 for d in ld):
        raise ValueError(f"loss {loss!r} must be a scalar, its shape is {ld}")

    targets = list(params) + list(wrt_inputs)
    # Tensors that depend on a target (forward) and that the loss depends on (backward).
    depends = set(targets)
    for n in g.node:
        if any(i in depends for i in n.input):
            depends.update(o for o in n.output if o)
    feeds_loss, on_path = {loss}, []
    for n in reversed(g.node):
        if any(o in feeds_loss for o in n.output):
            feeds_loss.update(i for i in n.input if i)
            on_path.append(n)
    bw = _Backward(model, types, names, domain)
    bw.add_grad(loss, bw.const(np.ones(ld or [], dtype=np.float64), _elem_type(types, loss), "loss_grad_seed"))

    def needs(t):
        return t in depends and t in feeds_loss

    for n in on_path:  # already in reverse topological order
        if any(needs(i) for i in n.input):
            bw.backprop(n, needs)

    outputs = [_value_info(loss, types)]
    for t in targets:
        gname = bw.grad_of(t)
        out = f"{t}{grad_suffix}"
        if gname is None:  # the loss does not depend on t
            gname = bw.node("Mul", [t, bw.const(0, _elem_type(types, t), "zero")], base=f"{t}_grad_zero")
        bw.nodes.append(helper.make_node("Identity", [gname], [out], name=names(f"{out}_out")))
        vi = onnx.ValueInfoProto()
        vi.name = out
        vi.type.CopyFrom(types[t])
        outputs.append(vi)
    g.node.extend(bw.nodes)
    if keep_outputs:
        have = {o.name for o in outputs}
        outputs += [o for o in g.output if o.name not in have]
        have |= {o.name for o in outputs}
        outputs += [_value_info(m, types) for m in masks if m not in have]
    del g.output[:]
    g.output.extend(outputs)
    ensure_opset(model, domain)
    return model


def initial_params(model, params=None):
    """``{name: array}`` of a model's floating-point initializers (or of ``params``) to start training from."""
    out = {}
    for t in model.graph.initializer:
        if (params is None and t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                               TensorProto.BFLOAT16)) or (params is not None and t.name in params):
            out[t.name] = numpy_helper.to_array(t).copy()
    return out
