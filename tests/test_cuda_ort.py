"""The CUDA kernels through onnxruntime-gpu's CUDAExecutionProvider, compared with the CPU kernels.

Needs onnxruntime with CUDAExecutionProvider (onnxruntime-gpu), a usable GPU and
libcaffe2_ort_cuda.so (CAFFE2_ORT_CUDA_LIB, build/cuda/, build/gpu/ or python/caffe2_ort/lib/); each
test skips with the reason otherwise (CI has no GPU: there they skip too). tests/gpu/run_all.sh runs
them on a GPU machine. The source checks at the top run everywhere.

Covered: both ops for every element type with masks bit-identical to the CPU EP for the same seed and
run; rank 0, empty and 2^31 + 5 elements; IOBinding with device buffers; 4 Python threads on one
session; the cuDNN engine's round trip; CUDA-graph replays; no Memcpy around our nodes; a converted
zoo net (AlexNet) in training mode; a TrainingSession step where caffe2_ort.training exists.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

from caffe2_ort import reference as R  # noqa: E402

CUDA_SOURCES = ROOT / "ort_ops" / "cuda"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


# ------------------------------------------------------------------------------------ source checks
# (no GPU needed) Compute paths must not allocate through CUDA or create cuDNN handles.


def _plugin_sources():
    return sorted(p for p in CUDA_SOURCES.iterdir() if p.suffix in (".h", ".cc", ".cu", ".cuh"))


def test_plugin_never_allocates_device_memory_through_cuda():
    offenders = [f"{p.name}: {m.group(0)}" for p in _plugin_sources()
                 for m in re.finditer(r"\bcuda(Malloc\w*|FreeAsync)\s*\(", p.read_text())]
    assert not offenders, "device memory must come from ORT's allocator: " + ", ".join(offenders)


def test_cudnn_handles_are_created_only_with_the_kernel():
    hits = [(p.name, line) for p in _plugin_sources() for line in p.read_text().splitlines()
            if re.search(r"\bcudnnCreate\s*\(", line)]
    # one place: CudnnHandleSource's constructor, which kernels construct at creation
    assert len(hits) == 1 and hits[0][0] == "dnn_handle.cc", hits
    text = (CUDA_SOURCES / "dnn_handle.cc").read_text()
    ctor = text[text.index("CudnnHandleSource::CudnnHandleSource("):text.index("CudnnHandleSource::~")]
    assert "cudnnCreate(" in ctor
    # and the kernels build their handle sources in their constructors only
    src = (CUDA_SOURCES / "dnn_kernel.h").read_text()
    ctor = src[src.index("  CudnnKernelState(const OrtKernelInfo*"):src.index("  CudnnKernelState(const CudnnKernelState&)")]
    assert src.count("make_unique<CudnnHandleSource>") == ctor.count("make_unique<CudnnHandleSource>") > 0


def test_gradient_never_seeds_cudnn_states():
    src = (CUDA_SOURCES / "dnn_kernel.h").read_text()
    branches = re.findall(r"if \(role_ == Role::kBackward\) \{(.*?)\n    \}", src, re.S)
    assert len(branches) == 2  # at kernel creation, and on the first call with onnxruntime 1.17
    for branch in branches:
        assert "AttachStates" in branch and "SeedStates" not in branch


# ------------------------------------------------------------------------------------ GPU set-up

ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import caffe2_ort  # noqa: E402
from ort_helpers import DTYPES, bits, dropout_model, grad_cast_model, make_model, np_dtype  # noqa: E402


def _lib() -> str:
    env = os.environ.get("CAFFE2_ORT_CUDA_LIB")
    cands = [Path(env)] if env else []
    cands += [ROOT / "build" / d / "libcaffe2_ort_cuda.so" for d in ("cuda", "gpu")]
    cands += [ROOT / "python" / "caffe2_ort" / "lib" / "libcaffe2_ort_cuda.so"]
    for c in cands:
        if c.is_file():
            return str(c)
    pytest.skip("libcaffe2_ort_cuda.so not built (pip install . builds it where nvcc is found)")


_GPU_STATE: dict = {}


def _require_gpu() -> None:
    """Skips unless onnxruntime offers a working CUDA EP here (checked once)."""
    if "reason" not in _GPU_STATE:
        reason = ""
        if CUDA not in ort.get_available_providers():
            reason = f"onnxruntime {ort.__version__} here has no {CUDA} (needs onnxruntime-gpu and a GPU)"
        else:
            if hasattr(ort, "preload_dlls"):
                try:
                    ort.preload_dlls()
                except Exception:  # the libraries may be found through LD_LIBRARY_PATH instead
                    pass
            try:
                probe = make_model([helper.make_node("Relu", ["X"], ["Y"])],
                                   [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                                   [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
                s = ort.InferenceSession(probe.SerializeToString(), providers=[CUDA])
                if s.get_providers()[0] != CUDA:
                    reason = f"{CUDA} is listed but not usable (fell back to {s.get_providers()})"
            except Exception as e:
                reason = f"{CUDA} unusable here: {e}"
        _GPU_STATE["reason"] = reason
    if _GPU_STATE["reason"]:
        pytest.skip(_GPU_STATE["reason"])


@pytest.fixture
def gpu():
    _require_gpu()
    return _lib()


def _bytes(model):
    return model if isinstance(model, bytes) else model.SerializeToString()


def _session(model, provider, cuda_options=None, threads=0, **so_settings):
    so = ort.SessionOptions()
    so.register_custom_ops_library(_lib())
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    for k, v in so_settings.items():
        setattr(so, k, v)
    if provider == CPU:
        return ort.InferenceSession(_bytes(model), so, providers=[CPU])
    opts = {"use_tf32": "0"}
    opts.update(cuda_options or {})
    s = ort.InferenceSession(_bytes(model), so, providers=[(CUDA, opts), CPU])
    assert s.get_providers()[0] == CUDA
    return s


def _same(a, b) -> bool:
    """Bit-identical, except that any NaN equals any NaN (the GPU's multiplier gives its canonical NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == np.bool_:
        return np.array_equal(a, b)
    nan = np.isnan(a.astype(np.float64))
    return np.array_equal(nan, np.isnan(b.astype(np.float64))) and np.array_equal(bits(a)[~nan], bits(b)[~nan])


def _sample(shape, dtype, seed=1, special=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3.0
    if special and x.size >= 16:
        flat = x.reshape(-1)
        flat[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 6e-8, 65504.0]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        # values exact in the narrow type travel through float32/float64 unchanged
        wide = np.float64 if dtype == "float64" else np.float32
        return x.astype(np_dtype(dtype)).astype(wide)


def _cpu_and_gpu(model, **cuda_options):
    return _session(model, CPU), _session(model, CUDA, cuda_options)


# ------------------------------------------------------------------------------------ both ops, every type


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("ratio", [0.4, 0.0, 1.0, 1e-12])
def test_forward_matches_cpu_every_run(gpu, dtype, ratio):
    model = dropout_model(dtype, ratio=ratio, seed=1234)
    cpu, cuda = _cpu_and_gpu(model)
    x = _sample((7, 3, 1001), dtype)
    for run in range(3):  # runs 0, 1, 2 of a fresh session: same base on both
        xc, yc, mc = cpu.run(None, {"X": x})
        xg, yg, mg = cuda.run(None, {"X": x})
        assert np.array_equal(mc, mg), f"run {run}: masks differ"
        assert _same(yc, yg), f"run {run}: Y differs"
        assert _same(xc, xg)
    if 0 < ratio < 1 and ratio > 1e-6:
        assert 0.55 < mg.mean() < 0.65


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_forward_without_mask_and_test_mode(gpu, dtype):
    x = _sample((5, 4097), dtype)
    nomask = dropout_model(dtype, with_mask=False, ratio=0.3, seed=9)
    withmask = dropout_model(dtype, ratio=0.3, seed=9)
    (cpu_nm, gpu_nm), (cpu_m, gpu_m) = _cpu_and_gpu(nomask), _cpu_and_gpu(withmask)
    for _ in range(2):
        y_cpu = cpu_nm.run(None, {"X": x})[1]
        y_gpu = gpu_nm.run(None, {"X": x})[1]
        assert _same(y_cpu, y_gpu)
        assert _same(y_gpu, gpu_m.run(None, {"X": x})[1])  # the mask output does not change Y
    test = dropout_model(dtype, ratio=0.3, is_test=1)
    _, cuda = _cpu_and_gpu(test)
    xf, y, m = cuda.run(None, {"X": x})
    assert _same(y, xf) and m.dtype == np.bool_ and m.all()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_grad_matches_cpu(gpu, dtype):
    dy = _sample((3, 5, 333), dtype, seed=4)
    keep = R.keep_mask(77, 5, dy.shape, 0.35)
    for attrs in ({"ratio": 0.35}, {"ratio": 1.0}, {"ratio": 0.35, "is_test": 1}):
        cpu, cuda = _cpu_and_gpu(grad_cast_model(dtype, **attrs))
        dc = cpu.run(None, {"dY": dy, "mask": keep})[1]
        dg = cuda.run(None, {"dY": dy, "mask": keep})[1]
        assert _same(dc, dg), attrs


def test_grad_rejects_mask_of_another_size(gpu):
    _, cuda = _cpu_and_gpu(grad_cast_model("float32", ratio=0.5))
    with pytest.raises(Exception, match=r"DropoutGrad node 'grad'.*mask has 10 elements but dY has 12"):
        cuda.run(None, {"dY": np.ones(12, np.float32), "mask": np.ones(10, bool)})


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)])
def test_rank0_and_empty(gpu, dtype, shape):
    wide = np.float64 if dtype == "float64" else np.float32
    x = _sample(shape, dtype, special=False) if shape else np.asarray(1.5, wide)
    cpu, cuda = _cpu_and_gpu(dropout_model(dtype, ratio=0.5, seed=3))
    for _ in range(2):
        xc, yc, mc = cpu.run(None, {"X": x})
        xg, yg, mg = cuda.run(None, {"X": x})
        assert yg.shape == shape and mg.shape == shape
        assert np.array_equal(mc, mg) and _same(yc, yg)
    gc_, gg = _cpu_and_gpu(grad_cast_model(dtype, ratio=0.5))
    assert _same(gc_.run(None, {"dY": x, "mask": mc})[1], gg.run(None, {"dY": x, "mask": mc})[1])


