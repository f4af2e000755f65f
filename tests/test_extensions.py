"""onnxruntime-extensions next to our library, and the PyOp fallback of the ai.caffe2 ops."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import caffe2_ort

ort = pytest.importorskip("onnxruntime")
ox = pytest.importorskip("onnxruntime_extensions")
PYTHON_DIR = str(Path(__file__).resolve().parents[1] / "python")


def _model(nodes, inputs, outputs, domains):
    g = h.make_graph(nodes, "g", inputs, outputs)
    ops = [h.make_opsetid("", 17)] + [h.make_opsetid(d, 1) for d in domains]
    return h.make_model(g, opset_imports=ops, ir_version=8)


def test_both_libraries_in_one_session():
    lib = caffe2_ort.get_library_path()  # a missing library is a failure, not a skip
    nodes = [
        h.make_node("Dropout", ["X"], ["Y", "M"], domain="ai.caffe2", ratio=0.5, seed=21),
        h.make_node("NegPos", ["Y"], ["neg", "pos"], domain="ai.onnx.contrib"),
    ]
    m = _model(nodes, [h.make_tensor_value_info("X", TP.FLOAT, [4, 6])],
               [h.make_tensor_value_info(n, t, [4, 6]) for n, t in (("M", TP.BOOL), ("neg", TP.FLOAT), ("pos", TP.FLOAT))],
               ["ai.caffe2", "ai.onnx.contrib"])
    so = ort.SessionOptions()
    so.register_custom_ops_library(ox.get_library_path())
    so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, size=(4, 6)).astype(np.float32)
    mask, neg, pos = sess.run(None, {"X": x})
    y, em = caffe2_ort.reference.dropout(x, 0.5, 0, 21)
    assert np.array_equal(mask, em)
    assert np.array_equal(neg, np.minimum(y, 0)) and np.array_equal(pos, np.maximum(y, 0))


PYOP_SCRIPT = textwrap.dedent(
    """
    import numpy as np, onnxruntime as ort, onnxruntime_extensions as ox
    from onnx import TensorProto as TP, helper as h
    from caffe2_ort import reference as R, reference_ops as ro
    assert ro.register_pyop() == 4 and ro.register_pyop() == 0
    def model(et):
        nodes = [h.make_node("Dropout", ["X"], ["Y"], domain="ai.caffe2", ratio=0.3, seed=9, name="d"),
                 h.make_node("Dropout", ["X"], ["Z", "M"], domain="ai.caffe2", ratio=0.6, seed=10),
                 h.make_node("DropoutGrad", ["Z", "M"], ["dZ"], domain="ai.caffe2", ratio=0.6),
                 h.make_node("DropoutGrad", ["Y"], ["dY"], domain="ai.caffe2", is_test=1)]
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("X", et, [5, 7])],
                         [h.make_tensor_value_info(n, et, [5, 7]) for n in ("Y", "dZ", "dY")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.caffe2", 1)], ir_version=8)
        return ro.prepare_for_pyop(m)
    for dt, et in ((np.float32, TP.FLOAT), (np.float64, TP.DOUBLE)):
        ro.reset_pyop_state()
        so = ort.SessionOptions()
        so.register_custom_ops_library(ox.get_library_path())
        m = model(et)
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).normal(size=(5, 7)).astype(dt)
        for run in range(3):
            y, dz, dy = sess.run(None, {"X": x})
            base = run * R.blocks_for(35)
            ey = R.dropout(x, 0.3, 0, 9, base)[0]
            ez, em = R.dropout(x, 0.6, 0, 10, base)
            assert y.dtype == dt and y.tobytes() == ey.tobytes()
            assert dz.tobytes() == R.dropout_grad(ez, em, 0.6).tobytes() and dy.tobytes() == y.tobytes()
    print("pyop ok")
    """
)


def test_pyop_fallback_under_ai_caffe2():
    # In a child process: PyOps are process-global and would claim ai.caffe2 next to our library.
    out = subprocess.run([sys.executable, "-c", PYOP_SCRIPT], capture_output=True, text=True,
                         env={"PYTHONPATH": PYTHON_DIR, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pyop ok" in out.stdout


def test_pyop_default_domain_is_contrib():
    assert ox.default_opset_domain() == "ai.onnx.contrib"
