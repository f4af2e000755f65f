"""The oracle itself: real Caffe2, run through scripts/caffe2_run.py from a training net's
init_values.pb for 4 steps on the recorded batch, reproduces the net's trajectory.npz (the shared
nets of ../shared/caffe2_train_nets, and the nets scripts/caffe2_make_train_nets.py builds)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_helpers import SHARED, max_rel_error, shared_file
from train_nets import NET_NAMES, STEPS, fed_batch, generated_nets

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


@pytest.fixture(scope="module")
def generated_train_nets(caffe2):
    return dict(zip(NET_NAMES, generated_nets(caffe2.python)))


@pytest.mark.parametrize("name", NET_NAMES)
def test_generated_train_net_reproduces_its_trajectory(caffe2, generated_train_nets, name):
    check_reproduces(caffe2, generated_train_nets[name])


FORWARD_OPS = {
    "Conv", "FC", "Relu", "Sigmoid", "Tanh", "LRN", "MaxPool", "AveragePool", "SpatialBN", "Concat", "Sum",
    "Add", "Mul", "Reshape", "Flatten", "ConvTranspose", "Dropout", "Softmax", "LabelCrossEntropy",
    "AveragedLoss", "SoftmaxWithLoss",
}  # fmt: skip
OPTIMIZER_OPS = {"AtomicIter", "LearningRate", "WeightedSum", "MomentumSGDUpdate", "Adagrad", "Adam", "RmsProp"}


def test_generated_nets_cover_the_converter_ops_optimizers_and_policies(generated_train_nets):
    from caffe2_ort.caffe2 import netdef

    types, policies, nesterov, variants = set(), set(), set(), set()
    for folder in generated_train_nets.values():
        net = netdef.read_netdef(folder / "train_net.pbtxt")
        for op in net.op:
            types.add(op.type)
            args = netdef.Args(op)
            if op.type == "LearningRate":
                policies.add(args.str("policy"))
            if op.type == "MomentumSGDUpdate":
                nesterov.add(args.int("nesterov", 0))
            if op.type == "Conv" and args.int("group", 1) > 1:
                variants.add("grouped Conv")
            if op.type == "SpatialBN" and not args.int("is_test", 0):
                variants.add("training SpatialBN")
                (producer,) = [p for p in net.op if op.input[0] in p.output and not p.is_gradient_op]
                assert len(producer.input) == 2, f"{folder.name}: {producer.type} feeding SpatialBN has a bias"
            if op.type in ("Add", "Mul") and args.int("broadcast", 0):
                variants.add(f"broadcast {op.type}")
            if op.type == "WeightedSum" and op.output[0] == op.input[0] and op.input[0].endswith("_grad"):
                variants.add("weight decay")
    assert FORWARD_OPS <= types, f"missing forward ops: {sorted(FORWARD_OPS - types)}"
    assert OPTIMIZER_OPS <= types, f"missing optimizer ops: {sorted(OPTIMIZER_OPS - types)}"
    assert {"fixed", "step", "exp", "inv", "poly"} <= policies, policies
    assert nesterov == {0, 1}
    assert variants == {"grouped Conv", "training SpatialBN", "broadcast Add", "broadcast Mul", "weight decay"}
