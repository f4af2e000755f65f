"""A numpy reference of ai.caffe2 Dropout and DropoutGrad that follows the RNG contract bit for bit.

The contract (see README, "The RNG contract"): element ``i`` (row-major) of a mask drawn at ``base``
uses Philox4x32-10 block ``b = base + i // 4`` with counter ``(b mod 2**32, b // 2**32, 0, 0)`` and
key ``(seed mod 2**32, seed // 2**32 mod 2**32)``, and takes output word ``i % 4``. The element is
kept iff that word is >= ``min(2**32, floor(ratio * 2**32))``. Every function here is vectorised.
"""

from __future__ import annotations

import math

import numpy as np

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_U32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)

try:  # onnx depends on ml_dtypes, which gives numpy a bfloat16
    import ml_dtypes

    bfloat16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    bfloat16 = None

SUPPORTED_DTYPES = tuple(
    d for d in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), bfloat16) if d is not None
)


def philox4x32_10(counter, key):
    """Philox4x32-10 on many counters at once.

    ``counter``: array-like of shape (4, n) (or (4,)) of uint32 words; ``key``: two uint32 words.
    Returns a uint32 array of the same shape.
    """
    c = np.asarray(counter, dtype=np.uint64)
    squeeze = c.ndim == 1
    if squeeze:
        c = c[:, None]
    c0, c1, c2, c3 = (c[i].copy() for i in range(4))
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for rnd in range(10):
        if rnd:
            k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
            k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT32) ^ c1 ^ np.uint64(k0),
            p1 & _U32,
            (p0 >> _SHIFT32) ^ c3 ^ np.uint64(k1),
            p0 & _U32,
        )
    out = np.stack([c0, c1, c2, c3]).astype(np.uint32)
    return out[:, 0] if squeeze else out


def seed_to_key(seed: int):
    """The Philox key for a seed attribute (an int64 read as uint64)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return (s & 0xFFFFFFFF, s >> 32)


def drop_threshold(ratio: float) -> int:
    """min(2**32, floor(ratio * 2**32)), with ratio rounded to float32 first, as the kernels see it."""
    r = float(np.float32(ratio))
    return min(1 << 32, math.floor(r * 4294967296.0))


def drop_scale(ratio: float) -> np.float32:
    """1 / (1 - ratio) computed in double and rounded to float32; 0 when ratio = 1."""
    r = float(np.float32(ratio))
    if r >= 1.0:
        return np.float32(0.0)
    return np.float32(1.0 / (1.0 - r))


def blocks_for(numel: int) -> int:
    """Philox blocks one training run over ``numel`` elements consumes: ceil(numel / 4)."""
    return (int(numel) + 3) // 4


def consumes_rng(ratio: float, is_test: int) -> bool:
    """Test mode and ratio = 0 consume nothing from the node's counter."""
    return not is_test and float(np.float32(ratio)) != 0.0


def random_words(seed: int, base: int, numel: int) -> np.ndarray:
    """The uint32 Philox word that element i of a mask drawn at ``base`` uses, for i < numel."""
    numel = int(numel)
    nblocks = blocks_for(numel)
    if nblocks == 0:
        return np.zeros(0, dtype=np.uint32)
    blocks = np.uint64(int(base) & 0xFFFFFFFFFFFFFFFF) + np.arange(nblocks, dtype=np.uint64)
    zeros = np.zeros(nblocks, dtype=np.uint64)
    words = philox4x32_10(np.stack([blocks & _U32, blocks >> _SHIFT32, zeros, zeros]), seed_to_key(seed))
    return words.T.reshape(-1)[:numel]


def keep_mask(seed: int, base: int, shape, ratio: float) -> np.ndarray:
    """The bool keep-mask (True = kept) of a training run over a tensor of ``shape``."""
    shape = tuple(int(d) for d in shape)
    numel = int(np.prod(shape, dtype=np.int64))
    threshold = drop_threshold(ratio)
    if threshold == 0:
        return np.ones(shape, dtype=bool)
    if threshold >= 1 << 32:
        return np.zeros(shape, dtype=bool)
    return (random_words(seed, base, numel) >= np.uint32(threshold)).reshape(shape)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _check_dtype(dtype: np.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"ai.caffe2 Dropout: unsupported element type {dtype}; supported: {names}")


def apply_mask(x: np.ndarray, keep: np.ndarray, ratio: float) -> np.ndarray:
    """Y = (X * scale) * m in float32 (float64 for float64 inputs), rounded once to X's type."""
    x = np.asarray(x)
    _check_dtype(x.dtype)
    ct = _compute_dtype(x.dtype)
    scale = ct.type(drop_scale(ratio))
    # inf * 0 = NaN and overflow to inf are part of Caffe2's arithmetic, not accidents to warn about
    with np.errstate(invalid="ignore", over="ignore"):
        y = (x.astype(ct) * scale) * keep.astype(ct)
        return y.astype(x.dtype)


def dropout(x, ratio=0.5, is_test=0, seed=0, base=0):
    """Caffe2 Dropout. Returns (Y, mask); the mask is all true in test mode."""
    x = np.asarray(x)
    _check_dtype(x.dtype)
    if is_test:
        return x.copy(), np.ones(x.shape, dtype=bool)
    keep = keep_mask(seed, base, x.shape, ratio)
    return apply_mask(x, keep, ratio), keep


def dropout_grad(dy, mask=None, ratio=0.5, is_test=0):
    """Caffe2 DropoutGrad: dX = dY in test mode, else (dY * m) * scale."""
    dy = np.asarray(dy)
    _check_dtype(dy.dtype)
    if is_test:
        return dy.copy()
    if mask is None:
        raise ValueError("ai.caffe2 DropoutGrad: training mode (is_test=0) needs the mask input")
    mask = np.asarray(mask)
    if mask.size != dy.size:
        raise ValueError(
            f"ai.caffe2 DropoutGrad: mask has {mask.size} elements but dY has {dy.size}"
        )
    ct = _compute_dtype(dy.dtype)
    scale = ct.type(drop_scale(ratio))
    with np.errstate(invalid="ignore", over="ignore"):
        dx = (dy.astype(ct) * (mask.reshape(dy.shape) != 0).astype(ct)) * scale
        return dx.astype(dy.dtype)


class DropoutStream:
    """The per-node counter of the RNG contract: run k of a fresh session draws at base sum of earlier runs."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.counter = 0

    def run(self, x, ratio=0.5, is_test=0):
        x = np.asarray(x)
        base = self.counter
        if consumes_rng(ratio, is_test):
            self.counter += blocks_for(x.size)
        return dropout(x, ratio=ratio, is_test=is_test, seed=self.seed, base=base)
