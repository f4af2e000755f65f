"""Caffe2's ``caffe2.python.workspace`` over ONNX Runtime, so legacy Caffe2 scripts move by changing
their imports:

    from caffe2.python import workspace          ->  from caffe2_ort import workspace
    from caffe2.proto import caffe2_pb2          ->  from caffe2_ort.caffe2 import caffe2_pb2

One process-wide workspace, as in Caffe2: blobs (numpy arrays, byte strings, or native objects such
as a mutex) live in it between calls; nets are created in it by name.

- A net or an op is a NetDef / OperatorDef (ours or any message of Caffe2's schema), its serialised
  bytes, or an object with ``.Proto()`` (``core.Net``). Nets made only of fill ops (init nets:
  ``GivenTensor*Fill``, ``ConstantFill``, ``XavierFill``, ``MSRAFill``, ``GaussianFill``,
  ``UniformFill``, ``CreateMutex``) run natively in numpy; the random fills draw what Caffe2's CPU
  fills draw from the op's ``device_option.random_seed``. Every other net is converted to ONNX by
  :func:`caffe2_ort.caffe2.convert` (every blob it reads becomes a graph input fed from the
  workspace; every blob it writes, intermediates too, a graph output written back) and run in ONNX
  Runtime with the ai.caffe2 ops. A training net (gradient and optimizer ops the forward converter lacks)
  goes through :func:`caffe2_ort.caffe2.training_net.convert_training_net` instead: the blobs it reads and
  updates are the training-step model's state, fed from the workspace and written back each run.
- Dropout is converted with ``rng="caffe2"`` (``rng="caffe2_mt19937"`` on the node: Caffe2's own
  CPU mask stream) unless ``rng="philox"`` is passed to CreateNet / RunNetOnce / RunOperatorOnce or
  set with :func:`SetDefaultRNG`.
- Stateful ops behave as Caffe2's operator instances: a created net keeps one ORT session, so its
  Dropout streams carry on across RunNet calls; RunNetOnce and RunOperatorOnce make a fresh
  net / operator each call (a seeded Dropout draws the same mask again, as in Caffe2).
- Errors are :class:`WorkspaceError` (a ``RuntimeError``, as Caffe2's are, and a
  :class:`~caffe2_ort.caffe2.Caffe2Error`) with Caffe2-like messages naming the blob, op or net.

Where it differs from Caffe2: a converted net has static shapes, so a created net that has run
refuses inputs of other shapes (create it again with ``overwrite=True``); only the CPU is served
(a CUDA ``device_option`` is refused); test-mode Dropout writes an all-true mask.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from .caffe2 import Caffe2Error, UnsupportedOpsError, convert, schema
from .caffe2 import netdef as _netdef
from .caffe2 import caffe2_pb2, training_net
from .caffe2.netdef import FILL_OPS, evaluate_fill
from .caffe2.random_fills import RANDOM_FILLS, op_seed, random_fill

RNG_MODES = ("caffe2", "philox")
_default_rng = "caffe2"
_MODEL_CACHE_SIZE = 64


class WorkspaceError(Caffe2Error, RuntimeError):
    """A workspace call refused: unknown blob or net, a blob the net cannot take, an op that cannot
    be converted. Caffe2 raised RuntimeError for these, so scripts that catch it keep working."""


class _Native:
    """A blob holding something other than a tensor (a mutex, or nothing yet). FetchBlob returns
    Caffe2's description of it, as Caffe2 did."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def describe(self, name: str) -> bytes:
        return f"{name}, a C++ native class of type {self.type_name}.".encode()


_UNINITIALIZED = _Native("nullptr (uninitialized)")
_MUTEX = _Native("std::unique_ptr<std::mutex>")

# the workspace
_blobs: dict = {}
_nets: dict = {}
_models: OrderedDict = OrderedDict()  # (net bytes, signature, rng) -> serialised ONNX model + maps


# ----------------------------------------------------------------------------------------------
# arguments


def _name(blob) -> str:
    if isinstance(blob, bytes):
        return blob.decode()
    return str(blob)  # a BlobReference prints as its name


