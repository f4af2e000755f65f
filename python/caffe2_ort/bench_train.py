"""``caffe2-ort bench --training``: one training step of converted Caffe2 nets in ONNX Runtime against
PyTorch CPU running the same net in the same run.

Nets: AlexNet and ResNet-50 from ``../shared/caffe2_models`` (or ``--train-zoo DIR``) and VGG19
(configuration E, built here as a Caffe2 NetDef), with synthesised weights at the synthesiser's
default width (16, FC 32) and at ``x4``, batch 8, float32. The step: forward with training-mode
Dropout, SoftmaxCrossEntropyLoss on the logits, backward, momentum SGD (Caffe2's MomentumSGDUpdate).
ORT runs the training-step model through :class:`caffe2_ort.training.TrainingSession`; PyTorch runs
the same ONNX forward op by op (:mod:`caffe2_ort.torch_ref`), ``backward()`` and the same update with
in-place tensor ops. Both with 1 and 2 intra-op threads; medians of timed steps after a warm-up,
ORT and PyTorch steps alternating so that load changes on a shared machine hit both alike.
``--train-profile`` adds where ORT's step time goes, by op type, forward and backward apart.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

DEFAULT_NETS = ("alexnet", "vgg19", "resnet50")
ZOO_DIRS = {"alexnet": "bvlc_alexnet", "resnet50": "resnet50"}
BASE_WIDTH, BASE_FC_WIDTH = 16, 32
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def add_arguments(parser) -> None:
    """``--training`` and its ``--train-*`` options, in their own group of ``bench --help``."""
    group = parser.add_argument_group(
        "training step (--training)", "one training step of converted nets in ORT against the same step in PyTorch")
    group.add_argument("--training", action="store_true",
                       help="benchmark one training step of converted nets against PyTorch (see caffe2_ort.bench_train)")
    group.add_argument("--train-nets", nargs="+", default=list(DEFAULT_NETS), choices=list(DEFAULT_NETS),
                       help="nets to step (default: all)")
    group.add_argument("--train-widths", type=int, nargs="+", default=[1, 4],
                       help="width multipliers of the synthesiser's default (16 conv, 32 FC); default 1 4")
    group.add_argument("--train-batch", type=int, default=8, help="batch size (default 8)")
    group.add_argument("--train-reps", type=int, default=3, help="timed steps per measurement (median)")
    group.add_argument("--train-zoo", default=None, help="folder of the Caffe2 model zoo (default ../shared/caffe2_models)")
    group.add_argument("--train-profile", action="store_true", help="also print ORT's step time by op type")


def vgg19_netdef():
    """VGG19 (configuration E) as a Caffe2 predict net: 16 3x3 convs, 5 max pools, 3 FC, Dropout, Softmax."""
    from .caffe2 import netdef, schema

    net = schema.NetDef(name="vgg19", external_input=["data"], external_output=["prob"])

    def op(type_, ins, outs, **args):
        o = net.op.add(type=type_, input=ins, output=outs)
        netdef.add_args(o, args)
        if type_ in ("Conv", "FC"):
            net.external_input.extend(ins[1:])

    x, c, p = "data", 0, 0
    for v in VGG19_CFG:
        if v == "M":
            p += 1
            op("MaxPool", [x], [f"pool{p}"], kernel=2, stride=2)
            x = f"pool{p}"
        else:
            c += 1
            op("Conv", [x, f"conv{c}_w", f"conv{c}_b"], [f"conv{c}"], kernel=3, pad=1, stride=1)
            op("Relu", [f"conv{c}"], [f"relu{c}"])
            x = f"relu{c}"
    for k in (6, 7):
        op("FC", [x, f"fc{k}_w", f"fc{k}_b"], [f"fc{k}"])
        op("Relu", [f"fc{k}"], [f"fc{k}_relu"])
        op("Dropout", [f"fc{k}_relu"], [f"fc{k}_drop", f"fc{k}_mask"], ratio=0.5, is_test=1)
        x = f"fc{k}_drop"
    op("FC", [x, "fc8_w", "fc8_b"], ["fc8"])
    op("Softmax", ["fc8"], ["prob"])
    return net


def load_net(name, zoo=None):
    from .caffe2 import read_netdef

    if name == "vgg19":
        return vgg19_netdef()
    root = Path(zoo) if zoo else Path.cwd().parent / "shared" / "caffe2_models"
    path = root / ZOO_DIRS[name] / "predict_net.pbtxt"
    if not path.exists():
        raise FileNotFoundError(f"{path} (give --train-zoo DIR, the folder of the Caffe2 model zoo)")
    return read_netdef(path)


def training_forward(model, batch, classes_hint=None):
    """A converted model with training-mode Dropout and SoftmaxCrossEntropyLoss on the final Softmax's input."""
    import onnx
    from onnx import TensorProto, helper

    from . import graph as G

    model = G.to_training(model, expose_masks=False)
    g = model.graph
    sm = [n for n in g.node if n.op_type == "Softmax" and n.output[0] in {o.name for o in g.output}]
    logits = sm[-1].input[0] if sm else g.output[0].name
    g.input.append(helper.make_tensor_value_info("label", TensorProto.INT64, [batch]))
    g.node.append(helper.make_node("SoftmaxCrossEntropyLoss", [logits, "label"], ["loss"], name="loss"))
    g.output.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    types = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(types.value_info) + list(types.output) + list(types.input)}
    return model, shapes[logits][-1]


