"""rng = "caffe2_mt19937": real Caffe2's CPU Dropout mask stream (docs/caffe2-facts.md §11), through
ONNX Runtime with our library, through the numpy reference and through onnx.reference."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import caffe2_ort
from caffe2_ort import opdefs
from caffe2_ort import reference as R
from caffe2_ort.reference_ops import evaluator
from ort_helpers import DTYPES, bits, dropout_model, make_model, np_dtype, plain_dropout_model, session, shared_path

MT = "caffe2_mt19937"


def _kat():
    data = np.load(shared_path("caffe2_rng", "kat_public.npz"))
    cases = sorted({k.split("/")[0] for k in data.files}, key=int)
    return data, cases


def _case(data, c):
    return int(data[f"{c}/seed"]), float(data[f"{c}/ratio"]), data[f"{c}/x"]


def test_numpy_mt19937_is_std_mt19937():
    # The C++ standard's check: the 10000th output of a default-seeded (5489) mt19937 is 4123659995.
    assert int(R.mt19937(5489).random_raw(10000)[-1]) == 4123659995
    # init_genrand(1234)'s first outputs (as std::mt19937(1234) gives them)
    assert [int(w) for w in R.mt19937(1234).random_raw(3)] == [822569775, 2137449171, 2671936806]
    assert int(R.mt19937(2**32 - 1).random_raw(1)[0]) == 419326371
    assert int(R.mt19937(2**32 + 1234).random_raw(1)[0]) == 822569775  # seed mod 2^32


def test_keep_rule_is_caffe2s_double_compare():
    # v = ((hi << 32) | lo) mod 2^53; kept iff v * 2^-53 < 1 - ratio. At ratio 0.5 the boundary is v = 2^52.
    hi_half = 1 << 20  # bit 52 of v
    words = np.array([hi_half, 0, hi_half - 1, 0xFFFFFFFF, 0xFFE00000 | (hi_half - 1), 0xFFFFFFFF], np.uint32)
    assert list(R.mt19937_keep(words, 0.5)) == [False, True, True]  # bits above 53 are ignored


def test_kat_through_ort():
    data, cases = _kat()
    assert len(cases) >= 18
    for c in cases:
        seed, ratio, x = _case(data, c)
        sess = session(plain_dropout_model(ratio=ratio, seed=seed, rng=MT, name=f"kat{c}"))
        for run in range(3):
            y, mask = sess.run(None, {"X": x})
            assert np.array_equal(mask, data[f"{c}/mask{run}"]), (c, run)
            assert np.array_equal(bits(y), bits(data[f"{c}/y{run}"])), (c, run)


def test_kat_through_numpy_reference():
    data, cases = _kat()
    for c in cases:
        seed, ratio, x = _case(data, c)
        stream = R.DropoutStream(seed, rng=MT)
        for run in range(3):
            y, mask = stream.run(x, ratio=ratio)
            assert np.array_equal(mask, data[f"{c}/mask{run}"]), (c, run)
            assert np.array_equal(bits(y), bits(data[f"{c}/y{run}"])), (c, run)
            # the stateless form: base = elements drawn before
            y2, mask2 = R.dropout(x, ratio=ratio, seed=seed, base=run * x.size, rng=MT)
            assert np.array_equal(mask2, mask) and np.array_equal(bits(y2), bits(y))
        assert stream.counter == 3 * 2 * x.size


def test_kat_through_onnx_reference():
    data, cases = _kat()
    for c in cases:
        seed, ratio, x = _case(data, c)
        ref = evaluator(plain_dropout_model(ratio=ratio, seed=seed, rng=MT, name=f"kat{c}"))
        for run in range(3):
            y, mask = ref.run(None, {"X": x})
            assert np.array_equal(mask, data[f"{c}/mask{run}"]), (c, run)
            assert np.array_equal(bits(y), bits(data[f"{c}/y{run}"])), (c, run)


# seeds beyond the KAT: the top of uint32, values above it (the generator takes seed mod 2^32) and negative
# int64 attributes (read as uint64)
SEEDS = [0, 7, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**62 + 3, -1]
RATIOS = [0.0, 0.1, 0.5, 0.999, 1.0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_native_matches_reference_over_seeds_and_ratios(seed, ratio):
    x = np.random.default_rng(abs(seed) % 1000).standard_normal(1237).astype(np.float32)
    sess = session(plain_dropout_model(ratio=ratio, seed=seed, rng=MT))
    stream = R.DropoutStream(seed, rng=MT)
    for _ in range(2):
        y, mask = sess.run(None, {"X": x})
        ey, emask = stream.run(x, ratio=ratio)
        assert np.array_equal(mask, emask) and np.array_equal(bits(y), bits(ey))
    if ratio == 0.0:
        assert mask.all() and np.array_equal(bits(y), bits(x))
    if ratio == 1.0:
        assert not mask.any()


def test_seed_is_taken_mod_2_32():
    x = np.ones(999, np.float32)
    a = session(plain_dropout_model(seed=5, rng=MT)).run(None, {"X": x})[1]
    b = session(plain_dropout_model(seed=2**32 + 5, rng=MT)).run(None, {"X": x})[1]
    c = session(plain_dropout_model(seed=-1, rng=MT)).run(None, {"X": x})[1]
    d = session(plain_dropout_model(seed=2**32 - 1, rng=MT)).run(None, {"X": x})[1]
    assert np.array_equal(a, b) and np.array_equal(c, d) and not np.array_equal(a, c)


def test_each_training_run_takes_the_next_two_words_per_element():
    n = 100
    x = np.arange(1, n + 1, dtype=np.float32)
    words = R.mt19937(3).random_raw(2 * n * 4)
    sess = session(plain_dropout_model(ratio=0.5, seed=3, rng=MT))
    for run in range(4):
        mask = sess.run(None, {"X": x})[1]
        assert np.array_equal(mask, R.mt19937_keep(words[2 * n * run: 2 * n * (run + 1)], 0.5))


def test_ratio_zero_draws_too():
    # Caffe2 draws two words per element at ratio 0 as well (one node has one ratio, so only the
    # reference's counter shows it; the native kernel skips the same words, see mt19937_keep_bits.cc).
    stream = R.DropoutStream(3, rng=MT)
    y, mask = stream.run(np.ones(10, np.float32), ratio=0.0)
    assert stream.counter == 20 and mask.all()
    x = np.arange(1, 101, dtype=np.float32)
    sess = session(plain_dropout_model(ratio=0.0, seed=3, rng=MT))
    for _ in range(3):
        y, mask = sess.run(None, {"X": x})
        assert mask.all() and np.array_equal(y, x)


def test_test_mode_draws_nothing_in_the_reference():
    stream = R.DropoutStream(9, rng=MT)
    y, mask = stream.run(np.ones(50, np.float32), ratio=0.5, is_test=1)
    assert stream.counter == 0 and mask.all()
    sess = session(plain_dropout_model(ratio=0.5, seed=9, rng=MT, is_test=1))
    x = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    y, mask = sess.run(None, {"X": x})
    assert mask.all() and np.array_equal(bits(y), bits(x))


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (63,), (65,), (7, 13, 11), (100003,)])
def test_shapes(shape):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    sess = session(plain_dropout_model(ratio=0.3, seed=11, rng=MT))
    stream = R.DropoutStream(11, rng=MT)
    for _ in range(2):
        y, mask = sess.run(None, {"X": x})
        ey, emask = stream.run(x, ratio=0.3)
        assert y.shape == shape and mask.shape == shape
        assert np.array_equal(mask, emask) and np.array_equal(bits(y), bits(ey))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_element_type_draws_the_same_mask(dtype):
    # float32 is Caffe2's arithmetic; the other types take SPEC §2's, applied to the same mask.
    x32 = np.random.default_rng(4).standard_normal(5000).astype(np.float32)
    xt = x32.astype(np_dtype(dtype))
    wide = np.float64 if dtype == "float64" else np.float32
    sess = session(dropout_model(dtype, ratio=0.25, seed=77, rng=MT))
    stream = R.DropoutStream(77, rng=MT)
    for _ in range(2):
        xf, y, mask = sess.run(None, {"X": xt.astype(wide)})
        ey, emask = stream.run(xt, ratio=0.25)
        assert np.array_equal(mask, emask)
        assert np.array_equal(bits(y), bits(ey.astype(wide)))


def test_without_mask_output_the_stream_still_advances():
    x = np.random.default_rng(5).standard_normal(300).astype(np.float32)
    with_mask = session(plain_dropout_model(ratio=0.5, seed=8, rng=MT))
    without = session(plain_dropout_model(ratio=0.5, seed=8, rng=MT, outputs=("Y",)))
    for _ in range(3):
        y1, _m = with_mask.run(None, {"X": x})
        (y2,) = without.run(None, {"X": x})
        assert np.array_equal(bits(y1), bits(y2))


def test_in_place_y_reuses_x():
    # X computed by a node, Y may share its buffer (kMayInplace): the result must not change.
    node0 = helper.make_node("Identity", ["X"], ["Xc"])
    node1 = helper.make_node("Dropout", ["Xc"], ["Y", "mask"], domain=caffe2_ort.DOMAIN, name="d", ratio=0.5,
                             seed=13, rng=MT)
    m = make_model([node0, node1], [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                   [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info("mask", TensorProto.BOOL, None)])
    x = np.random.default_rng(6).standard_normal(70000).astype(np.float32)
    y, mask = session(m, threads=2).run(None, {"X": x})
    ey, emask = R.dropout(x, ratio=0.5, seed=13, rng=MT)
    assert np.array_equal(mask, emask) and np.array_equal(bits(y), bits(ey))


def test_thread_count_does_not_change_the_result():
    x = np.random.default_rng(7).standard_normal(300007).astype(np.float32)  # ~10 parallel tasks
    outs = []
    for threads in (1, 2, 4):
        sess = session(plain_dropout_model(ratio=0.4, seed=21, rng=MT), threads=threads)
        outs.append([sess.run(None, {"X": x}) for _ in range(2)])
    ey, emask = R.dropout(x, ratio=0.4, seed=21, rng=MT)
    for runs in outs:
        assert np.array_equal(runs[0][1], emask) and np.array_equal(bits(runs[0][0]), bits(ey))
        for a, b in zip(runs, outs[0]):
            assert np.array_equal(a[1], b[1]) and np.array_equal(bits(a[0]), bits(b[0]))


def test_concurrent_runs_take_consecutive_segments():
    # 8 threads x 25 runs on one session: every mask is one of the stream's first 200 segments, none twice.
    n, threads, runs = 4099, 8, 25
    sess = session(plain_dropout_model(ratio=0.5, seed=99, rng=MT), threads=2)
    x = np.ones(n, np.float32)
    got, errors = [], []

    def worker():
        try:
            for _ in range(runs):
                got.append(sess.run(None, {"X": x})[1].tobytes())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    words = R.mt19937(99).random_raw(2 * n * threads * runs)
    segments = [R.mt19937_keep(words[2 * n * k: 2 * n * (k + 1)], 0.5).tobytes() for k in range(threads * runs)]
    assert len(set(segments)) == threads * runs
    assert sorted(got) == sorted(segments)


def test_two_nodes_with_one_seed_draw_the_same_stream():
    # each Caffe2 op owns its generator
    nodes = [helper.make_node("Dropout", ["X"], [f"Y{i}", f"M{i}"], domain=caffe2_ort.DOMAIN, name=f"d{i}",
                              ratio=0.5, seed=4, rng=MT) for i in range(2)]
    outs = [helper.make_tensor_value_info(f"{k}{i}", t, None) for i in range(2)
            for k, t in (("Y", TensorProto.FLOAT), ("M", TensorProto.BOOL))]
    m = make_model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)], outs)
    y0, m0, y1, m1 = session(m).run(None, {"X": np.ones(500, np.float32)})
    assert np.array_equal(m0, m1)


def test_seedless_nodes_draw_fresh_streams():
    x = np.ones(4096, np.float32)
    masks = {session(plain_dropout_model(ratio=0.5, rng=MT)).run(None, {"X": x})[1].tobytes() for _ in range(4)}
    assert len(masks) == 4
    assert R.DropoutStream(rng=MT).seed != R.DropoutStream(rng=MT).seed


def test_cudnn_engine_on_cpu_applies_rng():
    x = np.random.default_rng(8).standard_normal(333).astype(np.float32)
    a = session(plain_dropout_model(ratio=0.5, seed=6, rng=MT, engine="CUDNN")).run(None, {"X": x})
    ey, emask = R.dropout(x, ratio=0.5, seed=6, rng=MT)
    assert np.array_equal(a[1], emask) and np.array_equal(bits(a[0]), bits(ey))


@pytest.mark.parametrize("rng", ["", "philox"])
def test_philox_values_keep_the_philox_contract(rng):
    x = np.random.default_rng(9).standard_normal(1000).astype(np.float32)
    y, mask = session(plain_dropout_model(ratio=0.5, seed=6, rng=rng)).run(None, {"X": x})
    ey, emask = R.dropout(x, ratio=0.5, seed=6)
    assert np.array_equal(mask, emask) and np.array_equal(bits(y), bits(ey))


def test_unknown_rng_fails_listing_the_accepted_values():
    with pytest.raises(Exception) as e:
        session(plain_dropout_model(rng="mt19937", name="r"))
    assert ("ai.caffe2 Dropout node 'r': rng = 'mt19937' is not supported; accepted: '' (default), 'philox', "
            "'caffe2_mt19937'") in str(e.value)
    with pytest.raises(opdefs.AttributeValueError, match="rng = 'mt19937' is not supported"):
        R.DropoutStream(1, rng="mt19937")


_PYOP_SCRIPT = """
import numpy as np, onnxruntime as ort, onnxruntime_extensions
from onnx import TensorProto, helper
from caffe2_ort import reference as R, reference_ops as RO
RO.register_pyop()
node = helper.make_node("Dropout", ["X"], ["Y", "mask"], domain="ai.caffe2", name="d", ratio=0.5, seed=31,
                        rng="caffe2_mt19937")