def _as_message(obj, cls, what):
    if isinstance(obj, cls):
        return obj
    if hasattr(obj, "Proto") and callable(obj.Proto):
        obj = obj.Proto()
    if isinstance(obj, (bytes, bytearray)):
        msg = cls()
        try:
            msg.ParseFromString(bytes(obj))
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise WorkspaceError(f"cannot parse the {what} bytes: {e}") from None
        return msg
    descriptor = getattr(obj, "DESCRIPTOR", None)
    if descriptor is not None and descriptor.full_name == cls.DESCRIPTOR.full_name:
        msg = cls()
        msg.ParseFromString(obj.SerializeToString())  # a message of another copy of caffe2.proto
        return msg
    raise WorkspaceError(f"expected a {what} (a message, its bytes or an object with .Proto()), got {type(obj).__name__}")


def _as_net(net):
    return _as_message(net, schema.NetDef, "NetDef")


def _as_op(op):
    return _as_message(op, schema.OperatorDef, "OperatorDef")


def _rng(rng):
    rng = _default_rng if rng is None else rng
    if rng not in RNG_MODES:
        raise WorkspaceError(f"rng must be one of {', '.join(RNG_MODES)}, not {rng!r}")
    return rng


def _check_device(device_option, what):
    if device_option is None:
        return
    dopt = _as_message(device_option, schema.DeviceOption, "DeviceOption")
    if dopt.device_type != caffe2_pb2.CPU:
        raise WorkspaceError(
            f"{what}: device_type {dopt.device_type} is not served by caffe2_ort.workspace (CPU only; "
            "for CUDA convert the net with `caffe2-ort convert` and run it with the CUDA provider)"
        )


def _where(k, op):
    return f"{op.type} op #{k}" + (f" ({op.name})" if op.name else "")


def SetDefaultRNG(rng: str) -> None:
    """The Dropout mask stream of nets converted from now on: "caffe2" (default) or "philox"."""
    global _default_rng
    _default_rng = _rng(rng)


# ----------------------------------------------------------------------------------------------
# blobs


def GlobalInit(args=None) -> bool:
    """Caffe2's flags are not used here; accepted so scripts can keep their first line."""
    return True


def FeedBlob(name, arr, device_option=None) -> bool:
    """Put a value into blob ``name``: a numpy array (copied) or a string (kept as bytes)."""
    name = _name(name)
    _check_device(device_option, f"FeedBlob({name!r})")
    if isinstance(arr, str):
        arr = arr.encode()
    if isinstance(arr, bytes):
        _blobs[name] = arr
        return True
    if not isinstance(arr, np.ndarray) and not isinstance(arr, np.generic):
        raise WorkspaceError(
            f"FeedBlob({name!r}): Unexpected type of argument {type(arr).__name__} - only numpy array or string "
            "are supported for feeding"
        )
    _blobs[name] = np.array(arr, copy=True, order="C")
    return True


def FetchBlob(name):
    """The value of blob ``name``: a numpy array (a copy), bytes for a string blob, or Caffe2's
    description of a native blob (``b"<name>, a C++ native class of type ..."``)."""
    name = _name(name)
    if name not in _blobs:
        raise WorkspaceError(f"Can't find blob: {name}")
    value = _blobs[name]
    if isinstance(value, _Native):
        return value.describe(name)
    if isinstance(value, bytes):
        return value
    return value.copy()


def FetchBlobs(names) -> list:
    return [FetchBlob(n) for n in names]


def HasBlob(name) -> bool:
    return _name(name) in _blobs


def Blobs() -> list:
    """The names of every blob in the workspace, sorted (as Caffe2 lists them)."""
    return sorted(_blobs)


def ResetWorkspace(root_folder=None) -> bool:
    """Drop every blob and net."""
    _blobs.clear()
    _nets.clear()
    return True


def CurrentWorkspace() -> str:
    return "default"


# ----------------------------------------------------------------------------------------------
# native ops: fills


NATIVE_OPS = frozenset(FILL_OPS) | set(RANDOM_FILLS) | {"CreateMutex"}


