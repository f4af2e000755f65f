"""Errors of the Caffe2 reader, converter, synthesiser and executor.

Every message is one line and names the file, op or blob at fault, so the command line can print
``error: <message>`` and exit with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class Caffe2Error(Exception):
    """Base class: a Caffe2 net or file the tools cannot handle. ``str(e)`` is a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


class NetDefFormatError(Caffe2Error):
    """A file that is not a readable NetDef / TensorProtos (truncated, foreign, corrupt)."""


class UnsupportedOpsError(Caffe2Error):
    """Ops the converter or executor has no mapping for; ``counts`` maps each kind to how many."""

    def __init__(self, counts: dict, where: str = "predict_net"):
        self.counts = dict(counts)
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(self.counts.items()))
        total = sum(self.counts.values())
        super().__init__(f"{where} has {total} unsupported op(s) of {len(self.counts)} kind(s): {listed}")


class MissingWeightError(Caffe2Error):
    """A weight the predict net reads that no init_net op fills."""


class MissingValueInfoError(Caffe2Error):
    """A data input with no value info (no type and shape)."""


class FillError(Caffe2Error):
    """An init_net fill op that cannot be evaluated (value count vs shape, bad dtype, ...)."""


class ArgumentError(Caffe2Error):
    """An op argument of the wrong kind (e.g. a string where Caffe2 reads an int)."""


class ShapeError(Caffe2Error):
    """Shapes that do not fit an op's Caffe2 rules."""
