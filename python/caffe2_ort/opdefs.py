"""The ai.caffe2 op table: the one description of Dropout, DropoutGrad and their bit-packed-mask
variants BitmaskDropout and BitmaskDropoutGrad (an extension beyond Caffe2) in this package.

Everything else follows from it: the ONNX schemas (:mod:`caffe2_ort.schemas`), every attribute check
(the schemas' inference functions, :mod:`caffe2_ort.reference`, :mod:`caffe2_ort.reference_ops`, the
graph helpers and the PyOp fallback), the defaults, ``caffe2-ort check`` and the README's op reference
(``python -m caffe2_ort.optables --markdown`` prints it, ``--write README.md`` rewrites it there). The
native library cannot import Python; ``tests/test_opdefs_probe.py`` loads it in ONNX Runtime and checks
it against this table: every attribute's default, an accepted and a refused value of each kind, and
optional inputs and outputs present and absent. Error messages are built here with the native
library's wording, so a model refused by ORT is refused with the same words everywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

DOMAIN = "ai.caffe2"
OPSET_VERSION = 1

ELEMENT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")
MASK_TYPES = ("tensor(bool)",)
BITMASK_TYPES = ("tensor(uint32)",)
TYPE_CONSTRAINTS = (
    ("T", ELEMENT_TYPES, "Element types of the data."),
    ("B", MASK_TYPES, "The mask type (true = kept)."),
    ("M", BITMASK_TYPES, "The bit-packed mask type: bit j of word w is the keep decision of element 32 w + j."),
)
MASK_CONSTRAINTS = ("B", "M")  # the type constraints of masks (not differentiable)
BITS_PER_WORD = 32

ENGINES = ("", "DEFAULT", "CUDNN")
RNGS = ("", "philox", "caffe2_mt19937")
RNG_PHILOX = "philox"
RNG_CAFFE2 = "caffe2_mt19937"

# Attribute kinds, as onnx.AttributeProto names them. The native library reads these with ORT's kernel
# getters; a kind none of them can read is reported by it as NATIVE_OTHER_KIND.
FLOAT, INT, STRING = "FLOAT", "INT", "STRING"
NATIVE_KINDS = ("FLOAT", "INT", "STRING", "FLOATS", "INTS", "TENSOR")
NATIVE_OTHER_KIND = "another kind (STRINGS, GRAPH, TENSORS, SPARSE_TENSOR or an empty list)"


class AttributeKindError(TypeError):
    """An attribute given with the wrong kind (e.g. ratio as INTS)."""


class AttributeValueError(ValueError):
    """An attribute value outside its valid values or range."""


def fresh_seed() -> int:
    """The seed of a node without one: 64 random bits from the OS (the native kernels use getrandom)."""
    return int.from_bytes(os.urandom(8), "little")


def seed_as_int64(seed: int) -> int:
    """A seed (any int; read mod 2**64) as the signed int64 an ONNX INT attribute holds."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s - (1 << 64) if s >= 1 << 63 else s


def escape(value) -> str:
    """A string or bytes as messages show it: printable ASCII and well-formed UTF-8 kept, a backslash
    as ``\\\\``, every other byte (NUL, control characters, bytes that are not UTF-8) as ``\\xNN``. The
    native library escapes the same way, so its messages are valid UTF-8."""
    b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    out, i = [], 0
    while i < len(b):
        c = b[i]
        if c == 0x5C:
            out.append("\\\\")
            i += 1
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
            i += 1
        else:
            for n in (2, 3, 4) if c >= 0xC2 else ():
                try:
                    ch = b[i : i + n].decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if len(ch) == 1:
                    out.append(ch)
                    i += n
                    break
            else:
                out.append(f"\\x{c:02x}")
                i += 1
    return "".join(out)


def format_float(v) -> str:
    """The shortest decimal form (6 to 9 significant digits) that reads back as the same float32, as
    the native messages print a ratio."""
    import numpy as np

    f = np.float32(v)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    for digits in range(6, 10):
        s = f"{float(f):.{digits}g}"
        if np.float32(float(s)) == f:
            return s
    return repr(float(f))  # pragma: no cover - 9 digits always round-trip a float32