def _random_fill(k, op, net):
    """Caffe2's draw (caffe2/random_fills.py) from the op's or net's random_seed; unset: a fresh seed."""
    seed = op_seed(op, net)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    try:
        return random_fill(op, seed, _where(k, op))
    except Caffe2Error as e:
        raise WorkspaceError(str(e)) from None


def _run_native(net):
    for k, op in enumerate(net.op):
        if op.type == "CreateMutex":
            for b in op.output:
                _blobs[b] = _MUTEX
            continue
        if op.type in RANDOM_FILLS:
            value = _random_fill(k, op, net)
        else:
            tensors = {b: v for b, v in _blobs.items() if isinstance(v, np.ndarray)}
            try:
                value = evaluate_fill(op, tensors, index=k)
            except Caffe2Error as e:
                raise WorkspaceError(str(e)) from None
        _blobs[op.output[0]] = value


# ----------------------------------------------------------------------------------------------
# converted nets


def _reads_writes(net):
    """Blobs the net reads before writing (in order) and every blob it writes (in order)."""
    written, reads, writes = set(), [], []
    for op in net.op:
        for b in op.input:
            if b and b not in written and b not in reads:
                reads.append(b)
        for b in op.output:
            if b and b not in written:
                written.add(b)
                writes.append(b)
    return reads, writes


def _check_inputs(net, what):
    """Caffe2's check when a net is made: every blob an op reads exists already or is written by an
    earlier op."""
    known = set(_blobs)
    for k, op in enumerate(net.op):
        for b in op.input:
            if b and b not in known:
                raise WorkspaceError(f"{what}: {_where(k, op)}: Encountered a non-existing input blob: {b}")
        known.update(op.output)


def _signature(reads):
    """``(b, dtype, shape)`` of every tensor blob the net reads, and the names of the other blobs
    it reads (strings, mutexes, unwritten blobs), which no converted net can take."""
    sig, other = [], []
    for b in reads:
        value = _blobs[b]
        if isinstance(value, np.ndarray):
            sig.append((b, value.dtype.str, tuple(value.shape)))
        else:
            other.append(b)
    return tuple(sig), tuple(other)


def _describe(value) -> str:
    return "a string" if isinstance(value, bytes) else f"a C++ native class of type {value.type_name}"


class _Compiled:
    """One conversion of a net for one input signature: the ONNX model bytes and its name maps.

    Every blob the workspace holds that the net reads is a graph input; the converted model's outputs
    are then widened to every blob the net writes (their last versions), so that intermediates can be
    fetched afterwards. A blob the converter computes no value for (LRN's unused scale output) stays
    unwritten: ``unwritten`` lists them."""

    def __init__(self, net, sig, other, rng, what):
        _, writes = _reads_writes(net)
        value_info = {b: (np.dtype(dt), shape) for b, dt, shape in sig}
        body = schema.NetDef()
        body.CopyFrom(net)
        # an external output that the net also reads first (an in-place update) is added below
        keep = [b for b in net.external_output if b not in value_info]
        del body.external_output[:]
        body.external_output.extend(keep)
        try:
            conv = convert(body, value_info=value_info, rng=rng, name=net.name or "workspace_net")
        except UnsupportedOpsError as e:
            # ops the forward converter lacks: a training net's gradient and optimizer ops (a lone
            # DropoutGrad, which it has, stays on this path)
            if training_net.is_training_net(net):
                self._training(net, sig, other, rng, what, writes)
                return
            raise WorkspaceError(f"{what}: {e}") from None
        except Caffe2Error as e:
            if other:  # the converter's complaint is about a blob it was given no tensor for
                b = other[0]
                raise WorkspaceError(f"{what}: blob {b!r} holds {_describe(_blobs[b])}, not a tensor; a converted net reads only tensors") from None
            raise WorkspaceError(f"{what}: {e}") from None
        model = conv.model
        self.outputs = _widen_outputs(model, conv.names, writes)
        self.unwritten = [b for b in writes if b not in {c2 for _, c2 in self.outputs}]
        self.model = model.SerializeToString()
        self.inputs = list(conv.inputs)


    def _training(self, net, sig, other, rng, what, writes):
        """A training net (gradient and optimizer ops) as a training-step model: the tensors it reads
        and also updates (parameters, momenta, the iteration counter) are its state, handed to the
        converter as an init net of the workspace's current values and fed from the workspace on
        every run like the blobs it only reads; the updated state, loss, masks and every other blob
        the model computes are written back."""
        written = set(writes)
        state = [b for b, _, _ in sig if b in written]
        init = schema.NetDef(name="workspace_state")
        for b in state:
            init.op.add().CopyFrom(_netdef.make_given_fill(b, _blobs[b]))
        mutexes = [b for b in other if _blobs[b] is _MUTEX]
        for b in mutexes:
            init.op.add(type="CreateMutex", output=[b])
        fed = {b: (np.dtype(dt), shape) for b, dt, shape in sig if b not in written}
        unreadable = [b for b in other if b not in mutexes]
        if unreadable:
            b = unreadable[0]
            raise WorkspaceError(f"{what}: blob {b!r} holds {_describe(_blobs[b])}, not a tensor; a converted net reads only tensors")
        try:
            model, _notes = training_net.convert_training_net(net, init, fed, rng=rng, name=net.name or "workspace_train_net")
        except Caffe2Error as e:
            raise WorkspaceError(f"{what}: {e}") from None
        from .training import metadata

        state_map, _loss, _ = metadata(model)
        # the last version of a blob keeps its name unless the blob was also read first (state)
        names = {b: b for b in writes}
        names.update(state_map)
        self.outputs = _widen_outputs(model, names, writes)
        self.unwritten = [b for b in writes if b not in {c2 for _, c2 in self.outputs}]
        self.model = model.SerializeToString()
        self.inputs = list(fed) + state


