"""The ``caffe2-ort`` command line: convert, synth-init, run, check, bench."""

from __future__ import annotations

import argparse
import sys


def _check(args) -> int:
    from .check import run_checks

    return 1 if run_checks() else 0


def _bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def _train(args) -> int:
    from .train_cli import run

    return run(args)


def _converter_cli():
    try:
        from .caffe2 import cli
    except ImportError:  # the converter package is optional at import time
        return None
    return cli


def build_parser() -> argparse.ArgumentParser:
    conv = _converter_cli()
    parser = (conv.ArgumentParser if conv else argparse.ArgumentParser)(
        prog="caffe2-ort",
        description="Legacy Caffe2 Dropout/DropoutGrad as ONNX Runtime custom ops, and a Caffe2 net converter.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    if conv is not None:
        conv.add_commands(sub)

    check = sub.add_parser("check", help="load the plugin in ONNX Runtime, run both ops, report versions and failures")
    check.add_argument("--verbose", action="store_true", help="print the traceback of each failed check")
    check.set_defaults(func=_check)

    from .train_cli import add_arguments as add_train_arguments

    train = sub.add_parser("train", help="train a model in ONNX Runtime: a training-step model, or a model plus a loss")
    add_train_arguments(train)
    train.set_defaults(func=_train)

    from .bench import add_arguments

    bench = sub.add_parser("bench", help="benchmark Dropout against a plain copy, ORT's Dropout and PyTorch")
    add_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    """Every command runs guarded: a failure is one ``error: ...`` line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    conv = _converter_cli()
    func = conv.guarded(args.func) if conv else args.func
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
