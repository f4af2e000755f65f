"""Whole nets: every net in ../shared/caffe2_models (synthesised narrow weights) and models/ (their
own small init_nets), converted, loss = sum over outputs of ReduceSum(output * R) for a fixed random R: the gradient of every
weight (BatchNormalization's running statistics are constants) from ORT matches torch autograd (float64) within 1e-3 of its largest magnitude; the same
models on the CUDA EP wherever one is present."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper as h, numpy_helper

import caffe2_ort
from caffe2_ort import graph as G
from caffe2_ort.caffe2 import convert, read_netdef, read_value_info, synthesize
from caffe2_helpers import MODELS, ZOO_NETS, shared_file
from grad_helpers import rel_err, torch_ref
from ort_helpers import session

LOCAL_NETS = tuple(sorted(p.parent.name for p in MODELS.glob("*/predict_net.pbtxt")))
# (width, fc_width) of the synthesised weights: narrow, so the float64 autodiff stays quick
WIDTHS = {"resnet50": (4, 8), "inception_v1": (4, 8), "bvlc_alexnet": (4, 16)}
SLOW = {"resnet50", "inception_v1"}


def projected(model, seed=0):
    """``model`` + loss = sum over its float outputs of ReduceSum(output * R_output)."""
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    rng = np.random.RandomState(seed)
    parts = []
    for o in list(g.output):
        if o.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        shape = [d.dim_value for d in o.type.tensor_type.shape.dim]
        r = f"R_{o.name}"
        g.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), r))
        g.node.extend([h.make_node("Mul", [o.name, r], [f"{o.name}_proj"]),
                       h.make_node("ReduceSum", [f"{o.name}_proj"], [f"{o.name}_loss"], keepdims=0)])
        parts.append(f"{o.name}_loss")
    g.node.append(h.make_node("Sum", parts, ["loss"]) if len(parts) > 1 else h.make_node("Identity", parts, ["loss"]))
    g.output.append(h.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    return model


def converted(kind, name):
    if kind == "zoo":
        net = read_netdef(shared_file("caffe2_models", name, "predict_net.pbtxt"))
        vi = read_value_info(shared_file("caffe2_models", name, "value_info.json"))
    else:
        net = read_netdef(MODELS / name / "predict_net.pbtxt")
        vi = read_value_info(MODELS / name / "value_info.json")
    if kind == "zoo":
        width, fc_width = WIDTHS.get(name, (8, 16))
        init, _ = synthesize(net, vi, seed=1, width=width, fc_width=fc_width)
    else:  # the bundled nets are small already: their own init_net
        init = read_netdef(MODELS / name / "init_net.pb")
    model = convert(net, init, vi).model
    rng = np.random.RandomState(2)
    feeds = {k: rng.standard_normal(shape).astype(dtype) for k, (dtype, shape) in vi.items()}
    return model, feeds


def check_net(model, feeds, providers=("CPUExecutionProvider",)):
    loss_model = projected(model)
    stats = {i for n in loss_model.graph.node if n.op_type == "BatchNormalization" for i in n.input[3:5]}
    params = [t.name for t in loss_model.graph.initializer
              if t.data_type == TensorProto.FLOAT and not t.name.startswith("R_") and t.name not in stats]
    train = G.build_training_model(loss_model, "loss", params)
    so = caffe2_ort.register(__import__("onnxruntime").SessionOptions())
    so.log_severity_level = 3
    sess = __import__("onnxruntime").InferenceSession(train.SerializeToString(), so, providers=list(providers))
    names = [o.name for o in sess.get_outputs()]
    init = {t.name: numpy_helper.to_array(t) for t in loss_model.graph.initializer}
    out = dict(zip(names, sess.run(names, {**feeds, **{p: init[p] for p in params}})))
    masks = {n.output[0]: out[n.output[1]] for n in train.graph.node
             if n.op_type == "Dropout" and len(n.output) > 1 and n.output[1] in out}
    loss, ref = torch_ref.gradients(loss_model, feeds, "loss", params, masks=masks, dtype=torch_ref.torch.float64)
    assert rel_err(out["loss"], loss) < 1e-3
    bad = {p: rel_err(out[f"{p}_grad"], ref[p]) for p in params}
    bad = {p: e for p, e in bad.items() if not e < 1e-3}
    assert not bad, f"gradients off (relative to their largest magnitude): {bad}"
    return len(params)


CASES = [pytest.param("zoo", n, marks=[pytest.mark.slow] if n in SLOW else [], id=n) for n in ZOO_NETS]
CASES += [pytest.param("local", n, id=n) for n in LOCAL_NETS]


@pytest.mark.parametrize("kind,name", CASES)
def test_net_gradients_match_autodiff(kind, name):
    model, feeds = converted(kind, name)
    assert check_net(model, feeds) > 0


def _has_cuda():
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers() and "CUDAExecutionProvider" in caffe2_ort.available_providers()
    except Exception:  # pragma: no cover
        return False


@pytest.mark.skipif(not _has_cuda(), reason="no CUDA EP with the ai.caffe2 CUDA plugin here")
@pytest.mark.parametrize("kind,name", CASES)
def test_net_gradients_on_cuda(kind, name):
    model, feeds = converted(kind, name)
    check_net(model, feeds, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
