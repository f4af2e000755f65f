"""The ai.caffe2 ops (Dropout, DropoutGrad, BitmaskDropout, BitmaskDropoutGrad) as ``onnx.reference``
operators, built on :mod:`caffe2_ort.reference`.

    from onnx.reference import ReferenceEvaluator
    from caffe2_ort.reference_ops import OPS
    ref = ReferenceEvaluator(model, new_ops=OPS)
    y, mask = ref.run(None, {"X": x})

Each Dropout or BitmaskDropout node of an evaluator holds its own stream (:class:`caffe2_ort.reference.DropoutStream`),
like the native kernel instance of an ORT session: under rng "philox" a 64-bit counter that starts at 0
and advances by ceil(numel/4) per training run (is_test = 0, ratio != 0); under rng "caffe2_mt19937"
Caffe2's MT19937, two words per element per training run. So the k-th ``run`` of a fresh evaluator
gives bit-identically the masks and outputs of the k-th ``run`` of a fresh ORT session on the same
model (for a seeded node). A node without ``seed`` takes a fresh random 64-bit seed per evaluator, as
the native kernel does per session.

Attribute checks come from the op table (:mod:`caffe2_ort.opdefs`), the native kernels'
session-creation checks, so an invalid node fails when the evaluator is built with the same message.
"""

from __future__ import annotations

import secrets

import numpy as np
from onnx.reference.op_run import OpRun

from . import opdefs as _defs
from . import reference as _ref
from .opdefs import DOMAIN


class _Caffe2Op(OpRun):
    op_domain = DOMAIN
    # No onnx.defs lookup: OpRun would otherwise pick up the *standard* ONNX Dropout schema by name.
    op_schema = None

    def _node_label(self):
        return _defs.where(self.onnx_node.op_type, self.onnx_node.name)

    def _read_common(self):
        # The native kernels' checks and messages. A wrong kind is a TypeError elsewhere, but
        # ReferenceEvaluator replaces TypeErrors raised here with its own message: raise ValueError.
        try:
            self.attrs_ = _defs.OPS[self.onnx_node.op_type].validate_node(self.onnx_node)
        except _defs.AttributeKindError as e:
            raise _defs.AttributeValueError(str(e)) from None
        self.ratio_, self.is_test_ = self.attrs_["ratio"], self.attrs_["is_test"]
        self.engine_ = self.attrs_.get("engine", "")

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
        # Seedless: a fresh random 64-bit seed per instance (the native kernel draws one per session).
        self.stream = _ref.DropoutStream(self.attrs_["seed"], rng=self.attrs_["rng"])

    @property
    def counter(self) -> int:
        """This node's stream position (see :class:`caffe2_ort.reference.DropoutStream`)."""
        return self.stream.counter

    def _run(self, X, ratio=None, is_test=None, seed=None, engine=None, rng=None):  # noqa: ARG002 - read at init
        y, mask = self.stream.run(X, ratio=self.ratio_, is_test=self.is_test_)
        if self._n_outputs() >= 2:
            return (y, mask)
        return (y,)  # the mask output is absent (or named ""): the evaluator zips outputs by name


class BitmaskDropout(Dropout):
    """ai.caffe2::BitmaskDropout(X) -> (Y, mask?): Dropout's stream and Y, the mask packed into uint32 words."""

    def _run(self, X, ratio=None, is_test=None, seed=None, rng=None):  # noqa: ARG002 - read at init
        y, mask = self.stream.run(X, ratio=self.ratio_, is_test=self.is_test_)
        if self._n_outputs() >= 2:
            return (y, _ref.pack_mask(mask))
        return (y,)


class DropoutGrad(_Caffe2Op):
    """ai.caffe2::DropoutGrad(dY, mask?) -> dX."""

    grad = staticmethod(_ref.dropout_grad)

    def __init__(self, onnx_node, run_params, schema=None):
        super().__init__(onnx_node, run_params, schema)
        self._read_common()
        has_mask = len(onnx_node.input) >= 2 and bool(onnx_node.input[1])
        if not self.is_test_ and not has_mask:
            raise ValueError(_defs.mask_required_message(self._node_label()))

    def _run(self, dY, mask=None, ratio=None, is_test=None, engine=None):  # noqa: ARG002
        return (self.grad(dY, mask, ratio=self.ratio_, is_test=self.is_test_),)


class BitmaskDropoutGrad(DropoutGrad):
    """ai.caffe2::BitmaskDropoutGrad(dY, mask?) -> dX, the mask as BitmaskDropout's uint32 words."""

    grad = staticmethod(_ref.bitmask_dropout_grad)

    def _run(self, dY, mask=None, ratio=None, is_test=None):  # noqa: ARG002
        return (self.grad(dY, mask, ratio=self.ratio_, is_test=self.is_test_),)


OPS = [Dropout, DropoutGrad, BitmaskDropout, BitmaskDropoutGrad]
"""The classes to pass as ``new_ops`` to ``onnx.reference.ReferenceEvaluator``."""


def evaluator(model, **kwargs):
    """``ReferenceEvaluator(model, new_ops=OPS + kwargs.pop('new_ops', []), **kwargs)``."""
    from onnx.reference import ReferenceEvaluator

    extra = list(kwargs.pop("new_ops", None) or [])
    return ReferenceEvaluator(model, new_ops=OPS + extra, **kwargs)


def dropout_nodes(ref):
    """The Dropout (and BitmaskDropout) operator instances of a ReferenceEvaluator, by node name (or output
    name when unnamed)."""
    out = {}
    for node in getattr(ref, "rt_nodes_", []):
        if isinstance(node, Dropout):
            out[node.onnx_node.name or node.onnx_node.output[0]] = node
    return out


