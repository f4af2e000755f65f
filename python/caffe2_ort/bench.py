"""``caffe2-ort bench``: the ai.caffe2 CPU kernels as users run them, against a copy of the same bytes.

Measured side by side in one run, for every size, thread count, element type and output mode:

- the variants in ``VARIANTS`` (Dropout with and without the mask output, DropoutGrad, the rng
  variants, BitmaskDropout with its bit-packed mask and BitmaskDropoutGrad): one data row each, so
  another variant is a one-line addition;
- ``copy``: the same bytes copied with the same number of threads, the faster of two copies: the
  library's own test-mode Dropout (an exact copy, split over ORT's intra-op pool like the training
  kernels, into outputs allocated the same way) and a memcpy split over Python threads (numpy releases
  the GIL); both are reported;
- ORT's built-in ONNX Dropout (opset 13, training_mode) and PyTorch's CPU dropout when installed.

Output modes: ``ort`` = outputs allocated by ORT (its arena, 64-byte aligned: what a node inside a
model writes to, and the path that takes non-temporal stores for large outputs), ``bound`` =
outputs bound to preallocated numpy arrays (16-byte aligned). Bytes per run: read the inputs, write
the outputs (Dropout + mask: 2 s + 1 per element for an s-byte type; Dropout: 2 s; DropoutGrad:
2 s + 1; BitmaskDropout + mask and BitmaskDropoutGrad: 2 s + 1/8, the mask as ceil(N / 32) uint32
words). Times are medians of repeated runs after warm-up (minimums in ``--json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import opdefs as _defs

DEFAULT_SIZES = (16, 18, 20, 22, 24, 26)
DTYPES = ("float32", "float64", "float16", "bfloat16")
OUTPUT_MODES = ("ort", "bound")
ISA_PATHS = ("scalar", "avx2", "avx512", "avx512ifma")  # CpuIsa in ort_ops/cpu/keep_bits.h, in order
RATIO = 0.5
SEED = 1


class BenchError(Exception):
    """A bad option or a missing optional dependency: reported as one ``error:`` line."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ai.caffe2 kernel configuration to time."""

    name: str
    op: str  # "Dropout", "DropoutGrad", "BitmaskDropout" or "BitmaskDropoutGrad"
    mask: bool  # forward: the mask output is requested; gradient: always True (training)
    attrs: tuple = ()  # extra node attributes as (name, value) pairs

    @property
    def grad(self) -> bool:
        return self.op in _defs.GRADIENT_OPS

    @property
    def bitmask(self) -> bool:
        """The mask is bit-packed: ceil(n / 32) uint32 words instead of n bools."""
        return _defs.mask_format_of(self.op) == "bits"

    def mask_shape(self, n: int) -> tuple:
        """The mask's shape for n elements: (n,) bools, or (ceil(n / 32),) uint32 words."""
        return (_defs.bitmask_words(n),) if self.bitmask else (n,)

    def mask_bytes(self, n: int) -> int:
        if not self.mask:
            return 0
        return 4 * self.mask_shape(n)[0] if self.bitmask else n

    def bytes_moved(self, n: int, itemsize: int) -> int:
        """Bytes a run reads and writes: X (dY) read, Y (dX) written, the mask written (read)."""
        return 2 * itemsize * n + self.mask_bytes(n)

    def mask_array(self, n: int):
        """A training mask to feed a gradient variant: about 1 - RATIO of the elements kept."""
        keep = np.random.default_rng(1).random(n) >= RATIO
        return _packed(keep) if self.bitmask else keep


def _packed(keep):
    """A bool mask as BitmaskDropout's uint32 words (the numpy reference's packer)."""
    from .reference import pack_mask

    return pack_mask(keep)


VARIANTS = (
    Variant("dropout+mask", "Dropout", True),
    Variant("dropout", "Dropout", False),
    Variant("dropout_grad", "DropoutGrad", True),
    Variant("dropout+mask mt19937", "Dropout", True, (("rng", "caffe2_mt19937"),)),
    Variant("bitmask_dropout+mask", "BitmaskDropout", True),
    Variant("bitmask_dropout_grad", "BitmaskDropoutGrad", True),
)
BUILTIN = "ORT Dropout (opset 13)"
TORCH = "torch dropout"


# ---------------------------------------------------------------------------------------- machine