def where(op: str, node=None) -> str:
    """The subject of every message: "ai.caffe2 Dropout node 'name'" (or "ai.caffe2 Dropout")."""
    return f"ai.caffe2 {op}" if node is None else f"ai.caffe2 {op} node '{escape(node)}'"


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str  # FLOAT, INT or STRING
    default: object  # None: optional without a default (see default_doc)
    doc: str
    choices: tuple = ()  # accepted values of a STRING attribute ("" first when it is the default)
    choice_docs: tuple = ()  # how each choice is shown in messages, parallel to choices
    low: float | None = None  # valid range of a FLOAT attribute, both ends included
    high: float | None = None
    default_doc: str = ""

    def accepted(self) -> str:
        if self.choices:
            return ", ".join(self.choice_docs)
        if self.low is not None:
            return f"{format_float(self.low)} <= {self.name} <= {format_float(self.high)}"
        return "any int64" if self.kind == INT else ""

    def check(self, value, label: str):
        """The validated value (strings as str); raises AttributeValueError with the native message."""
        if self.kind == FLOAT:
            import numpy as np

            v = float(np.float32(value))
            if not (self.low <= v <= self.high):  # NaN fails too
                raise AttributeValueError(
                    f"{label}: {self.name} = {format_float(v)} is out of range; valid: {self.accepted()}"
                )
            return v
        if self.kind == INT:
            v = int(value)
            if not -(1 << 63) <= v < (1 << 64):
                raise AttributeValueError(f"{label}: {self.name} = {v} does not fit in 64 bits")
            return v
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
        text = None
        if b"\0" not in raw:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text not in self.choices:
            raise AttributeValueError(
                f"{label}: {self.name} = '{escape(raw)}' is not supported; accepted: {self.accepted()}"
            )
        return text


@dataclass(frozen=True)
class Param:
    name: str
    type_str: str
    optional: bool
    doc: str


@dataclass(frozen=True)
class OpDef:
    name: str
    summary: str
    inputs: tuple
    outputs: tuple
    attrs: tuple
    # Attributes of a sibling op refused by name (the native library does the same): ((name, why), ...),
    # the message being "<where>: <op> has no attribute <name> <why>".
    refused: tuple = ()
    deterministic: bool = True

    @property
    def refused_names(self) -> tuple:
        return tuple(name for name, _ in self.refused)

    def refusal_message(self, name: str, node=None) -> str:
        """The message refusing attribute ``name`` (one of :attr:`refused_names`)."""
        why = dict(self.refused)[name]
        return f"{where(self.name, node)}: {self.name} has no attribute {name} {why}"

    def type_constraints(self) -> tuple:
        """The entries of TYPE_CONSTRAINTS this op's inputs and outputs use, in the table's order."""
        used = {p.type_str for p in self.inputs + self.outputs}
        return tuple(c for c in TYPE_CONSTRAINTS if c[0] in used)

    def attr(self, name: str) -> Attr:
        for a in self.attrs:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no attribute {name!r}")

    def defaults(self) -> dict:
        """{name: default} of the attributes that have one."""
        return {a.name: a.default for a in self.attrs if a.default is not None}

    def validate(self, values: dict, node=None, kinds: dict | None = None) -> dict:
        """Checks attribute values as the native kernel does at session creation and returns them with
        the defaults filled in (an absent seed stays None). ``values``: {name: python value}; ``kinds``:
        {name: AttributeProto kind name} when the values come from an ONNX node. Unknown names are
        ignored, as by the native library, except a sibling op's attributes (``refused``)."""
        label = where(self.name, node)
        out = {}
        for a in self.attrs:
            present = a.name in values and values[a.name] is not None
            if not present:
                out[a.name] = a.default
                continue
            v = values[a.name]
            kind = (kinds or {}).get(a.name) or python_kind(v)
            if kind != a.kind:
                raise AttributeKindError(kind_message(label, a, kind))
            out[a.name] = a.check(v, label)
        for name in self.refused_names:
            if name in values and values[name] is not None:
                raise AttributeValueError(self.refusal_message(name, node))
        return out

    def validate_node(self, node) -> dict:
        """:meth:`validate` for an ``onnx.NodeProto``."""
        values, kinds = node_attributes(node)
        return self.validate(values, node=node.name, kinds=kinds)


def python_kind(v) -> str:
    """The ONNX attribute kind a Python value would be written as (bool counts as INT)."""
    import numbers

    if isinstance(v, (str, bytes)):
        return STRING
    if isinstance(v, numbers.Integral):
        return INT
    if isinstance(v, numbers.Real):
        return FLOAT
    return type(v).__name__


def kind_message(label: str, attr: Attr, kind: str, native: bool = False) -> str:
    """The wrong-kind message; ``native=True``: the native library's wording, which names the kinds
    ORT's getters can read and says NATIVE_OTHER_KIND for the rest."""
    if native and kind not in NATIVE_KINDS:
        kind = NATIVE_OTHER_KIND
    return f"{label}: attribute {attr.name} must be {attr.kind}, got {kind}"


def node_attributes(node):
    """({name: python value}, {name: kind name}) of an onnx NodeProto."""
    from onnx import AttributeProto, helper

    values, kinds = {}, {}
    for a in node.attribute:
        kinds[a.name] = AttributeProto.AttributeType.Name(a.type)
        values[a.name] = helper.get_attribute_value(a)
    return values, kinds


