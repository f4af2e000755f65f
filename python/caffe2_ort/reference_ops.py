"""ai.caffe2 Dropout and DropoutGrad as ``onnx.reference`` operators, built on :mod:`caffe2_ort.reference`.

    from onnx.reference import ReferenceEvaluator
    from caffe2_ort.reference_ops import OPS
    ref = ReferenceEvaluator(model, new_ops=OPS)
    y, mask = ref.run(None, {"X": x})

Each Dropout node of an evaluator holds its own 64-bit counter, like the native kernel instance of an
ORT session: it starts at 0, and every training run (is_test = 0, ratio != 0) draws at base = counter
and advances it by ceil(numel/4). So the k-th ``run`` of a fresh evaluator gives bit-identically the
masks and outputs of the k-th ``run`` of a fresh ORT session on the same model (for a seeded node).
A node without ``seed`` takes a fresh random seed per evaluator, as the native kernel does per session.

Attribute checks mirror the native kernels' session-creation checks, so an invalid node fails when
the evaluator is built, naming the node and the value.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
from onnx.reference.op_run import OpRun

from . import reference as _ref

DOMAIN = "ai.caffe2"
ENGINES = ("", "DEFAULT", "CUDNN")


def _text(v):
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


class _Caffe2Op(OpRun):
    op_domain = DOMAIN
    # No onnx.defs lookup: OpRun would otherwise pick up the *standard* ONNX Dropout schema by name.
    op_schema = None

    def _node_label(self):
        return f"ai.caffe2 {self.onnx_node.op_type} node {self.onnx_node.name!r}"

    def _read_common(self):
        ratio = float(np.float32(getattr(self, "ratio", 0.5)))
        if math.isnan(ratio) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{self._node_label()}: ratio must be in [0, 1], got {ratio}")
        engine = _text(getattr(self, "engine", ""))
        if engine not in ENGINES:
            raise ValueError(
                f"{self._node_label()}: engine {engine!r} is not one of {', '.join(repr(e) for e in ENGINES)}"
            )
        self.ratio_, self.is_test_, self.engine_ = ratio, int(getattr(self, "is_test", 0)), engine

    def _n_outputs(self):
        # Trailing empty names are absent optional outputs.
        outs = list(self.onnx_node.output)
        while outs and not outs[-1]:
            outs.pop()
        return len(outs)


class Dropout(_Caffe2Op):
    """ai.caffe2::Dropout(X) -> (Y, mask?). Engine "CUDNN" runs the default kernel, as on the CPU EP."""

    def __init__(self, onnx_node, run_params, schema=None):
        super().__init__(onnx_node, run_params, schema)
        self._read_common()
        seed = getattr(self, "seed", None)
        # Seedless: a fresh random 64-bit seed per instance (the native kernel draws one per session).
        self.stream = _ref.DropoutStream(secrets.randbits(64) if seed is None else int(seed))

    @property
    def counter(self) -> int:
        """This node's RNG counter: the base the next training run draws at."""
        return self.stream.counter

    def _run(self, X, ratio=None, is_test=None, seed=None, engine=None):  # noqa: ARG002 - read at init
        y, mask = self.stream.run(X, ratio=self.ratio_, is_test=self.is_test_)
        if self._n_outputs() >= 2:
            return (y, mask)
        return (y,)  # the mask output is absent (or named ""): the evaluator zips outputs by name


class DropoutGrad(_Caffe2Op):
    """ai.caffe2::DropoutGrad(dY, mask?) -> dX."""

    def __init__(self, onnx_node, run_params, schema=None):
        super().__init__(onnx_node, run_params, schema)
        self._read_common()
        has_mask = len(onnx_node.input) >= 2 and bool(onnx_node.input[1])
        if not self.is_test_ and not has_mask:
            raise ValueError(f"{self._node_label()}: training mode (is_test=0) needs the mask input")

    def _run(self, dY, mask=None, ratio=None, is_test=None, engine=None):  # noqa: ARG002
        return (_ref.dropout_grad(dY, mask, ratio=self.ratio_, is_test=self.is_test_),)


OPS = [Dropout, DropoutGrad]
"""The classes to pass as ``new_ops`` to ``onnx.reference.ReferenceEvaluator``."""


def evaluator(model, **kwargs):
    """``ReferenceEvaluator(model, new_ops=OPS + kwargs.pop('new_ops', []), **kwargs)``."""
    from onnx.reference import ReferenceEvaluator

    extra = list(kwargs.pop("new_ops", None) or [])
    return ReferenceEvaluator(model, new_ops=OPS + extra, **kwargs)


def dropout_nodes(ref):
    """The Dropout operator instances of a ReferenceEvaluator, by node name (or output name when unnamed)."""
    out = {}
    for node in getattr(ref, "rt_nodes_", []):
        if isinstance(node, Dropout):
            out[node.onnx_node.name or node.onnx_node.output[0]] = node
    return out
