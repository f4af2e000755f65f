"""GPU checks of the CUDA kernels, driven through libcaffe2_ort_cuda_testing.so (no onnxruntime-gpu needed).

Run by tests/gpu/run_all.sh on a machine with a GPU and PyTorch:

  (a) the default engine against the numpy reference (caffe2_ort.reference): bit-identical masks and
      exact Y / dX for float32, float64, float16 and bfloat16; small and odd sizes, special values,
      unaligned pointers (the scalar path), in place, ratio 0 and 1, seeds and bases across the 32-bit
      word boundary; sizes up to 2^28 against a PyTorch re-implementation of the RNG contract (itself
      checked against the numpy reference first); one float16 run of 2^31 + 5 elements checked at
      sampled positions and at the end, for 64-bit indexing;
      the keep-bits kernel of rng = "caffe2_mt19937" fed with the reference's MT19937 keep bits (every
      dtype, odd sizes, unaligned, in place, no mask);
      the plugin's device-resident counter (reserve kernel + base slot): sequential calls, three
      replays of a captured CUDA graph, two concurrent streams;
      BitmaskDropout / BitmaskDropoutGrad's packed-mask kernels (uint32 words, bit j of word w =
      element 32 w + j): words equal to numpy's packbits of the reference mask with zero padding and
      nothing written past the last word, Y and dX exact, sizes around 32-element words, unaligned
      (the scalar path), in place, no mask, random padding bits in the backward's words, the
      test-mode fill; 2^24 + 5 elements against the GPU re-implementation;
  (b) the cuDNN engine: kept fraction near 1 - ratio, Y == X * m / (1 - ratio) with m recovered from
      Y != 0, backward consistent with forward (its states attached, never seeded, and poisoned),
      fresh masks on the next call, in place;
  (c) a benchmark of float32 and float16 Dropout forward with mask at N = 2^20 .. 2^28 against a
      device-to-device copy of the same bytes, torch.native_dropout and the cuDNN engine.

Exit status 0 only if every check passed. ``--self-test`` runs the CPU-only parts (the PyTorch/numpy
re-implementation of Philox against the reference) without a GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from caffe2_ort import reference as R  # noqa: E402

MASK32 = 0xFFFFFFFF
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}


# ----------------------------------------------------------------------------------------------
# Philox4x32-10 on int64 arrays (numpy or torch): every intermediate stays below 2^50, so no
# signed overflow is involved. Used to build references of large runs on the GPU.


def _mulhilo(m: int, c):
    a = c * (m & 0xFFFF)  # < 2^48
    b = c * (m >> 16)  # < 2^48
    low = a + ((b & 0xFFFF) << 16)  # < 2^49
    return ((low >> 32) + (b >> 16)) & MASK32, low & MASK32


def philox_words(blocks_lo, blocks_hi, seed: int):
    """The 4 Philox words (int64 arrays) of the blocks with counter (lo, hi, 0, 0) under seed's key."""
    k0, k1 = R.seed_to_key(seed)
    c0, c1 = blocks_lo, blocks_hi
    c2 = c0 * 0
    c3 = c0 * 0
    for rnd in range(10):
        if rnd:
            k0 = (k0 + W0) & MASK32
            k1 = (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def block_counters(xp_arange, base: int, nblocks: int):
    """(lo, hi) words of blocks base .. base + nblocks - 1 (mod 2^64) as int64 arrays."""
    j = xp_arange(nblocks)
    t = j + (base & MASK32)
    return t & MASK32, ((base >> 32) + (t >> 32)) & MASK32


def self_test() -> None:
    """The int64 re-implementation against the numpy reference (CPU only)."""
    rng = np.random.default_rng(1)
    for seed in (0, 1, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1):
        for base in (0, 5, 2**32 - 3, 2**64 - 2):
            lo, hi = block_counters(lambda k: np.arange(k, dtype=np.int64), base, 9)
            words = np.stack(philox_words(lo, hi, seed), axis=1).reshape(-1)
            ref = R.random_words(seed, base, 36).astype(np.int64)
            assert np.array_equal(words, ref), (seed, base)
    # Random counters too.
    lo = rng.integers(0, 2**32, 1000, dtype=np.int64)
    hi = rng.integers(0, 2**32, 1000, dtype=np.int64)
    ours = np.stack(philox_words(lo, hi, 0xDEADBEEF12345), axis=0)
    ref = R.philox4x32_10(np.stack([lo, hi, 0 * lo, 0 * lo]).astype(np.uint32), R.seed_to_key(0xDEADBEEF12345))
    assert np.array_equal(ours, ref.astype(np.int64))
    print("self-test: int64 Philox matches caffe2_ort.reference")


# ----------------------------------------------------------------------------------------------
# The testing library.


class Launcher:
    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        u64, vp, f32, i32 = ctypes.c_uint64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
        lib.c2ort_test_last_error.restype = ctypes.c_char_p
        lib.c2ort_test_forward.argtypes = [i32, vp, vp, vp, u64, u64, u64, f32, vp]
        lib.c2ort_test_backward.argtypes = [i32, vp, vp, i32, vp, u64, f32, vp]
        lib.c2ort_test_apply_keep_bits.argtypes = [i32, vp, vp, vp, vp, u64, f32, vp]
        lib.c2ort_test_forward_counter.argtypes = [i32, vp, vp, vp, u64, u64, vp, vp, f32, vp]
        lib.c2ort_test_forward_bitmask.argtypes = [i32, vp, vp, vp, u64, u64, u64, f32, vp]
        lib.c2ort_test_backward_bitmask.argtypes = [i32, vp, vp, i32, vp, u64, f32, vp]
        lib.c2ort_test_fill_kept_words.argtypes = [vp, u64, vp]
        lib.c2ort_test_cudnn_create.argtypes = [i32, f32, u64, vp]
        lib.c2ort_test_cudnn_create.restype = vp
        lib.c2ort_test_cudnn_destroy.argtypes = [vp]
        lib.c2ort_test_cudnn_reserve_bytes.argtypes = [vp, u64]
        lib.c2ort_test_cudnn_reserve_bytes.restype = u64
        lib.c2ort_test_cudnn_forward.argtypes = [vp, vp, vp, vp, u64, u64]
        lib.c2ort_test_cudnn_backward.argtypes = [vp, vp, vp, u64, vp, u64]
        self.lib = lib

    def error(self) -> str:
        return self.lib.c2ort_test_last_error().decode()

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: {self.error()}")

    def forward(self, dtype, x, y, mask, n, seed, base, ratio, stream):
        self._check(self.lib.c2ort_test_forward(DTYPE_CODES[dtype], x, y, mask, n, seed & (2**64 - 1), base, ratio,
                                                stream), "forward")

    def forward_counter(self, dtype, x, y, mask, n, seed, counter, slot, ratio, stream):
        self._check(self.lib.c2ort_test_forward_counter(DTYPE_CODES[dtype], x, y, mask, n, seed & (2**64 - 1), counter,
                                                        slot, ratio, stream), "forward (device counter)")

    def apply_keep_bits(self, dtype, x, y, mask, bits, n, ratio, stream):
        self._check(self.lib.c2ort_test_apply_keep_bits(DTYPE_CODES[dtype], x, y, mask, bits, n, ratio, stream),
                    "apply keep bits")

    def backward(self, dtype, dy, mask, keep_all, dx, n, ratio, stream):
        self._check(self.lib.c2ort_test_backward(DTYPE_CODES[dtype], dy, mask, int(keep_all), dx, n, ratio, stream),
                    "backward")

    def forward_bitmask(self, dtype, x, y, words, n, seed, base, ratio, stream):
        self._check(self.lib.c2ort_test_forward_bitmask(DTYPE_CODES[dtype], x, y, words, n, seed & (2**64 - 1), base,
                                                        ratio, stream), "forward (packed mask)")

    def backward_bitmask(self, dtype, dy, words, keep_all, dx, n, ratio, stream):
        self._check(self.lib.c2ort_test_backward_bitmask(DTYPE_CODES[dtype], dy, words, int(keep_all), dx, n, ratio,
                                                         stream), "backward (packed mask)")

    def fill_kept_words(self, words, n, stream):
        self._check(self.lib.c2ort_test_fill_kept_words(words, n, stream), "fill kept words")

    def cudnn(self, dtype, ratio, seed, stream):
        h = self.lib.c2ort_test_cudnn_create(DTYPE_CODES[dtype], ratio, seed, stream)
        if not h:
            raise RuntimeError(f"cudnn create: {self.error()}")
        return h


# ----------------------------------------------------------------------------------------------
# GPU side.


class Checks:
    def __init__(self, launcher: Launcher, torch):
        self.L = launcher
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.sp = self.stream.cuda_stream
        self.failures: list[str] = []
        self.passed = 0
        self.tdt = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                    "bfloat16": torch.bfloat16}
        self.idt = {"float32": torch.int32, "float64": torch.int64, "float16": torch.int16,
                    "bfloat16": torch.int16}

    def expect(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print("FAIL:", what, flush=True)

    # numpy <-> torch, bfloat16 through its bits
    def to_gpu(self, a: np.ndarray):
        torch = self.torch
        if R.bfloat16 is not None and a.dtype == R.bfloat16:
            return torch.from_numpy(a.view(np.int16).copy()).cuda().view(torch.bfloat16)
        return torch.from_numpy(a.copy()).cuda()

    def to_np(self, t, dtype: np.dtype) -> np.ndarray:
        torch = self.torch
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).cpu().numpy().view(R.bfloat16)
        return t.cpu().numpy().astype(dtype, copy=False)

    @staticmethod
    def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
        """Bitwise equal, except that any NaN equals any NaN (the GPU's multiplier returns its canonical NaN)."""
        if a.shape != b.shape:
            return False
        if a.size == 0:
            return True
        af = a.astype(np.float64)
        bf = b.astype(np.float64)
        nan = np.isnan(af)
        if not np.array_equal(nan, np.isnan(bf)):
            return False
        ia = a.view(np.uint8).reshape(a.size, -1)[~nan.reshape(-1)]
        ib = b.view(np.uint8).reshape(b.size, -1)[~nan.reshape(-1)]
        return np.array_equal(ia, ib)

    def sample_input(self, rng, n: int, dtype: np.dtype, special: bool) -> np.ndarray:
        x = rng.standard_normal(n).astype(np.float64) * 3.0
        if special and n >= 16:
            vals = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-45, 6e-8, 3e-39, 65504.0, 1e300, 5e-324]
            idx = rng.choice(n, size=min(len(vals) * 2, n), replace=False)
            for k, i in enumerate(idx):
                x[i] = vals[k % len(vals)]
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            return x.astype(dtype)

    # ---------------------------------------------------------------------------------- (a) small
    def check_small(self) -> None:
        torch = self.torch
        rng = np.random.default_rng(2024)
        dtypes = [("float32", np.dtype(np.float32)), ("float64", np.dtype(np.float64)),
                  ("float16", np.dtype(np.float16)), ("bfloat16", R.bfloat16)]
        sizes = [0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 1000, 4099, 65537]
        cases = [(0.5, 7, 0), (0.25, 2**63 + 99, 2**32 - 3), (0.999, 2**64 - 1, 2**64 - 5), (0.0, 1, 0),
                 (1.0, 3, 11), (0.1, 0, 123456789)]
        count = 0
        for name, dt in dtypes:
            esz = dt.itemsize
            for n in sizes:
                for ratio, seed, base in cases:
                    for layout in ("aligned", "unaligned", "inplace", "nomask"):
                        x_np = self.sample_input(rng, n, dt, special=True)
                        y_ref, keep = R.dropout(x_np, ratio=ratio, seed=seed, base=base)
                        with torch.cuda.stream(self.stream):
                            off = 1 if layout == "unaligned" else 0
                            xb = self.to_gpu(np.concatenate([np.zeros(off, dt), x_np]) if off else x_np)
                            x = xb[off:]
                            if layout == "inplace":
                                y = x
                            else:
                                yb = torch.full((n + off,), float("nan"), dtype=self.tdt[name], device="cuda")
                                y = yb[off:]
                            mb = torch.full((n + off,), 0xAA, dtype=torch.uint8, device="cuda")
                            m = mb[off:]
                            self.L.forward(name, x.data_ptr(), y.data_ptr(),
                                           None if layout == "nomask" else m.data_ptr(), n, seed, base, ratio, self.sp)
                            y_np = self.to_np(y, dt)
                            m_np = m.cpu().numpy()
                        tag = f"forward {name} n={n} ratio={ratio} seed={seed} base={base} {layout}"
                        self.expect(self.same_bits(y_np, y_ref), tag + ": Y")
                        if layout == "nomask":
                            self.expect(bool(np.all(m_np == 0xAA)), tag + ": mask memory untouched")
                        else:
                            self.expect(np.array_equal(m_np, keep.astype(np.uint8)), tag + ": mask")
                        # backward from the reference mask
                        dy_np = self.sample_input(rng, n, dt, special=True)
                        dx_ref = R.dropout_grad(dy_np, keep, ratio=ratio)
                        with torch.cuda.stream(self.stream):
                            off = 1 if layout == "unaligned" else 0
                            dyb = self.to_gpu(np.concatenate([np.zeros(off, dt), dy_np]) if off else dy_np)
                            dy = dyb[off:]
                            kb = self.to_gpu(np.concatenate([np.zeros(off, np.uint8), keep.astype(np.uint8)]))
                            km = kb[off:]
                            if layout == "inplace":
                                dx = dy
                            else:
                                dxb = torch.full((n + off,), float("nan"), dtype=self.tdt[name], device="cuda")
                                dx = dxb[off:]
                            self.L.backward(name, dy.data_ptr(), km.data_ptr(), True, dx.data_ptr(), n, ratio,
                                            self.sp)
                            dx_np = self.to_np(dx, dt)
                        self.expect(self.same_bits(dx_np, dx_ref), tag.replace("forward", "backward") + ": dX")
                        count += 1
            # the constant-mask backward (mask null), as engine CUDNN with ratio = 1 uses it
            dy_np = self.sample_input(rng, 1001, dt, special=False)
            with torch.cuda.stream(self.stream):
                dy = self.to_gpu(dy_np)
                dx = torch.empty_like(dy)
                self.L.backward(name, dy.data_ptr(), None, False, dx.data_ptr(), 1001, 1.0, self.sp)
                dx_np = self.to_np(dx, dt)
            self.expect(self.same_bits(dx_np, R.dropout_grad(dy_np, np.zeros(1001, bool), ratio=1.0)),
                        f"backward {name} constant mask")
        self.torch.cuda.synchronize()
        print(f"(a) small: {count} forward/backward cases per layout checked against the numpy reference", flush=True)

    # ---------------------------------------------------------------------------------- (a) keep bits
    def check_keep_bits(self) -> None:
        """rng = "caffe2_mt19937": the device kernel fed with the host's keep bits (Caffe2's MT19937
        stream, here from the numpy reference) gives the reference's Y and mask."""
        torch = self.torch
        rng = np.random.default_rng(77)
        dtypes = [("float32", np.dtype(np.float32)), ("float64", np.dtype(np.float64)),
                  ("float16", np.dtype(np.float16)), ("bfloat16", R.bfloat16)]
        count = 0
        for name, dt in dtypes:
            for n in (0, 1, 3, 5, 7, 8, 9, 63, 64, 65, 127, 1000, 4099, 65537):
                for ratio, seed in ((0.5, 7), (0.999, 2**32 - 1), (0.1, 12345)):
                    keep = R.mt19937_keep(R.mt19937(seed).random_raw(2 * n), ratio)
                    words = -(-n // 64)
                    packed = np.zeros(8 * words, np.uint8)
                    packed[:-(-n // 8)] = np.packbits(keep, bitorder="little")
                    for layout in ("aligned", "unaligned", "inplace", "nomask"):
                        x_np = self.sample_input(rng, n, dt, special=True)
                        y_ref = R.apply_mask(x_np, keep, ratio)
                        with torch.cuda.stream(self.stream):
                            off = 1 if layout == "unaligned" else 0
                            bits = torch.from_numpy(packed.view(np.int64).copy()).cuda()
                            xb = self.to_gpu(np.concatenate([np.zeros(off, dt), x_np]) if off else x_np)
                            x = xb[off:]
                            if layout == "inplace":
                                y = x
                            else:
                                y = torch.full((n + off,), float("nan"), dtype=self.tdt[name], device="cuda")[off:]
                            m = torch.full((n + off,), 0xAA, dtype=torch.uint8, device="cuda")[off:]
                            self.L.apply_keep_bits(name, x.data_ptr(), y.data_ptr(),
                                                   None if layout == "nomask" else m.data_ptr(),
                                                   bits.data_ptr() if words else None, n, ratio, self.sp)
                            y_np = self.to_np(y, dt)
                            m_np = m.cpu().numpy()
                        tag = f"keep bits {name} n={n} ratio={ratio} seed={seed} {layout}"
                        self.expect(self.same_bits(y_np, y_ref), tag + ": Y")
                        if layout == "nomask":
                            self.expect(bool(np.all(m_np == 0xAA)), tag + ": mask memory untouched")
                        else:
                            self.expect(np.array_equal(m_np, keep.astype(np.uint8)), tag + ": mask")
                        count += 1
        self.torch.cuda.synchronize()
        print(f"(a) keep bits: {count} cases checked against the numpy reference's caffe2_mt19937 stream", flush=True)

    # ---------------------------------------------------------------------------------- (a) packed masks
    @staticmethod
    def packed_words(keep: np.ndarray) -> np.ndarray:
        """numpy's packbits of a bool mask, little bit order, zero-padded to uint32 words."""
        b = np.packbits(keep.ravel(), bitorder="little")
        return np.pad(b, (0, -len(b) % 4)).view("<u4")

    def check_bitmask(self) -> None:
        torch = self.torch
        rng = np.random.default_rng(404)
        poison = 0x5A5A5A5A
        dtypes = [("float32", np.dtype(np.float32)), ("float64", np.dtype(np.float64)),
                  ("float16", np.dtype(np.float16)), ("bfloat16", R.bfloat16)]
        sizes = [0, 1, 3, 4, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 257, 1000, 4099, 65537]
        cases = [(0.5, 7, 0), (0.25, 2**63 + 99, 2**32 - 3), (0.0, 1, 0), (1.0, 3, 11)]
        count = 0
        for name, dt in dtypes:
            for n in sizes:
                nw = (n + 31) // 32
                for ratio, seed, base in cases:
                    for layout in ("aligned", "unaligned", "inplace", "nomask"):
                        x_np = self.sample_input(rng, n, dt, special=True)
                        y_ref, keep = R.dropout(x_np, ratio=ratio, seed=seed, base=base)
                        off = 1 if layout == "unaligned" else 0
                        with torch.cuda.stream(self.stream):
                            x = self.to_gpu(np.concatenate([np.zeros(off, dt), x_np]) if off else x_np)[off:]
                            if layout == "inplace":
                                y = x
                            else:
                                y = torch.full((n + off,), float("nan"), dtype=self.tdt[name], device="cuda")[off:]
                            w = torch.full((nw + 1,), poison, dtype=torch.int32, device="cuda")
                            self.L.forward_bitmask(name, x.data_ptr(), y.data_ptr(),
                                                   None if layout == "nomask" else w.data_ptr(), n, seed, base,
                                                   ratio, self.sp)
                            y_np = self.to_np(y, dt)
                            w_np = w.cpu().numpy().view(np.uint32)
                        tag = f"bitmask forward {name} n={n} ratio={ratio} seed={seed} base={base} {layout}"
                        self.expect(self.same_bits(y_np, y_ref), tag + ": Y")
                        if layout == "nomask":
                            self.expect(bool(np.all(w_np == poison)), tag + ": mask memory untouched")
                        else:
                            self.expect(np.array_equal(w_np[:nw], self.packed_words(keep)), tag + ": words")
                            self.expect(int(w_np[nw]) == poison, tag + ": nothing past the last word")
                        # backward from the packed reference mask with random padding bits
                        dy_np = self.sample_input(rng, n, dt, special=True)
                        dx_ref = R.dropout_grad(dy_np, keep, ratio=ratio)
                        words = self.packed_words(keep).copy()
                        if n % 32:
                            words[-1] |= np.uint32((int(rng.integers(0, 2**32)) >> (n % 32)) << (n % 32))
                        with torch.cuda.stream(self.stream):
                            dy = self.to_gpu(np.concatenate([np.zeros(off, dt), dy_np]) if off else dy_np)[off:]
                            wg = torch.from_numpy(words.view(np.int32).copy()).cuda()
                            if layout == "inplace":
                                dx = dy
                            else:
                                dx = torch.full((n + off,), float("nan"), dtype=self.tdt[name], device="cuda")[off:]
                            self.L.backward_bitmask(name, dy.data_ptr(), wg.data_ptr() if nw else None, True,
                                                    dx.data_ptr(), n, ratio, self.sp)
                            dx_np = self.to_np(dx, dt)
                        self.expect(self.same_bits(dx_np, dx_ref), tag.replace("forward", "backward") + ": dX")
                        count += 1
        # test mode's mask: every valid bit 1, padding 0, nothing past the last word
        for n in (1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1000):
            nw = (n + 31) // 32
            with torch.cuda.stream(self.stream):
                w = torch.full((nw + 1,), poison, dtype=torch.int32, device="cuda")
                self.L.fill_kept_words(w.data_ptr(), n, self.sp)
                w_np = w.cpu().numpy().view(np.uint32)
            self.expect(np.array_equal(w_np[:nw], self.packed_words(np.ones(n, bool))) and int(w_np[nw]) == poison,
                        f"bitmask test-mode words n={n}")
        # a large run: words against the GPU re-implementation of the contract
        n, seed, base, ratio = (1 << 24) + 5, 0xBEEF, 2**32 - 77, 0.3
        with torch.cuda.stream(self.stream):
            x = torch.randn(n, device="cuda", dtype=torch.float32)
            y = torch.empty_like(x)
            w = torch.empty(((n + 31) // 32,), dtype=torch.int32, device="cuda")
            self.L.forward_bitmask("float32", x.data_ptr(), y.data_ptr(), w.data_ptr(), n, seed, base, ratio, self.sp)
            keep = self.reference_keep(n, seed, base, ratio)
            shifts = torch.arange(32, device="cuda", dtype=torch.int64)
            padded = torch.zeros(((n + 31) // 32) * 32, dtype=torch.int64, device="cuda")
            padded[:n] = keep.to(torch.int64)
            want = (padded.view(-1, 32) << shifts).sum(dim=1)
            words_ok = bool(torch.equal(w.to(torch.int64) & MASK32, want))
            y_ok = bool(torch.equal(y.view(torch.int32), self.expected_y(x, keep, ratio, "float32").view(torch.int32)))
        self.expect(words_ok, "bitmask large n=2^24+5: words")
        self.expect(y_ok, "bitmask large n=2^24+5: Y")
        self.torch.cuda.synchronize()
        print(f"(a) packed masks: {count} forward/backward cases per layout, test-mode fill, 2^24 + 5 elements",
              flush=True)

    # ---------------------------------------------------------------------------------- (a) large
    def reference_keep(self, n: int, seed: int, base: int, ratio: float):
        torch = self.torch
        nb = (n + 3) // 4
        lo, hi = block_counters(lambda k: torch.arange(k, dtype=torch.int64, device="cuda"), base, nb)
        w = torch.stack(philox_words(lo, hi, seed), dim=1).reshape(-1)[:n]
        return w >= R.drop_threshold(ratio)

    def expected_y(self, x, keep, ratio: float, name: str):
        torch = self.torch
        s = float(R.drop_scale(ratio))
        if name == "float64":
            return (x * s) * keep.to(torch.float64)
        xf = x.float()
        return ((xf * torch.tensor(s, dtype=torch.float32, device="cuda")) * keep.float()).to(x.dtype)

    def check_large(self, max_log2: int) -> None:
        torch = self.torch
        gen = torch.Generator(device="cuda")
        gen.manual_seed(5)
        for log2 in (20, 24, max_log2):
            for extra in (0, 3):
                n = (1 << log2) + extra
                for name in ("float32", "float64", "float16", "bfloat16"):
                    seed, base, ratio = 0x1234_5678_9ABC + log2, (2**32 - 1000) if extra else 77, 0.3
                    with torch.cuda.stream(self.stream):
                        x = torch.randn(n, generator=gen, device="cuda", dtype=torch.float32).to(self.tdt[name])
                        y = torch.empty_like(x)
                        m = torch.empty(n, dtype=torch.uint8, device="cuda")
                        self.L.forward(name, x.data_ptr(), y.data_ptr(), m.data_ptr(), n, seed, base, ratio, self.sp)
                        keep = self.reference_keep(n, seed, base, ratio)
                        mask_ok = bool(torch.equal(m, keep.to(torch.uint8)))
                        ye = self.expected_y(x, keep, ratio, name)
                        y_ok = bool(torch.equal(y.view(self.idt[name]), ye.view(self.idt[name])))
                        dy = torch.randn(n, generator=gen, device="cuda", dtype=torch.float32).to(self.tdt[name])
                        dx = torch.empty_like(dy)
                        self.L.backward(name, dy.data_ptr(), m.data_ptr(), True, dx.data_ptr(), n, ratio, self.sp)
                        s = float(R.drop_scale(ratio))
                        if name == "float64":
                            dxe = (dy * keep.to(torch.float64)) * s
                        else:
                            dxe = ((dy.float() * keep.float()) * torch.tensor(s, device="cuda")).to(dy.dtype)
                        dx_ok = bool(torch.equal(dx.view(self.idt[name]), dxe.view(self.idt[name])))
                        frac = float(keep.float().mean())
                    tag = f"large {name} n=2^{log2}+{extra}"
                    self.expect(mask_ok, tag + ": mask")
                    self.expect(y_ok, tag + ": Y")
                    self.expect(dx_ok, tag + ": dX")
                    self.expect(abs(frac - 0.7) < 0.01, tag + f": kept fraction {frac:.4f}")
                    del x, y, m, keep, ye, dy, dx, dxe
                    torch.cuda.empty_cache()
        print(f"(a) large: sizes up to 2^{max_log2}+3 exact against the GPU re-implementation", flush=True)

    def check_huge(self) -> None:
        """float16, 2^31 + 5 elements: 64-bit indices, sampled positions and the end."""
        torch = self.torch
        n = (1 << 31) + 5
        seed, base, ratio = 99, 2**33 + 1, 0.5
        with torch.cuda.stream(self.stream):
            x = torch.empty(n, dtype=torch.float16, device="cuda")
            # a position-dependent pattern: x[i] = ((i % 2039) + 1) / 64 (exact in float16)
            chunk = 1 << 28
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                i = torch.arange(start, end, device="cuda", dtype=torch.int64)
                x[start:end] = ((i % 2039 + 1).to(torch.float32) / 64).to(torch.float16)
                del i
            y = torch.full((n,), float("nan"), dtype=torch.float16, device="cuda")
            m = torch.full((n,), 0xAA, dtype=torch.uint8, device="cuda")
            self.L.forward("float16", x.data_ptr(), y.data_ptr(), m.data_ptr(), n, seed, base, ratio, self.sp)
            g = torch.Generator(device="cuda")
            g.manual_seed(3)
            pos = torch.randint(0, n, (1 << 20,), generator=g, device="cuda", dtype=torch.int64)
            pos = torch.cat([pos, torch.arange(n - 64, n, device="cuda"), torch.arange(0, 64, device="cuda"),
                             torch.arange((1 << 31) - 64, (1 << 31) + 5, device="cuda")])
            blk = base + torch.div(pos, 4, rounding_mode="floor")
            lo, hi = blk & MASK32, (blk >> 32) & MASK32
            words = torch.stack(philox_words(lo, hi, seed), dim=1)
            w = words.gather(1, (pos % 4).unsqueeze(1)).squeeze(1)
            keep = w >= R.drop_threshold(ratio)
            mask_ok = bool(torch.equal(m[pos], keep.to(torch.uint8)))
            xs = x[pos]
            ye = ((xs.float() * float(R.drop_scale(ratio))) * keep.float()).half()
            y_ok = bool(torch.equal(y[pos].view(torch.int16), ye.view(torch.int16)))
            # every element written: no poison left anywhere
            all_written = bool((m <= 1).all()) and not bool(torch.isnan(y).any())
            frac = float(m[: 1 << 24].float().mean())
        self.expect(mask_ok, "huge float16 n=2^31+5: mask at sampled positions")
        self.expect(y_ok, "huge float16 n=2^31+5: Y at sampled positions")
        self.expect(all_written, "huge float16 n=2^31+5: every element written")
        self.expect(abs(frac - 0.5) < 0.01, f"huge float16: kept fraction {frac:.4f}")
        del x, y, m
        torch.cuda.empty_cache()
        print("(a) huge: float16 n = 2^31 + 5 checked at sampled positions and the end", flush=True)

    # ---------------------------------------------------------------------------------- (a) device counter
    def check_device_counter(self) -> None:
        """The plugin's path: the counter in device memory, advanced by the reserve kernel; sequential
        calls, CUDA-graph replays (torch.cuda.CUDAGraph) and two concurrent streams."""
        torch = self.torch
        n, seed, ratio = 4099 * 8 + 3, 0xC0FFEE, 0.4
        blocks = (n + 3) // 4
        x_np = self.sample_input(np.random.default_rng(9), n, np.dtype(np.float32), special=False)
        x = self.to_gpu(x_np)
        counter = torch.zeros(1, dtype=torch.int64, device="cuda")
        slots = torch.full((2,), -1, dtype=torch.int64, device="cuda")
        y = torch.empty_like(x)
        m = torch.empty(n, dtype=torch.uint8, device="cuda")

        def launch(stream, slot=0, yy=y, mm=m):
            self.L.forward_counter("float32", x.data_ptr(), yy.data_ptr(), mm.data_ptr(), n, seed, counter.data_ptr(),
                                   slots[slot:].data_ptr(), ratio, stream)

        def expect_base(base, yy, mm, tag):
            y_ref, keep = R.dropout(x_np, ratio=ratio, seed=seed, base=base)
            self.expect(np.array_equal(mm.cpu().numpy(), keep.astype(np.uint8)), f"device counter {tag}: mask")
            self.expect(self.same_bits(yy.cpu().numpy(), y_ref), f"device counter {tag}: Y")

        torch.cuda.synchronize()  # buffers made on the default stream are ready
        with torch.cuda.stream(self.stream):
            for k in range(3):
                launch(self.sp)
                torch.cuda.synchronize()
                expect_base(k * blocks, y, m, f"call {k}")
        self.expect(int(counter.item()) == 3 * blocks, "device counter: advanced by ceil(n/4) per call")
        # CUDA graph: capture once, replay three times; each replay advances the counter on the device
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            with torch.cuda.graph(graph, stream=side):
                launch(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        self.expect(int(counter.item()) == 3 * blocks, "device counter: capture itself consumes nothing")
        for k in range(3):
            graph.replay()
            torch.cuda.synchronize()
            expect_base((3 + k) * blocks, y, m, f"graph replay {k}")
        # two streams at once, each with its own slot: disjoint consecutive ranges
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        y2, m2 = torch.empty_like(y), torch.empty_like(m)
        torch.cuda.synchronize()
        launch(s1.cuda_stream, 0, y, m)
        launch(s2.cuda_stream, 1, y2, m2)
        torch.cuda.synchronize()
        bases = sorted(int(b) for b in slots.cpu())
        self.expect(bases == [6 * blocks, 7 * blocks], f"device counter: concurrent bases {bases}")
        expect_base(int(slots[0].item()), y, m, "stream 1")
        expect_base(int(slots[1].item()), y2, m2, "stream 2")
        # ratio 1 consumes its blocks without drawing
        with torch.cuda.stream(self.stream):
            self.L.forward_counter("float32", x.data_ptr(), y.data_ptr(), m.data_ptr(), n, seed, counter.data_ptr(),
                                   slots.data_ptr(), 1.0, self.sp)
        torch.cuda.synchronize()
        self.expect(int(counter.item()) == 9 * blocks and not bool(m.any()), "device counter: ratio 1")
        print("(a) device counter: sequential calls, 3 CUDA-graph replays, 2 streams, ratio 1", flush=True)

    # ---------------------------------------------------------------------------------- (b) cuDNN
    def check_cudnn(self) -> dict:
        torch = self.torch
        notes = {}
        n = (1 << 22) + 7
        ratio = 0.3
        scale = 1.0 / (1.0 - ratio)
        for name in ("float32", "float16", "float64", "bfloat16"):
            try:
                h = self.L.cudnn(name, ratio, 0, self.sp)
            except RuntimeError as e:
                notes[name] = f"create failed: {e}"
                continue
            try:
                with torch.cuda.stream(self.stream):
                    nbytes = self.L.lib.c2ort_test_cudnn_reserve_bytes(h, n)
                    if nbytes == 0:
                        raise RuntimeError("reserve bytes: " + self.L.error())
                    # X away from 0 so that Y != 0 identifies the kept elements.
                    x = (torch.rand(n, device="cuda") + 0.5).to(self.tdt[name])
                    y = torch.empty_like(x)
                    r = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
                    self.L._check(self.L.lib.c2ort_test_cudnn_forward(h, x.data_ptr(), y.data_ptr(), r.data_ptr(),
                                                                      nbytes, n), "cudnn forward")
                    kept = y != 0
                    frac = float(kept.float().mean())
                    tol = 1e-6 if name in ("float32", "float64") else 4e-3
                    rel = ((y.double() - x.double() * scale).abs() / (x.double() * scale)).masked_fill(~kept, 0)
                    y_ok = float(rel.max()) <= tol
                    dy = torch.randn(n, device="cuda").to(self.tdt[name])
                    dx = torch.empty_like(dy)
                    self.L._check(self.L.lib.c2ort_test_cudnn_backward(h, dy.data_ptr(), r.data_ptr(), nbytes,
                                                                       dx.data_ptr(), n), "cudnn backward")
                    zeros_ok = bool((dx[~kept] == 0).all())
                    ref = dy.double() * scale
                    slack = 1e-6 if name == "float16" else 0.0  # float16 subnormals carry fewer bits
                    excess = ((dx.double() - ref).abs() - (tol * ref.abs() + slack)).masked_fill(~kept, 0)
                    dx_ok = float(excess.max()) <= 0
                    # next call: fresh mask from the advanced states
                    y2 = torch.empty_like(x)
                    self.L._check(self.L.lib.c2ort_test_cudnn_forward(h, x.data_ptr(), y2.data_ptr(), r.data_ptr(),
                                                                      nbytes, n), "cudnn forward 2")
                    differs = float(((y2 != 0) != kept).float().mean())
                    # in place
                    xi = x.clone()
                    self.L._check(self.L.lib.c2ort_test_cudnn_forward(h, xi.data_ptr(), xi.data_ptr(), r.data_ptr(),
                                                                      nbytes, n), "cudnn forward in place")
                    ki = xi != 0
                    reli = ((xi.double() - x.double() * scale).abs() / (x.double() * scale)).masked_fill(~ki, 0)
                    inplace_ok = float(reli.max()) <= tol and abs(float(ki.float().mean()) - 0.7) < 0.01
                torch.cuda.synchronize()
                tag = f"cudnn {name}"
                self.expect(abs(frac - (1 - ratio)) < 0.01, f"{tag}: kept fraction {frac:.4f}")
                self.expect(y_ok, f"{tag}: Y == X * m / (1 - ratio)")
                self.expect(zeros_ok and dx_ok, f"{tag}: backward consistent with forward")
                self.expect(0.3 < differs < 0.55, f"{tag}: next call draws a fresh mask (differs {differs:.3f})")
                self.expect(inplace_ok, f"{tag}: in place")
                notes[name] = f"ok: reserve {nbytes} bytes for {n} elements, kept {frac:.4f}"
            except RuntimeError as e:
                notes[name] = f"failed: {e}"
                if name != "bfloat16":  # the kernels accept float32, float16 and float64 under CUDNN
                    self.expect(False, f"cudnn {name}: {e}")
            finally:
                self.L.lib.c2ort_test_cudnn_destroy(h)
        for k, v in notes.items():
            print(f"(b) cuDNN {k}: {v}", flush=True)
        return notes

    # ---------------------------------------------------------------------------------- (c) bench
    def time_ms(self, fn, reps: int) -> float:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            for _ in range(3):
                fn()
            times = []
            for _ in range(reps):
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record(self.stream)
                fn()
                b.record(self.stream)
                times.append((a, b))
            torch.cuda.synchronize()
        return float(np.median([a.elapsed_time(b) for a, b in times]))

    def benchmark(self, max_log2: int) -> list:
        torch = self.torch
        rows = []
        ratio = 0.5
        for name in ("float32", "float16"):
            esz = 4 if name == "float32" else 2
            cudnn = self.L.cudnn(name, ratio, 0, self.sp)
            try:
                for log2 in range(20, max_log2 + 1, 2):
                    n = 1 << log2
                    reps = 50 if log2 <= 24 else 20
                    with torch.cuda.stream(self.stream):
                        x = torch.randn(n, device="cuda").to(self.tdt[name])
                        y = torch.empty_like(x)
                        m = torch.empty(n, dtype=torch.uint8, device="cuda")
                        moved = n * (2 * esz + 1)  # read X, write Y, write mask
                        half = moved // 2
                        src = torch.empty(half, dtype=torch.uint8, device="cuda")
                        dst = torch.empty_like(src)
                        nbytes = self.L.lib.c2ort_test_cudnn_reserve_bytes(cudnn, n)
                        r = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
                    base = [0]
                    self.L._check(self.L.lib.c2ort_test_cudnn_forward(cudnn, x.data_ptr(), y.data_ptr(), r.data_ptr(),
                                                                      nbytes, n), "cudnn forward (bench)")

                    def ours():
                        self.L.forward(name, x.data_ptr(), y.data_ptr(), m.data_ptr(), n, 1, base[0], ratio, self.sp)
                        base[0] += n // 4

                    t_copy = self.time_ms(lambda: dst.copy_(src), reps)
                    t_ours = self.time_ms(ours, reps)
                    t_torch = self.time_ms(lambda: torch.native_dropout(x, ratio, True), reps)
                    t_cudnn = self.time_ms(
                        lambda: self.L.lib.c2ort_test_cudnn_forward(cudnn, x.data_ptr(), y.data_ptr(), r.data_ptr(),
                                                                    nbytes, n), reps)
                    cudnn_moved = n * 2 * esz + nbytes
                    copy_gbs = 2 * half / t_copy / 1e6
                    for impl, t, b in (("copy", t_copy, 2 * half), ("caffe2_ort", t_ours, moved),
                                       ("torch.native_dropout", t_torch, moved), ("cudnn", t_cudnn, cudnn_moved)):
                        gbs = b / t / 1e6
                        rows.append({"dtype": name, "log2n": log2, "impl": impl, "ms": t, "GBps": gbs,
                                     "frac_copy": gbs / copy_gbs})
                    del x, y, m, src, dst, r
                    torch.cuda.empty_cache()
            finally:
                self.L.lib.c2ort_test_cudnn_destroy(cudnn)
        return rows


def format_table(rows: list) -> str:
    lines = ["dtype    N      impl                      ms      GB/s   x copy",
             "-------- ------ ---------------------- -------- -------- ------"]
    for r in rows:
        lines.append(f"{r['dtype']:<8} 2^{r['log2n']:<4} {r['impl']:<22} {r['ms']:8.4f} {r['GBps']:8.1f} "
                     f"{r['frac_copy']:6.3f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", help="libcaffe2_ort_cuda_testing.so")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--max-log2", type=int, default=28)
    ap.add_argument("--skip-huge", action="store_true")
    ap.add_argument("--self-test", action="store_true", help="CPU-only checks of the reference helpers")
    args = ap.parse_args()

    self_test()
    if args.self_test:
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch")
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    checks = Checks(Launcher(args.lib), torch)
    t0 = time.time()
    summary = {"device": torch.cuda.get_device_name()}
    steps = [("small", checks.check_small), ("keep_bits", checks.check_keep_bits),
             ("counter", checks.check_device_counter), ("bitmask", checks.check_bitmask),
             ("large", lambda: checks.check_large(args.max_log2))]
    if not args.skip_huge:
        steps.append(("huge", checks.check_huge))
    steps.append(("cudnn", checks.check_cudnn))
    for step, fn in steps:
        t = time.time()
        try:
            res = fn()
            if step == "cudnn":
                summary["cudnn"] = res
        except Exception as e:  # report and continue with the other parts
            checks.expect(False, f"{step}: {type(e).__name__}: {e}")
        print(f"  [{step}: {time.time() - t:.1f} s]", flush=True)
    rows = []
    try:
        rows = checks.benchmark(args.max_log2)
    except Exception as e:
        checks.expect(False, f"benchmark: {type(e).__name__}: {e}")
    summary.update(passed=checks.passed, failures=checks.failures, bench=rows, seconds=time.time() - t0)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_checks.json").write_text(json.dumps(summary, indent=1))
    print(f"\nchecks: {checks.passed} passed, {len(checks.failures)} failed")
    for f in checks.failures[:30]:
        print("  FAILED:", f)
    print(f"\nDropout forward with mask, ratio 0.5, on {summary['device']} (median of CUDA-event timings; "
          "GB/s counts X read + Y and mask written; copy = device-to-device copy of the same bytes):")
    print(format_table(rows))
    return 0 if not checks.failures else 1


if __name__ == "__main__":
    sys.exit(main())
