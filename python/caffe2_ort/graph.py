"""Graph helpers for the ai.caffe2 ops: add Dropout, switch models between inference and training form,
convert to and from standard ONNX Dropout, hold masks fixed; :func:`build_training_model` is the
gradients-only training form (the rules are in :mod:`caffe2_ort.gradients`).

Masks come in two formats (``mask_format``, :data:`caffe2_ort.opdefs.MASK_FORMATS`): "bool" (Dropout /
DropoutGrad, Caffe2's X-shaped bool mask) and "bits" (BitmaskDropout / BitmaskDropoutGrad, the same draw
packed 32 keep bits a uint32 word: 8x smaller). The builders take ``mask_format``; :func:`set_mask_format`
turns a model's Dropout/DropoutGrad pairs from one format into the other.

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


def _is_forward(node, domain=DOMAIN):
    """An ai.caffe2 forward dropout node (Dropout or BitmaskDropout)."""
    return node.domain == domain and node.op_type in _defs.FORWARD_OPS


def _is_gradient(node, domain=DOMAIN):
    """An ai.caffe2 dropout gradient node (DropoutGrad or BitmaskDropoutGrad)."""
    return node.domain == domain and node.op_type in _defs.GRADIENT_OPS


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
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
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


def _checked_attrs(op, values, name):
    """The attributes to write on a new ``op`` node: checked by the table, defaults left out (the seed
    and a non-default engine written), an engine on an op without one refused with the table's message."""
    d = _defs.OPS[op]
    has = {a.name for a in d.attrs}
    if values.get("engine") in ("", None) and "engine" not in has:
        values = {k: v for k, v in values.items() if k != "engine"}
    a = d.validate(values, node=name)
    kw = {"ratio": a["ratio"], "is_test": a["is_test"]}
    if values.get("seed") is not None:
        kw["seed"] = _defs.seed_as_int64(a["seed"])
    for k in ("engine", "rng"):
        if a.get(k):
            kw[k] = a[k]
    return kw


def make_dropout(x, y, mask=None, *, ratio=_RATIO, is_test=False, seed=None, engine=_ENGINE, rng=_RNG, name=None,
                 domain=DOMAIN, mask_format="bool"):
    """A ``NodeProto`` for ai.caffe2 Dropout (X) -> (Y, mask?), or BitmaskDropout with ``mask_format="bits"``
    (a uint32 mask of ceil(numel / 32) words; no engine). ``seed=None``: a random seed per session;
    ``rng="caffe2_mt19937"``: Caffe2's own CPU mask stream. Attributes are checked by the op table
    (:mod:`caffe2_ort.opdefs`), with the native kernels' messages."""
    op = _defs.MASK_FORMATS[_defs.check_mask_format(mask_format)][0]
    kw = _checked_attrs(op, {"ratio": ratio, "is_test": int(bool(is_test)), "seed": seed, "engine": engine,
                             "rng": rng}, name)
    outputs = [y] + ([mask] if mask else [])
    return helper.make_node(op, [x], outputs, name=name or f"{y}_dropout", domain=domain, **kw)


def make_dropout_grad(dy, dx, mask=None, *, ratio=_RATIO, is_test=False, engine=_ENGINE, name=None, domain=DOMAIN,
                      mask_format="bool"):
    """A ``NodeProto`` for ai.caffe2 DropoutGrad (dY, mask?) -> dX, or BitmaskDropoutGrad with
    ``mask_format="bits"``."""
    op = _defs.MASK_FORMATS[_defs.check_mask_format(mask_format)][1]
    kw = _checked_attrs(op, {"ratio": ratio, "is_test": int(bool(is_test)), "engine": engine}, name)
    inputs = [dy] + ([mask] if mask else [])
    return helper.make_node(op, inputs, [dx], name=name or f"{dx}_dropout_grad", domain=domain, **kw)


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
    mask_format="bool",
):
    """Insert an ai.caffe2 Dropout on tensor ``x`` (in place) and return ``(y, mask_name_or_None)``.

    The node goes right after ``x``'s producer (first, for graph inputs and initializers), so the graph
    stays topologically sorted. ``rewire=True`` makes every existing consumer of ``x`` read the dropout's
    output instead (graph outputs named ``x`` keep their producer). ``training=True`` builds the training
    form (is_test=0) with a mask output named ``mask`` (default ``<y>_mask``), which ``expose_mask`` adds to
    the graph outputs (it needs ``x``'s type, so give the graph its input types). ``training=False``
    builds the inference form (is_test=1, no mask). Given a ``ModelProto``, the ai.caffe2 opset is
    imported too. ``rng``: the mask stream ("caffe2_mt19937" = Caffe2's own CPU stream).
    ``mask_format="bits"``: a BitmaskDropout, whose mask is uint32 of ceil(numel / 32) words.
    """
    model = model_or_graph if isinstance(model_or_graph, onnx.ModelProto) else None
    graph = model.graph if model is not None else model_or_graph
    names = _Names(graph)
    y = output or names(f"{x}_dropout")
    names.used.add(y)
    m = (mask or names(f"{y}_mask")) if training else None
    node = make_dropout(x, y, m, ratio=ratio, is_test=not training, seed=seed, engine=engine, rng=rng,
                        name=name or names(f"{y}_node"), domain=domain, mask_format=mask_format)
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
        mask_vi.type.CopyFrom(_mask_type(node.op_type, src_t, engine))
        graph.output.append(mask_vi)
    return y, m


