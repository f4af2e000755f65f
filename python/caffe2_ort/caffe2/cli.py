"""The converter's subcommands of ``caffe2-ort``: ``convert``, ``synth-init`` and ``run``.

``add_commands(subparsers)`` adds them to an argparse parser (the package's ``caffe2-ort`` entry point
calls it); ``python -m caffe2_ort.caffe2.cli ...`` runs them on their own. Every command turns the
errors a user can cause (bad files, missing weights or value info, unsupported ops) into one line
``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import Caffe2Error, NetDefFormatError

EXIT_USAGE = 2


def parse_input_spec(spec: str):
    """``NAME:d0,d1,...`` -> (name, shape). The name may contain ':' (the last one splits)."""
    name, sep, dims = spec.rpartition(":")
    if not sep or not name:
        raise Caffe2Error(f"--input {spec!r}: expected NAME:d0,d1,... (e.g. data:1,3,224,224)")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise Caffe2Error(f"--input {spec!r}: dims must be integers separated by commas") from None
    if any(d < 0 for d in shape):
        raise Caffe2Error(f"--input {spec!r}: negative dimension")
    return name, shape


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


def _add_convert_args(p):
    p.add_argument("--dropout", choices=("caffe2", "onnx"), default="caffe2",
                   help="caffe2: ai.caffe2 Dropout/DropoutGrad nodes (default); onnx: standard ONNX ops only")  # fmt: skip
    p.add_argument("--rng", choices=("philox", "caffe2"), default="philox",
                   help="mask stream of the converted Dropouts: philox (default) or caffe2 (rng=caffe2_mt19937, "
                        "real Caffe2's own CPU masks)")  # fmt: skip
    p.add_argument("--opset", type=int, default=None, help="ai.onnx opset (default 17)")
    p.add_argument("--ir-version", type=int, default=None, help="ONNX IR version of the model (default 8)")
    p.add_argument("--name", help="graph name (default: the NetDef's name, else 'caffe2_net')")


def add_commands(subparsers) -> None:
    """Add ``convert``, ``synth-init`` and ``run`` to an argparse ``add_subparsers()`` object."""
    p = subparsers.add_parser("convert", help="convert a Caffe2 predict_net (+ init_net, value_info) to ONNX")
    p.add_argument("predict_net", help="predict_net.pb or predict_net.pbtxt")
    _add_net_args(p)
    _add_convert_args(p)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    p.set_defaults(func=cmd_convert)

    p = subparsers.add_parser("synth-init", help="make a random init_net of consistent shapes for a predict_net")
    p.add_argument("predict_net")
    _add_net_args(p, with_init=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=16, help="output channels chosen for each Conv (default 16)")
    p.add_argument("--fc-width", type=int, default=32, help="output features chosen for each FC (default 32)")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and of synthesised weights")
    p.add_argument("--provider", default="CPUExecutionProvider", help="ORT execution provider (default CPU)")
    p.add_argument("--save-onnx", metavar="PATH", help="also write the converted model here")
    p.add_argument("--synth", action="store_true",
                   help="synthesise random weights even when an init_net.pb lies next to the predict net")  # fmt: skip
    p.add_argument("--compare", action="store_true",
                   help="also run the Caffe2 net in the numpy executor and print the largest difference")  # fmt: skip
    p.set_defaults(func=cmd_run)


def _guard(fn):
    def wrapped(args):
        try:
            return fn(args)
        except Caffe2Error as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as e:
            print(f"error: {e.filename or ''}: {e.strerror or e}".replace("error: : ", "error: "), file=sys.stderr)
            return EXIT_USAGE
        except Exception as e:  # ORT/onnx failures: still one line
            from .._library import LibraryNotFoundError

            if isinstance(e, LibraryNotFoundError):
                print(f"error: {e}", file=sys.stderr)
                return EXIT_USAGE
            if type(e).__module__.startswith(("onnxruntime", "onnx")):
                msg = " ".join(str(e).split())
                print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
                return EXIT_USAGE
            raise

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _load_common(args):
    from . import netdef

    net = netdef.read_netdef(args.predict_net if hasattr(args, "predict_net") else args.model)
    vi = netdef.read_value_info(args.value_info) if args.value_info else {}
    for name, shape in _input_shapes(args.input).items():
        vi[name] = (vi[name][0] if name in vi else np.dtype(np.float32), shape)
    return net, vi


def _convert_kwargs(args):
    from .converter import DEFAULT_IR_VERSION, DEFAULT_OPSET

    return dict(
        dropout=args.dropout,
        rng=args.rng,
        opset=args.opset or DEFAULT_OPSET,
        ir_version=args.ir_version or DEFAULT_IR_VERSION,
        name=args.name,
    )


def _summary(conv):
    kinds = Counter((n.domain + "::" if n.domain else "") + n.op_type for n in conv.model.graph.node)
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
    ins = ", ".join(f"{n}{list(s)}" for n, (_, s) in conv.inputs.items())
    return f"{len(conv.model.graph.node)} nodes ({ops}); inputs {ins}; outputs {', '.join(conv.outputs)}"


@_guard
def cmd_convert(args) -> int:
    import onnx

    from . import netdef
    from .converter import convert

    net, vi = _load_common(args)
    init = netdef.read_netdef(args.init) if args.init else None
    conv = convert(net, init, vi, **_convert_kwargs(args))
    onnx.save(conv.model, args.output)
    print(f"wrote {args.output}: {_summary(conv)}")
    for note in conv.notes:
        print(f"note: {note}")
    return 0


@_guard
def cmd_synth_init(args) -> int:
    from . import netdef
    from .synth import synthesize

    net, vi = _load_common(args)
    if not vi:
        raise Caffe2Error("synth-init needs the data inputs' shapes: --input NAME:d0,d1,... or --value-info")
    init, blobs = synthesize(net, vi, seed=args.seed, width=args.width, fc_width=args.fc_width, calibrate=not args.no_calibrate)
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
        v = a.astype(np.float64)
        line += f"  min {v.min():.6g} max {v.max():.6g} mean {v.mean():.6g}  first {_fmt_values(a)}"
    return line


def _random_inputs(specs, rng):
    out = {}
    for name, (dtype, shape) in specs.items():
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == bool:
            out[name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            out[name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            raise Caffe2Error(f"input {name!r}: cannot make random values of type {dtype}")
    return out


@_guard
def cmd_run(args) -> int:
    import onnx
    import onnxruntime as ort

    from .. import register
    from . import netdef
    from .converter import convert

    rng = np.random.default_rng(args.seed)
    conv = net = blobs = None
    path = Path(args.model)
    if path.suffix.lower() == ".onnx":
        try:
            model = onnx.load(str(path))
        except Exception as e:  # protobuf decode errors
            raise NetDefFormatError(f"{path}: not an ONNX model ({' '.join(str(e).split())})") from None
        from onnx import helper

        specs = {}
        overrides = _input_shapes(args.input)
        inits = {t.name for t in model.graph.initializer}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            shape = overrides.get(vi.name) or tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            if any(d < 0 for d in shape):
                raise Caffe2Error(f"input {vi.name!r} has a dynamic shape: give --input {vi.name}:d0,d1,...")
            specs[vi.name] = (helper.tensor_dtype_to_np_dtype(tt.elem_type), tuple(shape))
        if args.compare:
            raise Caffe2Error("--compare needs a Caffe2 predict_net, not an ONNX model")
    else:
        net, vi = _load_common(args)
        init_path = args.init
        beside = path.with_name("init_net.pb")
        if init_path is None and not args.synth and beside.is_file():
            init_path = beside
            print(f"using {beside} (found next to the predict net; --synth to use random weights instead)")
        if init_path:
            blobs = netdef.evaluate_init_net(netdef.read_netdef(init_path), skip=set(vi))
        else:
            from .synth import synthesize

            if not vi:
                raise Caffe2Error("no value info: give --value-info value_info.json or --input NAME:d0,d1,...")
            _, blobs = synthesize(net, vi, seed=args.seed)
            print(f"no --init given: synthesised random weights for {len(blobs)} blobs (seed {args.seed})")
        conv = convert(net, None, vi, init_blobs=blobs, **_convert_kwargs(args))
        model = conv.model
        specs = dict(conv.inputs)
        print(f"converted {path}: {_summary(conv)}")
        if args.save_onnx:
            onnx.save(model, args.save_onnx)
            print(f"wrote {args.save_onnx}")
    feeds = _random_inputs({k: v for k, v in specs.items()}, rng)
    for item in args.data:
        name, sep, file = item.partition("=")
        if not sep or name not in specs:
            raise Caffe2Error(f"--data {item!r}: expected NAME=FILE.npy with NAME one of {', '.join(specs)}")
        try:
            arr = np.load(file, allow_pickle=False)
        except (ValueError, EOFError) as e:  # not a .npy file, or a pickled array
            raise Caffe2Error(f"--data {item!r}: {file} is not a .npy array file ({e})") from None
        if arr.shape != tuple(specs[name][1]):
            raise Caffe2Error(f"--data {item!r}: shape {list(arr.shape)}, the model wants {list(specs[name][1])}")
        feeds[name] = arr.astype(specs[name][0])
    so = ort.SessionOptions()
    register(so)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=[args.provider])
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, feeds)
    print(f"ran on {sess.get_providers()[0]} (onnxruntime {ort.__version__}); inputs:")
    for name, a in feeds.items():
        print(_describe(name, a))
    print("outputs:")
    for name, a in zip(names, results):
        print(_describe(name, a))
    if args.compare and conv is not None:
        from .executor import Executor

        from .converter import RNG_MODES

        ws = Executor(net, blobs, rng=RNG_MODES[args.rng]).run(feeds)
        print("numpy executor (Caffe2 semantics) vs ORT:")
        for name, a in zip(names, results):
            ref = np.asarray(ws[name])
            if ref.dtype.kind == "f" and a.size:
                err = float(np.max(np.abs(a.astype(np.float64) - ref)))
                print(f"  {name}: largest |difference| {err:.3g} (largest |value| {float(np.max(np.abs(ref))):.3g})")
            else:
                print(f"  {name}: {'identical' if np.array_equal(a, ref) else 'DIFFERENT'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="caffe2-ort", description="Caffe2 net conversion commands of caffe2-ort")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
