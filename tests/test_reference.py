"""The numpy reference itself: Philox known answers and the contract's arithmetic."""

import numpy as np
import pytest

from caffe2_ort import reference as R

# Random123's kat_vectors for philox4x32_10.
KATS = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


@pytest.mark.parametrize("counter,key,expected", KATS)
def test_philox_known_answers(counter, key, expected):
    assert [int(v) for v in R.philox4x32_10(counter, key)] == expected


def test_philox_vectorised_matches_single_counters():
    counters = np.array([[0, 1, 0xFFFFFFFF], [0, 0, 7], [0, 0, 0], [0, 0, 0]], dtype=np.uint32)
    batch = R.philox4x32_10(counters, (5, 9))
    for j in range(3):
        assert np.array_equal(batch[:, j], R.philox4x32_10(counters[:, j], (5, 9)))


def test_element_to_block_mapping():
    # element i uses block base + i // 4, word i % 4, counter (b mod 2^32, b >> 32, 0, 0)
    base = (1 << 32) - 2  # crosses into the high counter word
    words = R.random_words(seed=123, base=base, numel=13)
    key = R.seed_to_key(123)
    for i in range(13):
        b = base + i // 4
        block = R.philox4x32_10([b & 0xFFFFFFFF, b >> 32, 0, 0], key)
        assert words[i] == block[i % 4]


def test_seed_to_key_reads_int64_as_uint64():
    assert R.seed_to_key(5) == (5, 0)
    assert R.seed_to_key(-1) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert R.seed_to_key((7 << 32) | 3) == (3, 7)


@pytest.mark.parametrize(
    "ratio,threshold",
    [(0.0, 0), (0.5, 1 << 31), (1.0, 1 << 32), (0.25, 1 << 30), (0.999, int(np.floor(np.float32(0.999) * 2.0**32)))],
)
def test_threshold(ratio, threshold):
    assert R.drop_threshold(ratio) == threshold


def test_scale_is_double_rounded_to_float_and_zero_at_one():
    assert R.drop_scale(0.5) == np.float32(2.0)
    assert R.drop_scale(1.0) == 0.0
    r = float(np.float32(0.3))
    assert R.drop_scale(0.3) == np.float32(1.0 / (1.0 - r))


def test_dropped_elements_keep_caffe2_arithmetic():
    x = np.array([-1.0, np.inf, -np.inf, np.nan, 2.0], dtype=np.float32)
    y, mask = R.dropout(x, ratio=1.0, seed=0)
    assert not mask.any()
    assert np.signbit(y[0]) and y[0] == 0
    assert np.isnan(y[1:4]).all()
    assert y[4] == 0 and not np.signbit(y[4])


def test_stream_advances_by_blocks():
    s = R.DropoutStream(seed=9)
    x = np.ones(10, np.float32)
    s.run(x, ratio=0.5)
    assert s.counter == 3
    s.run(x, ratio=0.0)
    s.run(x, ratio=0.5, is_test=1)
    assert s.counter == 3


def test_grad_checks_counts_not_shapes():
    dy = np.ones((2, 3), np.float32)
    assert R.dropout_grad(dy, np.ones(6, bool), ratio=0.5).shape == (2, 3)
    with pytest.raises(ValueError, match="mask has 5 elements but dY has 6"):
        R.dropout_grad(dy, np.ones(5, bool), ratio=0.5)
