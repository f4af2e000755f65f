"""The converter's subcommands of ``caffe2-ort``: ``convert``, ``synth-init`` and ``run``.

``add_commands(subparsers)`` adds them to an argparse parser (the package's ``caffe2-ort`` entry point
calls it); ``python -m caffe2_ort.caffe2.cli ...`` runs them on their own.

The command line is the boundary where every failure becomes one line: :func:`guarded` turns the
errors a user can cause (bad or hostile files, sizes over the budget, missing weights or value info,
unsupported ops, ONNX Runtime refusing a model) into ``error: ...`` on stderr and exit status 2;
anything else is a bug, reported as one ``error: internal error ...`` line and exit status 1
(``CAFFE2_ORT_TRACEBACK=1`` shows the traceback). Python warnings raised while a command runs are
printed as ``warning: ...`` lines after it succeeds, and dropped when it fails, so nothing comes
before the error line; ONNX Runtime's own logger is kept quiet.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import Caffe2Error, NetDefFormatError
from .limits import Budget, check_shape, numel, parse_size

EXIT_USAGE = 2
EXIT_INTERNAL = 1
ORT_QUIET = 4  # ORT's FATAL: its error lines repeat what the exception says, which we print once


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error: ...`` line (exit status 2), like every other error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {self.prog}: {' '.join(str(message).split())} (--help for usage)\n")


def parse_input_spec(spec: str):
    """``NAME:d0,d1,...`` -> (name, shape). The name may contain ':' (the last one splits)."""
    name, sep, dims = spec.rpartition(":")
    if not sep or not name:
        raise Caffe2Error(f"--input {spec!r}: expected NAME:d0,d1,... (e.g. data:1,3,224,224)")
    parts = dims.split(",") if dims.strip() else []
    if any(not p.strip().lstrip("-").isdigit() or len(p.strip()) > 30 for p in parts):
        raise Caffe2Error(f"--input {spec!r}: dims must be integers separated by commas")
    return name, check_shape(f"--input {spec!r}", [int(p) for p in parts])


def _seed(text: str) -> int:
    """--seed: a non-negative integer (numpy's generators take no negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected a non-negative integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: expected a non-negative integer")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text, "--max-bytes")
    except Caffe2Error as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected a positive integer")
    return value


def _input_shapes(specs):
    return dict(parse_input_spec(s) for s in specs or [])


def _add_net_args(p, with_init=True):
    if with_init:
        p.add_argument("--init", metavar="INIT_NET", help="init_net.pb (or .pbtxt) holding the weights")
    p.add_argument("--value-info", metavar="JSON", help="value_info.json: {name: [onnx_elem_type, [dims]]}")
    p.add_argument(
        "--input", action="append", metavar="NAME:d0,d1,...", default=[],
        help="a data input's shape (overrides value_info; float32 unless value_info types it); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--max-bytes", type=_size, default=None, metavar="SIZE",
        help="largest tensor, and total of the tensors, that sizes in the files may make the command allocate "
        "(e.g. 8G; default 2G, or $CAFFE2_ORT_MAX_BYTES)",
    )  # fmt: skip


def _add_convert_args(p):
    p.add_argument("--dropout", choices=("caffe2", "onnx"), default="caffe2",
                   help="caffe2: ai.caffe2 Dropout/DropoutGrad nodes (default); onnx: standard ONNX ops only")  # fmt: skip
    p.add_argument("--rng", choices=("philox", "caffe2"), default="philox",
                   help="mask stream of the converted Dropouts: philox (default) or caffe2 (rng=caffe2_mt19937, "
                        "real Caffe2's own CPU masks)")  # fmt: skip
    p.add_argument("--mask-format", choices=("bool", "bits"), default="bool",
                   help="bool: Caffe2's Dropout/DropoutGrad masks (default); bits: BitmaskDropout/BitmaskDropoutGrad, "
                        "masks packed 32 keep bits a uint32 word (8x smaller; an extension beyond Caffe2)")  # fmt: skip
    p.add_argument("--opset", type=int, default=None, help="ai.onnx opset (default 17)")
    p.add_argument("--ir-version", type=int, default=None, help="ONNX IR version of the model (default 8)")
    p.add_argument("--name", help="graph name (default: the NetDef's name, else 'caffe2_net')")


def add_commands(subparsers) -> None:
    """Add ``convert``, ``synth-init`` and ``run`` to an argparse ``add_subparsers()`` object."""
    p = subparsers.add_parser("convert", help="convert a Caffe2 predict_net (+ init_net, value_info) to ONNX")
    p.add_argument("predict_net", help="predict_net.pb or predict_net.pbtxt")
    _add_net_args(p)
    _add_convert_args(p)
    p.add_argument("--train", action="store_true",
                   help="write a training-step model (the default when the net holds gradient or optimizer ops)")
    p.add_argument("--init-seed", type=_seed, default=0,
                   help="seed (plus the op index) of a training init_net's random fills that carry no "
                        "device_option.random_seed (XavierFill, MSRAFill, ...; default 0)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    p.set_defaults(func=cmd_convert)

    p = subparsers.add_parser("synth-init", help="make a random init_net of consistent shapes for a predict_net")
    p.add_argument("predict_net")
    _add_net_args(p, with_init=False)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--width", type=_positive, default=16, help="output channels chosen for each Conv (default 16)")
    p.add_argument("--fc-width", type=_positive, default=32, help="output features chosen for each FC (default 32)")
    p.add_argument("--no-calibrate", action="store_true", help="keep random SpatialBN statistics")
    p.add_argument("-o", "--output", required=True, metavar="INIT_NET.pb", help=".pb (binary) or .pbtxt (text)")
    p.set_defaults(func=cmd_synth_init)

    p = subparsers.add_parser(
        "run", help="run an ONNX model, or a Caffe2 predict_net (converted first), in ONNX Runtime with the ai.caffe2 ops"
    )
    p.add_argument("model", help="model.onnx, or predict_net.pb/.pbtxt to convert first")
    _add_net_args(p)
    _add_convert_args(p)
    p.add_argument("--data", action="append", default=[], metavar="NAME=FILE.npy", help="input values (default: random)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random inputs and of synthesised weights")
    p.add_argument("--provider", default="CPUExecutionProvider", help="ORT execution provider (default CPU)")
    p.add_argument("--save-onnx", metavar="PATH", help="also write the converted model here")
    p.add_argument("--placement", action="store_true",
                   help="run once more with ORT's profiler and print which execution provider ran each node, and "
                        "the Memcpy nodes ORT inserted")
    p.add_argument("--synth", action="store_true",
                   help="synthesise random weights even when an init_net.pb lies next to the predict net")  # fmt: skip
    p.add_argument("--compare", action="store_true",
                   help="also run the Caffe2 net in the numpy executor and print the largest difference")  # fmt: skip
    p.set_defaults(func=cmd_run)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _error(message, code=EXIT_USAGE) -> int:
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return code


def _user_error(e):
    """The one-line message of an error a user's input can cause, or None for a bug."""
    from .._library import LibraryNotFoundError

    if isinstance(e, (Caffe2Error, LibraryNotFoundError)):
        return str(e)
    if isinstance(e, OSError):
        return f"{e.filename}: {e.strerror or e}" if e.filename else (e.strerror or str(e))
    if isinstance(e, MemoryError):
        return "out of memory (a smaller --max-bytes makes the size checks stricter)"
    if isinstance(e, RecursionError):
        return "input nested too deeply"
    if type(e).__module__.startswith(("onnxruntime", "onnx", "google.protobuf")):
        return f"{type(e).__name__}: {e}"
    return None


def guarded(fn):
    """Run a command ``fn(args)`` so that only one ``error: ...`` line can reach stderr (see the module doc)."""
    if getattr(fn, "_guarded", False):
        return fn

    def wrapped(args):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rc = fn(args)
            except KeyboardInterrupt:
                return _error("interrupted", 130)
            except Exception as e:
                message = _user_error(e)
                if message is not None:
                    return _error(message)
                if os.environ.get("CAFFE2_ORT_TRACEBACK"):
                    raise
                return _error(f"internal error (a bug in caffe2-ort; please report it): {type(e).__name__}: {e}", EXIT_INTERNAL)
        for message in dict.fromkeys(_one_line(w.message) for w in caught):  # each once, in order
            print(f"warning: {message}", file=sys.stderr)
        return rc

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    wrapped._guarded = True
    return wrapped


def _budget(args) -> Budget:
    if getattr(args, "_budget", None) is None:
        args._budget = Budget(getattr(args, "max_bytes", None))
    return args._budget


def _load_common(args):
    from . import netdef

    budget = _budget(args)
    path = args.predict_net if hasattr(args, "predict_net") else args.model
    if getattr(args, "train", None) is None:
        net = netdef.read_netdef(path, kind="predict", budget=budget)
    else:  # convert: a training net has no external outputs, so its kind decides the file check
        from .training_net import is_training_net

        net = netdef.read_netdef(path, budget=budget)
        netdef.check_net(net, str(path), "train" if args.train or is_training_net(net) else "predict")
    vi = netdef.read_value_info(args.value_info, budget=budget) if args.value_info else {}
    for name, shape in _input_shapes(args.input).items():
        vi[name] = (vi[name][0] if name in vi else np.dtype(np.float32), shape)
    return net, vi


def _convert_kwargs(args):
    from .converter import DEFAULT_IR_VERSION, DEFAULT_OPSET

    return dict(
        dropout=args.dropout,
        rng=args.rng,
        mask_format=args.mask_format,
        opset=DEFAULT_OPSET if args.opset is None else args.opset,
        ir_version=DEFAULT_IR_VERSION if args.ir_version is None else args.ir_version,
        name=args.name,
        budget=_budget(args),
    )


def _summary(conv):
    kinds = Counter((n.domain + "::" if n.domain else "") + n.op_type for n in conv.model.graph.node)
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
    ins = ", ".join(f"{n}{list(s)}" for n, (_, s) in conv.inputs.items())
    return f"{len(conv.model.graph.node)} nodes ({ops}); inputs {ins}; outputs {', '.join(conv.outputs)}"


@guarded
def cmd_convert(args) -> int:
    import onnx

    from . import netdef
    from .converter import convert

    from .training_net import convert_training_net, is_training_net

    net, vi = _load_common(args)
    init = netdef.read_netdef(args.init, kind="init", budget=_budget(args)) if args.init else None
    if args.train or is_training_net(net):
        if args.dropout != "caffe2":
            raise Caffe2Error("a training-step model needs --dropout caffe2 (its DropoutGrad reads the mask)")
        kw = _convert_kwargs(args)
        model, notes = convert_training_net(net, init, vi, rng=args.rng, seed=args.init_seed, opset=kw["opset"],
                                            ir_version=kw["ir_version"], name=args.name, budget=kw["budget"],
                                            mask_format=args.mask_format)
        onnx.save(model, args.output)
        from ..training import metadata

        state, loss, _ = metadata(model)
        print(f"wrote {args.output}: training-step model, {len(model.graph.node)} nodes; fed "
              f"{', '.join(i.name for i in model.graph.input if i.name not in state)}; loss {loss}; "
              f"{len(state)} state tensors ({', '.join(state)})")
        for note in notes:
            print(f"note: {note}")
        return 0
    conv = convert(net, init, vi, **_convert_kwargs(args))
    onnx.save(conv.model, args.output)
    print(f"wrote {args.output}: {_summary(conv)}")
    for note in conv.notes:
        print(f"note: {note}")
    return 0


@guarded
def cmd_synth_init(args) -> int:
    from . import netdef
    from .synth import synthesize

    net, vi = _load_common(args)
    if not vi:
        raise Caffe2Error("synth-init needs the data inputs' shapes: --input NAME:d0,d1,... or --value-info")
    init, blobs = synthesize(net, vi, seed=args.seed, width=args.width, fc_width=args.fc_width,
                             calibrate=not args.no_calibrate, budget=_budget(args))  # fmt: skip
    netdef.write_netdef(init, args.output)
    total = sum(int(a.size) for a in blobs.values())
    print(f"wrote {args.output}: {len(blobs)} weights, {total} values (seed {args.seed}, width {args.width}, fc width {args.fc_width})")
    return 0


def _fmt_values(a, n=5):
    flat = np.asarray(a).reshape(-1)[:n]
    if flat.dtype == bool:
        return "[" + ", ".join("1" if v else "0" for v in flat) + (", ...]" if a.size > n else "]")
    return "[" + ", ".join(f"{float(v):.6g}" for v in flat) + (", ...]" if a.size > n else "]")


def _describe(name, a):
    a = np.asarray(a)
    line = f"  {name}: shape {list(a.shape)} {a.dtype}"
    if a.size and a.dtype != object:
        with np.errstate(all="ignore"):  # inf - inf in the mean of an overflowing output is not an error
            v = a.astype(np.float64)
            line += f"  min {v.min():.6g} max {v.max():.6g} mean {v.mean():.6g}  first {_fmt_values(a)}"
    return line


def _random_inputs(specs, rng, budget):
    out = {}
    for name, (dtype, shape) in specs.items():
        dtype = np.dtype(dtype)
        shape = budget.check(f"random values for input {name!r}", shape, dtype)
        if dtype.kind == "f":
            values = rng.standard_normal(shape).astype(dtype)
        elif dtype == bool:
            values = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            values = rng.integers(0, 10, shape).astype(dtype)
        else:
            raise Caffe2Error(f"input {name!r}: cannot make random values of type {dtype}")
        out[name] = np.asarray(values, dtype=dtype).reshape(shape)  # rank 0: an array, not a numpy scalar
    return out


def _load_onnx(path, budget):
    import onnx
    from onnx import external_data_helper

    data = budget.read_file(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except RecursionError:
        raise NetDefFormatError(f"{path}: not an ONNX model (nested too deeply)") from None
    except Exception as e:  # protobuf decode errors
        raise NetDefFormatError(f"{path}: not an ONNX model ({_one_line(e)})") from None
    if not model.HasField("graph"):
        raise NetDefFormatError(f"{path}: not an ONNX model (no graph)")
    if any(external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        for t in model.graph.initializer:
            budget.check(f"{path}: initializer {t.name!r}", t.dims, np.float64 if t.data_type == onnx.TensorProto.DOUBLE else np.float32)
        try:
            external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
        except Exception as e:  # missing or short external data files, paths outside the folder
            raise NetDefFormatError(f"{path}: cannot load its external data ({type(e).__name__}: {_one_line(e)})") from None
    return model


def _onnx_input_specs(model, overrides):
    from onnx import helper

    specs = {}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            raise Caffe2Error(f"input {vi.name!r} has ONNX element type {tt.elem_type}, which run cannot feed") from None
        if vi.name in overrides:
            shape = overrides[vi.name]
        else:
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            if any(d < 0 for d in shape):
                raise Caffe2Error(f"input {vi.name!r} has a dynamic shape: give --input {vi.name}:d0,d1,...")
        specs[vi.name] = (dtype, tuple(shape))
    return specs


def _load_data(item, specs, budget):
    """--data NAME=FILE.npy: the array, its .npy header checked against the input before anything is read."""
    name, sep, file = item.partition("=")
    if not sep or name not in specs:
        raise Caffe2Error(f"--data {item!r}: expected NAME=FILE.npy with NAME one of {', '.join(specs)}")
    want_dtype, want_shape = np.dtype(specs[name][0]), tuple(specs[name][1])
    raw = budget.read_file(file, f"--data {item!r}")
    if raw[:4] == b"PK\x03\x04":
        raise Caffe2Error(f"--data {item!r}: {file} is an .npz archive; give one array as a .npy file (numpy.save)")
    f = io.BytesIO(raw)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version[0]}.{version[1]}; 1.0 and 2.0 are read")
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _fortran, dtype = header(f)
    except (ValueError, EOFError, SyntaxError, TypeError, MemoryError) as e:  # not a .npy file, or a corrupt header
        raise Caffe2Error(f"--data {item!r}: {file} is not a .npy array file ({_one_line(e)})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise Caffe2Error(f"--data {item!r}: {file} holds {dtype} values; the input {name!r} takes numbers ({want_dtype})")
    if tuple(shape) != want_shape:
        raise Caffe2Error(f"--data {item!r}: shape {list(shape)}, the model wants {list(want_shape)}")
    if not np.can_cast(dtype, want_dtype, casting="same_kind"):
        raise Caffe2Error(f"--data {item!r}: {file} holds {dtype} values, which do not convert to the input's {want_dtype}")
    if len(raw) - f.tell() < numel(want_shape) * dtype.itemsize:
        raise Caffe2Error(f"--data {item!r}: {file} is truncated (its header claims {list(shape)} {dtype})")
    f.seek(0)
    arr = np.load(f, allow_pickle=False)
    return np.asarray(arr).astype(want_dtype)


def _check_provider(provider):
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise Caffe2Error(f"execution provider {provider!r} is not available in this onnxruntime; available: {', '.join(available)}")


def _session_options():
    """Session options with the ai.caffe2 ops and ORT's logger quiet (its errors come back as the exception)."""
    import onnxruntime as ort

    from .. import register

    ort.set_default_logger_severity(ORT_QUIET)
    so = ort.SessionOptions()
    so.log_severity_level = ORT_QUIET
    register(so)
    return so


def _refused(e):
    """An ORT error whose message is not UTF-8, as one readable line."""
    return Caffe2Error(f"onnxruntime refused the model: {bytes(e.object[:300]).decode('utf-8', 'replace')}")


def _session(model, provider):
    import onnxruntime as ort

    _check_provider(provider)
    try:
        return ort.InferenceSession(model.SerializeToString(), _session_options(), providers=[provider])
    except UnicodeDecodeError as e:
        raise _refused(e) from None


@guarded
def cmd_run(args) -> int:
    import onnx
    import onnxruntime as ort

    from . import netdef
    from .converter import convert

    budget = _budget(args)
    rng = np.random.default_rng(args.seed)
    _check_provider(args.provider)
    conv = net = blobs = None
    path = Path(args.model)
    if path.suffix.lower() == ".onnx":
        if args.compare:
            raise Caffe2Error("--compare needs a Caffe2 predict_net, not an ONNX model")
        model = _load_onnx(path, budget)
        specs = _onnx_input_specs(model, _input_shapes(args.input))
    else:
        net, vi = _load_common(args)
        init_path = args.init
        beside = path.with_name("init_net.pb")
        if init_path is None and not args.synth and beside.is_file():
            init_path = beside
            print(f"using {beside} (found next to the predict net; --synth to use random weights instead)")
        if init_path:
            blobs = netdef.evaluate_init_net(netdef.read_netdef(init_path, kind="init", budget=budget), skip=set(vi), budget=budget)
        else:
            from .synth import synthesize

            if not vi:
                raise Caffe2Error("no value info: give --value-info value_info.json or --input NAME:d0,d1,...")
            _, blobs = synthesize(net, vi, seed=args.seed, budget=budget)
            print(f"no --init given: synthesised random weights for {len(blobs)} blobs (seed {args.seed})")
        conv = convert(net, None, vi, init_blobs=blobs, **_convert_kwargs(args))
        model = conv.model
        specs = dict(conv.inputs)
        print(f"converted {path}: {_summary(conv)}")
        if args.save_onnx:
            onnx.save(model, args.save_onnx)
            print(f"wrote {args.save_onnx}")
    data = {}
    for item in args.data:
        data[item.partition("=")[0]] = _load_data(item, specs, budget)
    feeds = _random_inputs({k: v for k, v in specs.items() if k not in data}, rng, budget)
    feeds.update(data)
    feeds = {k: feeds[k] for k in specs}
    sess = _session(model, args.provider)
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, feeds)
    print(f"ran on {sess.get_providers()[0]} (onnxruntime {ort.__version__}); inputs:")
    for name, a in feeds.items():
        print(_describe(name, a))
    print("outputs:")
    for name, a in zip(names, results):
        print(_describe(name, a))
    if args.placement:
        from ..placement import placement

        try:
            print(placement(model, feeds, [args.provider], session_options=_session_options()).format())
        except UnicodeDecodeError as e:
            raise _refused(e) from None
    if args.compare and conv is not None:
        from .executor import Executor

        from .converter import RNG_MODES

        ws = Executor(net, blobs, rng=RNG_MODES[args.rng]).run(feeds)
        print("numpy executor (Caffe2 semantics) vs ORT:")
        for name, a in zip(names, results):
            ref = np.asarray(ws[name])
            if ref.dtype == bool and a.dtype == np.uint32:  # a bit-packed mask (--mask-format bits)
                from ..reference import pack_mask

                ref = pack_mask(ref)
            if ref.dtype.kind == "f" and a.size:
                with np.errstate(all="ignore"):
                    err = float(np.max(np.abs(a.astype(np.float64) - ref)))
                print(f"  {name}: largest |difference| {err:.3g} (largest |value| {float(np.max(np.abs(ref))):.3g})")
            else:
                print(f"  {name}: {'identical' if np.array_equal(a, ref) else 'DIFFERENT'}")
    return 0


def main(argv=None) -> int:
    parser = ArgumentParser(prog="caffe2-ort", description="Caffe2 net conversion commands of caffe2-ort")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(guarded(args.func)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
