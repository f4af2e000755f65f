"""ONNX schemas for the ai.caffe2 v1 ops (Dropout, DropoutGrad, BitmaskDropout, BitmaskDropoutGrad),
registered from Python with ``onnx.defs``.

After :func:`register_schemas` (called by ``import caffe2_ort``), ``onnx.checker.check_model(model,
full_check=True)`` and ``onnx.shape_inference.infer_shapes`` know both ops: the checker validates their
inputs, outputs, attribute types and element types, and shape inference runs the Python
type-and-shape inference functions below (onnx >= 1.19 calls Python inference functions from its C++
inference engine), so every output of the ops gets a full type and shape:

- Dropout: ``Y`` = X's type and shape; ``mask`` = bool with X's shape, except under ``engine="CUDNN"``
  where the mask carries cuDNN's opaque reserve space and is inferred as bool of rank 1, unknown length.
- DropoutGrad: ``dX`` = dY's type and shape.
- BitmaskDropout: ``Y`` as Dropout's; ``mask`` = uint32 of rank 1 with ceil(numel / 32) words when X's
  shape is static, else of unknown length.
- BitmaskDropoutGrad: ``dX`` = dY's type and shape.

Everything here comes from the op table (:mod:`caffe2_ort.opdefs`). The inference functions also
reject what the native kernels reject at session creation (an attribute of the wrong kind, ratio
outside [0, 1] or NaN, an unknown engine or rng, a training DropoutGrad without its mask, bool masks
whose element count differs from dY's when both shapes are known, bit masks of another word count than
ceil(numel(dY) / 32)), with the kernels' messages, so
``full_check`` catches those errors early.

onnx is the only dependency. With an onnx older than 1.19 (no Python inference functions),
:func:`register_schemas` raises :class:`SchemaRegistrationError` saying so; ``import caffe2_ort`` should
catch it and go on (see :func:`try_register_schemas`).
"""

from __future__ import annotations

import atexit
import warnings

from . import opdefs as _defs
from .opdefs import DOMAIN, OPSET_VERSION

FLOAT_TYPES = _defs.ELEMENT_TYPES

# Marks the schemas as ours, so a second registration can tell them from someone else's.
_MARK = "[caffe2_ort schema]"

_DROPOUT_DOC = f"""{_MARK} {_defs.DROPOUT.summary}

Training (is_test = 0): each element is zeroed with probability `ratio`, the kept ones are scaled by
1/(1 - ratio) (0 when ratio = 1). rng "" / "philox": the mask comes from Philox4x32-10 keyed by `seed`,
at a per-node counter that advances by ceil(numel/4) blocks per training run, so run k of a fresh
session is reproducible on any device. rng "caffe2_mt19937": real Caffe2's CPU stream (MT19937 seeded
with seed mod 2^32, two words per element per training run). Test (is_test != 0): Y is an exact copy
of X and a requested mask is all true. Under engine "CUDNN" on CUDA the mask holds cuDNN's reserve
space (1-D)."""

_DROPOUT_GRAD_DOC = f"""{_MARK} {_defs.DROPOUT_GRAD.summary}

is_test != 0: dX = dY (mask ignored). is_test = 0: dX = (dY * mask) * scale, with scale as in Dropout;
the mask is required and must have as many elements as dY."""

_BITMASK_DROPOUT_DOC = f"""{_MARK} {_defs.BITMASK_DROPOUT.summary}

Same attributes, RNG stream, Y and keep decisions as Dropout with the same seed and run. The mask is
1-D uint32 of ceil(numel/32) words: bit j (LSB = bit 0) of word w is the keep decision (1 = kept) of
element 32 w + j in row-major order; bits past numel are 0. No engine attribute."""

_BITMASK_DROPOUT_GRAD_DOC = f"""{_MARK} {_defs.BITMASK_DROPOUT_GRAD.summary}

is_test != 0: dX = dY (mask ignored). is_test = 0: the mask is required and must have ceil(numel(dY)/32)
words; dX is DropoutGrad's for the unpacked mask."""

# The inference callables must outlive the schemas that point at them.
_registered = {}


class SchemaRegistrationError(RuntimeError):
    """The installed onnx cannot register Python schemas (it needs onnx >= 1.19)."""


def _api():
    try:
        from onnx import defs
    except ImportError as e:  # pragma: no cover - onnx is a hard dependency
        raise SchemaRegistrationError(f"onnx is not importable: {e}") from e
    missing = [n for n in ("register_schema", "deregister_schema", "OpSchema") if not hasattr(defs, n)]
    if not missing and not hasattr(defs.OpSchema, "set_type_and_shape_inference_function"):
        missing.append("OpSchema.set_type_and_shape_inference_function")
    if missing:
        import onnx

        raise SchemaRegistrationError(
            f"onnx {onnx.__version__} lacks {', '.join('onnx.defs.' + m for m in missing)}; registering the "
            "ai.caffe2 schemas from Python needs onnx >= 1.19. Without them onnx.checker rejects models "
            "using ai.caffe2 ops and shape inference leaves their outputs untyped; onnxruntime itself "
            "does not need the schemas."
        )
    return defs


