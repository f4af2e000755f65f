"""The oracle itself: real Caffe2, run through scripts/caffe2_run.py from a training net's
init_values.pb for 4 steps on the recorded batch, reproduces the net's trajectory.npz (the shared
nets of ../shared/caffe2_train_nets, and the nets scripts/caffe2_make_train_nets.py builds)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_helpers import SHARED, max_rel_error, shared_file
from train_nets import STEPS, fed_batch, generated_nets

pytestmark = pytest.mark.parity

# Caffe2 reruns itself bit for bit on one machine; across machines its float kernels may round differently
TOLERANCE = 1e-5

SHARED_NETS = tuple(sorted(p.parent.name for p in (SHARED / "caffe2_train_nets").glob("*/train_net.pbtxt"))) or (
    "lenet_dropout_momentum",
    "mlp_dropout_sgd",
)


def check_reproduces(caffe2, folder):
    traj = np.load(folder / "trajectory.npz", allow_pickle=False)
    got = caffe2.run(
        folder / "train_net.pbtxt", init=[folder / "init_values.pb"], feed_each=fed_batch(traj), iters=STEPS, fetch_init=True
    )
    # the checkpoint holds the state init_net produced: every tensor trajectory.npz saw after init
    init_keys = [k for k in traj.files if k.startswith("init/") and traj[k].dtype.kind in "fiub"]
    assert init_keys, f"{folder.name}: trajectory has no init/ tensors"
    keys = init_keys + [k for k in traj.files if k.startswith("step")]
    assert {f"step{k}/loss" for k in range(STEPS)} <= set(keys), f"{folder.name}: trajectory lacks step losses"
    for key in keys:
        want = traj[key]
        assert key in got, f"{folder.name}: Caffe2 produced no {key}"
        have = got[key]
        assert have.shape == want.shape and have.dtype == want.dtype, f"{folder.name}/{key}"
        if want.dtype.kind == "f":
            err = max_rel_error(have, want)
            assert err <= TOLERANCE, f"{folder.name}/{key}: relative error {err:.3g}"
        else:  # masks, the iteration counter: exact
            np.testing.assert_array_equal(have, want, err_msg=f"{folder.name}/{key}")


@pytest.mark.parametrize("name", SHARED_NETS)
def test_shared_train_net_reproduces_its_trajectory(caffe2, name):
    check_reproduces(caffe2, shared_file("caffe2_train_nets", name))


def test_generated_train_nets_reproduce_their_trajectories(caffe2, generated_train_nets):
    assert generated_train_nets, "the generator built no nets"
    for folder in generated_train_nets:
        check_reproduces(caffe2, folder)


@pytest.fixture(scope="module")
def generated_train_nets(caffe2):
    return generated_nets(caffe2.python)
