"""rng = "caffe2_mt19937" on the CUDA execution provider.

The default engine draws Caffe2's MT19937 stream on the host (the CPU kernel's own code) and applies
it on the device (ort_ops/cuda/mt19937_staging.h), so its masks are the CPU EP's bit for bit for
the same seed and run; a training run under CUDA-graph capture is refused naming the node and the
rng. Under engine "CUDNN" cuDNN draws, as Caffe2's GPU did, and ORT's log gets one warning.

The source checks at the top run everywhere; the rest needs onnxruntime-gpu, a usable GPU and
libcaffe2_ort_cuda.so (as tests/test_cuda_ort.py, whose helpers it uses) and skips with the reason
otherwise. tests/gpu/run_all.sh runs it on a GPU machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

from caffe2_ort import opdefs  # noqa: E402

MT = "caffe2_mt19937"
STAGING = ROOT / "ort_ops" / "cuda" / "mt19937_staging.h"
CUDA_DROPOUT = ROOT / "ort_ops" / "cuda" / "dropout.cc"

# ------------------------------------------------------------------------------------ source checks


def _body(text: str, opening: str) -> str:
    """The brace-balanced body that follows `opening` (which ends with '{')."""
    start = text.index(opening) + len(opening)
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    raise AssertionError(f"unbalanced body after {opening!r}")


def _code(text: str) -> str:
    """C++ source without comments and string literals (names in messages are not calls)."""
    return re.sub(r'//[^\n]*|"(?:[^"\\\n]|\\.)*"', "", text)


_SYNC = re.compile(r"\bcuda(StreamSynchronize|DeviceSynchronize|EventSynchronize|StreamQuery)\s*\(")


def test_compute_path_never_waits_for_the_device():
    """Only the staging pool's destructor (the kernel going away) may wait; Compute never does."""
    for path in (STAGING, CUDA_DROPOUT):
        text = _code(path.read_text())
        hits = _SYNC.findall(text)
        allowed = _SYNC.findall(_body(text, "~PinnedStaging() {")) if path == STAGING else []
        assert len(hits) == len(allowed), f"{path.name}: a synchronising call outside the destructor: {hits}"
    # a buffer is reused only after a non-blocking query says its copy has run
    take = _body(_code(STAGING.read_text()), "Buffer& Take(size_t bytes, const void* on_device) {")
    assert "cudaEventQuery(" in take and "cudaErrorNotReady" in take


def test_pinned_memory_comes_only_from_the_staging_pool():
    text = _code(STAGING.read_text())
    assert len(re.findall(r"\bcuda(HostAlloc|MallocHost)\s*\(", text)) == 1
    assert "cudaHostAlloc(" in _body(text, "Buffer& Allocate(size_t bytes) {")
    assert len(re.findall(r"\bcudaFreeHost\s*\(", text)) == 1
    assert "cudaFreeHost(" in _body(text, "~PinnedStaging() {")
    others = [p.name for p in (ROOT / "ort_ops").rglob("*") if p.suffix in (".h", ".cc", ".cu", ".cuh")
              and p != STAGING and re.search(r"\bcuda(HostAlloc|MallocHost|FreeHost)\s*\(", _code(p.read_text()))]
    assert not others, others


def test_capture_refusal_message_is_the_op_tables():
    """The C++ message (string literals around the node and the rng) equals opdefs.cuda_graph_rng_message."""
    call = _body(STAGING.read_text(), "void RefuseCapture(cudaStream_t stream) const {")
    args = call[call.index("Fail(") + len("Fail("):]
    pieces = re.findall(r'"((?:[^"\\]|\\.)*)"|\b(where_|rng_text_)\b', args)
    text = "".join(lit if lit else {"where_": "<where>", "rng_text_": "<rng>"}[name] for lit, name in pieces)
    assert text == opdefs.cuda_graph_rng_message("<where>", "<rng>")


# ------------------------------------------------------------------------------------ on a GPU

pytest.importorskip("onnxruntime")
from test_cuda_ort import (CPU, CUDA, _lib, _same, _sample, _session, assert_first_runs_of,  # noqa: E402,F401
                           gpu, run_in_threads)

from caffe2_ort import reference as R  # noqa: E402
from ort_helpers import DTYPES, dropout_model, plain_dropout_model, shared_path  # noqa: E402