@pytest.mark.slow
def test_more_than_2_31_elements(gpu):
    """float16, 2^31 + 5 elements through IOBinding: 64-bit indexing, same mask and Y as the CPU EP."""
    n = (1 << 31) + 5
    model = make_model(
        [helper.make_node("Dropout", ["X"], ["Y", "mask"], domain="ai.caffe2", name="huge", ratio=0.5, seed=99)],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT16, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, None),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, None)])
    # a position-dependent pattern of finite float16 values, without a 2^31-element float64 temporary
    x = np.resize((np.arange(30011, dtype=np.uint16) + 1000).view(np.float16), n)
    cuda = _session(model, CUDA)
    io = cuda.io_binding()
    xv = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    io.bind_ortvalue_input("X", xv)
    io.bind_output("Y", "cuda")
    io.bind_output("mask", "cuda")
    cuda.run_with_iobinding(io)
    y_gpu, m_gpu = (v.numpy() for v in io.get_outputs())
    del io, xv
    cpu = _session(model, CPU, threads=os.cpu_count() or 1)
    y_cpu, m_cpu = cpu.run(None, {"X": x})
    assert np.array_equal(m_cpu, m_gpu)
    assert np.array_equal(y_cpu.view(np.uint16), y_gpu.view(np.uint16))
    assert 0.49 < m_gpu[-(1 << 24):].mean() < 0.51