def _widen_outputs(model, names, writes):
    """Make the last version of every written blob (``names``: blob -> its ONNX name) a graph output
    of ``model`` (in place); returns ``[(onnx name, blob)]`` for every output that holds a blob."""
    import onnx

    graph = model.graph
    produced = {o for node in graph.node for o in node.output if o}
    present = {o.name for o in graph.output}
    wanted = [(names[b], b) for b in writes if b in names and names[b] in produced]
    missing = [o for o, _ in wanted if o not in present]
    if missing:
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for o in missing:
            if o in infos and infos[o].type.tensor_type.elem_type:
                graph.output.append(infos[o])
    present = {o.name for o in graph.output}
    return [(o, b) for o, b in wanted if o in present]


def _compiled(net, sig, other, rng, what):
    key = (net.SerializeToString(deterministic=True), sig, other, rng)
    hit = _models.get(key)
    if hit is None:
        hit = _Compiled(net, sig, other, rng, what)
        _models[key] = hit
        if len(_models) > _MODEL_CACHE_SIZE:
            _models.popitem(last=False)
    else:
        _models.move_to_end(key)
    return hit


def _session(compiled):
    import onnxruntime as ort

    from . import _library

    from .training import runtime_workarounds

    so = runtime_workarounds(ort.SessionOptions())
    so.log_severity_level = 3
    _library.register(so, "cpu")
    return ort.InferenceSession(compiled.model, so, providers=["CPUExecutionProvider"])


def _run_session(sess, compiled, what):
    feed = {b: _blobs[b] for b in compiled.inputs}
    try:
        results = sess.run([o for o, _ in compiled.outputs], feed)
    except Exception as e:  # noqa: BLE001 - ORT's errors (a kernel refusing its input)
        raise WorkspaceError(f"{what}: {str(e).strip()}") from None
    for (_, b), value in zip(compiled.outputs, results):
        _blobs[b] = value


def _is_native(net):
    return len(net.op) > 0 and all(op.type in NATIVE_OPS for op in net.op)


