"""A numpy reference of ai.caffe2 Dropout and DropoutGrad that follows both mask streams bit for bit,
and of BitmaskDropout and BitmaskDropoutGrad (the same draw, the mask packed 32 keep bits a word by
:func:`pack_mask`, LSB first, row-major).

``rng = "philox"`` (or ""; see README, "The RNG contract"): element ``i`` (row-major) of a mask drawn
at ``base`` uses Philox4x32-10 block ``b = base + i // 4`` with counter ``(b mod 2**32, b // 2**32, 0,
0)`` and key ``(seed mod 2**32, seed // 2**32 mod 2**32)``, and takes output word ``i % 4``. The
element is kept iff that word is >= ``min(2**32, floor(ratio * 2**32))``.

``rng = "caffe2_mt19937"`` (real Caffe2's CPU stream): one MT19937 seeded with ``seed mod 2**32``
(init_genrand; numpy's MT19937 with legacy seeding, as behind ``np.random.RandomState(seed)``, yields
the same words); element ``i`` of a run takes the next two words ``hi, lo``, ``u = (((hi << 32) | lo)
& (2**53 - 1)) * 2**-53``, and is kept iff ``u < 1 - ratio`` (ratio as float32, in double). Training
runs consume two words per element, ratio 0 included; test mode draws nothing. Here ``base`` counts
the elements drawn before (2 words each).

Attribute values are checked as the native kernels check them (:mod:`caffe2_ort.opdefs`), with the
same messages. Every function here is vectorised.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from . import opdefs as _defs

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


def mt19937(seed: int) -> np.random.MT19937:
    """A numpy MT19937 in the state of init_genrand(seed mod 2**32), Caffe2's (and std::mt19937's) seeding."""
    bg = np.random.MT19937(0)
    bg.state = np.random.RandomState(int(seed) & 0xFFFFFFFF).get_state(legacy=False)
    return bg


def mt19937_keep(words: np.ndarray, ratio: float) -> np.ndarray:
    """Caffe2's keep decisions from 2 n 32-bit words (hi, lo per element), literally as Caffe2 computes
    them: u = ((hi << 32 | lo) & (2**53 - 1)) * 2**-53 in double, kept iff u < 1 - (double)ratio."""
    w = np.asarray(words, dtype=np.uint64).reshape(-1, 2)
    v = ((w[:, 0] << _SHIFT32) | w[:, 1]) & np.uint64((1 << 53) - 1)
    u = v.astype(np.float64) * 2.0**-53  # exact: v < 2**53
    return u < 1.0 - float(np.float32(ratio))


def mt19937_keep_mask(seed: int, base: int, shape, ratio: float) -> np.ndarray:
    """The keep-mask of a caffe2_mt19937 training run after ``base`` elements were drawn."""
    shape = tuple(int(d) for d in shape)
    numel = int(np.prod(shape, dtype=np.int64))
    bg = mt19937(seed)
    skip = 2 * int(base)
    while skip:
        step = min(skip, 1 << 24)
        bg.random_raw(step)
        skip -= step
    return mt19937_keep(bg.random_raw(2 * numel), ratio).reshape(shape)


_RATIO = _defs.DROPOUT.attr("ratio").default
_IS_TEST = _defs.DROPOUT.attr("is_test").default
_RNG = _defs.DROPOUT.attr("rng").default


def check_attributes(op: str, **values) -> dict:
    """Validates attributes as the native kernel does at session creation, with its messages;
    returns them with the defaults filled in."""
    return _defs.OPS[op].validate(values)


def pack_mask(keep) -> np.ndarray:
    """A bool keep-mask as BitmaskDropout's mask: uint32 words, ceil(numel / 32) of them; bit j (LSB = 0)
    of word w is element 32 w + j (row-major); bits past numel are 0."""
    flat = np.asarray(keep, dtype=bool).reshape(-1)
    words = _defs.bitmask_words(flat.size)
    packed = np.zeros(4 * words, dtype=np.uint8)
    packed[: (flat.size + 7) // 8] = np.packbits(flat, bitorder="little")
    return packed.view("<u4").astype(np.uint32)


def unpack_mask(words, shape) -> np.ndarray:
    """The bool keep-mask of ``shape`` that BitmaskDropout's ``words`` hold (padding bits not read)."""
    shape = tuple(int(d) for d in shape)
    numel = int(np.prod(shape, dtype=np.int64))
    w = np.ascontiguousarray(np.asarray(words).reshape(-1), dtype="<u4")
    return np.unpackbits(w.view(np.uint8), count=numel, bitorder="little").astype(bool).reshape(shape)


def dropout(x, ratio=_RATIO, is_test=_IS_TEST, seed=0, base=0, rng=_RNG, _op="Dropout"):
    """Caffe2 Dropout. Returns (Y, mask); the mask is all true in test mode. ``base``: the Philox block
    counter, or under rng="caffe2_mt19937" the number of elements drawn before. ``seed`` is 0 unless
    given (this function is stateless, so a reproducible default); ``seed=None`` draws a fresh one."""
    a = check_attributes(_op, ratio=ratio, is_test=is_test, seed=seed, rng=rng)
    if a["seed"] is None:  # as a seedless node: a fresh 64-bit seed
        a["seed"] = _defs.fresh_seed()
    x = np.asarray(x)
    _check_dtype(x.dtype)
    if a["is_test"]:
        return x.copy(), np.ones(x.shape, dtype=bool)
    if a["rng"] == _defs.RNG_CAFFE2:
        keep = mt19937_keep_mask(a["seed"], base, x.shape, a["ratio"])
    else:
        keep = keep_mask(a["seed"], base, x.shape, a["ratio"])
    return apply_mask(x, keep, a["ratio"]), keep