# ------------------------------------------------------------------------------------ BitmaskDropout


BITMASK_SHAPES = [(7, 3, 1001), (1,), (31,), (32,), (33,), (65,), (4099,), (), (0,), (3, 0, 2)]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rng", ["philox", "caffe2_mt19937"])
@pytest.mark.parametrize("ratio", [0.4, 0.0, 1.0])
def test_bitmask_dropout_matches_cpu_every_run(gpu, dtype, rng, ratio):
    """BitmaskDropout beside Dropout (same seed) on both EPs: the CUDA EP's packed masks equal the CPU
    EP's on every run (and Dropout's packed bool mask), Y equal; padding bits 0."""
    from test_bitmask_ops import inputs_for, packed, pair_model

    model = pair_model(dtype, BITMASK_SHAPES, ratio=ratio, seed=4321, rng=rng)
    cpu, cuda = _cpu_and_gpu(model)
    names = [o.name for o in cuda.get_outputs()]
    feeds = inputs_for(dtype, BITMASK_SHAPES, seed=3)
    for run in range(3):
        oc = dict(zip(names, cpu.run(None, feeds)))
        og = dict(zip(names, cuda.run(None, feeds)))
        for i, shape in enumerate(BITMASK_SHAPES):
            tag = f"run {run} shape {shape}"
            assert og[f"M{i}_b"].dtype == np.uint32 and np.array_equal(og[f"M{i}_b"], oc[f"M{i}_b"]), tag
            assert np.array_equal(og[f"M{i}_b"], packed(og[f"M{i}_d"])), tag
            assert _same(og[f"Y{i}_b"], oc[f"Y{i}_b"]) and _same(og[f"Y{i}_b"], og[f"Y{i}_d"]), tag


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_bitmask_test_mode_and_no_mask_output(gpu, dtype):
    from test_bitmask_ops import inputs_for, pair_model

    test = pair_model(dtype, BITMASK_SHAPES, ratio=0.3, is_test=1, seed=2)
    cpu, cuda = _cpu_and_gpu(test)
    names = [o.name for o in cuda.get_outputs()]
    feeds = inputs_for(dtype, BITMASK_SHAPES, seed=4)
    oc, og = dict(zip(names, cpu.run(None, feeds))), dict(zip(names, cuda.run(None, feeds)))
    for i in range(len(BITMASK_SHAPES)):
        assert np.array_equal(og[f"M{i}_b"], oc[f"M{i}_b"]) and _same(og[f"Y{i}_b"], oc[f"Y{i}_b"])
    n = 4099
    nodes = [helper.make_node("BitmaskDropout", ["X"], ["Y"], domain="ai.caffe2", ratio=0.3, seed=5)]
    f = TensorProto.FLOAT
    model = make_model(nodes, [helper.make_tensor_value_info("X", f, [n])],
                       [helper.make_tensor_value_info("Y", f, None)])
    x = _sample((n,), "float32")
    cpu, cuda = _cpu_and_gpu(model)
    for _ in range(2):
        assert _same(cpu.run(None, {"X": x})[0], cuda.run(None, {"X": x})[0])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_bitmask_grad_matches_cpu(gpu, dtype):
    from test_bitmask_ops import grad_pair_model, packed

    rng = np.random.default_rng(12)
    for attrs in ({"ratio": 0.35}, {"ratio": 1.0}, {"ratio": 0.35, "is_test": 1}):
        cpu, cuda = _cpu_and_gpu(grad_pair_model(dtype, **attrs))
        for shape in [(3, 5, 333), (33,), (1,), (), (0,)]:
            wide = np.float64 if dtype == "float64" else np.float32
            dy = _sample(shape, dtype, seed=5) if shape else np.asarray(-2.5, wide)
            keep = np.asarray(rng.random(shape) < 0.6)
            words = packed(keep)
            if keep.size % 32:
                words[-1] |= np.uint32(0xFFFFFFFF << (keep.size % 32) & 0xFFFFFFFF)  # padding is not read
            feeds = {"dY": dy, "M": keep, "W": words}
            dc, dg = cpu.run(None, feeds), cuda.run(None, feeds)
            assert _same(dg[1], dc[1]) and _same(dg[1], dg[0]), (attrs, shape)