# (shape, ratio, seed): odd sizes (not a multiple of 4, 8 or 64), rank 0, empty, seeds at and above
# 2^32 (the generator takes seed mod 2^32), and ratios 0 and 1, which still draw 2 words per element.
CASES = [
    ((7, 3, 1001), 0.4, 1234),
    ((1,), 0.5, 2**32 + 7),
    ((63,), 0.5, 2**32 - 1),
    ((65,), 0.999, 5),
    ((3 * 4097 + 1,), 0.3, 77),
    ((129, 7), 0.0, 9),
    ((11, 13), 1.0, 11),
    ((), 0.5, 3),
    ((0, 5), 0.5, 3),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape,ratio,seed", CASES)
def test_masks_equal_cpu_every_run(gpu, dtype, shape, ratio, seed):
    model = dropout_model(dtype, ratio=ratio, seed=seed, rng=MT)
    cpu, cuda = _session(model, CPU), _session(model, CUDA)
    stream = R.DropoutStream(seed, rng=MT)
    x = np.asarray(_sample(shape, dtype))
    for run in range(3):  # runs 0, 1, 2 of fresh sessions: the same segments of the stream
        xc, yc, mc = cpu.run(None, {"X": x})
        xg, yg, mg = cuda.run(None, {"X": x})
        assert np.array_equal(mc, mg), f"run {run}: masks differ"
        assert np.array_equal(mg, stream.draw(x.shape, ratio=ratio)), f"run {run}: not the reference stream"
        assert _same(yc, yg), f"run {run}: Y differs"
        assert _same(xc, xg)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_without_mask_output_and_test_mode(gpu, dtype):
    x = _sample((5, 4097), dtype)
    nomask = dropout_model(dtype, with_mask=False, ratio=0.3, seed=9, rng=MT)
    cpu, cuda = _session(nomask, CPU), _session(nomask, CUDA)
    for run in range(3):
        assert _same(cpu.run(None, {"X": x})[1], cuda.run(None, {"X": x})[1]), f"run {run}"
    inference = dropout_model(dtype, ratio=0.3, seed=9, rng=MT, is_test=1)
    xg, yg, mg = _session(inference, CUDA).run(None, {"X": x})
    assert mg.all() and _same(yg, xg)


def test_runs_of_changing_sizes_continue_the_stream(gpu):
    """A dynamic shape: each run takes the next 2 n words, and larger runs grow the staging buffers."""
    model = plain_dropout_model(ratio=0.5, seed=31, rng=MT, name="grow")
    cpu, cuda = _session(model, CPU), _session(model, CUDA)
    for n in (1000, 5, 70001, 3, (1 << 20) + 9, 64):
        x = _sample((n,), "float32", special=False).astype(np.float32)
        yc, mc = cpu.run(None, {"X": x})
        yg, mg = cuda.run(None, {"X": x})
        assert np.array_equal(mc, mg) and _same(yc, yg), n


def test_large_float16(gpu):
    model = dropout_model("float16", ratio=0.25, seed=2024, rng=MT)
    cpu, cuda = _session(model, CPU), _session(model, CUDA)
    x = _sample(((1 << 22) + 3,), "float16", special=False)
    for run in range(2):
        _, yc, mc = cpu.run(None, {"X": x})
        _, yg, mg = cuda.run(None, {"X": x})
        assert np.array_equal(mc, mg) and _same(yc, yg), f"run {run}"


def test_iobinding_in_place_on_device_buffers(gpu):
    import onnxruntime as ort

    model = plain_dropout_model(ratio=0.5, seed=17, rng=MT, name="io")
    cpu, cuda = _session(model, CPU), _session(model, CUDA)
    x = _sample((3, 1027), "float32").astype(np.float32)
    io = cuda.io_binding()
    io.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    outs = {"Y": ort.OrtValue.ortvalue_from_shape_and_type(x.shape, np.float32, "cuda", 0),
            "mask": ort.OrtValue.ortvalue_from_shape_and_type(x.shape, np.bool_, "cuda", 0)}
    for name, v in outs.items():
        io.bind_ortvalue_output(name, v)
    for run in range(3):
        cuda.run_with_iobinding(io)
        io.synchronize_outputs()
        yc, mc = cpu.run(None, {"X": x})
        assert np.array_equal(outs["mask"].numpy(), mc) and _same(outs["Y"].numpy(), yc), f"run {run}"


def test_four_python_threads_take_consecutive_segments(gpu):
    """Concurrent runs serialise on the node's stream: the 24 masks are exactly the CPU's runs 0..23."""
    model = plain_dropout_model(ratio=0.5, seed=21, rng=MT, name="threads")
    cuda, cpu = _session(model, CUDA), _session(model, CPU)
    x = _sample((257, 129), "float32", special=False).astype(np.float32)
    results = run_in_threads(lambda: cuda.run(None, {"X": x}), threads=4, per_thread=6)
    assert_first_runs_of(results, lambda: cpu.run(None, {"X": x}))


def test_caffe2_known_answers_on_cuda(gpu):
    data = np.load(shared_path("caffe2_rng", "kat_public.npz"))
    cases = sorted({k.split("/")[0] for k in data.files}, key=int)
    for c in cases:
        seed, ratio, x = int(data[f"{c}/seed"]), float(data[f"{c}/ratio"]), data[f"{c}/x"]
        cuda = _session(plain_dropout_model(ratio=ratio, seed=seed, rng=MT, name=f"kat{c}"), CUDA)
        for run in range(3):
            y, mask = cuda.run(None, {"X": x})
            assert np.array_equal(mask, data[f"{c}/mask{run}"]), (c, run)
            assert _same(y, data[f"{c}/y{run}"]), (c, run)


# One process per case: ORT's log goes to the process's stderr, and a failed CUDA-graph capture
# must not leave a capturing stream in the pytest process.
_SCRIPT = r"""
import sys, numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
lib, engine, mode, op = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
attrs = {"engine": engine} if engine else {}
if mode == "graph-test":
    attrs["is_test"] = 1
# BitmaskDropout's mask: 1024 elements in 32 uint32 words
mask_type, mask_shape, mask_np = ((TensorProto.UINT32, [32], np.uint32) if op == "BitmaskDropout"
                                  else (TensorProto.BOOL, [1024], np.bool_))
node = helper.make_node(op, ["X"], ["Y", "mask"], domain="ai.caffe2", name="gpu_mt", ratio=0.5, seed=3,
                        rng="caffe2_mt19937", **attrs)
g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1024])],
                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1024]),
                       helper.make_tensor_value_info("mask", mask_type, mask_shape)])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)], ir_version=8)
so = ort.SessionOptions()
so.log_severity_level = 1
so.register_custom_ops_library(lib)
opts = {"enable_cuda_graph": "1"} if mode.startswith("graph") else {}
s = ort.InferenceSession(m.SerializeToString(), so, providers=[("CUDAExecutionProvider", opts)])
x = np.ones(1024, np.float32)
kept = lambda m: int(np.unpackbits(np.ascontiguousarray(m).view(np.uint8)).sum())  # kept elements, either mask
if mode.startswith("graph"):
    io = s.io_binding()
    io.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    y = ort.OrtValue.ortvalue_from_shape_and_type([1024], np.float32, "cuda", 0)
    mask = ort.OrtValue.ortvalue_from_shape_and_type(mask_shape, mask_np, "cuda", 0)
    io.bind_ortvalue_output("Y", y)
    io.bind_ortvalue_output("mask", mask)
    try:
        for _ in range(3):
            s.run_with_iobinding(io)
            io.synchronize_outputs()
    except Exception as e:
        print("REFUSED:", e)
        sys.exit(0)
    print("RAN", kept(mask.numpy()))
else:
    print("RAN", kept(s.run(None, {"X": x})[1]))
"""


def _run(engine, mode="plain", op="Dropout"):
    # keep the caller's PYTHONPATH after ours: on the GPU machine it holds the unpacked onnxruntime-gpu
    path = os.pathsep.join(p for p in (str(ROOT / "python"), os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, _lib(), engine, mode, op], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": path})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, out.stderr


def test_default_engine_runs_without_warning(gpu):
    stdout, stderr = _run("")
    assert stdout.startswith("RAN"), stdout + stderr[-2000:]
    assert "does not apply" not in stderr


def test_cuda_graph_capture_is_refused_naming_node_and_rng(gpu):
    stdout, stderr = _run("", "graph")
    assert stdout.startswith("REFUSED:"), stdout + stderr[-2000:]
    assert opdefs.cuda_graph_rng_message(opdefs.where("Dropout", "gpu_mt"), MT) in stdout


def test_bitmask_cuda_graph_capture_is_refused_naming_node_and_rng(gpu):
    stdout, stderr = _run("", "graph", op="BitmaskDropout")
    assert stdout.startswith("REFUSED:"), stdout + stderr[-2000:]
    assert opdefs.cuda_graph_rng_message(opdefs.where("BitmaskDropout", "gpu_mt"), MT) in stdout
    stdout, stderr = _run("", "graph-test", op="BitmaskDropout")
    assert stdout.startswith("RAN 1024"), stdout + stderr[-2000:]  # test mode keeps all


def test_cuda_graph_capture_of_test_mode_runs(gpu):
    """Test mode draws nothing, so it may be captured and replayed."""
    stdout, stderr = _run("", "graph-test")
    assert stdout.strip() == "RAN 1024", stdout + stderr[-2000:]


def test_cudnn_engine_runs_and_warns_once(gpu):
    stdout, stderr = _run("CUDNN")
    assert stdout.startswith("RAN"), stdout + stderr[-2000:]
    warning = "ai.caffe2 Dropout node 'gpu_mt': rng = 'caffe2_mt19937' does not apply under engine 'CUDNN'"
    assert stderr.count(warning) == 1, stderr[-2000:]
