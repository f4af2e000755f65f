"""Build Caffe2 training nets with real Caffe2 and record how they train: the parity suite's own
training cases, beside the shared ones in ../shared/caffe2_train_nets (same files, same layout).

    <caffe2 venv>/bin/python scripts/caffe2_make_train_nets.py --out DIR [NAME ...]

Runs under the Python 3.9 venv of scripts/caffe2_venv.sh. Each net is built the way a Caffe2 user
built one: ``model_helper.ModelHelper`` + ``brew`` (and ``model.net.<Op>`` for the ops brew has no
helper for), ``AddGradientOperators([loss])``, ``optimizer.build_*`` with a learning-rate policy,
every op under a CPU device scope with ``random_seed`` = SEED. Together the nets cover every
forward op the converter supports and every optimizer (plain SGD, momentum, Nesterov, Adagrad,
Adam, RmsProp, weight decay) and learning-rate policy (fixed, step, exp, inv, multistep). As in
real nets, a Conv feeding SpatialBN has no bias (its true gradient is 0; Adam would amplify the
rounding noise of a computed one).

For each NAME it writes DIR/NAME/:
  train_net.pbtxt   the training NetDef as Caffe2 built it (forward, gradient and optimizer ops)
  init_net.pbtxt    the param_init_net as built (random fills, CreateMutex, ...)
  init_values.pb    GivenTensor*Fill ops (and CreateMutex) holding the state init_net produced
  value_info.json   the fed blobs, {name: [onnx_elem_type, shape]}
  trajectory.npz    fed/<blob> (the batch fed every step), init/<blob> (every tensor after init),
                    step<k>/loss, step<k>/<mask> and step<k>/<blob> for every blob written by an
                    optimizer or SpatialBN op (parameters, gradients, moments, running statistics,
                    iteration counter, learning rate), after step k = 0 .. STEPS-1

Nothing it writes belongs in git: the parity suite regenerates it into a cache.
"""

import argparse
import json
import os
import sys

SEED = 1234
STEPS = 4
BATCH = 4
CLASSES = 5

# name -> (body, optimizer, optimizer kwargs, learning-rate policy kwargs). Plain data: the test
# side reads the names without importing Caffe2.
NETS = {
    "mlp_sgd_fixed": ("mlp_softmax_with_loss", "sgd", {}, {"policy": "fixed"}),
    "mlp_momentum_step_wd": ("mlp_xent", "momentum", {"weight_decay": 1e-3}, {"policy": "step", "stepsize": 2, "gamma": 0.5}),
    "convbn_nesterov_exp": ("conv_bn", "nesterov", {}, {"policy": "exp", "gamma": 0.9}),
    "convbn_adagrad_inv": ("conv_bn", "adagrad", {}, {"policy": "inv", "gamma": 0.1, "power": 0.75}),
    "lrn_concat_adam_poly": ("lrn_concat", "adam", {}, {"policy": "poly", "max_iter": 10, "power": 0.9}),
    "deconv_rmsprop_fixed": ("deconv_reshape", "rmsprop", {}, {"policy": "fixed"}),
    "broadcast_momentum_fixed": ("broadcast_flatten", "momentum", {}, {"policy": "fixed"}),
}

BASE_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05, "adam": 0.01, "rmsprop": 0.01}

# the ops whose outputs trajectory.npz records after every step
STATE_OPS = {
    "Iter", "AtomicIter", "LearningRate", "WeightedSum", "MomentumSGDUpdate", "MomentumSGD",
    "Adagrad", "Adam", "RmsProp", "SpatialBN",
}  # fmt: skip

ONNX_TYPE = {"float32": 1, "int32": 6, "int64": 7}


def _input_shape(body):
    return {"conv_bn": (BATCH, 3, 8, 8), "lrn_concat": (BATCH, 3, 8, 8), "deconv_reshape": (BATCH, 2, 6, 6)}.get(
        body, (BATCH, 12)
    )


