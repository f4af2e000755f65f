"""ONNX schemas for ai.caffe2 v1 Dropout and DropoutGrad, registered from Python with ``onnx.defs``.

After :func:`register_schemas` (called by ``import caffe2_ort``), ``onnx.checker.check_model(model,
full_check=True)`` and ``onnx.shape_inference.infer_shapes`` know both ops: the checker validates their
inputs, outputs, attribute types and element types, and shape inference runs the Python
type-and-shape inference functions below (onnx >= 1.19 calls Python inference functions from its C++
inference engine), so every output of the ops gets a full type and shape:

- Dropout: ``Y`` = X's type and shape; ``mask`` = bool with X's shape, except under ``engine="CUDNN"``
  where the mask carries cuDNN's opaque reserve space and is inferred as bool of rank 1, unknown length.
- DropoutGrad: ``dX`` = dY's type and shape.

The inference functions also reject what the native kernels reject at session creation (ratio outside
[0, 1] or NaN, an unknown engine, a training DropoutGrad without its mask, bool masks whose element
count differs from dY's when both shapes are known), so ``full_check`` catches those errors early.

onnx is the only dependency. With an onnx older than 1.19 (no Python inference functions),
:func:`register_schemas` raises :class:`SchemaRegistrationError` saying so; ``import caffe2_ort`` should
catch it and go on (see :func:`try_register_schemas`).
"""

from __future__ import annotations

import atexit
import math
import warnings

from ._library import DOMAIN, ENGINES, OPSET_VERSION
FLOAT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")

# Marks the schemas as ours, so a second registration can tell them from someone else's.
_MARK = "[caffe2_ort schema]"

_DROPOUT_DOC = f"""{_MARK} Legacy Caffe2 Dropout (inverted dropout).

Training (is_test = 0): each element is zeroed with probability `ratio`, the kept ones are scaled by
1/(1 - ratio) (0 when ratio = 1): Y = (X * scale) * mask. The mask comes from Philox4x32-10 keyed by
`seed`, at a per-node counter that advances by ceil(numel/4) blocks per training run, so run k of a
fresh session is reproducible on any device. Test (is_test != 0): Y is an exact copy of X and a
requested mask is all true. Under engine "CUDNN" on CUDA the mask holds cuDNN's reserve space (1-D)."""

_DROPOUT_GRAD_DOC = f"""{_MARK} Legacy Caffe2 DropoutGrad.

is_test != 0: dX = dY (mask ignored). is_test = 0: dX = (dY * mask) * scale, with scale as in Dropout;
the mask is required and must have as many elements as dY."""

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


def _attr(ctx, name, default):
    """An attribute's Python value from an InferenceContext, or ``default`` when absent."""
    from onnx import helper

    a = ctx.get_attribute(name)
    if a is None:
        return default
    return helper.get_attribute_value(a)


def _node_label(ctx, op):
    try:
        name = ctx.get_display_name()
    except Exception:  # pragma: no cover - older onnx without get_display_name
        name = ""
    return f"ai.caffe2 {op} node {name!r}" if name else f"ai.caffe2 {op} node"


def _check_attributes(ctx, op):
    label = _node_label(ctx, op)
    ratio = float(_attr(ctx, "ratio", 0.5))
    if math.isnan(ratio) or not 0.0 <= ratio <= 1.0:
        raise _error(f"{label}: ratio must be in [0, 1], got {ratio}")
    engine = _attr(ctx, "engine", b"")
    engine = engine.decode() if isinstance(engine, bytes) else str(engine)
    if engine not in ENGINES:
        raise _error(f"{label}: engine {engine!r} is not one of {', '.join(repr(e) for e in ENGINES)}")
    return ratio, int(_attr(ctx, "is_test", 0)), engine


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


def _infer_dropout(ctx):
    from onnx import TensorProto

    _ratio, _is_test, engine = _check_attributes(ctx, "Dropout")
    x = _input_type(ctx, 0)
    if x is None:
        return
    ctx.set_output_type(0, _tensor_type(x.tensor_type.elem_type, x))
    if _has(ctx, 1, outputs=True):
        ctx.set_output_type(1, _tensor_type(TensorProto.BOOL, x, rank1_unknown=engine == "CUDNN"))