class _Net:
    """A created net: its NetDef, and once it has inputs, one conversion and one ORT session (the
    operators' state, e.g. Dropout's mask stream, lives in the session)."""

    def __init__(self, net, rng):
        self.net, self.rng = net, rng
        self.what = f"net {net.name!r}"
        self.native = _is_native(net)
        self.reads, _ = _reads_writes(net)
        self.compiled = self.sess = self.sig = None
        self.runs = 0

    def prepare(self):
        sig, other = _signature(self.reads)
        if self.compiled is not None and self.sig == sig:
            return
        if self.runs:
            now = {b: (dt, sh) for b, dt, sh in sig}
            for b, dt, shape in self.sig:
                if b not in now:
                    raise WorkspaceError(f"{self.what}: blob {b!r} holds {_describe(_blobs[b])} now, the net was converted for a tensor")
                if now[b] != (dt, shape):
                    raise WorkspaceError(
                        f"{self.what}: blob {b!r} is now {np.dtype(now[b][0])} of shape {list(now[b][1])}, the net was "
                        f"converted for {np.dtype(dt)} of shape {list(shape)} (converted nets have static shapes: "
                        "CreateNet(net, overwrite=True) converts it again, with fresh operator state)"
                    )
        self.sig = sig
        self.compiled = _compiled(self.net, sig, other, self.rng, self.what)
        self.sess = _session(self.compiled)

    def run(self):
        if self.native:
            _run_native(self.net)
        else:
            for b in self.reads:
                if b not in _blobs:
                    raise WorkspaceError(f"{self.what}: Encountered a non-existing input blob: {b}")
            self.prepare()
            _run_session(self.sess, self.compiled, self.what)
        self.runs += 1


def _run_once(net, rng, what):
    _check_inputs(net, what)
    if _is_native(net):
        _run_native(net)
        return True
    reads, _ = _reads_writes(net)
    compiled = _compiled(net, *_signature(reads), rng, what)
    _run_session(_session(compiled), compiled, what)  # a fresh session: fresh operator state
    return True


def RunNetOnce(net, *, rng=None) -> bool:
    """Run a net once, as a fresh net (its operators start from scratch each call)."""
    net = _as_net(net)
    return _run_once(net, _rng(rng), f"net {net.name!r}")


def CreateNet(net, overwrite=False, input_blobs=None, *, rng=None) -> bool:
    """Create a net by its name: every blob it reads must exist (or be in ``input_blobs``, which are
    created empty); the blobs it writes are created empty. It is converted when it first runs."""
    net = _as_net(net)
    rng = _rng(rng)
    if net.name in _nets and not overwrite:
        raise WorkspaceError(
            f"I respectfully refuse to overwrite an existing net of the same name \"{net.name}\", unless you "
            "explicitly specify overwrite=true."
        )
    for b in input_blobs or ():
        _blobs.setdefault(_name(b), _UNINITIALIZED)
    _check_inputs(net, f"net {net.name!r}")
    created = _Net(net, rng)
    if not created.native:
        created.prepare()  # errors (unsupported ops, bad shapes) now, as Caffe2 raised them at creation
    for op in net.op:
        for b in op.output:
            if b:
                _blobs.setdefault(b, _UNINITIALIZED)
    _nets[net.name] = created
    return True


def _net_name(name) -> str:
    if hasattr(name, "Name") and callable(name.Name):
        return name.Name()
    if isinstance(name, schema.NetDef):
        return name.name
    return _name(name)


def RunNet(name, num_iter=1, allow_fail=False) -> bool:
    """Run a created net ``num_iter`` times; its operators keep their state between runs."""
    name = _net_name(name)
    if name not in _nets:
        raise WorkspaceError(f"Can't find net {name}")
    net = _nets[name]
    for _ in range(int(num_iter)):
        net.run()
    return True


def Nets() -> list:
    return sorted(_nets)


def RunOperatorOnce(op, *, rng=None) -> bool:
    """Run one operator, created afresh for this call (a seeded Dropout draws the same mask each time)."""
    op = _as_op(op)
    net = schema.NetDef(name=f"RunOperatorOnce_{op.type}")
    net.op.add().CopyFrom(op)
    return _run_once(net, _rng(rng), f"operator {op.type}" + (f" ({op.name})" if op.name else ""))


def RunOperatorsOnce(ops, *, rng=None) -> bool:
    for op in ops:
        if not RunOperatorOnce(op, rng=rng):
            return False
    return True