def build_body(model, body, brew, core):
    """Forward ops from "data" (and "label") to the loss blob; returns the loss."""
    if body == "mlp_softmax_with_loss":  # FC, Relu, Dropout, SoftmaxWithLoss
        h = brew.fc(model, "data", "fc1", dim_in=12, dim_out=16)
        h = brew.relu(model, h, "fc1_relu")
        h = brew.dropout(model, h, "fc1_drop", ratio=0.5, is_test=False)
        pred = brew.fc(model, h, "pred", dim_in=16, dim_out=CLASSES)
        _, loss = model.net.SoftmaxWithLoss([pred, "label"], ["softmax", "loss"])
        return loss
    if body == "mlp_xent":  # FC, Tanh, Sigmoid, Sum, Dropout, Softmax + LabelCrossEntropy + AveragedLoss
        a = brew.fc(model, "data", "fc_a", dim_in=12, dim_out=10)
        a = model.net.Tanh(a, "fc_a_tanh")
        b = brew.fc(model, "data", "fc_b", dim_in=12, dim_out=10)
        b = model.net.Sigmoid(b, "fc_b_sig")
        s = model.net.Sum([a, b], "ab_sum")
        s = brew.dropout(model, s, "ab_drop", ratio=0.3, is_test=False)
        pred = brew.fc(model, s, "pred", dim_in=10, dim_out=CLASSES)
        return _xent_loss(model, brew, pred)
    if body == "conv_bn":  # Conv (no bias) + SpatialBN training, Relu, MaxPool, grouped Conv, AveragePool, FC
        c = brew.conv(model, "data", "conv1", dim_in=3, dim_out=4, kernel=3, pad=1, no_bias=True)
        c = brew.spatial_bn(model, c, "bn1", dim_in=4, epsilon=1e-3, momentum=0.9, is_test=False)
        c = brew.relu(model, c, "bn1_relu")
        c = brew.max_pool(model, c, "pool1", kernel=2, stride=2)
        c = brew.conv(model, c, "conv2", dim_in=4, dim_out=6, kernel=3, pad=1, group=2)
        c = brew.relu(model, c, "conv2_relu")
        c = brew.average_pool(model, c, "pool2", kernel=2, stride=2)
        pred = brew.fc(model, c, "pred", dim_in=6 * 2 * 2, dim_out=CLASSES)
        _, loss = model.net.SoftmaxWithLoss([pred, "label"], ["softmax", "loss"])
        return loss
    if body == "lrn_concat":  # Conv, Tanh, LRN, two branches, Concat, Dropout, global AveragePool, FC
        c = brew.conv(model, "data", "conv1", dim_in=3, dim_out=4, kernel=3, pad=1)
        c = model.net.Tanh(c, "conv1_tanh")
        c = brew.lrn(model, c, "lrn1", size=3, alpha=1e-2, beta=0.75, bias=1.0)
        b1 = brew.conv(model, c, "b1", dim_in=4, dim_out=3, kernel=1)
        b2 = brew.conv(model, c, "b2", dim_in=4, dim_out=5, kernel=3, pad=1)
        b2 = brew.relu(model, b2, "b2_relu")
        cat = brew.concat(model, [b1, b2], "cat", axis=1)
        cat = brew.dropout(model, cat, "cat_drop", ratio=0.25, is_test=False)
        g = brew.average_pool(model, cat, "gap", global_pooling=True)
        pred = brew.fc(model, g, "pred", dim_in=8, dim_out=CLASSES)
        return _xent_loss(model, brew, pred)
    if body == "deconv_reshape":  # Conv, ConvTranspose, Relu, MaxPool, Reshape, FC
        c = brew.conv(model, "data", "conv1", dim_in=2, dim_out=3, kernel=3, stride=2, pad=1)
        c = brew.conv_transpose(model, c, "deconv1", dim_in=3, dim_out=4, kernel=2, stride=2)
        c = brew.relu(model, c, "deconv1_relu")
        c = brew.max_pool(model, c, "pool1", kernel=2, stride=2)
        r, _ = model.net.Reshape(c, ["flat", "flat_old_shape"], shape=(BATCH, -1))
        pred = brew.fc(model, r, "pred", dim_in=4 * 3 * 3, dim_out=CLASSES)
        _, loss = model.net.SoftmaxWithLoss([pred, "label"], ["softmax", "loss"])
        return loss
    if body == "broadcast_flatten":  # FC, Add/Mul legacy broadcast with parameters, Flatten, Relu
        h = brew.fc(model, "data", "fc1", dim_in=12, dim_out=8)
        shift = model.create_param("shift", shape=[8], initializer=_init("GaussianFill", std=0.1))
        gain = model.create_param("gain", shape=[8], initializer=_init("ConstantFill", value=1.0))
        h = model.net.Add([h, shift], "fc1_shift", broadcast=1, axis=1)
        h = model.net.Mul([h, gain], "fc1_gain", broadcast=1)
        h = brew.relu(model, h, "fc1_relu")
        h = model.net.Reshape(h, ["fc1_3d", "fc1_3d_old_shape"], shape=(BATCH, 2, 4))[0]
        h = model.net.Flatten(h, "fc1_flat", axis=1)
        pred = brew.fc(model, h, "pred", dim_in=8, dim_out=CLASSES)
        return _xent_loss(model, brew, pred)
    raise ValueError(f"unknown body {body!r}")


def _init(kind, **kw):
    from caffe2.python.modeling.initializers import Initializer

    return Initializer(kind, **kw)


def _xent_loss(model, brew, pred):
    sm = brew.softmax(model, pred, "softmax")
    xent = model.net.LabelCrossEntropy([sm, "label"], "xent")
    return model.net.AveragedLoss(xent, "loss")


def add_optimizer(model, optimizer, opt, kwargs, lr_kwargs):
    opt_kwargs = dict(kwargs)
    wd = opt_kwargs.pop("weight_decay", None)
    if wd:
        optimizer.add_weight_decay(model, wd)
    lr = BASE_LR[opt]
    if opt == "sgd":
        optimizer.build_sgd(model, lr, **lr_kwargs, **opt_kwargs)
    elif opt in ("momentum", "nesterov"):
        optimizer.build_sgd(model, lr, momentum=0.9, nesterov=(opt == "nesterov"), **lr_kwargs, **opt_kwargs)
    elif opt == "adagrad":
        optimizer.build_adagrad(model, lr, epsilon=1e-4, **lr_kwargs, **opt_kwargs)
    elif opt == "adam":
        optimizer.build_adam(model, lr, beta1=0.9, beta2=0.999, epsilon=1e-8, **lr_kwargs, **opt_kwargs)
    elif opt == "rmsprop":
        optimizer.build_rms_prop(model, lr, decay=0.9, momentum=0.5, epsilon=1e-5, **lr_kwargs, **opt_kwargs)
    else:
        raise ValueError(f"unknown optimizer {opt!r}")