def _infer_dropout_grad(ctx):
    _ratio, is_test, engine = _check_attributes(ctx, "DropoutGrad")
    has_mask = _has(ctx, 1, outputs=False)
    if not is_test and not has_mask:
        raise _error(
            f"{_node_label(ctx, 'DropoutGrad')}: training mode (is_test=0) needs the mask input "
            "(the forward Dropout's second output)"
        )
    dy = _input_type(ctx, 0)
    if dy is None:
        return
    if not is_test and engine != "CUDNN":
        n_dy, n_mask = _numel(dy), _numel(_input_type(ctx, 1))
        if n_dy is not None and n_mask is not None and n_dy != n_mask:
            raise _error(
                f"{_node_label(ctx, 'DropoutGrad')}: mask has {n_mask} elements but dY has {n_dy}"
            )
    ctx.set_output_type(0, _tensor_type(dy.tensor_type.elem_type, dy))


def _make_schemas(defs):
    from onnx import helper

    S = defs.OpSchema
    opt = S.FormalParameterOption.Optional
    diff, nondiff = S.DifferentiationCategory.Differentiable, S.DifferentiationCategory.NonDifferentiable

    def common_attrs():
        return [
            S.Attribute("ratio", helper.make_attribute("ratio", 0.5), "Probability that an element is zeroed, 0 <= ratio <= 1."),
            S.Attribute("is_test", helper.make_attribute("is_test", 0), "Nonzero: inference (identity)."),
            S.Attribute(
                "engine", helper.make_attribute("engine", ""), '"" or "DEFAULT" (Philox kernels) or "CUDNN" (cuDNN on CUDA).'
            ),
        ]

    types = [("T", list(FLOAT_TYPES), "Element types of the data."), ("B", ["tensor(bool)"], "The mask type.")]
    # onnx >= 1.18 records node determinism; older releases have no such argument.
    has_det = hasattr(S, "NodeDeterminism")
    extra_dropout = {"node_determinism": S.NodeDeterminism.NonDeterministic} if has_det else {}
    extra = {"node_determinism": S.NodeDeterminism.Deterministic} if has_det else {}
    dropout = S(
        "Dropout",
        DOMAIN,
        OPSET_VERSION,
        _DROPOUT_DOC,
        inputs=[S.FormalParameter("X", "T", "Input of any shape.", differentiation_category=diff)],
        outputs=[
            S.FormalParameter("Y", "T", "Output, X's shape.", differentiation_category=diff),
            S.FormalParameter(
                "mask",
                "B",
                "Keep-mask (true = kept), X's shape; cuDNN's reserve space (1-D) under engine CUDNN.",
                param_option=opt,
                differentiation_category=nondiff,
            ),
        ],
        type_constraints=types,
        attributes=common_attrs()
        + [S.Attribute("seed", S.AttrType.INT, "RNG seed; absent: a random seed per kernel instance.", required=False)],
        **extra_dropout,
    )
    dropout.set_type_and_shape_inference_function(_infer_dropout)
    grad = S(
        "DropoutGrad",
        DOMAIN,
        OPSET_VERSION,
        _DROPOUT_GRAD_DOC,
        inputs=[
            S.FormalParameter("dY", "T", "Gradient of Dropout's Y.", differentiation_category=diff),
            S.FormalParameter(
                "mask", "B", "The forward's mask output; required when is_test = 0.", param_option=opt,
                differentiation_category=nondiff,
            ),
        ],
        outputs=[S.FormalParameter("dX", "T", "Gradient of Dropout's X, dY's shape.", differentiation_category=diff)],
        type_constraints=types,
        attributes=common_attrs(),
        **extra,
    )
    grad.set_type_and_shape_inference_function(_infer_dropout_grad)
    return {"Dropout": dropout, "DropoutGrad": grad}


def is_registered() -> bool:
    """True when onnx holds our ai.caffe2 v1 schemas."""
    try:
        from onnx import defs
    except ImportError:  # pragma: no cover
        return False
    for op in ("Dropout", "DropoutGrad"):
        if not defs.has(op, OPSET_VERSION, DOMAIN):
            return False
        if _MARK not in (defs.get_schema(op, OPSET_VERSION, DOMAIN).doc or ""):
            return False
    return True


def register_schemas() -> None:
    """Register the ai.caffe2 v1 Dropout and DropoutGrad schemas with onnx. Idempotent.

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
    for op in ("Dropout", "DropoutGrad"):
        if defs.has(op, OPSET_VERSION, DOMAIN):
            defs.deregister_schema(op, OPSET_VERSION, DOMAIN)
        _registered.pop(op, None)