def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_isa_path(flags=None, env=None, vendor=None) -> str:
    """The path the library's CPU kernels take here. Mirrors SelectCpuIsa in ort_ops/cpu/keep_bits.cc
    (tests/test_cpu_paths.py checks that the two agree): AVX-512 needs F, BW, DQ, VL and BMI2, its
    IFMA variant also AVX512IFMA and an Intel CPU; AVX2 needs AVX2 and F16C; CAFFE2_ORT_CPU_ISA caps
    the choice."""
    info = _cpuinfo() if flags is None or vendor is None else {}
    if flags is None:
        flags = set(info.get("flags", "").split())
    if vendor is None:
        vendor = info.get("vendor_id", "")
    order = list(ISA_PATHS)
    best = "scalar"
    if platform.machine() in ("x86_64", "AMD64"):
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "bmi2"} <= flags:
            best = "avx512ifma" if "avx512ifma" in flags and vendor == "GenuineIntel" else "avx512"
        elif {"avx2", "f16c"} <= flags:
            best = "avx2"
    cap = (os.environ if env is None else env).get("CAFFE2_ORT_CPU_ISA", "")
    if cap:
        if cap not in order:
            raise BenchError(f"CAFFE2_ORT_CPU_ISA = {cap!r} is not one of {', '.join(order)}")
        best = order[min(order.index(best), order.index(cap))]
    return best


def _perf_ghz():
    """Core GHz from `perf stat` (cycles over task-clock of a short busy loop), or None where the
    machine does not count cycles (common in VMs)."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    busy = "s=0\nfor i in range(3_000_000): s+=i"
    try:
        out = subprocess.run([perf, "stat", "-x", ",", "-e", "cycles,task-clock", sys.executable, "-c", busy],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    counts = {}
    for line in out.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2:
            try:
                counts[parts[2].split(":")[0]] = float(parts[0])
            except ValueError:
                pass  # "<not supported>" / "<not counted>"
    if counts.get("cycles") and counts.get("task-clock"):
        return counts["cycles"] / (counts["task-clock"] * 1e6)  # task-clock is in ms: cycles per ns = GHz
    return None


def core_frequency():
    """(GHz, source) for cycles per element; (None, reason) when nothing tells."""
    ghz = _perf_ghz()
    if ghz:
        return ghz, "perf stat"
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq") as f:
            return int(f.read()) / 1e6, "cpufreq scaling_cur_freq"
    except (OSError, ValueError):
        pass
    mhz = _cpuinfo().get("cpu MHz")
    if mhz:
        return float(mhz) / 1e3, "/proc/cpuinfo cpu MHz (nominal: turbo not seen)"
    return None, "unknown (no perf counters, cpufreq or cpuinfo MHz)"


def machine_header(ghz, ghz_source) -> dict:
    import onnxruntime as ort

    from ._library import get_library_path

    info = _cpuinfo()
    return {
        "cpu": info.get("model name", platform.processor() or platform.machine()),
        "cpu_id": "family {} model {} stepping {}".format(info.get("cpu family", "?"), info.get("model", "?"),
                                                           info.get("stepping", "?")),
        "logical_cpus": os.cpu_count(),
        "isa_path": cpu_isa_path(),
        "ghz": ghz,
        "ghz_source": ghz_source,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "library": get_library_path("cpu"),
    }


# ---------------------------------------------------------------------------------------- timing


def _time(fn, min_time: float, min_reps: int = 5, warmup: int = 2):
    """(median, minimum) seconds of fn over at least min_reps runs and min_time seconds."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2000:
            break
    return statistics.median(times), min(times)


# ---------------------------------------------------------------------------------------- models

_ONNX_TYPES = {"float32": 1, "float64": 11, "float16": 10, "bfloat16": 16}  # TensorProto element types


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        from .reference import bfloat16

        if bfloat16 is None:
            raise BenchError("bfloat16 needs ml_dtypes (pip install ml_dtypes)")
        return bfloat16
    return np.dtype(dtype)