def mask_required_message(label: str) -> str:
    return f"{label}: training mode (is_test = 0) needs the mask input (input 1, the forward Dropout's mask)"


def mask_count_message(label: str, mask_count: int, grad_count: int) -> str:
    return f"{label}: mask has {mask_count} elements but dY has {grad_count}; they must be equal"


def bitmask_words(numel: int) -> int:
    """Words of a bit-packed mask over ``numel`` elements: ceil(numel / 32)."""
    return (int(numel) + BITS_PER_WORD - 1) // BITS_PER_WORD


def bitmask_count_message(label: str, mask_words: int, grad_count: int) -> str:
    """BitmaskDropoutGrad's run-time error for a mask of the wrong length."""
    return (f"{label}: mask has {mask_words} words but dY has {grad_count} elements, which need "
            f"{bitmask_words(grad_count)} words")


def cuda_graph_rng_message(label: str, rng: str) -> str:
    """What the CUDA EP says for a training run of an rng = caffe2_mt19937 node under CUDA-graph capture."""
    return (f"{label}: rng = '{escape(rng)}' draws Caffe2's MT19937 stream on the host, which a CUDA-graph replay "
            "cannot advance; a training run of this node cannot be captured into a CUDA graph (disable "
            "enable_cuda_graph, or use rng = 'philox')")


_RATIO = Attr("ratio", FLOAT, 0.5, "Probability that an element is zeroed (ratio = 1 zeroes all: an extension).",
              low=0.0, high=1.0)
_IS_TEST = Attr("is_test", INT, 0, "Nonzero: inference; Y is an exact copy of X (bit for bit, NaN payloads "
                "included) and a requested mask is all true. DropoutGrad: dX = dY, a given mask ignored.")
_ENGINE = Attr("engine", STRING, "", "\"\" or \"DEFAULT\": the default kernels; \"CUDNN\": cuDNN's dropout on CUDA "
               "(the CPU runs the default kernel, as Caffe2 fell back).", choices=ENGINES, choice_docs=("'' (default)", "'DEFAULT'", "'CUDNN'"))
_SEED = Attr("seed", INT, None, "RNG seed (Caffe2's device_option.random_seed), read as uint64.",
             default_doc="a fresh random 64-bit seed per kernel instance")
_RNG = Attr("rng", STRING, "", "Mask stream: \"\" or \"philox\" = the Philox contract; \"caffe2_mt19937\" = Caffe2's "
            "own CPU stream (MT19937 seeded with seed mod 2^32).", choices=RNGS,
            choice_docs=("'' (default)", "'philox'", "'caffe2_mt19937'"))

_FORWARD_ONLY = "(it belongs to the forward Dropout; the mask input carries its draw)"
_NO_BIT_ENGINE = "(cuDNN's reserve space is not a bit mask; use Dropout with engine 'CUDNN')"

DROPOUT = OpDef(
    "Dropout",
    "Legacy Caffe2 Dropout (inverted dropout): Y = (X * scale) * mask in training, Y = X in test.",
    inputs=(Param("X", "T", False, "Any shape, rank 0 and empty included."),),
    outputs=(
        Param("Y", "T", False, "Output, X's shape."),
        Param("mask", "B", True, "Keep-mask (true = kept), X's shape; cuDNN's reserve space (1-D) under engine CUDNN "
              "on CUDA."),
    ),
    attrs=(_RATIO, _IS_TEST, _SEED, _ENGINE, _RNG),
    deterministic=False,
)

DROPOUT_GRAD = OpDef(
    "DropoutGrad",
    "Legacy Caffe2 DropoutGrad: dX = (dY * mask) * scale in training, dX = dY in test.",
    inputs=(
        Param("dY", "T", False, "Gradient of Dropout's Y."),
        Param("mask", "B", True, "The forward's mask output; required when is_test = 0, ignored otherwise."),
    ),
    outputs=(Param("dX", "T", False, "Gradient of Dropout's X, dY's shape."),),
    attrs=(_RATIO, _IS_TEST, _ENGINE),
    refused=tuple((n, _FORWARD_ONLY) for n in ("seed", "rng")),
)

BITMASK_DROPOUT = OpDef(
    "BitmaskDropout",
    "Dropout with a bit-packed mask (an extension beyond Caffe2): Y, the RNG draw and the keep decisions are "
    "Dropout's; the mask holds one bit per element, 8x smaller than Dropout's bool mask.",
    inputs=DROPOUT.inputs,
    outputs=(
        DROPOUT.outputs[0],
        Param("mask", "M", True, "Keep bits, 1-D of ceil(numel / 32) words: bit j (LSB = 0) of word w is element "
              "32 w + j (row-major), 1 = kept; bits past numel are 0."),
    ),
    attrs=(_RATIO, _IS_TEST, _SEED, _RNG),
    refused=(("engine", _NO_BIT_ENGINE),),
    deterministic=False,
)