def snapshot_init_net(init_net, workspace, core):
    """init_values.pb: one GivenTensor*Fill (or CreateMutex) per blob init_net wrote, in its order."""
    import numpy as np
    from caffe2.proto import caffe2_pb2

    fills = {np.dtype("float32"): "GivenTensorFill", np.dtype("int32"): "GivenTensorIntFill",
             np.dtype("int64"): "GivenTensorInt64Fill", np.dtype("bool"): "GivenTensorBoolFill"}  # fmt: skip
    out = caffe2_pb2.NetDef()
    out.name = init_net.name + "_values"
    seen = set()
    for op in init_net.op:
        for blob in op.output:
            if blob in seen:
                continue
            seen.add(blob)
            if op.type == "CreateMutex":
                out.op.extend([core.CreateOperator("CreateMutex", [], [blob])])
                continue
            arr = workspace.FetchBlob(blob)
            if arr.dtype not in fills:
                raise TypeError(f"init blob {blob!r} has dtype {arr.dtype}, no GivenTensor fill for it")
            values = arr.reshape(-1).tolist()
            out.op.extend([core.CreateOperator(fills[arr.dtype], [], [blob], shape=list(arr.shape), values=values)])
    out.external_output.extend(sorted(seen))
    return out


def make_net(name, out_dir):
    import numpy as np
    from caffe2.proto import caffe2_pb2
    from caffe2.python import brew, core, model_helper, optimizer, workspace
    from google.protobuf import text_format

    body, opt, opt_kwargs, lr_kwargs = NETS[name]
    workspace.ResetWorkspace()
    model = model_helper.ModelHelper(name=name)
    with core.DeviceScope(core.DeviceOption(caffe2_pb2.CPU, 0, random_seed=SEED)):
        loss = build_body(model, body, brew, core)
        model.AddGradientOperators([loss])
        add_optimizer(model, optimizer, opt, opt_kwargs, lr_kwargs)
    train_net, init_net = model.net.Proto(), model.param_init_net.Proto()

    rng = np.random.RandomState(SEED)
    fed = {
        "data": rng.standard_normal(_input_shape(body)).astype(np.float32),
        "label": rng.randint(0, CLASSES, size=(BATCH,)).astype(np.int32),
    }
    workspace.RunNetOnce(init_net)
    init_values = snapshot_init_net(init_net, workspace, core)
    traj = {f"fed/{k}": v for k, v in fed.items()}
    for k, v in fed.items():
        workspace.FeedBlob(k, v)
    for blob in workspace.Blobs():
        try:
            v = workspace.FetchBlob(blob)
        except Exception:  # the mutex, blobs not written yet
            continue
        if isinstance(v, np.ndarray):
            traj[f"init/{blob}"] = v

    masks = [op.output[1] for op in train_net.op if op.type == "Dropout" and len(op.output) > 1]
    state = []
    for op in train_net.op:
        if op.type in STATE_OPS:
            state += [b for b in op.output if b not in state]
    workspace.CreateNet(train_net)
    for step in range(STEPS):
        for k, v in fed.items():
            workspace.FeedBlob(k, v)
        workspace.RunNet(train_net.name)
        for blob in ["loss"] + masks + state:
            traj[f"step{step}/{blob}"] = workspace.FetchBlob(blob)
        if not np.isfinite(traj[f"step{step}/loss"]).all():
            raise RuntimeError(f"{name}: loss is not finite at step {step}")

    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "train_net.pbtxt"), "w") as f:
        f.write(text_format.MessageToString(train_net))
    with open(os.path.join(d, "init_net.pbtxt"), "w") as f:
        f.write(text_format.MessageToString(init_net))
    with open(os.path.join(d, "init_values.pb"), "wb") as f:
        f.write(init_values.SerializeToString())
    with open(os.path.join(d, "value_info.json"), "w") as f:
        json.dump({k: [ONNX_TYPE[str(v.dtype)], list(v.shape)] for k, v in fed.items()}, f)
    np.savez(os.path.join(d, "trajectory.npz"), **traj)
    return sorted({op.type for op in train_net.op})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write one sub-folder per net into")
    p.add_argument("names", nargs="*", help=f"nets to build (default all: {', '.join(NETS)})")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in NETS]
    if unknown:
        print(f"error: unknown net {unknown[0]!r}; known: {', '.join(NETS)}", file=sys.stderr)
        return 2
    from caffe2.python import workspace

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
    for name in args.names or NETS:
        ops = make_net(name, args.out)
        print(f"{name}: {len(ops)} op types: {' '.join(ops)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
