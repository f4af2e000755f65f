"""``caffe2-ort train``: run a training-step model (or make one from a model and a loss) on batches.

Bad input (an unreadable model, an unknown loss, data arrays of the wrong name, shape or dtype, a
non-float parameter, an op without a gradient rule) prints one line ``error: ...`` and exits with 2.
"""

from __future__ import annotations

import sys
import time

import numpy as np

EXIT_USAGE = 2


class UsageError(Exception):
    pass


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="a training-step model, or a model plus --loss to make one")
    p.add_argument("--data", required=True, metavar="batches.npz",
                   help="arrays named like the fed inputs, with a leading batch-index axis (or one batch reused)")
    p.add_argument("--loss", help="the loss tensor (makes a training-step model from MODEL)")
    p.add_argument("--params", nargs="+", help="initializers to train (default: every float one with a gradient)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "momentum", "nesterov", "adagrad", "adam"])
    p.add_argument("--lr", type=float, default=0.01, help="base learning rate (positive; default 0.01)")
    p.add_argument("--momentum", type=float, help="momentum / nesterov: the momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-policy", default="fixed", choices=["fixed", "step", "exp", "inv", "multistep"])
    p.add_argument("--gamma", type=float)
    p.add_argument("--stepsize", type=int)
    p.add_argument("--stepsizes", type=int, nargs="+")
    p.add_argument("--power", type=float)
    p.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    p.add_argument("--cuda", action="store_true", help="run on the CUDA execution provider")
    p.add_argument("--plot", metavar="loss.png", help="write a loss-curve PNG (needs matplotlib: caffe2-ort[plot])")
    p.add_argument("--export", metavar="trained.onnx", help="write the inference model with the trained weights")
    p.add_argument("--save", metavar="step.onnx", help="write the training-step model (with its initial state)")
    p.add_argument("--mask-format", choices=("bool", "bits"),
                   help="turn the model's ai.caffe2 dropout pairs into bool masks (Dropout/DropoutGrad) or bit-packed "
                        "ones (BitmaskDropout/BitmaskDropoutGrad, 8x smaller; the same steps); default: as they are")


def _load_model(path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(path)
    except (DecodeError, ValueError) as e:
        raise UsageError(f"{path}: not an ONNX model ({' '.join(str(e).split()) or type(e).__name__})") from None


def _training_model(model, args):
    from . import training as T

    if T.is_training_model(model):
        given = [f for f in ("loss", "params") if getattr(args, f)]
        if given:
            raise UsageError(f"{args.model} is a training-step model already: --{given[0]} does not apply")
        if args.mask_format is not None:
            from .graph import set_mask_format

            return set_mask_format(model, args.mask_format)
        return model
    if not args.loss:
        raise UsageError(f"{args.model} is not a training-step model: give --loss NAME to make one")
    opt = {}
    if args.momentum is not None:
        if args.optimizer not in ("momentum", "nesterov"):
            raise UsageError(f"--momentum applies to the momentum and nesterov optimizers, not {args.optimizer}")
        opt["momentum"] = args.momentum
    lr_args = {k: getattr(args, k) for k in ("gamma", "stepsize", "stepsizes", "power") if getattr(args, k) is not None}
    return T.make_training_model(model, args.loss, args.params, args.optimizer, args.lr, lr_policy=args.lr_policy,
                                 lr_args=lr_args, weight_decay=args.weight_decay, mask_format=args.mask_format, **opt)


def _batches(path, sess):
    """{input: array of batches} and the batch count; every check a user can fail says what was expected."""
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read ({e})") from None
    if not hasattr(data, "files"):
        raise UsageError(f"{path}: not an .npz archive of named arrays")
    fed = sess.fed
    extra = sorted(set(data.files) - set(fed))
    if extra:
        raise UsageError(f"{path}: array(s) {', '.join(extra)} name no fed input (the model is fed {', '.join(fed)})")
    out, counts = {}, {}
    for name in fed:
        if name not in data.files:
            raise UsageError(f"{path}: no array {name!r} (the model is fed {', '.join(fed)})")
        arr = data[name]
        meta = sess.input_meta[name]
        want = _np_type(meta.type)
        if arr.dtype != want:
            raise UsageError(f"{path}: array {name!r} is {arr.dtype}, the input is {want}")
        shape = [d if isinstance(d, int) else None for d in meta.shape]

        def fits(s):
            return len(s) == len(shape) and all(w is None or w == v for w, v in zip(shape, s))

        if fits(arr.shape):
            out[name] = arr[None]
        elif arr.ndim == len(shape) + 1 and fits(arr.shape[1:]):
            out[name] = arr
            counts[name] = arr.shape[0]
        else:
            dims = ",".join("?" if d is None else str(d) for d in shape)
            raise UsageError(f"{path}: array {name!r} has shape {list(arr.shape)}; expected [{dims}] or [batches,{dims}]")
    if len(set(counts.values())) > 1:
        raise UsageError(f"{path}: arrays hold different batch counts: {counts}")
    return out, max(counts.values(), default=1)


def _np_type(ort_type):
    kinds = {"float": np.float32, "double": np.float64, "float16": np.float16, "int64": np.int64, "int32": np.int32,
             "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "int16": np.int16}
    inner = ort_type[len("tensor("):-1] if ort_type.startswith("tensor(") else ort_type
    return np.dtype(kinds.get(inner, np.float32))


def _progress(k, n, loss, rate, tty, out):
    if tty:
        width = 30
        filled = int(width * k / n)
        out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] step {k}/{n}  loss {loss:.6g}  {rate:.2f} steps/s")
        if k == n:
            out.write("\n")
        out.flush()
    else:
        print(f"step {k}/{n} loss {loss:.6g} {rate:.2f} steps/s", file=out, flush=True)


def _plotter(path):
    if not path:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'caffe2-ort[plot]'") from None

    def plot(losses):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(1, len(losses) + 1), losses)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("training loss")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    return plot


def run(args) -> int:
    try:
        return _run(args)
    except (UsageError, ValueError, NotImplementedError, OSError) as e:
        msg = " ".join(str(e).split())
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.filename}: {e.strerror or msg}"
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE


def _run(args) -> int:
    import onnx

    from . import training as T

    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    plot = _plotter(args.plot)
    model = _training_model(_load_model(args.model), args)
    if args.save:
        onnx.save(model, args.save)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.cuda else None
    sess = T.TrainingSession(model, providers=providers)
    batches, count = _batches(args.data, sess)
    loss_name = sess.loss
    tty = sys.stdout.isatty()
    losses = []
    start = time.perf_counter()
    for k in range(args.steps):
        feeds = {name: arr[k % len(arr)] for name, arr in batches.items()}
        out = sess.step(feeds)
        losses.append(float(np.asarray(out[loss_name]).reshape(-1)[0]))
        _progress(k + 1, args.steps, losses[-1], (k + 1) / (time.perf_counter() - start), tty, sys.stdout)
    print(f"trained {args.steps} step(s) on {count} batch(es): loss {losses[0]:.6g} -> {losses[-1]:.6g}")
    if plot:
        plot(losses)
        print(f"wrote {args.plot}")
    if args.export:
        sess.export(args.export)
        print(f"wrote {args.export}")
    return 0
