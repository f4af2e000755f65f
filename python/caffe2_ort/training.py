"""Training in plain onnxruntime: the training-step model, its builder and its runtime.

A **training-step model** is an ONNX model whose one run is one training step:

- graph inputs: the fed tensors (data, labels), then every state tensor (parameters, optimizer state,
  the int64 iteration counter), each with an initializer of the same name holding its initial value,
  so feeding only the data runs step 1;
- graph outputs: the loss, any requested outputs, then the next value of every state tensor;
- ``metadata_props``: ``caffe2_ort.training_state`` = JSON ``{state input: its next-value output}``,
  ``caffe2_ort.loss`` = the loss output, and (optional) ``caffe2_ort.inference_outputs`` = JSON list
  of the outputs :meth:`TrainingSession.export` keeps.

:func:`make_training_model` makes one from a forward model and a loss (gradients from
:mod:`caffe2_ort.gradients`, updates from :mod:`caffe2_ort.optimizers`); :class:`TrainingSession`
runs it step by step with the state kept in ONNX Runtime (on the device under the CUDA EP).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import gradients as GR
from . import opdefs as _defs
from . import optimizers as OPT
from ._library import DOMAIN
from .graph import _Names, _attrs, _infer, _set_attr, set_mask_format

STATE_KEY = "caffe2_ort.training_state"
LOSS_KEY = "caffe2_ort.loss"
INFERENCE_KEY = "caffe2_ort.inference_outputs"
# written by the Caffe2 training-net converter, read by TrainingSession.save_init_net:
CAFFE2_INIT_KEY = "caffe2_ort.caffe2_init"  # JSON {"constants": [initializer...], "mutexes": [blob...]}
ITERATION = "optimizer_iteration"


def _vi(name, tp):
    vi = onnx.ValueInfoProto()
    vi.name = name
    vi.type.CopyFrom(tp)
    return vi


def _set_meta(model, key, value):
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)


def metadata(model):
    """``(state map, loss name, inference outputs or None)`` of a training-step model; ValueError otherwise."""
    meta = {p.key: p.value for p in model.metadata_props}
    if STATE_KEY not in meta:
        raise ValueError(f"not a training-step model: metadata_props has no {STATE_KEY!r}")
    try:
        state = json.loads(meta[STATE_KEY])
        inference = json.loads(meta[INFERENCE_KEY]) if INFERENCE_KEY in meta else None
    except json.JSONDecodeError as e:
        raise ValueError(f"training-step model metadata is not valid JSON: {e}") from None
    return state, meta.get(LOSS_KEY), inference


def is_training_model(model):
    return any(p.key == STATE_KEY for p in model.metadata_props)


def make_training_model(model, loss, params=None, optimizer="sgd", lr=0.01, *, lr_policy="fixed", lr_args=None,
                        weight_decay=0.0, outputs=(), mask_format=None, **optimizer_args):
    """A training-step model: ``model``'s forward, the gradient of ``loss``, and ``optimizer``'s update.

    ``params``: the trained initializers (default: every floating-point initializer the loss has a
    gradient for). ``optimizer``: sgd, momentum, nesterov, adagrad or adam (Caffe2's formulas, see
    :mod:`caffe2_ort.optimizers`), with options (momentum, epsilon, decay, beta1, beta2) as keywords.
    ``lr`` is the (positive) base learning rate; ``lr_policy`` one of fixed, step, exp, inv, multistep
    with ``lr_args`` (gamma, stepsize, stepsizes, power) driven by the int64 ``optimizer_iteration``.
    ``weight_decay`` adds ``wd * param`` to each gradient. ``outputs``: forward tensors to return too.
    BatchNormalization nodes in training form (training_mode=1) keep their running mean and variance as
    state when those are initializers and the node writes them. ``mask_format``: None keeps the model's
    dropout ops; "bits" makes them BitmaskDropout/BitmaskDropoutGrad (masks 8x smaller, the same steps
    bit for bit), "bool" Dropout/DropoutGrad (:func:`caffe2_ort.graph.set_mask_format`).
    """
    if mask_format is not None:
        model = set_mask_format(model, mask_format)
    if optimizer not in OPT.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPT.OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive (got {lr})")
    model = copy.deepcopy(model)
    g = model.graph
    init = {t.name: t for t in g.initializer}
    floats = [t.name for t in g.initializer if t.data_type in GR.FLOAT_TYPES]
    if params is not None:
        params = list(params)
        for p in params:
            if p not in init:
                raise ValueError(f"parameter {p!r} is not an initializer of the model")
            if init[p].data_type not in GR.FLOAT_TYPES:
                raise ValueError(f"parameter {p!r} is not a floating-point tensor "
                                 f"({TensorProto.DataType.Name(init[p].data_type)})")
    forward_outputs = [o.name for o in g.output if o.name != loss]
    masks = {n.output[1] for n in g.node if n.op_type in _defs.FORWARD_OPS and len(n.output) > 1}
    inference_outputs = [o for o in forward_outputs if o not in masks]
    names = set()
    for n in g.node:
        names.update(n.output)
    for o in outputs:
        if o not in names and o not in init and o not in {i.name for i in g.input}:
            raise ValueError(f"requested output {o!r} is not a tensor of the graph")
    bw, grads, types = GR.add_backward(model, loss, params if params is not None else floats)
    if params is None:
        params = [p for p in floats if grads.get(p) is not None]
        if not params:
            raise ValueError(f"the loss {loss!r} depends on no floating-point initializer: nothing to train")
    g = bw.graph
    fresh = _Names(g)
    e = GR.Emitter(types, fresh)

    state = {}  # state input -> next-value tensor
    state_init = {}  # state input -> initial numpy value
    for p in params:
        state_init[p] = numpy_helper.to_array(init[p])
    # BatchNormalization in training form: running statistics are state written by the node itself.
    for n in g.node:
        if n.op_type == "BatchNormalization" and int(_attrs(n).get("training_mode", 0)) and len(n.output) >= 3:
            for src, nxt in zip(n.input[3:5], n.output[1:3]):
                if src in init and nxt:
                    state[src] = nxt
                    state_init[src] = numpy_helper.to_array(init[src])
    it = fresh(ITERATION)
    state_init[it] = np.zeros(1, np.int64)
    it_next = OPT.iteration(e, it, it)
    state[it] = it_next
    sign, suffixes = OPT.OPTIMIZERS[optimizer]
    lr_name = OPT.learning_rate(e, it_next, sign * float(lr), lr_policy, **(lr_args or {}), base=fresh("lr"))
    for p in params:
        grad = grads[p]
        if grad is None:
            raise ValueError(f"the loss {loss!r} does not depend on parameter {p!r}")
        if weight_decay:
            grad = OPT.weight_decay(e, grad, p, weight_decay, p)
        st = []
        for suf in suffixes:
            s = fresh(f"{p}_{suf}")
            state_init[s] = np.zeros_like(state_init[p])
            st.append(s)
        new_p, new_st = OPT.update(e, optimizer, p, grad, st, lr_name, it_next, p, **optimizer_args)
        state[p] = new_p
        state.update(zip(st, new_st))
    g.node.extend(e.nodes)

    # inputs: fed tensors first, then the state, each with its initial value as an initializer
    fed = [i for i in g.input if i.name not in init]
    kept_inits = [t for t in g.initializer if t.name not in state_init]
    del g.input[:]
    g.input.extend(fed)
    state_vis = []
    for s, v in state_init.items():
        tp = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
        state_vis.append(_vi(s, tp))
    g.input.extend(state_vis)
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    g.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), s) for s, v in state_init.items())

    # outputs: loss, requested, next state (outputs named as the nodes wrote them)
    outs = [_vi(loss, types[loss])]
    seen = {loss}
    for o in outputs:
        if o not in seen:
            tp = types.get(o)
            outs.append(_vi(o, tp) if tp is not None else helper.make_tensor_value_info(o, 0, None))
            seen.add(o)
    for s, nxt in state.items():
        outs.append(_vi(nxt, state_vis[list(state_init).index(s)].type))
    del g.output[:]
    g.output.extend(outs)
    _set_meta(bw, STATE_KEY, json.dumps(state))
    _set_meta(bw, LOSS_KEY, loss)
    _set_meta(bw, INFERENCE_KEY, json.dumps(inference_outputs))
    return bw


# ----------------------------------------------------------------------------------------------------------
# export


def inference_model(model, state_values=None, outputs=None):
    """The inference model of a training-step model: the forward part computing ``outputs`` (default: the
    recorded inference outputs) with the state's values as initializers; Dropout back in test form,
    BatchNormalization in inference form, lowered forward nodes (LRN) back as they were, masks, MaxPool
    indices and gradients gone."""
    state, loss, inference = metadata(model)
    outputs = list(outputs or inference or [])
    if not outputs:
        raise ValueError("no inference outputs recorded in the model: pass outputs=[...]")
    model = GR.restore_forward(copy.deepcopy(model))
    g = model.graph
    values = dict(state_values or {})
    produced = {o for n in g.node for o in n.output}
    known = produced | {i.name for i in g.input} | {t.name for t in g.initializer}
    for o in outputs:
        if o not in known:
            raise ValueError(f"output {o!r} is not a tensor of the model")
    needed, keep = set(outputs), []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    types = _infer(model)
    for n in keep:
        if n.op_type in _defs.FORWARD_OPS and n.domain == DOMAIN:
            _set_attr(n, "is_test", 1)
            del n.output[1:]
        elif n.op_type == "Dropout" and n.domain in ("", "ai.onnx"):
            del n.output[1:]
            del n.input[1:]
        elif n.op_type == "BatchNormalization":
            _set_attr(n, "training_mode", 0)
            del n.output[1:]
        elif n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1] not in needed and n.output[1] not in outputs:
            del n.output[1:]
    needed = set(outputs)
    for n in keep:
        needed.update(i for i in n.input if i)
    inits = []
    for t in g.initializer:
        if t.name in needed:
            if t.name in values:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(values[t.name]), t.name))
            else:
                inits.append(t)
    inputs = [i for i in g.input if i.name in needed and i.name not in state]
    out_vis = []
    for o in outputs:
        out_vis.append(_vi(o, types[o]) if o in types else helper.make_tensor_value_info(o, 0, None))
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.input[:]
    g.input.extend(inputs)
    del g.output[:]
    g.output.extend(out_vis)
    del g.value_info[:]
    props = [p for p in model.metadata_props if p.key not in (STATE_KEY, LOSS_KEY, INFERENCE_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    return model


# ----------------------------------------------------------------------------------------------------------
# runtime


class TrainingSession:
    """Run a training-step model one step per :meth:`step`, the state kept as OrtValues between steps.

    ``model``: a ``ModelProto`` or a path. ``providers``: ONNX Runtime execution providers (default:
    CPU). Under the CUDA EP the state lives on the device and never travels to the host in a step.
    """

    def __init__(self, model, providers=None, session_options=None):
        import onnxruntime as ort

        from ._library import register

        if isinstance(model, (str, Path)):
            model = onnx.load(str(model))
        self.model = model
        self.state_map, self.loss, self.inference_outputs = metadata(model)
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.log_severity_level = 3  # state initializers are graph inputs by design: no warnings
        so = session_options
        runtime_workarounds(so)
        register(so)
        self.session = ort.InferenceSession(model.SerializeToString(), so,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self._ort = ort
        inits = {t.name: t for t in model.graph.initializer}
        missing = [s for s in self.state_map if s not in inits]
        if missing:
            raise ValueError(f"state tensor(s) without an initial value (initializer): {', '.join(missing)}")
        self._state = {s: self._to_device(numpy_helper.to_array(inits[s])) for s in self.state_map}
        self._next = {v: k for k, v in self.state_map.items()}
        self.fed = [i.name for i in self.session.get_inputs() if i.name not in self.state_map]
        self.input_meta = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.steps = 0

    def _to_device(self, arr):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.device, 0)

    def step(self, feeds):
        """One training step on ``feeds`` ({fed input: array}); returns the non-state outputs as numpy."""
        unknown = sorted(set(feeds) - set(self.fed))
        if unknown:
            raise ValueError(f"unknown input(s) {', '.join(map(repr, unknown))}; the model is fed {', '.join(self.fed)}")
        missing = [f for f in self.fed if f not in feeds]
        if missing:
            raise ValueError(f"missing input(s): {', '.join(missing)}")
        b = self.session.io_binding()
        for name in self.fed:
            b.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        for name, ov in self._state.items():
            b.bind_ortvalue_input(name, ov)
        for o in self.outputs:
            b.bind_output(o, self.device if o in self._next else "cpu", 0)
        self.session.run_with_iobinding(b)
        new_state, result = {}, {}
        for o, ov in zip(self.outputs, b.get_outputs()):
            if o in self._next:
                new_state[self._next[o]] = ov
            else:
                result[o] = ov.numpy()
        self._state = new_state
        self.steps += 1
        return result

    def state(self):
        """{state tensor: numpy value} now."""
        return {k: v.numpy() for k, v in self._state.items()}

    def load_state(self, values):
        """Replace the given state tensors (same shapes and dtypes as now); others keep their value."""
        unknown = sorted(set(values) - set(self._state))
        if unknown:
            raise ValueError(f"not state tensors: {', '.join(map(repr, unknown))}")
        new = dict(self._state)
        for k, v in values.items():
            v = np.asarray(v)
            cur = self._state[k]
            if tuple(v.shape) != tuple(cur.shape()) or v.dtype != cur.numpy().dtype:
                raise ValueError(f"state {k!r}: expected {cur.numpy().dtype}{list(cur.shape())}, got {v.dtype}{list(v.shape)}")
            new[k] = self._to_device(v)
        self._state = new

    def save_init_net(self, path):
        """Write the current state as a Caffe2 init net (``.pb``, or text for ``.pbtxt``): one
        ``GivenTensor*Fill`` per state tensor, the constants the Caffe2 net reads (``ONE``, ...) and its
        ``CreateMutex`` ops, so real Caffe2 loads it and continues training from this state."""
        from .caffe2 import netdef, schema

        meta = {p.key: p.value for p in self.model.metadata_props}
        extra = json.loads(meta.get(CAFFE2_INIT_KEY, "{}"))
        inits = {t.name: t for t in self.model.graph.initializer}
        net = schema.NetDef(name="init_net")
        for name, value in self.state().items():
            net.op.append(netdef.make_given_fill(name, value))
        for name in extra.get("constants", []):
            net.op.append(netdef.make_given_fill(name, numpy_helper.to_array(inits[name])))
        for name in extra.get("mutexes", []):
            net.op.add(type="CreateMutex", output=[name])
        net.external_output.extend(o for op in net.op for o in op.output)
        netdef.write_netdef(net, path)
        return net

    def export(self, path=None, outputs=None):
        """The inference model with the trained state (see :func:`inference_model`); saved when ``path`` is given."""
        model = inference_model(self.model, self.state(), outputs)
        if path is not None:
            onnx.save(model, str(path))
        return model


def runtime_workarounds(so):
    """Session settings every session running a training graph needs on the installed onnxruntime.

    Measured on onnxruntime 1.17.3: with memory patterns (planned from the first run, used from the
    second) the converted lenet training net computes wrong parameter gradients from its second step
    on; without them every step matches Caffe2's trajectory, as 1.18 and later do with them. The fault is
    the runtime's: it stays with every ai.caffe2 node replaced by standard ops, and goes when every
    intermediate is made a graph output (another memory plan); scripts/ort_mem_pattern_repro.py shows it."""
    import onnxruntime as ort

    if _version_tuple(ort.__version__) < (1, 18):
        so.enable_mem_pattern = False
    return so


def _version_tuple(version):
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