def test_bitmask_grad_rejects_a_wrong_word_count(gpu):
    from test_bitmask_ops import grad_model as bitmask_grad_model

    _, cuda = _cpu_and_gpu(bitmask_grad_model(name="g", ratio=0.5))
    with pytest.raises(Exception, match=r"BitmaskDropoutGrad node 'g': mask has 3 words but dY has 33 elements, "
                                         r"which need 2 words"):
        cuda.run(None, {"dY": np.ones(33, np.float32), "M": np.ones(3, np.uint32)})


# ------------------------------------------------------------------------------------ IOBinding, threads


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_iobinding_with_device_buffers(gpu, dtype):
    t = DTYPES[dtype]
    model = make_model(
        [helper.make_node("Dropout", ["X"], ["Y", "mask"], domain="ai.caffe2", name="d", ratio=0.25, seed=5),
         helper.make_node("DropoutGrad", ["Y", "mask"], ["dX"], domain="ai.caffe2", name="g", ratio=0.25)],
        [helper.make_tensor_value_info("X", t, None)],
        [helper.make_tensor_value_info(n, tt, None) for n, tt in (("Y", t), ("mask", TensorProto.BOOL), ("dX", t))])
    x = _sample((64, 1000), dtype).astype(dtype)
    cpu, cuda = _cpu_and_gpu(model)
    io = cuda.io_binding()
    xv = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    outs = {name: ort.OrtValue.ortvalue_from_shape_and_type(x.shape, dt, "cuda", 0)
            for name, dt in (("Y", x.dtype.type), ("mask", np.bool_), ("dX", x.dtype.type))}
    io.bind_ortvalue_input("X", xv)
    for name, v in outs.items():
        io.bind_ortvalue_output(name, v)
    for run in range(2):
        cuda.run_with_iobinding(io)
        io.synchronize_outputs()
        assert all(v.device_name().lower() == "cuda" for v in outs.values())
        ref = cpu.run(None, {"X": x})
        for (name, v), r in zip(outs.items(), ref):
            assert _same(v.numpy(), r), (run, name)