def _model(nodes, inputs, outputs, initializers=(), opsets=None):
    from onnx import helper

    from ._library import DOMAIN

    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                              initializer=list(initializers))
    opsets = opsets or [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def variant_model(variant: Variant, dtype: str):
    from onnx import TensorProto, helper

    from ._library import DOMAIN

    t = _ONNX_TYPES[dtype]
    m = TensorProto.UINT32 if variant.bitmask else TensorProto.BOOL
    attrs = dict(variant.attrs)
    if not variant.grad:
        outs = [("Y", t)] + ([("mask", m)] if variant.mask else [])
        node = helper.make_node(variant.op, ["X"], [n for n, _ in outs], domain=DOMAIN, ratio=RATIO, seed=SEED, **attrs)
        return _model([node], [("X", t)], outs)
    node = helper.make_node(variant.op, ["X", "mask"], ["Y"], domain=DOMAIN, ratio=RATIO, **attrs)
    return _model([node], [("X", t), ("mask", m)], [("Y", t)])


def copy_model():
    """float32 X -> Y, an exact copy by the library's test-mode Dropout on ORT's intra-op pool."""
    from onnx import helper

    from ._library import DOMAIN

    node = helper.make_node("Dropout", ["X"], ["Y"], domain=DOMAIN, is_test=1)
    return _model([node], [("X", 1)], [("Y", 1)])


def builtin_model(dtype: str):
    from onnx import TensorProto, helper, numpy_helper

    t = _ONNX_TYPES[dtype]
    node = helper.make_node("Dropout", ["X", "ratio", "training_mode"], ["Y", "mask"], seed=SEED)
    inits = [numpy_helper.from_array(np.array(RATIO, np.float32), "ratio"),
             numpy_helper.from_array(np.array(True), "training_mode")]
    return _model([node], [("X", t)], [("Y", t), ("mask", TensorProto.BOOL)], inits,
                  opsets=[helper.make_opsetid("", 13)])


def _session(model, threads: int, register: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if register:
        from ._library import register as register_plugin

        register_plugin(so, device="cpu")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ortvalue(array, dtype: str):
    import onnxruntime as ort

    if dtype == "bfloat16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), _ONNX_TYPES["bfloat16"])
    return ort.OrtValue.ortvalue_from_numpy(array)


def _runner(sess, feeds: dict, outputs: dict, mode: str):
    """A no-argument callable running sess once. feeds: name -> (array, dtype); outputs: name ->
    (shape, numpy dtype, dtype name). mode 'ort': ORT allocates the outputs (kept by the binding, not
    copied to numpy); 'bound': outputs written into numpy arrays allocated once."""
    binding = sess.io_binding()
    keep = []
    for name, (array, dtype) in feeds.items():
        value = _ortvalue(array, dtype)
        keep.append(value)
        binding.bind_ortvalue_input(name, value)
    for name, (shape, np_type, dtype) in outputs.items():
        if mode == "ort":
            binding.bind_output(name, "cpu")
        else:
            value = _ortvalue(np.empty(shape, np_type), dtype)
            keep.append(value)
            binding.bind_ortvalue_output(name, value)

    def run():
        sess.run_with_iobinding(binding)

    run.keep = keep  # the bound OrtValues live as long as the runner
    return run


class _ThreadedMemcpy:
    """memcpy of nbytes split over `threads` Python threads (numpy releases the GIL while copying)."""

    def __init__(self, nbytes: int, threads: int):
        self.src = np.ones(nbytes, np.uint8)
        self.dst = np.zeros(nbytes, np.uint8)
        bounds = [nbytes * k // threads // 64 * 64 for k in range(threads)] + [nbytes]
        self.parts = list(zip(bounds[:-1], bounds[1:]))
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def _one(self, part):
        a, b = part
        np.copyto(self.dst[a:b], self.src[a:b])

    def __call__(self):
        if self.pool is None:
            self._one(self.parts[0])
        else:
            list(self.pool.map(self._one, self.parts))

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


# ---------------------------------------------------------------------------------------- probes


def probe_variant(variant: Variant):
    """None when the loaded library runs the variant as asked, else the reason it cannot be timed.
    A library that does not know an attribute may ignore it: a variant with an rng attribute other
    than Philox's must then not give the Philox masks."""
    from . import reference as R

    attrs = dict(variant.attrs)
    n = 4096
    x = np.ones(n, np.float32)
    try:
        sess = _session(variant_model(variant, "float32"), 1, True)
        feeds = {"X": x, "mask": variant.mask_array(n)} if variant.grad else {"X": x}
        out = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - any failure makes the variant unavailable, with ORT's reason
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    rng = attrs.get("rng", "")
    if not variant.grad and variant.mask and rng not in ("", "philox"):
        philox = R.keep_mask(SEED, 0, x.shape, RATIO)
        if np.array_equal(out[1], _packed(philox) if variant.bitmask else philox):
            return f"the loaded library ignores rng = {rng!r} (it returned the Philox masks)"
    return None


def probe_builtin(dtype: str):
    """None when ORT's own Dropout runs for dtype here, else ORT's reason."""
    try:
        sess = _session(builtin_model(dtype), 1, False)
        x = np.ones(8, np.float32).astype(_np_dtype(dtype))
        _runner(sess, {"X": (x, dtype)}, {"Y": ((8,), x.dtype, dtype), "mask": ((8,), np.bool_, "bool")}, "ort")()
    except Exception as e:  # noqa: BLE001
        return str(e).strip().splitlines()[0]
    return None


def _have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------- measuring


def measure(sizes, threads_list, dtypes=("float32",), modes=OUTPUT_MODES, variants=VARIANTS, min_time=0.2,
            builtin=True, torch=True):
    """Runs the benchmark; returns {"machine": ..., "rows": [...], "unavailable": {name: reason}}."""
    for d in dtypes:
        if d not in DTYPES:
            raise BenchError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    for m in modes:
        if m not in OUTPUT_MODES:
            raise BenchError(f"unknown output mode {m!r}; choose from {', '.join(OUTPUT_MODES)}")
    for log2n in sizes:
        if not 2 <= log2n <= 30:
            raise BenchError(f"size 2^{log2n} is outside 2^2 .. 2^30")
    for t in threads_list:
        if t < 1:
            raise BenchError(f"thread count {t} must be at least 1")
    ghz, ghz_source = core_frequency()
    machine = machine_header(ghz, ghz_source)
    unavailable = {}
    import onnxruntime as ort

    if "bfloat16" in dtypes and not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"):
        # bfloat16 tensors reach ORT only as typed OrtValues, which older Python APIs cannot make.
        unavailable["bfloat16"] = f"onnxruntime {ort.__version__} has no OrtValue.ortvalue_from_numpy_with_onnx_type"
        dtypes = tuple(d for d in dtypes if d != "bfloat16")
    runnable = []
    for v in variants:
        reason = probe_variant(v)
        if reason is None:
            runnable.append(v)
        else:
            unavailable[v.name] = reason
    builtin_ok = {}
    if builtin:
        for d in dtypes:
            reason = probe_builtin(d)
            builtin_ok[d] = reason is None
            if reason is not None:
                unavailable[f"{BUILTIN} {d}"] = reason
    use_torch = torch and _have_torch()
    if torch and not use_torch:
        unavailable[TORCH] = "torch is not installed"

    rows = []
    copy_sessions = {t: _session(copy_model(), t, True) for t in threads_list}

    def add(n, log2n, threads, mode, dtype, impl, nbytes, timing, copy=None):
        med, best = timing
        row = {"n": n, "log2n": log2n, "threads": threads, "mode": mode, "dtype": dtype, "impl": impl,
               "bytes": nbytes, "ms": med * 1e3, "min_ms": best * 1e3, "gbps": nbytes / med / 1e9,
               "ns_per_elem": med * 1e9 / n,
               "cycles_per_elem": med * ghz * 1e9 * threads / n if ghz else None,
               "copy_ms": None, "copy_gbps": None, "copy_by": None, "vs_copy": None}
        if copy is not None:
            by = min(copy, key=lambda k: copy[k][0])
            row.update({"copy_ms": copy[by][0] * 1e3, "copy_gbps": nbytes / copy[by][0] / 1e9, "copy_by": by,
                        "vs_copy": copy[by][0] / med})
            for k, (c_med, c_min) in copy.items():
                row[f"copy_{k}_ms"] = c_med * 1e3
                row[f"copy_{k}_min_ms"] = c_min * 1e3
        rows.append(row)

    pool_cache, memcpy_cache = {}, {}

    def copy_times(nbytes, threads, mode):
        """{"pool": (median, min), "memcpy": (median, min)} seconds for copying nbytes (read nbytes / 2,
        write nbytes / 2): the library's test-mode Dropout on ORT's pool into `mode` outputs, and a
        memcpy over Python threads."""
        if (nbytes, threads, mode) not in pool_cache:
            elems = nbytes // 8  # float32: reads 4 * elems = nbytes / 2 bytes, writes as many
            x = np.ones(elems, np.float32)
            run = _runner(copy_sessions[threads], {"X": (x, "float32")}, {"Y": ((elems,), np.float32, "float32")},
                          mode)
            pool_cache[(nbytes, threads, mode)] = _time(run, min_time)
            del run, x
        if (nbytes, threads) not in memcpy_cache:
            mc = _ThreadedMemcpy(nbytes // 2, threads)
            memcpy_cache[(nbytes, threads)] = _time(mc, min_time)
            mc.close()
            del mc
        return {"pool": pool_cache[(nbytes, threads, mode)], "memcpy": memcpy_cache[(nbytes, threads)]}

    for log2n in sizes:
        n = 1 << log2n
        for dtype in dtypes:
            np_type = _np_dtype(dtype)
            x = np.random.default_rng(0).standard_normal(n).astype(np.float32).astype(np_type)
            full = (2 * np_type.itemsize + 1) * n  # read X, write Y and mask
            for threads in threads_list:
                for mode in modes:
                    for v in runnable:
                        nbytes = v.bytes_moved(n, np_type.itemsize)
                        feeds = {"X": (x, dtype)}
                        outputs = {"Y": ((n,), np_type, dtype)}
                        if v.grad:
                            mask = v.mask_array(n)
                            feeds["mask"] = (mask, "uint32" if v.bitmask else "bool")
                        elif v.mask:
                            kind = (np.uint32, "uint32") if v.bitmask else (np.bool_, "bool")
                            outputs["mask"] = (v.mask_shape(n), *kind)
                        sess = _session(variant_model(v, dtype), threads, True)
                        timing = _time(_runner(sess, feeds, outputs, mode), min_time)
                        del sess
                        add(n, log2n, threads, mode, dtype, v.name, nbytes, timing, copy_times(nbytes, threads, mode))
                    if builtin_ok.get(dtype):
                        sess = _session(builtin_model(dtype), threads, False)
                        outputs = {"Y": ((n,), np_type, dtype), "mask": ((n,), np.bool_, "bool")}
                        # ORT's Dropout runs one to two orders of magnitude slower: fewer repetitions.
                        timing = _time(_runner(sess, {"X": (x, dtype)}, outputs, mode), min_time / 4, min_reps=3,
                                       warmup=1)
                        del sess
                        add(n, log2n, threads, mode, dtype, BUILTIN, full, timing, copy_times(full, threads, mode))
                if use_torch and dtype != "bfloat16":
                    import torch as th

                    th.set_num_threads(threads)
                    tx = th.from_numpy(x)
                    timing = _time(lambda: th.nn.functional.dropout(tx, p=RATIO, training=True), min_time / 4,
                                   min_reps=3, warmup=1)
                    add(n, log2n, threads, "torch", dtype, TORCH, full, timing, copy_times(full, threads, "ort"))
            del x
    # Speed-up over ORT's own Dropout (which also writes the mask) for the forward-with-mask variants.
    builtin_ms = {(r["n"], r["threads"], r["mode"], r["dtype"]): r["ms"] for r in rows if r["impl"] == BUILTIN}
    forward_with_mask = {v.name for v in runnable if not v.grad and v.mask}
    for r in rows:
        ref = builtin_ms.get((r["n"], r["threads"], r["mode"], r["dtype"]))
        r["vs_builtin"] = ref / r["ms"] if ref and r["impl"] in forward_with_mask else None
    return {"machine": machine, "rows": rows, "unavailable": unavailable}


# ---------------------------------------------------------------------------------------- output


def format_header(result) -> str:
    m = result["machine"]
    lines = [
        f"CPU: {m['cpu']} ({m['cpu_id']}, {m['logical_cpus']} logical CPUs); ai.caffe2 CPU path: {m['isa_path']}",
        f"clock for cycles/elem: {m['ghz']:.2f} GHz from {m['ghz_source']}" if m["ghz"] else
        f"clock: {m['ghz_source']}: no cycles per element",
        f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, library {m['library']}",
        "bytes per run: Dropout+mask and DropoutGrad 2s+1 per element, Dropout 2s, BitmaskDropout+mask and "
        "BitmaskDropoutGrad 2s+1/8 (s = element size); copy = the "
        "faster of two copies of the same bytes with the same threads (test-mode Dropout on ORT's pool, memcpy "
        "over Python threads); x copy = copy time / this time; x ORT = ORT Dropout's time / this time (forward "
        "with mask); cyc/el = time x threads x clock / N; mode: ort = "
        "outputs allocated by ORT, bound = preallocated numpy arrays",
    ]
    for name, reason in result["unavailable"].items():
        lines.append(f"unavailable: {name}: {reason}")
    return "\n".join(lines)


def format_table(rows) -> str:
    head = (f"{'N':>5} {'thr':>3} {'mode':<5} {'dtype':<8} {'implementation':<22} {'ms':>9} {'GB/s':>7} "
            f"{'copy GB/s':>9} {'x copy':>6} {'x ORT':>6} {'ns/el':>7} {'cyc/el':>6}")
    lines = [head]
    for r in rows:
        copy = f"{r['copy_gbps']:9.2f}" if r["copy_gbps"] else f"{'':9}"
        vs = f"{r['vs_copy']:6.2f}" if r["vs_copy"] else f"{'':6}"
        cyc = f"{r['cycles_per_elem']:6.2f}" if r["cycles_per_elem"] is not None else f"{'':6}"
        ort = f"{r['vs_builtin']:6.1f}" if r.get("vs_builtin") else f"{'':6}"
        lines.append(f"{'2^%d' % r['log2n']:>5} {r['threads']:>3} {r['mode']:<5} {r['dtype']:<8} {r['impl']:<22} "
                     f"{r['ms']:9.3f} {r['gbps']:7.2f} {copy} {vs} {ort} {r['ns_per_elem']:7.3f} {cyc}")
    return "\n".join(lines)


def plot(result, path: str) -> None:
    """GB/s against N per implementation, one panel per (threads, mode); dashed: the copy of the same
    bytes for each ai.caffe2 variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib (pip install matplotlib)") from None
    rows = [r for r in result["rows"] if r["mode"] != "torch"]
    variant_names = {v.name for v in VARIANTS}
    threads = sorted({r["threads"] for r in rows})
    modes = [m for m in OUTPUT_MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(len(threads), len(modes), figsize=(6.5 * len(modes), 4.2 * len(threads)),
                             squeeze=False, sharex=True)
    for i, t in enumerate(threads):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sel = [r for r in rows if r["threads"] == t and r["mode"] == mode]
            for impl, dtype in sorted({(r["impl"], r["dtype"]) for r in sel}):
                pts = sorted((r["n"], r["gbps"], r["copy_gbps"]) for r in sel if r["impl"] == impl and r["dtype"] == dtype)
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker="o", ms=3, label=f"{impl} {dtype}")
                if impl in variant_names and all(p[2] for p in pts):
                    ax.plot([p[0] for p in pts], [p[2] for p in pts], "--", color=line.get_color(), lw=0.8,
                            label=f"copy of the same bytes ({impl} {dtype})")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{t} thread(s), outputs {mode}")
            ax.set_xlabel("N (elements)")
            ax.set_ylabel("GB/s")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(f"{result['machine']['cpu']} ({result['machine']['isa_path']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="log2 of the element counts (default: 16 18 20 22 24 26)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default: 1 2)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], metavar="DTYPE",
                        help=f"element types, from {', '.join(DTYPES)} (default: float32)")
    parser.add_argument("--modes", nargs="+", default=list(OUTPUT_MODES), metavar="MODE",
                        help="output modes: ort (ORT allocates the outputs), bound (preallocated numpy) (default: both)")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="ai.caffe2 variants to time (default: all): " + ", ".join(v.name for v in VARIANTS))
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds of timed runs per measurement (default 0.2)")
    parser.add_argument("--no-builtin", action="store_true", help="skip ORT's built-in Dropout")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--plot", metavar="OUT.png", help="draw GB/s against N per variant with the copy lines "
                        "(needs matplotlib)")
    from .bench_train import add_arguments as add_training_arguments

    add_training_arguments(parser)  # --training and its --train-* options


def _select_variants(names):
    if not names:
        return VARIANTS
    by_name = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise BenchError(f"unknown variant(s) {', '.join(map(repr, unknown))}; choose from "
                         + ", ".join(repr(v.name) for v in VARIANTS))
    return tuple(by_name[n] for n in names)


def run_bench(args) -> int:
    if getattr(args, "training", False):
        from .bench_train import run

        return run(args)
    try:
        if args.plot:  # fail before minutes of measuring
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise BenchError("--plot needs matplotlib (pip install matplotlib)") from None
        if args.min_time <= 0:
            raise BenchError(f"--min-time must be positive, not {args.min_time}")
        result = measure(args.sizes, args.threads, tuple(args.dtypes), tuple(args.modes),
                         _select_variants(args.variants), args.min_time, builtin=not args.no_builtin,
                         torch=not args.no_torch)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(format_header(result))
            print(format_table(result["rows"]))
        if args.plot:
            plot(result, args.plot)
            if not args.json:
                print(f"plot written to {args.plot}")
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m caffe2_ort.bench")
    add_arguments(p)
    sys.exit(run_bench(p.parse_args()))
