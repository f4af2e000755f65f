"""The session settings caffe2_ort.training.runtime_workarounds chooses keep training exact on the installed
onnxruntime. The compat matrix runs this on 1.17.x (memory patterns off: the runtime's fault) and on newer
releases (memory patterns on: this fails if a runtime ever brings the fault back)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from caffe2_ort.training import runtime_workarounds
from ort_helpers import shared_path

ROOT = Path(__file__).resolve().parents[1]


def _repro():
    spec = importlib.util.spec_from_file_location("ort_mem_pattern_repro", ROOT / "scripts" / "ort_mem_pattern_repro.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def lenet_standard(tmp_path_factory):
    from caffe2_ort.caffe2.cli import main as convert_main

    net = shared_path("caffe2_train_nets", "lenet_dropout_momentum")
    out = tmp_path_factory.mktemp("lenet") / "step.onnx"
    assert convert_main(["convert", str(net / "train_net.pbtxt"), "--init", str(net / "init_values.pb"),
                         "--value-info", str(net / "value_info.json"), "-o", str(out)]) == 0
    tr = np.load(net / "trajectory.npz")
    fed = {k[len("fed/"):]: tr[k] for k in tr.files if k.startswith("fed/")}
    return _repro().standard_ops_only(onnx.load(str(out))), fed


def test_standard_ops_only_leaves_no_custom_op(lenet_standard):
    model, _ = lenet_standard
    assert not [n for n in model.graph.node if n.domain == "ai.caffe2"]
    assert {o.domain for o in model.opset_import} == {""}


def test_chosen_settings_match_memory_patterns_off(lenet_standard):
    model, fed = lenet_standard
    repro = _repro()
    chosen = runtime_workarounds(ort.SessionOptions()).enable_mem_pattern
    off = repro.trajectory(model, fed, False, 4)
    got = repro.trajectory(model, fed, chosen, 4)
    for step, (a, b) in enumerate(zip(off, got)):
        for name in a:
            assert np.array_equal(a[name], b[name]), (
                f"onnxruntime {ort.__version__}, memory patterns {'on' if chosen else 'off'}: state {name} "
                f"differs at step {step + 1}")
    # the run moved: the comparison is not between two untouched copies of the initial state
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    meta = {p.key: p.value for p in model.metadata_props}
    assert any(not np.array_equal(off[-1][k], init[k]) for k in json.loads(meta["caffe2_ort.training_state"]))