def _error(message):
    """The exception an inference function raises: onnx's InferenceError (shape inference reports it as
    the node's inference failure; note that onnx propagates exceptions from Python inference functions
    even when ``strict_mode`` is off)."""
    from onnx.shape_inference import InferenceError

    return InferenceError(message)


def _node_name(ctx):
    try:
        return ctx.get_display_name() or None
    except Exception:  # pragma: no cover - older onnx without get_display_name
        return None


def _node_label(ctx, op):
    return _defs.where(op, _node_name(ctx))


def _check_attributes(ctx, op):
    """The node's attributes, validated by the op table (the kernels' checks and messages)."""
    from onnx import AttributeProto, helper

    d = _defs.OPS[op]
    values, kinds = {}, {}
    for name in [a.name for a in d.attrs] + list(d.refused_names):
        a = ctx.get_attribute(name)
        if a is not None:
            values[name] = helper.get_attribute_value(a)
            kinds[name] = AttributeProto.AttributeType.Name(a.type)
    try:
        return d.validate(values, node=_node_name(ctx), kinds=kinds)
    except (_defs.AttributeKindError, _defs.AttributeValueError) as e:
        raise _error(str(e)) from None


def _has(ctx, index, outputs):
    n = ctx.get_num_outputs() if outputs else ctx.get_num_inputs()
    if index >= n:
        return False
    return ctx.has_output(index) if outputs else ctx.has_input(index)


def _tensor_type(elem_type, shape_from=None, rank1_unknown=False):
    from onnx import TypeProto

    t = TypeProto()
    t.tensor_type.elem_type = elem_type
    if rank1_unknown:
        t.tensor_type.shape.dim.add()
    elif shape_from is not None and shape_from.tensor_type.HasField("shape"):
        t.tensor_type.shape.CopyFrom(shape_from.tensor_type.shape)
    return t


def _input_type(ctx, index):
    t = ctx.get_input_type(index) if _has(ctx, index, outputs=False) else None
    if t is None or not t.HasField("tensor_type"):
        return None
    return t


def _numel(t):
    """Element count of a tensor type whose shape is fully known, else None."""
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    n = 1
    for d in t.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        n *= d.dim_value
    return n


def _bitmask_type(x):
    """uint32 of rank 1: ceil(numel / 32) words when X's shape is static, else of unknown length."""
    from onnx import TensorProto

    t = _tensor_type(TensorProto.UINT32, rank1_unknown=True)
    n = _numel(x)
    if n is not None:
        t.tensor_type.shape.dim[0].dim_value = _defs.bitmask_words(n)
    return t


def _infer_forward(ctx, op):
    from onnx import TensorProto

    a = _check_attributes(ctx, op)
    x = _input_type(ctx, 0)
    if x is None:
        return
    ctx.set_output_type(0, _tensor_type(x.tensor_type.elem_type, x))
    if _has(ctx, 1, outputs=True):
        if _defs.mask_format_of(op) == "bits":
            ctx.set_output_type(1, _bitmask_type(x))
        else:
            ctx.set_output_type(1, _tensor_type(TensorProto.BOOL, x, rank1_unknown=a["engine"] == "CUDNN"))


def _infer_gradient(ctx, op):
    a = _check_attributes(ctx, op)
    is_test, engine = a["is_test"], a.get("engine", "")
    has_mask = _has(ctx, 1, outputs=False)
    if not is_test and not has_mask:
        raise _error(_defs.mask_required_message(_node_label(ctx, op)))
    dy = _input_type(ctx, 0)
    if dy is None:
        return
    if not is_test and engine != "CUDNN":
        n_dy, n_mask = _numel(dy), _numel(_input_type(ctx, 1))
        if n_dy is not None and n_mask is not None:
            if _defs.mask_format_of(op) == "bits":
                if n_mask != _defs.bitmask_words(n_dy):
                    raise _error(_defs.bitmask_count_message(_node_label(ctx, op), n_mask, n_dy))
            elif n_dy != n_mask:
                raise _error(_defs.mask_count_message(_node_label(ctx, op), n_mask, n_dy))
    ctx.set_output_type(0, _tensor_type(dy.tensor_type.elem_type, dy))


def _inference_function(op):
    infer = _infer_forward if op in _defs.FORWARD_OPS else _infer_gradient
    return lambda ctx: infer(ctx, op)


_DOCS = {
    _defs.DROPOUT.name: _DROPOUT_DOC,
    _defs.DROPOUT_GRAD.name: _DROPOUT_GRAD_DOC,
    _defs.BITMASK_DROPOUT.name: _BITMASK_DROPOUT_DOC,
    _defs.BITMASK_DROPOUT_GRAD.name: _BITMASK_DROPOUT_GRAD_DOC,
}