def _mask_type(op, x_type, engine=""):
    """The TypeProto of the mask output of forward op ``op`` over X of type ``x_type`` (None: unknown):
    bool of X's shape (rank 1 under engine CUDNN), or uint32 of ceil(numel / 32) words."""
    t = onnx.TypeProto()
    known = x_type is not None and x_type.tensor_type.HasField("shape")
    if _defs.mask_format_of(op) == "bits":
        t.tensor_type.elem_type = TensorProto.UINT32
        dim = t.tensor_type.shape.dim.add()
        dims = [d.dim_value if d.HasField("dim_value") else None for d in x_type.tensor_type.shape.dim] if known else [None]
        if None not in dims:
            dim.dim_value = _defs.bitmask_words(int(np.prod(dims, dtype=np.int64)))
        return t
    t.tensor_type.elem_type = TensorProto.BOOL
    if known and engine != "CUDNN":
        t.tensor_type.shape.CopyFrom(x_type.tensor_type.shape)
    else:
        t.tensor_type.shape.dim.add()
    return t


# ----------------------------------------------------------------------------------------------------------
# inference / training form


def dropout_nodes(model, domain=DOMAIN):
    """The ai.caffe2 forward dropout nodes (Dropout and BitmaskDropout) of a model's main graph."""
    return [n for n in model.graph.node if _is_forward(n, domain)]


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
        if _is_forward(n, domain):
            _set_attr(n, "is_test", 1)
            if len(n.output) > 1:
                dropped.update(o for o in n.output[1:] if o)
                del n.output[1:]
    for n in g.node:
        if _is_gradient(n, domain):
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
        if _is_gradient(n, domain) and _attrs(n).get("is_test", 0):
            raise ValueError(f"{n.op_type} {n.name!r} is in test form; rebuild the backward graph instead")
    exposed = []
    for n in g.node:
        if _is_forward(n, domain):
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
        if _is_forward(n, domain) and len(n.output) > 1 and n.output[1] not in read:
            del n.output[1:]
    return model


def _refuse_bits(node, what, domain=DOMAIN):
    if (_is_forward(node, domain) or _is_gradient(node, domain)) and _defs.mask_format_of(node.op_type) == "bits":
        raise ValueError(f"{what}: {node.op_type} node {node.name or node.output[0]!r} has a bit-packed mask; "
                         "turn the model back with set_mask_format(model, 'bool') first")


# ----------------------------------------------------------------------------------------------------------
# mask formats


class MaskFormatError(ValueError):
    """A model whose dropout masks cannot be turned into the other format (one line, naming the node)."""


def mask_format_nodes(model, domain=DOMAIN):
    """{mask format: number of ai.caffe2 dropout nodes (forward and gradient) of that format}."""
    out = dict.fromkeys(_defs.MASK_FORMATS, 0)
    for n in model.graph.node:
        if _is_forward(n, domain) or _is_gradient(n, domain):
            out[_defs.mask_format_of(n.op_type)] += 1
    return out