g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [257])],
                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [257]),
                       helper.make_tensor_value_info("mask", TensorProto.BOOL, [257])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.caffe2", 1)], ir_version=8)
so = ort.SessionOptions()
so.register_custom_ops_library(onnxruntime_extensions.get_library_path())
sess = ort.InferenceSession(RO.prepare_for_pyop(m).SerializeToString(), so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(10).standard_normal(257).astype(np.float32)
stream = R.DropoutStream(31, rng="caffe2_mt19937")
for _ in range(2):
    y, mask = sess.run(None, {"X": x})
    ey, emask = stream.run(x, ratio=0.5)
    assert np.array_equal(mask, emask) and y.tobytes() == ey.tobytes()
print("pyop ok")
"""


def test_pyop_fallback_draws_the_caffe2_stream():
    # In a child process: PyOps are process-global and would claim ai.caffe2 next to our library.
    pytest.importorskip("onnxruntime_extensions")
    out = subprocess.run([sys.executable, "-c", _PYOP_SCRIPT], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(caffe2_ort.__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pyop ok" in out.stdout


def test_lowering_to_onnx_dropout_reports_the_lost_stream():
    from caffe2_ort import graph

    m = plain_dropout_model(ratio=0.5, seed=3, rng=MT)
    lowered, report = graph.to_onnx_dropout(m, warn=False)
    assert any("rng ['caffe2_mt19937']" in line and "Caffe2's stream" in line for line in report.lost)
    assert [n.op_type for n in lowered.graph.node] == ["Dropout"] and lowered.graph.node[0].domain == ""


def test_graph_helpers_write_rng():
    from caffe2_ort import graph

    g = helper.make_graph([], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [300])],
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [300])])
    m = make_model([], list(g.input), list(g.output))
    y, mask = graph.add_dropout(m, "X", output="Y", training=True, ratio=0.5, seed=12, rng=MT)
    m.graph.output.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
    x = np.random.default_rng(11).standard_normal(300).astype(np.float32)
    outs = dict(zip([o.name for o in m.graph.output], session(m).run(None, {"X": x})))
    ey, emask = R.dropout(x, ratio=0.5, seed=12, rng=MT)
    assert np.array_equal(outs[mask], emask) and np.array_equal(bits(outs[y]), bits(ey))