def run_in_threads(call, threads=4, per_thread=6) -> list:
    """Calls call() per_thread times on each of `threads` Python threads at once; every result (an
    exception in a thread fails the test)."""
    results, errors = [], []
    lock = threading.Lock()

    def work():
        try:
            for _ in range(per_thread):
                r = call()
                with lock:
                    results.append(r)
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    return results


def assert_first_runs_of(results, cpu_run) -> None:
    """results, (Y, mask) pairs of concurrent runs, are exactly cpu_run()'s first len(results) runs
    (in any order): no two drew the same mask, none drew outside them, each Y matches its mask's run."""
    expected = {}
    for _ in range(len(results)):
        y, m = cpu_run()
        expected[m.tobytes()] = y
    got = [m.tobytes() for _, m in results]
    assert len(set(got)) == len(results), "two runs drew the same mask"
    assert set(got) == set(expected), f"a concurrent run drew outside the CPU's runs 0..{len(results) - 1}"
    for y, m in results:
        assert _same(y, expected[m.tobytes()])


def test_four_python_threads_share_one_session(gpu):
    """Concurrent runs take disjoint counter ranges: the 4 x 6 masks are exactly the CPU's runs 0..23."""
    model = dropout_model("float32", ratio=0.5, seed=21)
    cuda = _session(model, CUDA)
    cpu = _session(model, CPU)
    x = _sample((257, 129), "float32", special=False)
    results = run_in_threads(lambda: cuda.run(None, {"X": x})[1:], threads=4, per_thread=6)
    assert_first_runs_of(results, lambda: cpu.run(None, {"X": x})[1:])


# ------------------------------------------------------------------------------------ cuDNN engine


def _cudnn_model(t, with_mask=True, ratio=0.3):
    outs = ["Y", "mask"] if with_mask else ["Y"]
    nodes = [helper.make_node("Dropout", ["X"], outs, domain="ai.caffe2", name="cd", ratio=ratio, seed=0,
                              engine="CUDNN")]
    outputs = [helper.make_tensor_value_info("Y", t, None)]
    if with_mask:
        nodes.append(helper.make_node("DropoutGrad", ["dY", "mask"], ["dX"], domain="ai.caffe2", name="cg",
                                      ratio=ratio, engine="CUDNN"))
        outputs += [helper.make_tensor_value_info("mask", TensorProto.BOOL, None),
                    helper.make_tensor_value_info("dX", t, None)]
    inputs = [helper.make_tensor_value_info("X", t, None)]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("dY", t, None))
    return make_model(nodes, inputs, outputs)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_cudnn_round_trip(gpu, dtype):
    ratio, n = 0.3, (64, 1031)
    scale = 1.0 / (1.0 - ratio)
    cuda = _session(_cudnn_model(DTYPES[dtype], ratio=ratio), CUDA)
    rng = np.random.default_rng(2)
    x = (rng.random(n) + 0.5).astype(dtype)  # away from 0: Y != 0 marks the kept elements
    dy = (rng.random(n) + 0.5).astype(dtype)
    tol = 1e-6 if dtype != "float16" else 2e-3
    previous = None
    for _ in range(3):
        y, reserve, dx = cuda.run(None, {"X": x, "dY": dy})
        assert reserve.ndim == 1 and reserve.dtype == np.bool_ and 0 < reserve.size < x.size
        kept = y != 0
        assert abs(kept.mean() - (1 - ratio)) < 0.02
        np.testing.assert_allclose(y[kept].astype(np.float64), x[kept].astype(np.float64) * scale, rtol=tol)
        assert np.array_equal(dx != 0, kept), "the gradient keeps exactly the forward's elements"
        np.testing.assert_allclose(dx[kept].astype(np.float64), dy[kept].astype(np.float64) * scale, rtol=tol)
        if previous is not None:
            assert not np.array_equal(previous, kept), "the states advance: fresh masks"
        previous = kept


