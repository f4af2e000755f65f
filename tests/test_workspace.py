"""caffe2_ort.workspace and caffe2_ort.caffe2.caffe2_pb2 without real Caffe2: the calls' meanings,
Dropout state per created net and per RunOperatorOnce call (checked against caffe2_ort.reference),
native fills (random fills against values measured on real Caffe2), in-place updates, intermediates,
and the errors. tests/parity/test_workspace_parity.py runs the same calls against real Caffe2."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from caffe2_ort import reference, workspace
from caffe2_ort.caffe2 import caffe2_pb2, schema
from caffe2_ort.workspace import WorkspaceError
from workspace_port import IMPORTS, port


@pytest.fixture(autouse=True)
def fresh_workspace():
    workspace.ResetWorkspace()
    yield
    workspace.ResetWorkspace()
    workspace.SetDefaultRNG("caffe2")


def make_op(op_type, inputs, outputs, seed=None, **args):
    op = caffe2_pb2.OperatorDef(type=op_type, input=inputs, output=outputs)
    for k, v in args.items():
        a = op.arg.add(name=k)
        if isinstance(v, float):
            a.f = v
        elif isinstance(v, (list, tuple)):
            a.ints.extend(v)
        else:
            a.i = v
    if seed is not None:
        op.device_option.random_seed = seed
    return op


def make_net(name, ops, inputs=(), outputs=()):
    net = caffe2_pb2.NetDef(name=name, external_input=list(inputs), external_output=list(outputs))
    for op in ops:
        net.op.add().CopyFrom(op)
    return net


def dropout_net(seed=11, ratio=0.5):
    return make_net("dn", [make_op("Relu", ["X"], ["R"]), make_op("Dropout", ["R"], ["D", "mask"], seed=seed, ratio=ratio, is_test=0)],
                    ["X"], ["D"])


X = np.random.default_rng(0).standard_normal((5, 9)).astype(np.float32)


# ------------------------------------------------------------------------------------- caffe2_pb2


def test_caffe2_pb2_has_caffe2s_names():
    for name in ("NetDef", "OperatorDef", "Argument", "DeviceOption", "TensorProto", "TensorProtos", "BlobProto"):
        assert getattr(caffe2_pb2, name) is getattr(schema, name)
    assert (caffe2_pb2.CPU, caffe2_pb2.CUDA, caffe2_pb2.PROTO_CPU, caffe2_pb2.PROTO_CUDA) == (0, 1, 0, 1)
    assert caffe2_pb2.TensorProto.FLOAT == 1 and caffe2_pb2.TensorProto.INT64 == 10
    assert {"NetDef", "CPU", "PROTO_CUDA"} <= set(caffe2_pb2.__all__)


def test_caffe2_pb2_text_format_and_binary_round_trip():
    net = caffe2_pb2.NetDef()
    text_format.Merge('name: "n" op { type: "Relu" input: "x" output: "y" device_option { device_type: 0 random_seed: 5 } }', net)
    again = caffe2_pb2.NetDef()
    again.ParseFromString(net.SerializeToString())
    assert again == net and again.op[0].device_option.random_seed == 5
    assert text_format.MessageToString(again) == text_format.MessageToString(net)


# ------------------------------------------------------------------------------------- porting


def test_port_changes_the_two_imports():
    src = "import numpy\nfrom caffe2.python import workspace\nfrom caffe2.proto import caffe2_pb2\nworkspace.ResetWorkspace()\n"
    out = port(src)
    for old, new in IMPORTS.items():
        assert old not in out and new in out
    assert out.endswith("workspace.ResetWorkspace()\n")


def test_port_refuses_what_does_not_carry_over():
    with pytest.raises(ValueError, match="found it 0 times"):
        port("from caffe2.proto import caffe2_pb2\n")
    with pytest.raises(ValueError, match="do not carry over"):
        port("from caffe2.python import workspace\nfrom caffe2.proto import caffe2_pb2\nfrom caffe2.python import core\n")


# ------------------------------------------------------------------------------------- blobs


def test_feed_fetch_copy_and_blob_listing():
    a = np.arange(4, dtype=np.int64)
    assert workspace.FeedBlob("b", a) is True
    workspace.FeedBlob("a", X)
    a[0] = 99  # the workspace holds a copy
    got = workspace.FetchBlob("b")
    np.testing.assert_array_equal(got, [0, 1, 2, 3])
    got[1] = 7  # and hands out a copy
    assert workspace.FetchBlob("b")[1] == 1
    assert workspace.Blobs() == ["a", "b"]
    assert workspace.HasBlob("a") and not workspace.HasBlob("c")
    x, b = workspace.FetchBlobs(["a", "b"])
    np.testing.assert_array_equal(x, X)
    workspace.FeedBlob("s", "text")
    assert workspace.FetchBlob("s") == b"text"


def test_reset_drops_blobs_and_nets():
    workspace.FeedBlob("X", X)
    workspace.CreateNet(dropout_net())
    assert workspace.Nets() == ["dn"]
    assert workspace.ResetWorkspace() is True
    assert workspace.Blobs() == [] and workspace.Nets() == []
    with pytest.raises(WorkspaceError, match="Can't find net dn"):
        workspace.RunNet("dn")


def test_blob_errors_are_runtime_errors_naming_the_blob():
    with pytest.raises(RuntimeError, match="Can't find blob: nope"):
        workspace.FetchBlob("nope")
    with pytest.raises(WorkspaceError, match=r"FeedBlob\('l'\): Unexpected type of argument list - only numpy array or string"):
        workspace.FeedBlob("l", [1.0, 2.0])
    cuda = caffe2_pb2.DeviceOption(device_type=caffe2_pb2.CUDA)
    with pytest.raises(WorkspaceError, match=r"FeedBlob\('g'\): device_type 1 is not served"):
        workspace.FeedBlob("g", X, device_option=cuda)
    assert not workspace.HasBlob("g")
    workspace.FeedBlob("c", X, device_option=caffe2_pb2.DeviceOption(device_type=caffe2_pb2.CPU))
    assert workspace.HasBlob("c")


# ------------------------------------------------------------------------------------- nets


def test_create_net_creates_its_output_blobs_unwritten():
    workspace.FeedBlob("X", X)
    workspace.CreateNet(dropout_net())
    assert workspace.Blobs() == ["D", "R", "X", "mask"]
    assert workspace.FetchBlob("R") == b"R, a C++ native class of type nullptr (uninitialized)."


def test_create_net_errors():
    workspace.FeedBlob("X", X)
    workspace.CreateNet(dropout_net())
    with pytest.raises(WorkspaceError, match='refuse to overwrite an existing net of the same name "dn"'):
        workspace.CreateNet(dropout_net())
    assert workspace.CreateNet(dropout_net(), overwrite=True)
    bad = make_net("bad", [make_op("Relu", ["missing"], ["q"])])
    with pytest.raises(WorkspaceError, match=r"net 'bad': Relu op #0: Encountered a non-existing input blob: missing"):
        workspace.CreateNet(bad)
    assert not workspace.HasBlob("q")
    unknown = make_net("u", [make_op("NoSuchOp", ["X"], ["q"])])
    with pytest.raises(WorkspaceError, match=r"net 'u': .*NoSuchOp"):
        workspace.CreateNet(unknown)
    with pytest.raises(WorkspaceError, match="expected a NetDef"):
        workspace.CreateNet(42)
    with pytest.raises(WorkspaceError, match="cannot parse the NetDef bytes"):
        workspace.RunNetOnce(b"\xff\xff\xff")


def test_created_net_keeps_its_dropout_stream():
    workspace.FeedBlob("X", X)
    workspace.CreateNet(dropout_net(seed=11))
    stream = reference.DropoutStream(11, rng="caffe2_mt19937")
    relu = np.maximum(X, 0)
    for _ in range(2):
        workspace.RunNet("dn")
        y, mask = stream.run(relu, ratio=0.5)
        np.testing.assert_array_equal(workspace.FetchBlob("mask"), mask)
        np.testing.assert_array_equal(workspace.FetchBlob("D"), y)
    np.testing.assert_array_equal(workspace.FetchBlob("R"), relu)  # an intermediate
    workspace.RunNet("dn", num_iter=3)
    for _ in range(3):
        _, mask = stream.run(relu, ratio=0.5)
    np.testing.assert_array_equal(workspace.FetchBlob("mask"), mask)


def test_run_net_once_and_run_operator_once_start_afresh():
    workspace.FeedBlob("X", X)
    first = reference.DropoutStream(11, rng="caffe2_mt19937").draw(X.shape, ratio=0.5)
    for _ in range(2):
        workspace.RunNetOnce(dropout_net(seed=11))
        np.testing.assert_array_equal(workspace.FetchBlob("mask"), first)
    op = make_op("Dropout", ["X"], ["Y", "m"], seed=11, ratio=0.5, is_test=0)
    masks = []
    for _ in range(2):
        assert workspace.RunOperatorOnce(op) is True
        masks.append(workspace.FetchBlob("m"))
    np.testing.assert_array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0], reference.DropoutStream(11, rng="caffe2_mt19937").draw(X.shape, ratio=0.5))
    dy = np.ones_like(X)
    workspace.FeedBlob("dY", dy)
    assert workspace.RunOperatorsOnce([make_op("DropoutGrad", ["dY", "m"], ["dX"], ratio=0.5, is_test=0)])
    np.testing.assert_array_equal(workspace.FetchBlob("dX"), reference.dropout_grad(dy, masks[0], ratio=0.5, is_test=0))


def test_rng_keyword_and_default():
    workspace.FeedBlob("X", X)
    op = make_op("Dropout", ["X"], ["Y", "m"], seed=11, ratio=0.5, is_test=0)
    workspace.RunOperatorOnce(op, rng="philox")
    np.testing.assert_array_equal(workspace.FetchBlob("m"), reference.DropoutStream(11, rng="").draw(X.shape, ratio=0.5))
    workspace.SetDefaultRNG("philox")
    workspace.RunOperatorOnce(op)
    philox = workspace.FetchBlob("m")
    workspace.RunOperatorOnce(op, rng="caffe2")
    assert not np.array_equal(philox, workspace.FetchBlob("m"))
    with pytest.raises(WorkspaceError, match="rng must be one of caffe2, philox, not 'mt'"):
        workspace.RunOperatorOnce(op, rng="mt")


def test_accepts_bytes_and_objects_with_proto():
    class Net:  # what core.Net offers
        def __init__(self, proto):
            self._proto = proto

        def Proto(self):
            return self._proto

        def Name(self):
            return self._proto.name

    workspace.FeedBlob("X", X)
    net = dropout_net()
    workspace.CreateNet(Net(net))
    workspace.RunNet(Net(net))
    workspace.RunNet(net)
    workspace.RunNetOnce(net.SerializeToString())
    workspace.RunOperatorOnce(make_op("Relu", ["X"], ["Z"]).SerializeToString())
    np.testing.assert_array_equal(workspace.FetchBlob("Z"), np.maximum(X, 0))


def test_in_place_updates_change_the_workspace_across_runs():
    w0, g = np.ones(4, np.float32), np.full(4, 0.25, np.float32)
    workspace.FeedBlob("w", w0)
    workspace.FeedBlob("g", g)
    workspace.CreateNet(make_net("step", [make_op("Add", ["w", "g"], ["w"]), make_op("Relu", ["w"], ["w"])], ["w", "g"], ["w"]))
    workspace.RunNet("step", 3)
    np.testing.assert_array_equal(workspace.FetchBlob("w"), w0 + 3 * g)


def test_created_net_shapes():
    workspace.FeedBlob("X", X[:2])
    workspace.CreateNet(dropout_net())
    workspace.FeedBlob("X", X)  # not run yet: converted again for the new shape
    workspace.RunNet("dn")
    assert workspace.FetchBlob("D").shape == X.shape
    workspace.FeedBlob("X", X[:3])
    with pytest.raises(WorkspaceError, match=r"net 'dn': blob 'X' is now float32 of shape \[3, 9\], the net was converted for "
                                             r"float32 of shape \[5, 9\].*overwrite=True"):
        workspace.RunNet("dn")
    workspace.CreateNet(dropout_net(), overwrite=True)
    workspace.RunNet("dn")
    assert workspace.FetchBlob("D").shape == (3, 9)


def test_a_net_reading_a_non_tensor_blob_is_refused_naming_it():
    workspace.FeedBlob("s", "text")
    with pytest.raises(WorkspaceError, match="blob 's' holds a string, not a tensor"):
        workspace.RunNetOnce(make_net("r", [make_op("Relu", ["s"], ["t"])]))


def test_conversions_are_cached(monkeypatch):
    calls = []
    real = workspace.convert
    monkeypatch.setattr(workspace, "convert", lambda *a, **k: calls.append(1) or real(*a, **k))
    workspace.FeedBlob("X", X)
    op = make_op("Sigmoid", ["X"], ["S"])
    for _ in range(3):
        workspace.RunOperatorOnce(op)
    assert len(calls) == 1
    workspace.FeedBlob("X", X[:1])
    workspace.RunOperatorOnce(op)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------- fills

# measured on real Caffe2 (torch 1.8.1), device_option.random_seed = 1234, shape [4, 3]
CAFFE2_FILLS = {
    "XavierFill": ({}, [-0.9420415163040161, -0.19620287418365479, -0.48031163215637207, -0.2667173147201538]),
    "UniformFill": ({"min": -1.0, "max": 2.0}, [-0.9130622744560242, 0.20569562911987305, -0.2204674482345581, 0.09992408752441406]),
    "GaussianFill": ({"mean": 0.5, "std": 2.0}, [2.494274854660034, 0.8671883344650269, 0.38184499740600586, 2.407822608947754]),
    "MSRAFill": ({}, [0.7050825953483582, 0.12982068955898285, -0.041774094104766846, 0.6745170950889587]),
}


@pytest.mark.parametrize("op_type", sorted(CAFFE2_FILLS))
def test_random_fills_draw_caffe2s_values(op_type):
    args, want = CAFFE2_FILLS[op_type]
    workspace.RunNetOnce(make_net("init", [make_op(op_type, [], ["w"], seed=1234, shape=[4, 3], **args)]))
    got = workspace.FetchBlob("w")
    assert got.shape == (4, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got.ravel()[:4], want, rtol=1e-6)


def test_unseeded_random_fill_differs_and_init_net_fills():
    op = make_op("XavierFill", [], ["w"], shape=[50])
    workspace.RunOperatorOnce(op)
    a = workspace.FetchBlob("w")
    workspace.RunOperatorOnce(op)
    assert not np.array_equal(a, workspace.FetchBlob("w"))
    init = make_net("init", [make_op("ConstantFill", [], ["c"], shape=[2, 2], value=3.0), make_op("CreateMutex", [], ["mu"])])
    workspace.RunNetOnce(init)
    np.testing.assert_array_equal(workspace.FetchBlob("c"), np.full((2, 2), 3.0, np.float32))
    assert workspace.FetchBlob("mu") == b"mu, a C++ native class of type std::unique_ptr<std::mutex>."


def test_fill_errors_name_the_op():
    with pytest.raises(WorkspaceError, match=r"XavierFill op #0: only a 'shape' argument is supported"):
        workspace.RunOperatorOnce(make_op("XavierFill", [], ["w"]))
    with pytest.raises(WorkspaceError, match=r"init_net op #0 ConstantFill for 'c': unsupported dtype 999"):
        workspace.RunOperatorOnce(make_op("ConstantFill", [], ["c"], shape=[1], dtype=999))


# ------------------------------------------------------------------------------------- training nets


@pytest.mark.parametrize("name", ["mlp_dropout_sgd", "lenet_dropout_momentum"])
def test_training_net_run_net_follows_caffe2s_trajectory(name):
    """A Caffe2 training net created once and run 4 times reproduces what real Caffe2 recorded after
    every step (../shared/caffe2_train_nets: parameters, gradients, momenta, masks, iteration, lr)."""
    from caffe2_helpers import max_rel_error, shared_file

    folder = shared_file("caffe2_train_nets", name)
    init_values = caffe2_pb2.NetDef()
    init_values.ParseFromString((folder / "init_values.pb").read_bytes())
    train = caffe2_pb2.NetDef()
    text_format.Merge((folder / "train_net.pbtxt").read_text(), train)
    workspace.RunNetOnce(init_values)
    with np.load(folder / "trajectory.npz") as z:
        traj = {k: z[k] for k in z.files}
    for key, value in traj.items():
        if key.startswith("fed/"):
            workspace.FeedBlob(key[4:], value)
    workspace.CreateNet(train)
    for step in range(4):
        workspace.RunNet(train.name)
        keys = [k for k in traj if k.startswith(f"step{step}/")]
        assert len(keys) > 5
        for key in keys:
            got, ref = workspace.FetchBlob(key.split("/", 1)[1]), traj[key]
            assert isinstance(got, np.ndarray), f"{key}: left unwritten"
            assert got.dtype == ref.dtype and got.shape == ref.shape, key
            if ref.dtype.kind == "f":
                assert max_rel_error(got, ref) <= 1e-4, key
            else:
                np.testing.assert_array_equal(got, ref, err_msg=key)  # masks, the iteration counter


def test_training_net_state_fed_between_runs_is_used():
    """In-place state stays the workspace's: a parameter fed between runs is what the next step updates."""
    w = np.ones((2, 3), np.float32)
    ops = [
        make_op("FC", ["X", "w", "b"], ["y"]),
        make_op("AveragedLoss", ["y"], ["loss"]),
        make_op("ConstantFill", ["loss"], ["loss_grad"], value=1.0),
        make_op("AveragedLossGradient", ["y", "loss_grad"], ["y_grad"]),
        make_op("FCGradient", ["X", "w", "y_grad"], ["w_grad", "b_grad", "X_grad"]),
        make_op("WeightedSum", ["w", "ONE", "w_grad", "LR"], ["w"]),
    ]
    ops[3].is_gradient_op = ops[4].is_gradient_op = True
    workspace.FeedBlob("X", np.ones((4, 3), np.float32))
    workspace.FeedBlob("w", w)
    workspace.FeedBlob("b", np.zeros(2, np.float32))
    workspace.FeedBlob("ONE", np.ones(1, np.float32))
    workspace.FeedBlob("LR", np.full(1, -0.5, np.float32))
    workspace.CreateNet(make_net("sgd", ops, ["X", "w", "b", "ONE", "LR"]))
    workspace.RunNet("sgd")
    grad = workspace.FetchBlob("w_grad")  # d mean(y) / dw = mean of X / 2 per output
    np.testing.assert_allclose(grad, np.full((2, 3), 0.5, np.float32))
    np.testing.assert_allclose(workspace.FetchBlob("w"), w - 0.5 * grad)
    workspace.FeedBlob("w", np.zeros((2, 3), np.float32))
    workspace.RunNet("sgd")
    np.testing.assert_allclose(workspace.FetchBlob("w"), -0.5 * grad)
