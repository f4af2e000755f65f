"""The RNG contract: a mask depends only on (seed, base, element index)."""

import threading

import numpy as np
import pytest

from caffe2_ort import reference as R
from ort_helpers import plain_dropout_model, session

N = 3 * 50_000 + 3  # not a multiple of 4, and several parallel tasks


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_masks_do_not_depend_on_thread_count(threads):
    x = np.ones(N, np.float32)
    _, mask = session(plain_dropout_model(ratio=0.5, seed=2024), threads=threads).run(None, {"X": x})
    assert np.array_equal(mask, R.keep_mask(2024, 0, x.shape, 0.5))


def test_run_k_of_a_fresh_session_is_reproducible_and_runs_differ():
    x = np.ones(N, np.float32)
    blocks = R.blocks_for(N)
    first = [session(plain_dropout_model(ratio=0.3, seed=17)).run(None, {"X": x})[1] for _ in range(2)]
    assert np.array_equal(first[0], first[1])
    sess = session(plain_dropout_model(ratio=0.3, seed=17))
    masks = [sess.run(None, {"X": x})[1] for _ in range(3)]
    for k, mask in enumerate(masks):
        assert np.array_equal(mask, R.keep_mask(17, k * blocks, x.shape, 0.3))
    assert not np.array_equal(masks[0], masks[1])


def test_each_node_has_its_own_counter():
    from onnx import helper

    from ort_helpers import make_model
    import caffe2_ort
    from onnx import TensorProto

    nodes = [
        helper.make_node("Dropout", ["X"], ["Y1", "M1"], domain=caffe2_ort.DOMAIN, ratio=0.5, seed=3),
        helper.make_node("Dropout", ["X"], ["Y2", "M2"], domain=caffe2_ort.DOMAIN, ratio=0.5, seed=3),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.BOOL, None) for n in ("M1", "M2")]
    model = make_model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)], outs)
    m1, m2 = session(model).run(["M1", "M2"], {"X": np.ones(64, np.float32)})
    assert np.array_equal(m1, m2)  # same seed, both at base 0


def test_seedless_nodes_draw_different_streams():
    x = np.ones(4096, np.float32)
    a = session(plain_dropout_model(ratio=0.5)).run(None, {"X": x})[1]
    b = session(plain_dropout_model(ratio=0.5)).run(None, {"X": x})[1]
    assert not np.array_equal(a, b)


def test_concurrent_runs_never_share_a_base():
    x = np.ones(4 * 1000, np.float32)
    blocks = R.blocks_for(x.size)
    sess = session(plain_dropout_model(ratio=0.5, seed=77), threads=2)
    runs_per_thread, n_threads = 25, 6
    masks, errors = [], []
    lock = threading.Lock()

    def worker():
        try:
            for _ in range(runs_per_thread):
                m = sess.run(None, {"X": x})[1]
                with lock:
                    masks.append(m)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = runs_per_thread * n_threads
    expected = {R.keep_mask(77, k * blocks, x.shape, 0.5).tobytes(): k for k in range(total)}
    seen = sorted(expected[m.tobytes()] for m in masks)
    assert seen == list(range(total))  # every base 0..total-1 exactly once
