"""Limits on what a file may make the tools allocate, and exact shape arithmetic.

Caffe2 files *claim* sizes: a 100-byte init_net can ask ``ConstantFill`` for a ``[100000, 100000]``
tensor, value_info can give an input ``[1, 3, 100000, 100000]``, a .npy header can claim 10^12
elements. Every allocation whose size comes from such a claim goes through a :class:`Budget` first,
which raises :class:`SizeLimitError` (naming the blob and the size) before any memory is taken.

The limit applies to each tensor and to the sum of the tensors one command makes from its inputs
(weights, fills, random inputs). It is :data:`DEFAULT_MAX_BYTES` unless the caller passes another, or
the environment sets ``CAFFE2_ORT_MAX_BYTES``; the command line's ``--max-bytes`` overrides both.
Sizes take the suffixes K, M, G, T (powers of 1024).

Shape arithmetic is done in Python integers (never a wrapping int64), and every dimension must fit
ONNX's int64 dims.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import numpy as np

from .errors import Caffe2Error, NetDefFormatError

DEFAULT_MAX_BYTES = 2 << 30
ENV_MAX_BYTES = "CAFFE2_ORT_MAX_BYTES"
INT64_MAX = (1 << 63) - 1
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeLimitError(Caffe2Error):
    """A tensor (or a file) larger than the size budget."""


def parse_size(text: str, what: str = "size") -> int:
    """``"4096"``, ``"512M"``, ``"2G"``, ``"1.5G"`` -> bytes (K/M/G/T are powers of 1024; a trailing B or iB is allowed)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m or len(m.group(1)) > 30:
        raise Caffe2Error(f"{what} {text!r}: expected a number of bytes, optionally with K, M, G or T (e.g. 8G)")
    number, unit = m.group(1), _UNITS[m.group(2).upper()]
    return int(float(number) * unit) if "." in number else int(number) * unit


def format_bytes(n: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit[0]]
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def default_max_bytes() -> int:
    env = os.environ.get(ENV_MAX_BYTES)
    return parse_size(env, ENV_MAX_BYTES) if env else DEFAULT_MAX_BYTES


def numel(shape) -> int:
    """The exact element count of a shape (Python integers: no int64 wrap-around)."""
    return math.prod(int(d) for d in shape)


def check_shape(what: str, shape, error=Caffe2Error) -> tuple:
    """``shape`` as a tuple of Python ints, each 0 <= d <= 2^63 - 1 (ONNX's int64 dims); else ``error``."""
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise error(f"{what}: dimension {d!r} in shape {_short(shape)} is not an integer")
        d = int(d)
        if d < 0:
            raise error(f"{what}: negative dimension {d} in shape {_short(shape)}")
        if d > INT64_MAX:
            raise error(f"{what}: dimension {_short_int(d)} in shape {_short(shape)} does not fit int64")
        out.append(d)
    return tuple(out)


def _short_int(d: int) -> str:
    s = str(d)
    return s if len(s) <= 24 else f"{s[:8]}...({len(s)} digits)"


def _short(shape) -> str:
    items = list(shape)
    text = "[" + ", ".join(_short_int(d) if isinstance(d, int) else repr(d) for d in items[:8])
    return text + (", ...]" if len(items) > 8 else "]")


class Budget:
    """The bytes one command may allocate from sizes its input files claim."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes <= 0:
            raise Caffe2Error(f"the size limit must be positive, not {self.max_bytes}")
        self.used = 0

    @classmethod
    def of(cls, budget) -> "Budget":
        """A Budget from a Budget (shared), a number of bytes, or None (the default limit)."""
        return budget if isinstance(budget, Budget) else cls(budget)

    def _hint(self) -> str:
        return f"over the {format_bytes(self.max_bytes)} limit (--max-bytes or {ENV_MAX_BYTES} raises it)"

    def check(self, what: str, shape, dtype, *, claim: bool = True) -> tuple:
        """Check a tensor of ``shape`` and ``dtype`` before it is allocated; returns the shape as ints.

        ``claim``: count it against the command's total too (False for sizes that are checked but not
        allocated here, such as intermediate blobs of a converted graph)."""
        shape = check_shape(what, shape, SizeLimitError)
        itemsize = 8 if np.dtype(dtype) == object else np.dtype(dtype).itemsize
        nbytes = numel(shape) * max(itemsize, 1)
        if numel(d for d in shape if d) * max(itemsize, 1) > INT64_MAX:  # numpy and ORT refuse it, even when empty
            raise SizeLimitError(f"{what}: shape {_short(shape)} {np.dtype(dtype)} is too large to describe, even with no elements")
        if nbytes > self.max_bytes:
            raise SizeLimitError(f"{what}: shape {_short(shape)} {np.dtype(dtype)} is {format_bytes(nbytes)}, {self._hint()}")
        if claim:
            if self.used + nbytes > self.max_bytes:
                raise SizeLimitError(
                    f"{what}: shape {_short(shape)} {np.dtype(dtype)} ({format_bytes(nbytes)}) brings the total to "
                    f"{format_bytes(self.used + nbytes)}, {self._hint()}"
                )
            self.used += nbytes
        return shape

    def read_file(self, path, what: str = "") -> bytes:
        """A file's bytes, refusing devices (``/dev/zero``) and anything larger than the limit before reading it all."""
        p = Path(path)
        label = what or str(p)
        try:
            st = os.stat(p)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device"
                raise NetDefFormatError(f"{label}: is {kind}, not a file")
            if stat.S_ISREG(st.st_mode) and st.st_size > self.max_bytes:
                raise SizeLimitError(f"{label}: the file is {format_bytes(st.st_size)}, {self._hint()}")
            with open(p, "rb") as f:
                data = f.read(self.max_bytes + 1)  # a pipe or a growing file: never more than the limit
        except OSError as e:
            raise NetDefFormatError(f"{label}: cannot read ({e.strerror or e})") from None
        if len(data) > self.max_bytes:
            raise SizeLimitError(f"{label}: more than {format_bytes(self.max_bytes)} of data, {self._hint()}")
        return data