def test_cudnn_without_mask_output_uses_scratch(gpu):
    cuda = _session(_cudnn_model(TensorProto.FLOAT, with_mask=False), CUDA)
    x = (np.random.default_rng(3).random((4, 100003)) + 0.5).astype(np.float32)
    kept = [cuda.run(None, {"X": x})[0] != 0 for _ in range(3)]
    for k in kept:
        assert abs(k.mean() - 0.7) < 0.01
    assert not np.array_equal(kept[0], kept[1]) and not np.array_equal(kept[1], kept[2])


def test_cudnn_four_threads(gpu):
    """Runs on several streams share the node's states in turn (event-ordered): every result is a valid
    dropout of X, and no two runs draw the same mask."""
    cuda = _session(_cudnn_model(TensorProto.FLOAT, with_mask=False), CUDA)
    x = (np.random.default_rng(4).random((256, 4099)) + 0.5).astype(np.float32)

    def one_run():
        (y,) = cuda.run(None, {"X": x})
        kept = y != 0
        np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.7), rtol=1e-6)
        return np.packbits(kept).tobytes()

    masks = run_in_threads(one_run, threads=4, per_thread=5)
    assert len(set(masks)) == 20


def test_cudnn_rejects_bfloat16_at_session_creation(gpu):
    with pytest.raises(Exception, match="CUDNN.*bfloat16"):
        _session(_cudnn_model(TensorProto.BFLOAT16, with_mask=False), CUDA)


def test_cudnn_gradient_rejects_a_default_engine_mask(gpu):
    grad = make_model([helper.make_node("DropoutGrad", ["dY", "mask"], ["dX"], domain="ai.caffe2", name="cg",
                                        ratio=0.3, engine="CUDNN")],
                      [helper.make_tensor_value_info("dY", TensorProto.FLOAT, None),
                       helper.make_tensor_value_info("mask", TensorProto.BOOL, None)],
                      [helper.make_tensor_value_info("dX", TensorProto.FLOAT, None)])
    g = _session(grad, CUDA)
    with pytest.raises(Exception, match="engine 'CUDNN' expects the mask to be the forward's cuDNN reserve space"):
        g.run(None, {"dY": np.ones(1000, np.float32), "mask": np.ones(1000, bool)})


# ------------------------------------------------------------------------------------ CUDA graphs


def _graph_run(model, x, runs, outputs):
    """Runs with enable_cuda_graph through IOBinding on fixed device buffers; returns each run's outputs.
    ``outputs``: (name, numpy dtype) of X's shape, or (name, numpy dtype, shape)."""
    cuda = _session(model, CUDA, {"enable_cuda_graph": "1"})
    io = cuda.io_binding()
    xv = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    io.bind_ortvalue_input("X", xv)
    vals = {name: ort.OrtValue.ortvalue_from_shape_and_type(shape[0] if shape else x.shape, dt, "cuda", 0)
            for name, dt, *shape in outputs}
    for name, v in vals.items():
        io.bind_ortvalue_output(name, v)
    got = []
    for _ in range(runs):
        cuda.run_with_iobinding(io)
        io.synchronize_outputs()
        got.append({name: v.numpy().copy() for name, v in vals.items()})
    return got