def set_mask_format(model, mask_format, *, domain=DOMAIN):
    """A copy whose ai.caffe2 dropout pairs use masks of ``mask_format``: "bits" turns Dropout into
    BitmaskDropout and DropoutGrad into BitmaskDropoutGrad (uint32 masks of ceil(numel / 32) words, 8x
    smaller than the bool ones), "bool" turns them back. Outputs, keep decisions, RNG streams and gradients
    stay bit for bit the same; mask graph outputs and value_info change type.

    Refused (:class:`MaskFormatError`): a training-mode gradient node whose mask is not the mask output of
    a forward dropout node of the graph, a mask that any other node reads, and engine "CUDNN" (its mask is
    cuDNN's reserve space, not a bit mask) when converting to bits.
    """
    fmt = _defs.check_mask_format(mask_format)
    forward_op, grad_op = _defs.MASK_FORMATS[fmt]
    model = copy.deepcopy(model)
    g = model.graph
    masks = {}  # mask tensor -> its forward node
    for n in g.node:
        if _is_forward(n, domain) and len(n.output) > 1 and n.output[1]:
            masks[n.output[1]] = n
    for n in g.node:
        if _is_gradient(n, domain):
            if len(n.input) < 2 or not n.input[1]:
                continue
            if n.input[1] not in masks and _attrs(n).get("is_test", 0):
                del n.input[1:]  # a test-mode gradient ignores its mask: it needs none of the new format
            elif n.input[1] not in masks:
                raise MaskFormatError(
                    f"{n.op_type} node {n.name or n.output[0]!r} reads mask {n.input[1]!r}, which no ai.caffe2 Dropout "
                    f"of the graph writes: its mask cannot be converted to mask_format {fmt!r}")
        elif not _is_forward(n, domain):
            for i in n.input:
                if i in masks:
                    raise MaskFormatError(
                        f"node {n.name or n.op_type!r} ({n.op_type}) reads the dropout mask {i!r}; only a dropout "
                        f"gradient may read it for mask_format {fmt!r}")
    for n in g.node:
        if not (_is_forward(n, domain) or _is_gradient(n, domain)) or n.op_type in (forward_op, grad_op):
            continue
        new_op = forward_op if _is_forward(n, domain) else grad_op
        if _text(_attrs(n).get("engine", "")) == "CUDNN" and "engine" in _defs.OPS[new_op].refused_names:
            raise MaskFormatError(_defs.OPS[new_op].refusal_message("engine", n.name or None))
        keep = {a.name for a in _defs.OPS[new_op].attrs}
        kept = [a for a in n.attribute if a.name in keep]
        del n.attribute[:]
        n.attribute.extend(kept)
        n.op_type = new_op
    # the masks' declared types follow the new format
    declared = [vi for vi in list(g.output) + list(g.value_info) if vi.name in masks]
    if declared:
        types = _infer(_without_types(model, set(masks)))
        for vi in declared:
            n = masks[vi.name]
            vi.type.CopyFrom(_mask_type(n.op_type, types.get(n.input[0]), _text(_attrs(n).get("engine", ""))))
    return model


def _without_types(model, names):
    """A copy without the declared types of ``names`` (so inference does not meet the old mask types)."""
    m = copy.deepcopy(model)
    vis = [vi for vi in m.graph.value_info if vi.name not in names]
    del m.graph.value_info[:]
    m.graph.value_info.extend(vis)
    outs = [vi for vi in m.graph.output if vi.name not in names]
    del m.graph.output[:]
    m.graph.output.extend(outs)
    return m


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
        _refuse_bits(n, "with_fixed_masks", domain)
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
        _refuse_bits(n, "to_onnx_dropout", domain)
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
# backward graphs (the rules live in caffe2_ort.gradients)


def build_training_model(model, loss, params=None, *, wrt_inputs=(), keep_outputs=True, grad_suffix="_grad",
                         domain=DOMAIN):
    """One model computing the loss and ``<p>_grad`` for every parameter: the gradients-only training form.

    See :func:`caffe2_ort.gradients.build_gradient_model`; :func:`caffe2_ort.training.make_training_model`
    adds an optimizer and makes a training-step model.
    """
    from .gradients import build_gradient_model

    return build_gradient_model(model, loss, params, wrt_inputs=wrt_inputs, keep_outputs=keep_outputs,
                                grad_suffix=grad_suffix, domain=domain)


def initial_params(model, params=None):
    """``{name: array}`` of a model's floating-point initializers (or of ``params``) to start training from."""
    out = {}
    for t in model.graph.initializer:
        if (params is None and t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                               TensorProto.BFLOAT16)) or (params is not None and t.name in params):
            out[t.name] = numpy_helper.to_array(t).copy()
    return out
