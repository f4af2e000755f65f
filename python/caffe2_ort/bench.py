"""``caffe2-ort bench``: Dropout forward with mask, float32, against a plain copy of the same bytes
(same thread count, same run), ORT's built-in ONNX Dropout (opset 13, training_mode) and PyTorch's
CPU dropout when torch is importable.

Bytes per run = read X + write Y + write mask = 9 N. The copy baseline moves the same 9 N bytes
(4.5 N read, 4.5 N written) with the same number of threads. Medians of repeated runs after warm-up.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEFAULT_SIZES = (16, 20, 24, 26)
RATIO = 0.5


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="log2 of the element counts (default: 16 20 24 26)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default: 1 2)")
    parser.add_argument("--min-time", type=float, default=0.4, help="seconds of timed runs per measurement")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    from .bench_train import add_arguments as add_training_arguments

    add_training_arguments(parser)  # --training and its --train-* options


def _median_time(fn, min_time: float, min_reps: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return statistics.median(times)


class _ThreadedCopy:
    """memcpy of the same bytes split over `threads` threads (numpy releases the GIL while copying)."""

    def __init__(self, nbytes: int, threads: int):
        self.src = np.ones(nbytes, np.uint8)
        self.dst = np.zeros(nbytes, np.uint8)
        self.threads = threads
        bounds = np.linspace(0, nbytes, threads + 1).astype(int) // 64 * 64
        bounds[-1] = nbytes
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


def _ort_runner(model, x, threads, register):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if register:
        from ._library import register as register_plugin

        register_plugin(so, device="cpu")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x))
    # Outputs written into buffers allocated once, so the timing is the kernel's, not Python's copies.
    y = ort.OrtValue.ortvalue_from_numpy(np.empty_like(x))
    mask = ort.OrtValue.ortvalue_from_numpy(np.empty(x.shape, bool))
    binding.bind_ortvalue_output("Y", y)
    binding.bind_ortvalue_output("mask", mask)
    return lambda: sess.run_with_iobinding(binding)


def _caffe2_model(rng=""):
    from onnx import TensorProto, helper

    from ._library import DOMAIN

    node = helper.make_node("Dropout", ["X"], ["Y", "mask"], domain=DOMAIN, ratio=RATIO, seed=1,
                            **({"rng": rng} if rng else {}))
    graph = helper.make_graph(
        [node], "bench", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                             ir_version=8)


def _onnx_dropout_model():
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Dropout", ["X", "ratio", "training_mode"], ["Y", "mask"], seed=1)
    inits = [numpy_helper.from_array(np.array(RATIO, np.float32), "ratio"),
             numpy_helper.from_array(np.array(True), "training_mode")]
    graph = helper.make_graph(
        [node], "bench_onnx", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _torch_runner(x, threads):
    import torch

    torch.set_num_threads(threads)
    tx = torch.from_numpy(x)
    return lambda: torch.nn.functional.dropout(tx, p=RATIO, training=True)


def measure(sizes, threads_list, min_time=0.4, use_torch=True):
    try:
        import torch  # noqa: F401

        have_torch = use_torch
    except ImportError:
        have_torch = False
    caffe2_model, onnx_model, mt_model = _caffe2_model(), _onnx_dropout_model(), _caffe2_model("caffe2_mt19937")
    rows = []
    for log2n in sizes:
        n = 1 << log2n
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        nbytes = 9 * n
        for threads in threads_list:
            copy = _ThreadedCopy(nbytes // 2, threads)
            results = {"copy": _median_time(copy, min_time)}
            copy.close()
            del copy
            results["ai.caffe2 Dropout"] = _median_time(_ort_runner(caffe2_model, x, threads, True), min_time)
            results["ai.caffe2 caffe2_mt19937"] = _median_time(_ort_runner(mt_model, x, threads, True), min_time)
            results["ORT Dropout (opset 13)"] = _median_time(_ort_runner(onnx_model, x, threads, False), min_time)
            if have_torch:
                results["torch dropout"] = _median_time(_torch_runner(x, threads), min_time)
            for impl, seconds in results.items():
                rows.append({
                    "n": n, "log2n": log2n, "threads": threads, "impl": impl, "ms": seconds * 1e3,
                    "gbps": nbytes / seconds / 1e9, "vs_copy": results["copy"] / seconds,
                })
    return rows


def format_table(rows) -> str:
    lines = [f"{'N':>10} {'thr':>3}  {'implementation':<24} {'ms':>9} {'GB/s':>7} {'x copy':>7}"]
    for r in rows:
        lines.append(f"{'2^%d' % r['log2n']:>10} {r['threads']:>3}  {r['impl']:<24} {r['ms']:>9.3f} "
                     f"{r['gbps']:>7.2f} {r['vs_copy']:>7.2f}")
    return "\n".join(lines)


def run_bench(args) -> int:
    if getattr(args, "training", False):
        from .bench_train import run

        return run(args)
    rows = measure(args.sizes, args.threads, args.min_time, use_torch=not args.no_torch)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("bytes per run = 9 N (read X, write Y, write mask); 'x copy' = copy time / this time")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m caffe2_ort.bench")
    add_arguments(p)
    sys.exit(run_bench(p.parse_args()))