BITMASK_DROPOUT_GRAD = OpDef(
    "BitmaskDropoutGrad",
    "DropoutGrad reading a bit-packed mask (an extension beyond Caffe2): dX = (dY * mask) * scale in training, "
    "dX = dY in test.",
    inputs=(
        DROPOUT_GRAD.inputs[0],
        Param("mask", "M", True, "The forward BitmaskDropout's mask (ceil(numel(dY) / 32) words; padding bits are "
              "not read); required when is_test = 0, ignored otherwise."),
    ),
    outputs=DROPOUT_GRAD.outputs,
    attrs=(_RATIO, _IS_TEST),
    refused=DROPOUT_GRAD.refused + (("engine", _NO_BIT_ENGINE),),
)

OPS = {op.name: op for op in (DROPOUT, DROPOUT_GRAD, BITMASK_DROPOUT, BITMASK_DROPOUT_GRAD)}

# The mask formats of the graph helpers, the gradient rule and the converter: name -> (forward op, gradient op).
MASK_FORMATS = {"bool": (DROPOUT.name, DROPOUT_GRAD.name), "bits": (BITMASK_DROPOUT.name, BITMASK_DROPOUT_GRAD.name)}
FORWARD_OPS = tuple(f for f, _ in MASK_FORMATS.values())
GRADIENT_OPS = tuple(g for _, g in MASK_FORMATS.values())
GRADIENT_OF = dict(MASK_FORMATS.values())  # forward op -> its gradient op


def mask_format_of(op: str) -> str:
    """The mask format ("bool" or "bits") of a forward or gradient dropout op."""
    for fmt, pair in MASK_FORMATS.items():
        if op in pair:
            return fmt
    raise KeyError(f"{op!r} is not a dropout op of the table")


def check_mask_format(mask_format) -> str:
    """``mask_format`` when it names a mask format, else a ValueError naming the accepted ones."""
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {', '.join(map(repr, MASK_FORMATS))}, not {mask_format!r}")
    return mask_format


# ------------------------------------------------------------------------------------------------ README

_BEGIN = "<!-- op table: generated by `python -m caffe2_ort.optables --write README.md`; edit opdefs.py -->"
_END = "<!-- end of op table -->"


def _md_default(a: Attr) -> str:
    if a.default is None:
        return f"absent: {a.default_doc}"
    return f"`{a.default!r}`" if a.kind != STRING else f"`\"{a.default}\"`"


def _md_valid(a: Attr) -> str:
    if a.choices:
        return ", ".join(f"`\"{c}\"`" for c in a.choices)
    if a.low is not None:
        return f"{format_float(a.low)} ≤ {a.name} ≤ {format_float(a.high)}"
    return "any int64"


def markdown() -> str:
    """The README's op reference tables, generated from the table."""
    lines = [_BEGIN, ""]
    for op in OPS.values():
        lines += [f"#### {DOMAIN} {op.name} (version {OPSET_VERSION})", "", op.summary, ""]
        lines += ["| | name | type | optional | description |", "|---|---|---|---|---|"]
        for kind, params in (("input", op.inputs), ("output", op.outputs)):
            for p in params:
                lines.append(f"| {kind} | `{p.name}` | {p.type_str} | {'yes' if p.optional else 'no'} | {p.doc} |")
        lines += ["", "| attribute | kind | default | valid | description |", "|---|---|---|---|---|"]
        for a in op.attrs:
            lines.append(f"| `{a.name}` | {a.kind} | {_md_default(a)} | {_md_valid(a)} | {a.doc} |")
        whys = dict.fromkeys(why for _, why in op.refused)
        for why in whys:
            names = [f"`{n}`" for n, w in op.refused if w == why]
            lines += ["", f"{op.name} refuses {', '.join(names)} {why}."]
        lines.append("")
    lines.append("Types: " + "; ".join(f"{n} ∈ {{{', '.join(t)}}}" for n, t, _ in TYPE_CONSTRAINTS) + ".")
    lines += ["", _END]
    return "\n".join(lines)


def rewrite_readme(text: str) -> str:
    """``text`` with the generated tables put between the markers (which must be there)."""
    begin, end = text.find(_BEGIN), text.find(_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the README has no op-table markers ({_BEGIN!r} ... {_END!r})")
    return text[:begin] + markdown() + text[end + len(_END):]
