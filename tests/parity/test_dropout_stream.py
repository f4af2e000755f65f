"""Real Caffe2's CPU Dropout draws the MT19937 stream of docs/caffe2-facts.md §11, checked here on
edge cases the known-answer file does not hold: seeds near 2^32 - 1, ratios 0 and 0.999, odd sizes,
several runs of one op (the stream carries on), two ops with one seed (each owns a generator), and
a test-mode op (a copy; its mask blob stays unwritten). The expected masks come from the package's
own rule, ``reference.DropoutStream(seed, rng="caffe2_mt19937")`` (one implementation, checked here
against Caffe2 itself)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_ort import reference
from caffe2_helpers import make_net

pytestmark = pytest.mark.parity

def caffe2_dropout(x, mask, ratio):
    return (x * reference.drop_scale(ratio)) * mask.astype(np.float32)


def test_mt19937_words_known_answer():
    # std::mt19937 with its default seed 5489: the C++ standard fixes the 10000th output
    assert int(reference.mt19937(5489).random_raw(10000)[-1]) == 4123659995


# (seed, ratio, shape)
CASES = [
    (0, 0.5, (7,)),
    (1, 0.0, (3, 5, 7)),
    (2**32 - 1, 0.999, (1001,)),
    (2**32 - 2, 0.5, (1,)),
    (2**31, 0.3, (13, 1, 11)),
    (4294967000, 0.9, (2, 333)),
    (12345, 0.001, (999,)),
]
RUNS = 3


@pytest.fixture(scope="module")
def caffe2_runs(caffe2):
    """One Caffe2 net holding one Dropout op per case (plus a test-mode op and a same-seed twin of
    the first), created once and run RUNS times."""
    rng = np.random.default_rng(0)
    feeds, ops = {}, []
    for i, (seed, ratio, shape) in enumerate(CASES):
        feeds[f"x{i}"] = rng.standard_normal(shape).astype(np.float32)
        ops.append(("Dropout", [f"x{i}"], [f"y{i}", f"m{i}"], {"ratio": ratio, "is_test": 0}, seed))
    ops.insert(1, ("Dropout", ["x0"], ["y_test", "m_test"], {"ratio": 0.5, "is_test": 1}, CASES[0][0]))
    ops.append(("Dropout", ["x0"], ["y_twin", "m_twin"], {"ratio": CASES[0][1], "is_test": 0}, CASES[0][0]))
    net = make_net("dropout_stream", [o[:4] for o in ops], inputs=list(feeds))
    for op, spec in zip(net.op, ops):
        op.device_option.random_seed = spec[4]
    return feeds, caffe2.run(net, feed=feeds, iters=RUNS)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"seed{s}-ratio{r}-{'x'.join(map(str, sh))}" for s, r, sh in CASES])
def test_caffe2_masks_follow_mt19937_rule(caffe2_runs, i):
    feeds, out = caffe2_runs
    seed, ratio, shape = CASES[i]
    x = feeds[f"x{i}"]
    stream = reference.DropoutStream(seed, rng="caffe2_mt19937")
    for run in range(RUNS):
        mask = out[f"step{run}/m{i}"]
        assert mask.dtype == bool and mask.shape == shape
        want = stream.draw(shape, ratio=ratio)
        np.testing.assert_array_equal(mask, want, err_msg=f"run {run}")
        y = out[f"step{run}/y{i}"]
        assert np.array_equal(y.view(np.uint32), caffe2_dropout(x, want, ratio).view(np.uint32)), f"run {run}: Y bits"


def test_ratio_zero_keeps_everything_and_still_draws(caffe2_runs):
    _, out = caffe2_runs
    i = [c[1] for c in CASES].index(0.0)
    for run in range(RUNS):
        assert out[f"step{run}/m{i}"].all()


def test_same_seed_ops_draw_the_same_stream(caffe2_runs):
    _, out = caffe2_runs
    for run in range(RUNS):
        np.testing.assert_array_equal(out[f"step{run}/m_twin"], out[f"step{run}/m0"])


def test_test_mode_copies_and_leaves_the_mask_unwritten(caffe2_runs):
    feeds, out = caffe2_runs
    for run in range(RUNS):
        assert np.array_equal(out[f"step{run}/y_test"].view(np.uint32), feeds["x0"].view(np.uint32))
    assert not any(k.endswith("/m_test") for k in out)  # the blob exists but holds no tensor