def build(name, width_mult, batch, zoo=None, seed=0):
    """(forward-with-loss model, training-step model, feeds) of one benchmark net."""
    from . import training as T
    from .caffe2 import convert, read_value_info, synthesize

    net = load_net(name, zoo)
    data = net.external_input[0] if name == "vgg19" else None
    if name == "vgg19":
        vi = {data: (np.dtype(np.float32), (batch, 3, 224, 224))}
    else:
        root = Path(zoo) if zoo else Path.cwd().parent / "shared" / "caffe2_models"
        vi0 = read_value_info(root / ZOO_DIRS[name] / "value_info.json")
        vi = {k: (dt, (batch,) + tuple(shape[1:])) for k, (dt, shape) in vi0.items()}
    init, _ = synthesize(net, vi, seed=seed, width=BASE_WIDTH * width_mult, fc_width=BASE_FC_WIDTH * width_mult)
    forward, classes = training_forward(convert(net, init, vi).model, batch)
    step = T.make_training_model(forward, "loss", optimizer="momentum", lr=0.001, momentum=0.9)
    rng = np.random.RandomState(seed)
    feeds = {k: rng.standard_normal(shape).astype(dt) for k, (dt, shape) in vi.items()}
    feeds["label"] = rng.randint(0, classes, batch).astype(np.int64)
    return forward, step, feeds


def _interleaved(fns, reps, warmup=1):
    """Median seconds of each callable, timed in alternation (one step of each per round) so that a
    load change on a shared machine hits every side alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def ort_stepper(step_model, feeds, threads, profile=False):
    """(step function, session) of the training-step model in a TrainingSession with ``threads`` threads."""
    import onnxruntime as ort

    from . import training as T

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # steps alternate with PyTorch's: idle ORT threads must not spin while torch runs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
    sess = T.TrainingSession(step_model, session_options=so)
    return (lambda: sess.step(feeds)), sess


def torch_stepper(forward, params, feeds, threads, lr=0.001, momentum=0.9):
    """A step function running the same forward in torch, backward() and Caffe2's momentum update."""
    import torch

    from .torch_ref import TorchGraph

    tg = TorchGraph(forward, sample_dropout=True)
    leaves = {p: tg.tensor(tg.inits[p]).clone().requires_grad_(True) for p in params}
    moms = {p: torch.zeros_like(v) for p, v in leaves.items()}
    tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def step():
        torch.set_num_threads(threads)
        for v in leaves.values():
            v.grad = None
        loss = tg.run(tfeeds, leaves=leaves)["loss"]
        loss.backward()
        with torch.no_grad():  # Caffe2's MomentumSGDUpdate: m = lr g + mu m; p -= m
            for p, v in leaves.items():
                m = moms[p]
                m.mul_(momentum).add_(v.grad, alpha=lr)
                v.sub_(m)
        return loss.item()

    return step


