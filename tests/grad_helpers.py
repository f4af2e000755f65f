"""Helpers for the gradient tests: one-op models with a projection loss, run in ORT and in torch autograd."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import caffe2_ort
from caffe2_ort import graph as G
from ort_helpers import session

try:
    from caffe2_ort import torch_ref
except ImportError:  # CI installs the autodiff extra: there a missing torch is a failure, elsewhere a skip
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("the autodiff oracle needs torch: pip install 'caffe2-ort[autodiff]' (torch==2.13.0)", allow_module_level=True)


def projection_model(nodes, params, output, feeds=(), consts=None, opset=17, seed=0):
    """``nodes`` + loss = ReduceSum(output * R) for a fixed random R; ``params`` become initializers."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()]
    inits += [numpy_helper.from_array(np.asarray(v), k) for k, v in (consts or {}).items()]
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), list(np.shape(v)))
              for k, v in dict(feeds).items()]
    g = helper.make_graph(list(nodes), "grad_test", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(caffe2_ort.DOMAIN, 1)],
                          ir_version=8)
    shape = [d.dim_value for d in onnx.shape_inference.infer_shapes(m, data_prop=True).graph.output[0].type.tensor_type.shape.dim]
    r = np.random.RandomState(seed + 1).standard_normal(shape).astype(np.float32)
    g = m.graph
    g.initializer.append(numpy_helper.from_array(r, "R_proj"))
    g.node.extend([helper.make_node("Mul", [output, "R_proj"], ["projected"]),
                   helper.make_node("ReduceSum", ["projected"], ["loss"], keepdims=0)])
    g.output.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    return m


def rel_err(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    return float(np.max(np.abs(got - ref))) / scale if ref.size else 0.0


def ort_gradients(model, params, feeds=None, threads=1):
    train = G.build_training_model(model, "loss", list(params))
    sess = session(train, threads=threads)
    feeds = dict(feeds or {})
    feeds.update({k: np.asarray(v) for k, v in params.items()})
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, feeds)))
    return out, train


def check_against_torch(nodes, params, output, feeds=None, consts=None, tol=1e-4, opset=17, masks_from=None):
    """Gradients of every param from ORT equal torch autograd (float64) within ``tol`` of their largest magnitude."""
    model = projection_model(nodes, params, output, feeds or {}, consts, opset)
    out, train = ort_gradients(model, params, feeds)
    masks = {y: out[m] for y, m in (masks_from or {}).items()}  # Dropout output -> the mask ORT drew
    loss, ref = torch_ref.gradients(model, dict(feeds or {}), "loss", list(params), masks=masks, dtype=torch_ref.torch.float64)
    assert rel_err(out["loss"], loss) < tol * 10, (out["loss"], loss)
    for p in params:
        err = rel_err(out[f"{p}_grad"], ref[p])
        assert err < tol, f"{p}: relative error {err:.3g}"
    return out, ref, train
