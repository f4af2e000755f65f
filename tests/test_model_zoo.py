"""Every net in ../shared/caffe2_models converts, passes the ONNX checker, runs in ORT on the CPU with
the plugin, and matches the numpy executor (Caffe2 semantics) with synthesised weights.

Tolerance: for every compared blob, max |ORT - executor| <= TOL * max |executor| (float32 rounding
accumulated over the net; the executor rounds each op's float64 result once to float32)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from caffe2_ort.caffe2 import converter, synth
from caffe2_ort.caffe2.executor import Executor

from caffe2_helpers import ZOO_NETS, max_rel_error, run_ort, zoo_net

TOL = 1e-4
# the blob before the final Softmax of each net: compared as well, since it is more sensitive than probabilities
LOGITS = {"bvlc_alexnet": "fc8", "inception_v1": "loss3/classifier", "resnet50": "gpu_0/pred"}


@pytest.fixture(scope="module", params=ZOO_NETS)
def zoo(request):
    name = request.param
    net, vi = zoo_net(name)
    init, blobs = synth.synthesize(net, vi, seed=11)
    rng = np.random.default_rng(5)
    feeds = {k: rng.standard_normal(shape).astype(dt) for k, (dt, shape) in vi.items()}
    ws = Executor(net, blobs).run(feeds)
    return name, net, vi, init, blobs, feeds, ws


@pytest.mark.parametrize("dropout", ["caffe2", "onnx"])
def test_zoo_net_matches_executor(zoo, dropout):
    name, net, vi, init, blobs, feeds, ws = zoo
    conv = converter.convert(net, init, vi, dropout=dropout, extra_outputs=[LOGITS[name]])
    model = conv.model
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.name == net.name and model.ir_version == converter.DEFAULT_IR_VERSION
    out = run_ort(model, feeds)
    assert set(out) == set(net.external_output) | {LOGITS[name]}
    for b in list(net.external_output) + [LOGITS[name]]:
        ref = ws[b]
        assert out[b].shape == ref.shape and out[b].dtype == ref.dtype
        err = max_rel_error(out[b], ref)
        print(f"{name} [{dropout}] {b}: max rel error {err:.3g} (max |ref| {np.max(np.abs(ref)):.3g})")
        assert err <= TOL, (b, err)
    # logits of order one: the comparison is not on saturated probabilities
    assert 0.05 < np.std(ws[LOGITS[name]]) < 50


def test_zoo_dropout_nodes_keep_caffe2_attributes(zoo):
    name, net, vi, init, blobs, feeds, ws = zoo
    drops = [op for op in net.op if op.type == "Dropout"]
    model = converter.convert(net, init, vi).model
    nodes = [n for n in model.graph.node if n.domain == "ai.caffe2"]
    assert len(nodes) == len(drops)
    for node, op in zip(nodes, drops):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["is_test"] == 1 and abs(attrs["ratio"] - [a.f for a in op.arg if a.name == "ratio"][0]) < 1e-7
        assert "seed" not in attrs and "engine" not in attrs  # zoo ops: empty device_option, engine ""
        assert len(node.output) == 2 and node.output[1] == op.output[1]  # the _<x>_mask output is kept
    if drops:
        assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("ai.caffe2", 1)}


def test_zoo_in_place_ops_are_renamed(zoo):
    name, net, vi, init, blobs, feeds, ws = zoo
    conv = converter.convert(net, init, vi)
    produced = [o for n in conv.model.graph.node for o in n.output]
    assert len(produced) == len(set(produced)), "SSA: every ONNX value written once"
    assert [o.name for o in conv.model.graph.output] == list(net.external_output)
    assert [i.name for i in conv.model.graph.input] == list(vi)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_NETS)
def test_zoo_net_at_wider_widths(name):
    """Wider layers (64 channels per conv, 256 features per FC): longer reductions, same tolerance."""
    net, vi = zoo_net(name)
    init, blobs = synth.synthesize(net, vi, seed=2, width=64, fc_width=256)
    rng = np.random.default_rng(8)
    feeds = {k: rng.standard_normal(shape).astype(dt) for k, (dt, shape) in vi.items()}
    conv = converter.convert(net, init, vi, extra_outputs=[LOGITS[name]])
    out = run_ort(conv.model, feeds)
    ws = Executor(net, blobs).run(feeds)
    for b in list(net.external_output) + [LOGITS[name]]:
        err = max_rel_error(out[b], ws[b])
        print(f"{name} [width 64] {b}: max rel error {err:.3g}")
        assert err <= TOL, (b, err)
