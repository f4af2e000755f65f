"""GPU benchmark of ai.caffe2 Dropout / DropoutGrad through onnxruntime-gpu's CUDA EP.

For float32, float16 and bfloat16 and N = 2^20 .. 2^28 elements: Dropout forward with and without
the mask output and DropoutGrad, run through ORT (IOBinding on device buffers that ORT allocated,
ORT on a user compute stream, run option disable_synchronize_execution_providers so runs queue
back to back), against, in the same run and on the same stream: a device-to-device copy of the same
bytes (torch), torch.native_dropout / native_dropout_backward, and the cuDNN engine (engine "CUDNN"
through ORT; no bfloat16). Each figure is the median over rounds of (events around `reps` calls) /
reps, so it includes ORT's per-run host cost where that exceeds the kernel's time (small N).

  python tests/gpu/bench_ort.py --lib build/gpu/libcaffe2_ort_cuda.so --out DIR [--max-log2 28]

Prints the table and writes DIR/bench_ort.json. Needs torch and onnxruntime-gpu; exits 2 without them.
GB/s counts the bytes each op must move: forward X read + Y written (+ mask written), DropoutGrad dY
and mask read + dX written; the cuDNN engine's mask is its reserve space (about N/8 bytes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DTYPES = ("float32", "float16", "bfloat16")
ESIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
RATIO = 0.5


def _model(op: str, onnx_type: int, engine: str):
    from onnx import TensorProto, helper

    attrs = {"ratio": RATIO}
    if engine:
        attrs["engine"] = engine
    b = TensorProto.BOOL
    if op == "grad":
        node = helper.make_node("DropoutGrad", ["dY", "mask"], ["dX"], domain="ai.caffe2", name="g", **attrs)
        ins = [("dY", onnx_type), ("mask", b)]
        outs = [("dX", onnx_type)]
    else:
        outputs = ["Y", "mask"] if op == "fwd_mask" else ["Y"]
        node = helper.make_node("Dropout", ["X"], outputs, domain="ai.caffe2", name="d", seed=1, **attrs)
        ins = [("X", onnx_type)]
        outs = [("Y", onnx_type)] + ([("mask", b)] if op == "fwd_mask" else [])
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info(n, t, None) for n, t in ins],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)],
                             ir_version=8).SerializeToString()


class Bench:
    def __init__(self, lib: str, torch, ort):
        self.lib, self.torch, self.ort = lib, torch, ort
        self.stream = torch.cuda.Stream()
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        from onnx import TensorProto

        self.onnx_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
                          "bfloat16": TensorProto.BFLOAT16}
        self.bool_type = TensorProto.BOOL
        self.tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

    def session(self, model: bytes):
        ort = self.ort
        so = ort.SessionOptions()
        so.register_custom_ops_library(self.lib)
        so.log_severity_level = 3
        opts = {"user_compute_stream": str(self.stream.cuda_stream)}
        s = ort.InferenceSession(model, so, providers=[("CUDAExecutionProvider", opts)])
        return s

    def ort_value(self, shape, onnx_type):
        return self.ort.OrtValue.ortvalue_from_shape_and_type(list(shape), onnx_type, "cuda", 0)

    def view(self, value, dtype: str, n: int):
        """A torch view of an OrtValue's device memory (CUDA array interface), for filling it."""
        torch = self.torch
        code = {"float32": "<f4", "float16": "<u2", "bfloat16": "<u2", "bool": "|b1"}[dtype]

        class Cai:
            __cuda_array_interface__ = {"shape": (n,), "typestr": code, "data": (value.data_ptr(), False),
                                        "version": 2, "strides": None}

        t = torch.as_tensor(Cai(), device="cuda")
        return t.view(self.tdt[dtype]) if dtype in ("float16", "bfloat16") else t

    def time_ms(self, fn, reps: int, rounds: int = 5) -> float:
        torch = self.torch
        torch.cuda.synchronize()  # inputs filled on other streams are ready
        with torch.cuda.stream(self.stream):
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            per_call = []
            for _ in range(rounds):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(self.stream)
                for _ in range(reps):
                    fn()
                b.record(self.stream)
                b.synchronize()
                per_call.append(a.elapsed_time(b) / reps)
        return float(np.median(per_call))

    def measure(self, dtype: str, log2n: int, engines) -> list:
        torch = self.torch
        n = 1 << log2n
        e = ESIZE[dtype]
        reps = 50 if log2n <= 22 else (20 if log2n <= 25 else 8)
        rows = []

        def row(op, impl, ms, nbytes, copy_ms):
            rows.append({"op": op, "dtype": dtype, "log2n": log2n, "impl": impl, "ms": ms,
                         "GBps": nbytes / ms / 1e6, "frac_copy": copy_ms / ms if copy_ms else None})

        with torch.cuda.stream(self.stream):
            gen = torch.Generator(device="cuda")
            gen.manual_seed(log2n)
            x_t = torch.randn(n, generator=gen, device="cuda").to(self.tdt[dtype])
            dy_t = torch.randn(n, generator=gen, device="cuda").to(self.tdt[dtype])
            mask_t = torch.rand(n, generator=gen, device="cuda") >= RATIO
        for op in ("fwd_mask", "fwd", "grad"):
            moved = n * (2 * e + (1 if op in ("fwd_mask", "grad") else 0))
            src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            t_copy = self.time_ms(lambda: dst.copy_(src), reps)
            row(op, "copy (same bytes)", t_copy, 2 * (moved // 2), t_copy)
            del src, dst
            for engine in engines:
                if engine == "CUDNN" and dtype == "bfloat16":
                    continue
                label = "caffe2_ort" if not engine else "caffe2_ort CUDNN"
                t, nbytes = self.ort_op(op, dtype, n, engine, x_t, dy_t, mask_t, reps)
                row(op, label, t, nbytes, t_copy)
            scale = 1.0 / (1.0 - RATIO)
            if op == "grad":
                t = self.time_ms(lambda: torch.ops.aten.native_dropout_backward(dy_t, mask_t, scale), reps)
            else:
                t = self.time_ms(lambda: torch.native_dropout(x_t, RATIO, True), reps)
            row(op, "torch.native_dropout" + ("_backward" if op == "grad" else ""), t, moved, t_copy)
            torch.cuda.empty_cache()
        return rows

    def ort_op(self, op, dtype, n, engine, x_t, dy_t, mask_t, reps):
        """(ms per run, bytes moved) of one op through ORT with device buffers."""
        ort_t, b = self.onnx_type[dtype], self.bool_type
        e = ESIZE[dtype]
        if op == "grad":
            io_fwd = None
            sess = self.session(_model("grad", ort_t, engine))
            io = sess.io_binding()
            dy = self.ort_value([n], ort_t)
            self.view(dy, dtype, n).copy_(dy_t)
            if engine == "CUDNN":  # the mask is the forward's reserve space
                fwd = self.session(_model("fwd_mask", ort_t, engine))
                io_fwd = fwd.io_binding()
                xv = self.ort_value([n], ort_t)
                self.view(xv, dtype, n).copy_(x_t)
                io_fwd.bind_ortvalue_input("X", xv)
                io_fwd.bind_output("Y", "cuda")
                io_fwd.bind_output("mask", "cuda")
                fwd.run_with_iobinding(io_fwd)
                mask = io_fwd.get_outputs()[1]
                mask_bytes = int(np.prod(mask.shape()))
            else:
                mask = self.ort_value([n], b)
                self.view(mask, "bool", n).copy_(mask_t)
                mask_bytes = n
            dx = self.ort_value([n], ort_t)
            io.bind_ortvalue_input("dY", dy)
            io.bind_ortvalue_input("mask", mask)
            io.bind_ortvalue_output("dX", dx)
            nbytes = 2 * n * e + mask_bytes
        else:
            sess = self.session(_model(op, ort_t, engine))
            io = sess.io_binding()
            xv = self.ort_value([n], ort_t)
            self.view(xv, dtype, n).copy_(x_t)
            io.bind_ortvalue_input("X", xv)
            io.bind_ortvalue_output("Y", self.ort_value([n], ort_t))
            nbytes = 2 * n * e
            if op == "fwd_mask":
                if engine == "CUDNN":
                    io.bind_output("mask", "cuda")  # reserve-space sized, allocated by ORT
                    sess.run_with_iobinding(io)
                    nbytes += int(np.prod(io.get_outputs()[1].shape()))
                else:
                    io.bind_ortvalue_output("mask", self.ort_value([n], b))
                    nbytes += n
        t = self.time_ms(lambda: sess.run_with_iobinding(io, self.run_options), reps)
        return t, nbytes


def format_table(rows: list) -> str:
    lines = ["op        dtype    N      impl                            ms        GB/s   x copy",
             "--------- -------- ------ ---------------------------- --------- -------- ------"]
    for r in rows:
        frac = f"{r['frac_copy']:6.3f}" if r["frac_copy"] is not None else "     -"
        lines.append(f"{r['op']:<9} {r['dtype']:<8} 2^{r['log2n']:<4} {r['impl']:<28} {r['ms']:9.4f} "
                     f"{r['GBps']:8.1f} {frac}")
    return "\n".join(lines)


def summary(rows: list) -> list:
    """Per op and dtype at N >= 2^26: the default engine's fraction of copy and its ratio to torch."""
    out = []
    for op in ("fwd_mask", "fwd", "grad"):
        for dtype in DTYPES:
            ours = [r for r in rows if r["op"] == op and r["dtype"] == dtype and r["impl"] == "caffe2_ort"
                    and r["log2n"] >= 26]
            for r in ours:
                torch_ms = [t["ms"] for t in rows if t["op"] == op and t["dtype"] == dtype and
                            t["log2n"] == r["log2n"] and t["impl"].startswith("torch")]
                speedup = torch_ms[0] / r["ms"] if torch_ms else float("nan")
                out.append(f"{op} {dtype} 2^{r['log2n']}: {r['frac_copy']:.3f} of copy "
                           f"(target >= 0.9), {speedup:.2f}x torch (target > 1)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True, help="libcaffe2_ort_cuda.so")
    ap.add_argument("--out", default=".")
    ap.add_argument("--min-log2", type=int, default=20)
    ap.add_argument("--max-log2", type=int, default=28)
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--no-cudnn", action="store_true")
    args = ap.parse_args()
    try:
        import torch
        import onnxruntime as ort
    except ImportError as e:
        print(f"bench_ort: needs torch and onnxruntime-gpu: {e}")
        return 2
    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"bench_ort: no GPU for torch ({torch.cuda.is_available()}) or no CUDA EP in onnxruntime "
              f"{ort.__version__} ({ort.get_available_providers()})")
        return 2
    bench = Bench(args.lib, torch, ort)
    engines = [""] if args.no_cudnn else ["", "CUDNN"]
    rows = []
    for dtype in DTYPES:
        for log2n in range(args.min_log2, args.max_log2 + 1, args.step):
            rows += bench.measure(dtype, log2n, engines)
            print(f"  [{dtype} 2^{log2n} done]", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    (Path(args.out) / "bench_ort.json").write_text(json.dumps(
        {"device": device, "onnxruntime": ort.__version__, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"\nai.caffe2 ops through onnxruntime {ort.__version__} CUDA EP on {device}, ratio {RATIO}; "
          "ms per call (median of CUDA-event timings), GB/s of the bytes each op must move, x copy = "
          "copy time / op time:")
    print(format_table(rows))
    print("\nAt N >= 2^26 (default engine):")
    for line in summary(rows):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
