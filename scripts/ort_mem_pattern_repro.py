"""Why training sessions turn memory patterns off on onnxruntime < 1.18 (caffe2_ort.training.runtime_workarounds).

Converts the real Caffe2 training net ../shared/caffe2_train_nets/lenet_dropout_momentum into a training-step
model, replaces every ai.caffe2 node by standard ONNX ops (Dropout: mask = X > 0, Y = X * scale * mask;
DropoutGrad: dX = dY * mask * scale), so that no custom op is loaded at all, then runs 4 steps twice in
the installed onnxruntime, with memory patterns off and on, and compares every state tensor step by step.

    python scripts/ort_mem_pattern_repro.py [--net DIR] [--steps 4]

Exit status 0: both runs agree (the runtime is fine); 1: they differ (the runtime's memory-pattern fault).
Measured 2026-12-01: onnxruntime 1.17.3 differs from step 2 on (max |diff| 0.26), 1.25.1 agrees exactly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NET = ROOT.parent / "shared" / "caffe2_train_nets" / "lenet_dropout_momentum"


def standard_ops_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same step with the ai.caffe2 nodes replaced by a deterministic standard-ops dropout."""
    g = model.graph
    nodes = []
    for n in g.node:
        if n.domain != "ai.caffe2":
            nodes.append(n)
            continue
        ratio = next((a.f for a in n.attribute if a.name == "ratio"), 0.5)
        scale = f"{n.name}_scale"
        g.initializer.append(numpy_helper.from_array(np.array(np.float32(1.0 / (1.0 - ratio))), scale))
        mask_f = f"{n.name}_mask_f"
        if n.op_type == "Dropout":
            zero = f"{n.name}_zero"
            g.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
            mask = n.output[1] if len(n.output) > 1 and n.output[1] else f"{n.name}_mask"
            nodes += [helper.make_node("Greater", [n.input[0], zero], [mask]),
                      helper.make_node("Cast", [mask], [mask_f], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [n.input[0], scale], [f"{n.name}_scaled"]),
                      helper.make_node("Mul", [f"{n.name}_scaled", mask_f], [n.output[0]])]
        elif n.op_type == "DropoutGrad":
            nodes += [helper.make_node("Cast", [n.input[1]], [mask_f], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [n.input[0], mask_f], [f"{n.name}_masked"]),
                      helper.make_node("Mul", [f"{n.name}_masked", scale], [n.output[0]])]
        else:
            raise SystemExit(f"unexpected ai.caffe2 op {n.op_type}")
    del g.node[:]
    g.node.extend(nodes)
    opsets = [o for o in model.opset_import if o.domain != "ai.caffe2"]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    onnx.checker.check_model(model)
    return model


def trajectory(model, fed, mem_pattern, steps):
    so = ort.SessionOptions()
    so.enable_mem_pattern = mem_pattern
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    meta = {p.key: p.value for p in model.metadata_props}
    state_map = json.loads(meta["caffe2_ort.training_state"])
    state = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in state_map}
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    out = []
    for _ in range(steps):
        feeds = {k: v for k, v in {**fed, **state}.items() if k in wanted}
        r = dict(zip(names, sess.run(names, feeds)))
        state = {k: r[v] for k, v in state_map.items()}
        out.append(state)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", type=Path, default=DEFAULT_NET, help="a folder of ../shared/caffe2_train_nets")
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args(argv)
    if not (a.net / "train_net.pbtxt").is_file():
        print(f"error: no training net at {a.net}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        step = Path(tmp) / "step.onnx"
        subprocess.run([sys.executable, "-m", "caffe2_ort", "convert", str(a.net / "train_net.pbtxt"),
                        "--init", str(a.net / "init_values.pb"), "--value-info", str(a.net / "value_info.json"),
                        "-o", str(step)], check=True, stdout=subprocess.DEVNULL)
        model = standard_ops_only(onnx.load(str(step)))
    tr = np.load(a.net / "trajectory.npz")
    fed = {k[len("fed/"):]: tr[k] for k in tr.files if k.startswith("fed/")}
    off = trajectory(model, fed, False, a.steps)
    on = trajectory(model, fed, True, a.steps)
    worst = [max(float(np.max(np.abs(on[i][k] - off[i][k]))) for k in off[i]) for i in range(a.steps)]
    print(f"onnxruntime {ort.__version__}, {a.net.name} with standard ops only: max |state difference| "
          f"memory patterns on vs off, per step: " + " ".join(f"{w:.2e}" for w in worst))
    return 1 if any(worst) else 0


if __name__ == "__main__":
    sys.exit(main())