# ----------------------------------------------------------------------------------------------------------
# Pure-Python fallback through onnxruntime-extensions' PyOp mechanism

PYOP_DTYPES = ("float32", "float64")
_pyop_streams = {}
_pyop_lock = __import__("threading").Lock()
_pyop_registered = []


def register_pyop():
    """Register ai.caffe2 Dropout and DropoutGrad as onnxruntime-extensions PyOps (float32 and float64).

    A session then runs them through ``onnxruntime_extensions.get_library_path()`` instead of our native
    library (never load both in one session: both would claim the ai.caffe2 domain). PyOps are declared
    with ``op_type="ai.caffe2::Dropout"``: extensions splits ``domain::op`` and registers the op in that
    domain (its default domain is ai.onnx.contrib). What PyOps cannot express, and how this fallback
    copes (so run :func:`prepare_for_pyop` on the model first):

    - every declared attribute is required: ``prepare_for_pyop`` writes the defaults, and a random seed
      for seedless nodes;
    - input and output counts are fixed: Dropout always has a mask output, DropoutGrad always a mask input;
    - the Python function is shared by all nodes and sessions and is not told which node calls it: each
      node carries a ``node_key`` attribute that keys its RNG counter, and the counters live in the
      process, not the session; call :func:`reset_pyop_state` to get "fresh session" streams again;
    - one element type per declaration: float32 and float64 are registered (no float16/bfloat16).
    Returns the number of op declarations made (0 when already registered).
    """
    if _pyop_registered:
        return 0
    from onnxruntime_extensions import PyCustomOpDef as D, onnx_op

    kinds = {_defs.FLOAT: D.dt_float, _defs.INT: D.dt_int64, _defs.STRING: D.dt_string}
    common = {a.name: kinds[a.kind] for a in _defs.DROPOUT_GRAD.attrs}
    forward = {a.name: kinds[a.kind] for a in _defs.DROPOUT.attrs}
    for dt, code in (("float32", D.dt_float), ("float64", D.dt_double)):
        def dropout(x, ratio, is_test, seed, engine, rng, node_key, _dt=dt):
            text = rng.decode() if isinstance(rng, bytes) else str(rng)
            with _pyop_lock:
                stream = _pyop_streams.get(node_key)
                if stream is None or stream.seed != int(seed) or stream.rng != text:
                    stream = _pyop_streams[node_key] = _ref.DropoutStream(int(seed), rng=text)
            # the stream serialises its own draws: concurrent runs take consecutive segments
            return stream.run(np.asarray(x, dtype=_dt), ratio=ratio, is_test=is_test)

        def dropout_grad(dy, mask, ratio, is_test, engine, _dt=dt):
            return _ref.dropout_grad(np.asarray(dy, dtype=_dt), None if is_test else np.asarray(mask, bool),
                                     ratio=ratio, is_test=is_test)

        _pyop_registered.append(onnx_op(op_type=f"{DOMAIN}::Dropout", inputs=[code], outputs=[code, D.dt_bool],
                                        attrs={**forward, "node_key": D.dt_string})(dropout))
        _pyop_registered.append(onnx_op(op_type=f"{DOMAIN}::DropoutGrad", inputs=[code, D.dt_bool], outputs=[code],
                                        attrs=common)(dropout_grad))
    return len(_pyop_registered)


def reset_pyop_state():
    """Forget every PyOp node's RNG counter (the next runs draw as a fresh session's would)."""
    with _pyop_lock:
        _pyop_streams.clear()


def prepare_for_pyop(model):
    """A copy of ``model`` that the PyOp fallback can run: explicit attributes, a ``node_key`` per
    Dropout, a random seed for seedless nodes, a mask output on every Dropout and a mask input on
    every DropoutGrad (a constant, ignored in test mode)."""
    prepared_id = secrets.token_hex(8)  # unique per call: id(model) can be reused after GC
    from onnx import TensorProto, helper

    from .graph import _Names, _set_attr

    model = __import__("copy").deepcopy(model)
    g = model.graph
    names = _Names(g)
    dummy = None
    for i, n in enumerate(g.node):
        if n.domain != DOMAIN or n.op_type not in _defs.OPS:
            continue
        d = _defs.OPS[n.op_type]
        d.validate_node(n)  # the native kernels' checks, before anything is rewritten
        if _defs.mask_format_of(n.op_type) != "bool":
            raise ValueError(f"{_defs.where(n.op_type, n.name)}: the PyOp fallback has no bit-packed masks; "
                             "use mask_format='bool' (caffe2_ort.graph.set_mask_format)")
        have = {a.name for a in n.attribute}
        for k, v in d.defaults().items():
            if k not in have:
                _set_attr(n, k, v)
        if n.op_type == "Dropout":
            if "seed" not in have:
                _set_attr(n, "seed", _defs.seed_as_int64(_defs.fresh_seed()))
            _set_attr(n, "node_key", f"{prepared_id}:{i}:{n.name or n.output[0]}")
            if len(n.output) < 2 or not n.output[1]:
                del n.output[1:]
                n.output.append(names(f"{n.output[0]}_pyop_mask"))
        elif len(n.input) < 2 or not n.input[1]:
            if dummy is None:
                dummy = names("pyop_unused_mask")
                g.node.insert(0, helper.make_node("Constant", [], [dummy], name=names("pyop_unused_mask_const"),
                                                  value=helper.make_tensor(dummy, TensorProto.BOOL, [1], [True])))
            del n.input[1:]
            n.input.append(dummy)
    return model

