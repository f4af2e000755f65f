"""Caffe2's CPU random fills (XavierFill, MSRAFill, GaussianFill, UniformFill), drawn as real Caffe2
draws them, so an init net with random fills gives Caffe2's own initial weights.

Measured against real Caffe2 (the parity suite checks it): each fill op instance owns an MT19937
seeded with its ``device_option.random_seed`` (the net's when the op has none) by the standard
init_genrand. A float uniform in [a, b) takes the low 24 bits of one 32-bit word:
``u = (w & 0xFFFFFF) * 2^-24`` and ``u * (b - a) + a`` in float32 (bit-exact). A gaussian is
Box-Muller on pairs of such uniforms, ``r cos(theta)`` then ``r sin(theta)`` (to float32 rounding).
XavierFill is U(-s, s) with s = sqrt(3 / fan_in), fan_in = numel / shape[0]; MSRAFill is
N(0, sqrt(2 / fan_out)), fan_out = numel / shape[1].
"""

from __future__ import annotations

import numpy as np

from .errors import FillError
from .limits import Budget, check_shape
from .netdef import Args

RANDOM_FILLS = ("XavierFill", "MSRAFill", "GaussianFill", "UniformFill")


def op_seed(op, net=None):
    """The seed Caffe2 gives the op's generator: its own device_option.random_seed, else the net's;
    None when neither sets one (Caffe2 then draws a fresh seed)."""
    for owner in (op, net):
        if owner is not None and owner.HasField("device_option") and owner.device_option.HasField("random_seed"):
            return int(owner.device_option.random_seed)
    return None


def _words(seed, count):
    bits = np.random.MT19937()
    bits._legacy_seeding(int(seed) % 2**32)  # init_genrand, as std::mt19937 and numpy's RandomState
    return bits.random_raw(count).astype(np.uint64) if count else np.zeros(0, np.uint64)


def _uniform(words, a, b):
    f = np.float32
    a, b = f(a), f(b)
    u = (words & np.uint64(0xFFFFFF)).astype(np.float32) * f(2.0**-24)
    return u * (b - a) + a


def _gaussian(seed, n, mean, std):
    pairs = (n + 1) // 2
    u = _uniform(_words(seed, 2 * pairs), 0.0, 1.0)
    u1, u2 = u[0::2], u[1::2]
    f = np.float32
    r = np.sqrt(f(-2.0) * np.log(f(1.0) - u2))
    theta = f(2.0 * np.pi) * u1
    z = np.empty(2 * pairs, np.float32)
    z[0::2], z[1::2] = r * np.cos(theta), r * np.sin(theta)
    return (z[:n] * f(std) + f(mean)).astype(np.float32)


def random_fill(op, seed, desc, budget=None):
    """The float32 tensor a random fill op produces with its generator seeded by ``seed``. Only the
    ``shape`` form is supported (no input-shaped fills); errors are FillError naming ``desc``."""
    if op.type not in RANDOM_FILLS:
        raise FillError(f"{desc}: {op.type} is not a random fill")
    args = Args(op, desc)
    if len(op.input) or len(op.output) != 1 or not args.has("shape"):
        raise FillError(f"{desc}: only a 'shape' argument is supported for {op.type} (one output, no input-shaped fills)")
    shape = check_shape(f"{desc}: shape", args.ints("shape"), FillError)
    Budget.of(budget).check(desc, shape, np.float32)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1  # the budget bounded it
    if op.type == "UniformFill":
        out = _uniform(_words(seed, n), args.float("min", 0.0), args.float("max", 1.0))
    elif op.type == "XavierFill":
        fan_in = n // shape[0] if shape and shape[0] else 0
        scale = np.sqrt(np.float32(3.0) / np.float32(fan_in))
        out = _uniform(_words(seed, n), -scale, scale)
    elif op.type == "MSRAFill":
        fan_out = n // shape[1] if len(shape) > 1 and shape[1] else 0
        out = _gaussian(seed, n, 0.0, np.sqrt(np.float32(2.0) / np.float32(fan_out)))
    else:
        out = _gaussian(seed, n, args.float("mean", 0.0), args.float("std", 1.0))
    return out.reshape(shape)
