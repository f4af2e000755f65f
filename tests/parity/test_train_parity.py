"""Training parity with real Caffe2: every training net (../shared/caffe2_train_nets and the nets
scripts/caffe2_make_train_nets.py builds) converted with rng caffe2 from its init_values.pb and run
for 4 steps in ONNX Runtime on the recorded batch: the loss of every step and every state blob after
every step equal Caffe2's (trajectory.npz) within 1e-4 of the blob's largest magnitude, and the
Dropout masks equal exactly. Then the round trip: 2 steps in ORT, save_init_net, and real Caffe2
loading that init net and running 2 steps agrees with a fresh TrainingSession started from it."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_ort.caffe2 import netdef
from caffe2_ort.caffe2.training_net import convert_training_net
from caffe2_ort.training import TrainingSession

from caffe2_helpers import max_rel_error, shared_file
from test_train_oracle import SHARED_NETS
from train_nets import NET_NAMES, STEPS, fed_batch, generated_nets

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4
ROUND_TRIP_STEPS = 2


def _session(folder, init_path=None):
    net = netdef.read_netdef(folder / "train_net.pbtxt")
    init = netdef.read_netdef(init_path or folder / "init_values.pb")
    vi = netdef.read_value_info(folder / "value_info.json")
    model, _notes = convert_training_net(net, init, vi, rng="caffe2")
    return TrainingSession(model)


def _mask_names(sess):
    return [o for o in sess.outputs if o != sess.loss and o not in sess._next]


def check_trajectory(folder):
    traj = np.load(folder / "trajectory.npz", allow_pickle=False)
    sess = _session(folder)
    feeds = fed_batch(traj)
    worst = {"loss": 0.0, "state": 0.0}
    for k in range(STEPS):
        out = sess.step(feeds)
        err = max_rel_error(out[sess.loss], traj[f"step{k}/loss"])
        assert err <= TOLERANCE, f"{folder.name} step {k}: loss {out[sess.loss]} vs Caffe2 {traj[f'step{k}/loss']}"
        worst["loss"] = max(worst["loss"], err)
        for m in _mask_names(sess):
            want = traj[f"step{k}/{m}"]
            np.testing.assert_array_equal(out[m].reshape(want.shape), want, err_msg=f"{folder.name} step {k}: mask {m}")
        state = sess.state()
        compared = 0
        for blob, value in state.items():
            key = f"step{k}/{blob}"
            if key not in traj.files:
                continue
            want = traj[key]
            assert value.shape == want.shape, f"{folder.name} step {k}: {blob} shape {value.shape} vs {want.shape}"
            if want.dtype.kind == "f":
                err = max_rel_error(value, want)
                assert err <= TOLERANCE, f"{folder.name} step {k}: state {blob} relative error {err:.3g}"
                worst["state"] = max(worst["state"], err)
            else:
                np.testing.assert_array_equal(value, want, err_msg=f"{folder.name} step {k}: {blob}")
            compared += 1
        assert compared == len(state), f"{folder.name}: trajectory lacks state blobs {sorted(set(state) - {k_.split('/', 1)[1] for k_ in traj.files if k_.startswith(f'step{k}/')})}"
    assert _mask_names(sess) or "dropout" not in folder.name
    return worst


def check_round_trip(caffe2, folder, tmp_path):
    traj = np.load(folder / "trajectory.npz", allow_pickle=False)
    feeds = fed_batch(traj)
    sess = _session(folder)
    for _ in range(ROUND_TRIP_STEPS):
        sess.step(feeds)
    saved = tmp_path / "init_net.pb"
    sess.save_init_net(saved)
    got = caffe2.run(folder / "train_net.pbtxt", init=[saved], feed_each=feeds, iters=ROUND_TRIP_STEPS)
    fresh = _session(folder, saved)
    for k in range(ROUND_TRIP_STEPS):
        out = fresh.step(feeds)
        assert max_rel_error(out[fresh.loss], got[f"step{k}/{fresh.loss}"]) <= TOLERANCE, f"{folder.name} round trip step {k}: loss"
        for m in _mask_names(fresh):
            want = got[f"step{k}/{m}"]
            np.testing.assert_array_equal(out[m].reshape(want.shape), want, err_msg=f"{folder.name} round trip: mask {m}")
        for blob, value in fresh.state().items():
            want = got[f"step{k}/{blob}"]
            if want.dtype.kind == "f":
                err = max_rel_error(value, want)
                assert err <= TOLERANCE, f"{folder.name} round trip step {k}: {blob} relative error {err:.3g}"
            else:
                np.testing.assert_array_equal(value, want, err_msg=f"{folder.name} round trip step {k}: {blob}")


@pytest.fixture(scope="module")
def generated_train_nets(caffe2):
    return dict(zip(NET_NAMES, generated_nets(caffe2.python)))


@pytest.mark.parametrize("name", SHARED_NETS)
def test_shared_net_matches_caffe2(name):
    check_trajectory(shared_file("caffe2_train_nets", name))


@pytest.mark.parametrize("name", NET_NAMES)
def test_generated_net_matches_caffe2(generated_train_nets, name):
    check_trajectory(generated_train_nets[name])


@pytest.mark.parametrize("name", SHARED_NETS)
def test_shared_net_round_trip(caffe2, name, tmp_path):
    check_round_trip(caffe2, shared_file("caffe2_train_nets", name), tmp_path)


@pytest.mark.parametrize("name", NET_NAMES)
def test_generated_net_round_trip(caffe2, generated_train_nets, name, tmp_path):
    check_round_trip(caffe2, generated_train_nets[name], tmp_path)