def bitmask_dropout(x, ratio=_RATIO, is_test=_IS_TEST, seed=0, base=0, rng=_RNG):
    """BitmaskDropout: :func:`dropout`'s (Y, mask) with the mask packed by :func:`pack_mask`."""
    y, keep = dropout(x, ratio=ratio, is_test=is_test, seed=seed, base=base, rng=rng, _op="BitmaskDropout")
    return y, pack_mask(keep)


def dropout_grad(dy, mask=None, ratio=_RATIO, is_test=_IS_TEST):
    """Caffe2 DropoutGrad: dX = dY in test mode, else (dY * m) * scale."""
    return _dropout_grad("DropoutGrad", dy, mask, ratio, is_test)


def bitmask_dropout_grad(dy, mask=None, ratio=_RATIO, is_test=_IS_TEST):
    """BitmaskDropoutGrad: dX = dY in test mode, else DropoutGrad's dX for the unpacked ``mask`` words."""
    return _dropout_grad("BitmaskDropoutGrad", dy, mask, ratio, is_test)


def _dropout_grad(op, dy, mask, ratio, is_test):
    """Either gradient op; they differ only in the mask's form (X-shaped bool, or uint32 words)."""
    a = check_attributes(op, ratio=ratio, is_test=is_test)
    label = _defs.where(op)
    dy = np.asarray(dy)
    _check_dtype(dy.dtype)
    if a["is_test"]:
        return dy.copy()
    if mask is None:
        raise ValueError(_defs.mask_required_message(label))
    mask = np.asarray(mask)
    if _defs.mask_format_of(op) == "bits":
        if mask.size != _defs.bitmask_words(dy.size):
            raise ValueError(_defs.bitmask_count_message(label, mask.size, dy.size))
        mask = unpack_mask(mask, dy.shape)
    elif mask.size != dy.size:
        raise ValueError(_defs.mask_count_message(label, mask.size, dy.size))
    return _apply_grad(dy, mask, a["ratio"])


def _apply_grad(dy, mask, ratio):
    """(dY * m) * scale in float32 (float64 for float64), rounded once: dY * 0 first, so never NaN from scale."""
    ct = _compute_dtype(dy.dtype)
    scale = ct.type(drop_scale(ratio))
    with np.errstate(invalid="ignore", over="ignore"):
        dx = (dy.astype(ct) * (mask.reshape(dy.shape) != 0).astype(ct)) * scale
        return dx.astype(dy.dtype)


class DropoutStream:
    """One Dropout node's stream, like a native kernel instance: run k of a fresh stream gives the
    mask of run k of a fresh session. ``seed=None``: a fresh random seed (:func:`opdefs.fresh_seed`).

    ``counter``: under rng="philox" the Philox block counter (run k draws at the sum of the earlier
    runs' ceil(numel/4)); under rng="caffe2_mt19937" the 32-bit words drawn so far (2 per element of
    every training run). Runs are serialised, so concurrent callers take consecutive segments.
    """

    def __init__(self, seed=None, rng=_RNG):
        self.seed = _defs.fresh_seed() if seed is None else int(seed)
        self.rng = check_attributes("Dropout", seed=self.seed, rng=rng)["rng"]
        self.counter = 0
        self._lock = threading.Lock()
        self._mt = mt19937(self.seed) if self.rng == _defs.RNG_CAFFE2 else None

    def draw(self, shape, ratio=_RATIO, is_test=_IS_TEST):
        """The keep-mask of the next run (all true in test mode, which draws nothing)."""
        a = check_attributes("Dropout", ratio=ratio, is_test=is_test)
        shape = tuple(int(d) for d in shape)
        numel = int(np.prod(shape, dtype=np.int64))
        if a["is_test"]:
            return np.ones(shape, dtype=bool)
        with self._lock:
            if self._mt is not None:
                words = self._mt.random_raw(2 * numel)
                self.counter += 2 * numel
                return mt19937_keep(words, a["ratio"]).reshape(shape)
            base = self.counter
            if consumes_rng(a["ratio"], 0):
                self.counter += blocks_for(numel)
        return keep_mask(self.seed, base, shape, a["ratio"])

    def run(self, x, ratio=_RATIO, is_test=_IS_TEST):
        """(Y, mask) of the next run."""
        x = np.asarray(x)
        _check_dtype(x.dtype)
        if is_test:
            check_attributes("Dropout", ratio=ratio, is_test=is_test)
            return x.copy(), np.ones(x.shape, dtype=bool)
        keep = self.draw(x.shape, ratio=ratio, is_test=is_test)
        return apply_mask(x, keep, ratio), keep