def _make_schemas(defs):
    from onnx import helper

    S = defs.OpSchema
    opt = S.FormalParameterOption.Optional
    diff, nondiff = S.DifferentiationCategory.Differentiable, S.DifferentiationCategory.NonDifferentiable
    kinds = {_defs.FLOAT: S.AttrType.FLOAT, _defs.INT: S.AttrType.INT, _defs.STRING: S.AttrType.STRING}

    def attribute(a):
        doc = f"{a.doc} Valid: {a.accepted()}." if a.accepted() else a.doc
        if a.default is None:
            return S.Attribute(a.name, kinds[a.kind], f"{a.doc} Absent: {a.default_doc}.", required=False)
        return S.Attribute(a.name, helper.make_attribute(a.name, a.default), doc)

    def param(p):
        # The mask is not differentiable; the data are.
        category = nondiff if p.type_str in _defs.MASK_CONSTRAINTS else diff
        if p.optional:
            return S.FormalParameter(p.name, p.type_str, p.doc, param_option=opt, differentiation_category=category)
        return S.FormalParameter(p.name, p.type_str, p.doc, differentiation_category=category)

    # onnx >= 1.18 records node determinism; older releases have no such argument.
    has_det = hasattr(S, "NodeDeterminism")
    out = {}
    for d in _defs.OPS.values():
        doc, infer = _DOCS[d.name], _inference_function(d.name)
        extra = {}
        if has_det:
            extra["node_determinism"] = (S.NodeDeterminism.Deterministic if d.deterministic
                                         else S.NodeDeterminism.NonDeterministic)
        schema = S(
            d.name,
            DOMAIN,
            OPSET_VERSION,
            doc,
            inputs=[param(p) for p in d.inputs],
            outputs=[param(p) for p in d.outputs],
            type_constraints=[(n, list(t), text) for n, t, text in d.type_constraints()],
            attributes=[attribute(a) for a in d.attrs],
            **extra,
        )
        schema.set_type_and_shape_inference_function(infer)
        out[d.name] = schema
    return out


def is_registered() -> bool:
    """True when onnx holds our ai.caffe2 v1 schemas."""
    try:
        from onnx import defs
    except ImportError:  # pragma: no cover
        return False
    for op in _defs.OPS:
        if not defs.has(op, OPSET_VERSION, DOMAIN):
            return False
        if _MARK not in (defs.get_schema(op, OPSET_VERSION, DOMAIN).doc or ""):
            return False
    return True


def register_schemas() -> None:
    """Register the ai.caffe2 v1 schemas of every op of the table with onnx. Idempotent.

    A schema someone else registered under the same name, domain and version is replaced, with a
    warning. Raises :class:`SchemaRegistrationError` when the installed onnx cannot do it.
    """
    defs = _api()
    if is_registered():
        return
    # onnx.reference indexes every registered schema by op name alone when it is first imported and
    # raises NotImplementedError on a name found in two domains ("Dropout" is in "" and ai.caffe2).
    # Importing it before our schemas exist keeps onnx.reference usable after `import caffe2_ort`.
    try:
        import onnx.reference.op_run  # noqa: F401
    except ImportError:  # pragma: no cover - onnx without the reference runtime
        pass
    schemas = _make_schemas(defs)
    for op, schema in schemas.items():
        if defs.has(op, OPSET_VERSION, DOMAIN):
            warnings.warn(
                f"replacing a foreign onnx schema for {DOMAIN}::{op} v{OPSET_VERSION} with caffe2_ort's",
                stacklevel=2,
            )
            defs.deregister_schema(op, OPSET_VERSION, DOMAIN)
        defs.register_schema(schema)
        _registered[op] = schema
    # onnx's schema registry is a C++ static that holds our Python inference functions. Destroyed at
    # process exit, after the interpreter is gone, it would wait forever for the GIL (seen with onnx
    # 1.19): remove the schemas while Python is still alive.
    if not _atexit_hooked:
        atexit.register(_deregister_at_exit)
        _atexit_hooked.append(True)


_atexit_hooked = []


def _deregister_at_exit():
    try:
        deregister_schemas()
    except Exception:  # pragma: no cover - nothing useful to do at exit
        pass


def try_register_schemas() -> bool:
    """:func:`register_schemas`, turning an unsupported onnx into a warning. Returns True on success."""
    try:
        register_schemas()
    except SchemaRegistrationError as e:
        warnings.warn(str(e), stacklevel=2)
        return False
    return True


def deregister_schemas() -> None:
    """Remove our schemas from onnx again (for tests and for users who register their own)."""
    defs = _api()
    for op in _defs.OPS:
        if defs.has(op, OPSET_VERSION, DOMAIN):
            defs.deregister_schema(op, OPSET_VERSION, DOMAIN)
        _registered.pop(op, None)
