"""caffe2_ort.placement and ``caffe2-ort run --placement``: which execution provider ran each node (from
ORT's own session profile) and the Memcpy nodes ORT inserted. The CUDA case runs in tests/test_cuda_ort.py
(test_no_memcpy_around_our_nodes) on a GPU."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import caffe2_ort
from caffe2_ort.caffe2 import cli
from caffe2_ort.placement import NodeRun, Placement, named_copy, placement

from caffe2_helpers import MODELS
from ort_helpers import make_model

CPU = "CPUExecutionProvider"


def _train_model():
    f = TensorProto.FLOAT
    return make_model(
        [helper.make_node("Relu", ["X"], ["R"]),
         helper.make_node("Dropout", ["R"], ["Y", "mask"], domain="ai.caffe2", name="drop", ratio=0.5, seed=1),
         helper.make_node("DropoutGrad", ["Y", "mask"], ["G"], domain="ai.caffe2", ratio=0.5),
         helper.make_node("Dropout", ["G"], ["Out"])],  # ai.onnx Dropout, unnamed, same op type
        [helper.make_tensor_value_info("X", f, [8, 32])],
        [helper.make_tensor_value_info("Out", f, [8, 32])])  # fmt: skip


def test_named_copy_names_unnamed_nodes_uniquely_and_keeps_the_rest():
    model = _train_model()
    model.graph.node[0].name = "DropoutGrad_2"  # the name the unnamed third node would get
    named = named_copy(model)
    names = [n.name for n in named.graph.node]
    assert names[:2] == ["DropoutGrad_2", "drop"]
    assert len(set(names)) == 4 and all(names)
    assert names[2].startswith("DropoutGrad_2_") and names[3] == "Dropout_3"
    assert not model.graph.node[2].name  # the caller's model is left alone


def test_cpu_session_reports_every_node_on_the_cpu():
    x = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    where = placement(_train_model(), {"X": x}, [CPU])
    by_node = {n.name: n for n in where.nodes}
    assert by_node["drop"] == NodeRun("drop", "ai.caffe2", "Dropout", CPU)
    grads = [n for n in where.nodes if n.op_type == "DropoutGrad"]
    assert [(n.domain, n.provider) for n in grads] == [("ai.caffe2", CPU)]
    # ORT's own Dropout has the same op type but the default domain: the profile alone cannot tell them apart.
    assert [n.domain for n in where.nodes if n.op_type == "Dropout"] == ["ai.caffe2", ""]
    assert {n.provider for n in where.nodes} == {CPU}
    assert where.memcpy == () and where.off_provider() == ()
    report = where.format()
    assert report.splitlines()[0] == f"placement (requested {CPU}):"
    assert "ai.caffe2.Dropout" in report and "ai.caffe2.DropoutGrad" in report
    assert "Memcpy nodes inserted by ORT: none" in report and "warning" not in report


def test_given_session_options_are_used_as_given(tmp_path):
    so = ort.SessionOptions()
    caffe2_ort.register(so)
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    x = np.ones((8, 32), np.float32)
    where = placement(_train_model(), {"X": x}, [CPU], session_options=so)
    assert (tmp_path / "opt.onnx").is_file() and len(where.nodes) >= 3


@pytest.mark.skipif("AzureExecutionProvider" not in ort.get_available_providers(),
                    reason="this onnxruntime has no second execution provider to request first")
def test_our_nodes_off_the_first_requested_provider_are_named():
    """The Azure EP (in the CPU wheel) takes no node, so every node falls back to the CPU: a real profile in
    which our nodes did not run on the first provider requested."""
    x = np.ones((8, 32), np.float32)
    where = placement(_train_model(), {"X": x}, ["AzureExecutionProvider", CPU])
    off = where.off_provider()
    assert {n.op_type for n in off} == {"Dropout", "DropoutGrad"} and {n.provider for n in off} == {CPU}
    report = where.format()
    assert "warning: ai.caffe2 Dropout node 'drop' ran on CPUExecutionProvider, not on AzureExecutionProvider" in report


def test_memcpy_nodes_are_counted_apart_and_listed():
    cuda = "CUDAExecutionProvider"
    where = Placement((cuda, CPU), (
        NodeRun("Memcpy", "", "MemcpyToHost", CPU),
        NodeRun("drop", "ai.caffe2", "Dropout", CPU),
        NodeRun("conv", "", "Conv", cuda),
        NodeRun("Memcpy_token_1", "", "MemcpyFromHost", cuda)))  # fmt: skip
    assert [n.op_type for n in where.memcpy] == ["MemcpyToHost", "MemcpyFromHost"]
    assert [n.name for n in where.off_provider()] == ["drop"]
    lines = where.format().splitlines()
    assert lines[1:] == [
        "  CPUExecutionProvider: 1 node (ai.caffe2.Dropout)",
        "  CUDAExecutionProvider: 1 node (Conv)",
        "  Memcpy nodes inserted by ORT: 2 (MemcpyToHost, MemcpyFromHost)",
        "  warning: ai.caffe2 Dropout node 'drop' ran on CPUExecutionProvider, not on CUDAExecutionProvider (does the "
        "loaded library have kernels for that provider? `python -m caffe2_ort check` says)",
    ]


def test_run_placement_flag_prints_the_report(capsys):
    tiny = MODELS / "tiny_dropout_net"
    rc = cli.main(["run", str(tiny / "predict_net.pbtxt"), "--value-info", str(tiny / "value_info.json"), "--placement"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = out[out.index("placement (requested"):].splitlines()
    assert report[0] == f"placement (requested {CPU}):"
    assert report[1].startswith(f"  {CPU}: ") and "ai.caffe2.Dropout" in report[1]
    assert report[2] == "  Memcpy nodes inserted by ORT: none"