@pytest.mark.parametrize("op", ["Dropout", "BitmaskDropout"])
def test_cuda_graph_replays_draw_fresh_masks_on_the_cpu_sequence(gpu, op):
    """With enable_cuda_graph ORT runs the graph normally, captures it, then replays it. The counter
    lives on the device, so every replay advances it: the user's runs are consecutive runs of the
    RNG contract, offset by the extra executions ORT does on the first Run (warm-up and capture).
    BitmaskDropout follows the same capture rules as Dropout (its mask: ceil(numel / 32) uint32 words,
    here with a partial last word)."""
    bitmask = op == "BitmaskDropout"
    model = make_model(
        [helper.make_node(op, ["X"], ["Y", "mask"], domain="ai.caffe2", name="d", ratio=0.5, seed=8)],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("mask", TensorProto.UINT32 if bitmask else TensorProto.BOOL, None)])
    x = _sample((33, 1025), "float32", special=False).astype(np.float32)
    mask_out = ("mask", np.uint32, ((x.size + 31) // 32,)) if bitmask else ("mask", np.bool_)
    got = _graph_run(model, x, runs=5, outputs=[("Y", np.float32), mask_out])  # >= 3 replays
    cpu = _session(model, CPU)
    cpu_runs = [cpu.run(None, {"X": x}) for _ in range(12)]
    masks = [g["mask"].tobytes() for g in got]
    assert len(set(masks)) == len(masks), "a replay repeated a mask"
    offsets = [k for k in range(len(cpu_runs) - len(got) + 1) if cpu_runs[k][1].tobytes() == masks[0]]
    assert offsets, "the first run's mask is none of the CPU's runs 0..7"
    w = offsets[0]
    print(f"ORT executed the graph {w} extra time(s) before the first Run returned")
    for j, g in enumerate(got):
        yc, mc = cpu_runs[w + j]
        assert np.array_equal(g["mask"], mc) and _same(g["Y"], yc), f"run {j} != CPU run {w + j}"
    # a fresh session reproduces the same sequence
    again = _graph_run(model, x, runs=3, outputs=[("Y", np.float32), mask_out])
    assert [a["mask"].tobytes() for a in again] == masks[:3]


def test_cuda_graph_replays_with_the_cudnn_engine(gpu):
    model = _cudnn_model(TensorProto.FLOAT, with_mask=False)
    x = (np.random.default_rng(6).random((32, 4096)) + 0.5).astype(np.float32)
    got = _graph_run(model, x, runs=4, outputs=[("Y", np.float32)])
    kept = [g["Y"] != 0 for g in got]
    for k in kept:
        assert abs(k.mean() - 0.7) < 0.02
    assert len({k.tobytes() for k in kept}) == len(kept), "cuDNN's states advance on the device too"


# ------------------------------------------------------------------------------------ placement


def test_no_memcpy_around_our_nodes(gpu, tmp_path):
    model = make_model(
        [helper.make_node("Relu", ["X"], ["R"]),
         helper.make_node("Dropout", ["R"], ["Y", "mask"], domain="ai.caffe2", name="drop", ratio=0.5, seed=1),
         helper.make_node("DropoutGrad", ["Y", "mask"], ["G"], domain="ai.caffe2", name="grad", ratio=0.5),
         helper.make_node("Relu", ["G"], ["Out"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("Out", TensorProto.FLOAT, [64, 256])])
    from caffe2_ort.placement import placement

    so = ort.SessionOptions()
    so.register_custom_ops_library(_lib())
    optimized = tmp_path / "optimized.onnx"
    so.optimized_model_filepath = str(optimized)
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    where = placement(model, {"X": x}, [(CUDA, {"use_tf32": "0"}), CPU], session_options=so)
    ours = {n.op_type: n.provider for n in where.nodes if n.domain == "ai.caffe2"}
    assert ours == {"Dropout": CUDA, "DropoutGrad": CUDA}, where.format()
    assert not where.memcpy and not where.off_provider(), where.format()
    import onnx

    opt = onnx.load(str(optimized))
    assert not [n.op_type for n in opt.graph.node if n.op_type.startswith("Memcpy")]


# ------------------------------------------------------------------------------------ a converted zoo net


def test_alexnet_training_mode_matches_cpu(gpu):
    from caffe2_helpers import zoo_net
    from caffe2_ort.caffe2 import converter, synth

    net, vi = zoo_net("bvlc_alexnet")
    data = {k: (dt, (8,) + tuple(shape[1:])) for k, (dt, shape) in vi.items()}
    init, _ = synth.synthesize(net, data, seed=11)
    model = converter.convert(net, init, vi, input_shapes={k: s for k, (_, s) in data.items()}).model
    drops = [n for n in model.graph.node if n.domain == "ai.caffe2" and n.op_type == "Dropout"]
    assert drops
    for k, node in enumerate(drops):
        for a in list(node.attribute):
            if a.name in ("is_test", "seed"):
                node.attribute.remove(a)
        node.attribute.extend([helper.make_attribute("is_test", 0), helper.make_attribute("seed", 100 + k)])
        model.graph.output.append(helper.make_tensor_value_info(node.output[1], TensorProto.BOOL, None))
    names = [o.name for o in model.graph.output]
    cpu, cuda = _cpu_and_gpu(model)
    feeds = {k: np.random.default_rng(5).standard_normal(s).astype(dt) for k, (dt, s) in data.items()}
    for run in range(2):
        oc = dict(zip(names, cpu.run(None, feeds)))
        og = dict(zip(names, cuda.run(None, feeds)))
        for name in names:
            if oc[name].dtype == np.bool_:
                assert np.array_equal(oc[name], og[name]), f"run {run}: mask {name}"
            else:
                err = np.max(np.abs(oc[name] - og[name])) / max(np.max(np.abs(oc[name])), 1e-30)
                assert err < 1e-3, (run, name, err)


# ------------------------------------------------------------------------------------ training


def test_training_session_step_on_cuda(gpu):
    """One TrainingSession step on the CUDA EP (state on the device) against the same step on the CPU."""
    training = pytest.importorskip("caffe2_ort.training", reason="caffe2_ort.training not in this tree yet")
    if not hasattr(training, "TrainingSession"):
        pytest.skip("caffe2_ort.training has no TrainingSession yet")
    # A training-step model as SPEC section 5b defines it: W is state (initializer of the same name),
    # W_next its next value; loss = sum(Dropout(X W)^2); dW = X^T DropoutGrad(2 Y, mask); W_next = W - 0.01 dW.
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((16, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["H"]),
        helper.make_node("Dropout", ["H"], ["Hd", "mask"], domain="ai.caffe2", name="drop", ratio=0.5, seed=3),
        helper.make_node("Mul", ["Hd", "Hd"], ["Sq"]),
        helper.make_node("ReduceSum", ["Sq"], ["loss"], keepdims=0),
        helper.make_node("Add", ["Hd", "Hd"], ["dHd"]),
        helper.make_node("DropoutGrad", ["dHd", "mask"], ["dH"], domain="ai.caffe2", name="grad", ratio=0.5),
        helper.make_node("Transpose", ["X"], ["Xt"]),
        helper.make_node("MatMul", ["Xt", "dH"], ["dW"]),
        helper.make_node("Mul", ["dW", "lr"], ["step"]),
        helper.make_node("Sub", ["W", "step"], ["W_next"]),
    ]
    graph = helper.make_graph(
        nodes, "step", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 16]),
                        helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 8])],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("W_next", TensorProto.FLOAT, [16, 8])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, [16, 8], w0.ravel()),
                     helper.make_tensor("lr", TensorProto.FLOAT, [], [0.01])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)],
                              ir_version=8)
    helper.set_model_props(model, {"caffe2_ort.training_state": json.dumps({"W": "W_next"}),
                                   "caffe2_ort.loss": "loss"})
    x = rng.standard_normal((4, 16)).astype(np.float32)
    try:
        on_gpu = training.TrainingSession(model, providers=[CUDA, CPU])
        on_cpu = training.TrainingSession(model, providers=[CPU])
    except TypeError as e:
        pytest.skip(f"TrainingSession's constructor differs from (model, providers=...): {e}")
    for _ in range(2):
        lg, lc = on_gpu.step({"X": x}), on_cpu.step({"X": x})
    wg, wc = on_gpu.state()["W"], on_cpu.state()["W"]
    wg_np = wg.numpy() if hasattr(wg, "numpy") else np.asarray(wg)
    wc_np = wc.numpy() if hasattr(wc, "numpy") else np.asarray(wc)
    np.testing.assert_allclose(wg_np, wc_np, rtol=1e-4, atol=1e-5)
    if hasattr(wg, "device_name"):
        assert wg.device_name().lower() == "cuda", "state stays on the device under CUDA"
    del lg, lc