def profile_summary(path, forward_names, top=8):
    """ORT profile JSON -> [(part, op type, ms per step share)] of the kernel time, forward and backward apart."""
    events = json.loads(Path(path).read_text())
    total = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        part = "forward" if node in forward_names else "backward+update"
        key = (part, ev.get("args", {}).get("op_name", "?"))
        total[key] = total.get(key, 0) + ev.get("dur", 0)
    Path(path).unlink()
    grand = sum(total.values()) or 1
    rows = sorted(total.items(), key=lambda kv: -kv[1])[:top]
    return [(part, op, dur / grand) for (part, op), dur in rows]


def forward_node_names(step_model, loss):
    """Names of the step model's forward nodes: those up to the one writing ``loss`` (the backward and
    the update follow it; a lowered forward op, such as LRN, is among them under its new nodes)."""
    names = set()
    for n in step_model.graph.node:
        names.add(n.name)
        if loss in n.output:
            return names
    raise ValueError(f"no node of the step model writes {loss!r}")


def measure(nets, widths, threads, batch, reps, zoo=None, use_torch=True, profile=False, log=print):
    from . import training as T

    rows = []
    for name in nets:
        for w in widths:
            forward, step, feeds = build(name, w, batch, zoo)
            state = T.metadata(step)[0]
            init_names = {t.name for t in forward.graph.initializer}
            params = [s for s in state if s in init_names]
            fwd_names = forward_node_names(step, "loss")
            for t in threads:
                ort_step, sess = ort_stepper(step, feeds, t, profile)
                fns = [ort_step] + ([torch_stepper(forward, params, feeds, t)] if use_torch else [])
                got = _interleaved(fns, reps)
                row = {"net": name, "width": f"x{w}", "threads": t, "batch": batch, "ort_ms": got[0] * 1e3}
                if use_torch:
                    row["torch_ms"] = got[1] * 1e3
                    row["ratio"] = row["ort_ms"] / row["torch_ms"]
                if profile:
                    row["profile"] = profile_summary(sess.session.end_profiling(), fwd_names)
                rows.append(row)
                log(format_row(row), flush=True)
    return rows


def format_row(r):
    s = f"{r['net']:<9} {r['width']:>5} {r['threads']:>7} {r['ort_ms']:>11.1f}"
    if "torch_ms" in r:
        s += f" {r['torch_ms']:>12.1f} {r['ratio']:>10.2f}"
    if "profile" in r:
        s += "\n" + "\n".join(f"    {part:<16} {op:<20} {share * 100:5.1f}%" for part, op, share in r["profile"])
    return s


HEADER = f"{'net':<9} {'width':>5} {'threads':>7} {'ORT ms':>11} {'PyTorch ms':>12} {'ORT/torch':>10}"


def run(args) -> int:
    import os

    use_torch = not args.no_torch
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # likewise torch's OpenMP threads, while ORT runs
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch not installed (pip install 'caffe2-ort[autodiff]'): ORT column only")
            use_torch = False
    if not args.json:
        print(f"one training step (forward, backward, momentum SGD), batch {args.train_batch}, float32; medians of "
              f"{args.train_reps} steps")
        print(HEADER)
    rows = measure(args.train_nets, args.train_widths, args.threads, args.train_batch, args.train_reps, args.train_zoo,
                   use_torch, args.train_profile, log=(lambda *a, **k: None) if args.json else print)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0
