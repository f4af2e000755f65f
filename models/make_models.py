"""Make the small Caffe2 nets in models/ and the ONNX models converted from them.

    PYTHONPATH=python python models/make_models.py            # rewrite models/*/
    PYTHONPATH=python python models/make_models.py --out DIR  # write elsewhere (the tests compare)

Each net gets a folder with ``predict_net.pbtxt``, ``init_net.pb``, ``value_info.json`` and
``model.onnx`` (converted with the default options, ai.caffe2 Dropout nodes). The weights are fixed
random values from a seeded generator, so re-running the script reproduces every file byte for byte.
The nets cover what the model-zoo nets do not: training-mode Dropout (seeded through device_option)
with its mask consumed by DropoutGrad, a CUDNN-engine Dropout without a seed, ConvTranspose, legacy
broadcast Add/Sub/Mul/Div, Reshape with old_shape, Flatten, Sigmoid, Tanh, Softmax on a 3-D blob,
Caffe-style legacy pooling, SAME/VALID legacy padding, Concat with split_info and add_axis.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from caffe2_ort.caffe2 import netdef, schema  # noqa: E402
from caffe2_ort.caffe2.converter import convert  # noqa: E402


class Net:
    def __init__(self, name, seed):
        self.net = schema.NetDef(name=name)
        self.init = schema.NetDef(name=f"{name}_init")
        self.rng = np.random.default_rng(seed)
        self.value_info = {}

    def input(self, name, shape):
        self.net.external_input.append(name)
        self.value_info[name] = [1, list(shape)]

    def weight(self, name, shape, scale=0.5, offset=0.0):
        arr = (offset + scale * self.rng.standard_normal(shape)).astype(np.float32)
        self.net.external_input.append(name)
        self.init.op.append(netdef.make_given_fill(name, arr))
        return name

    def op(self, type_, inputs, outputs, engine=None, seed=None, **args):
        op = self.net.op.add(type=type_, input=inputs, output=outputs)
        netdef.add_args(op, args)
        if engine is not None:
            op.engine = engine
        if seed is not None:
            op.device_option.random_seed = seed
        return op

    def outputs(self, *names):
        self.net.external_output.extend(names)


def tiny_dropout_net():
    """Conv -> Relu -> MaxPool -> FC -> in-place training Dropout (seeded by the net) -> Softmax."""
    n = Net("tiny_dropout_net", 1)
    n.net.device_option.random_seed = 1234
    n.input("data", (1, 3, 8, 8))
    n.op("Conv", ["data", n.weight("conv1_w", (4, 3, 3, 3)), n.weight("conv1_b", (4,), 0.1)], ["conv1"],
         kernel=3, pad=1, stride=1, order="NCHW")  # fmt: skip
    n.op("Relu", ["conv1"], ["conv1"])
    n.op("MaxPool", ["conv1"], ["pool1"], kernel=2, stride=2, order="NCHW")
    n.op("FC", ["pool1", n.weight("fc1_w", (10, 64), 0.25), n.weight("fc1_b", (10,), 0.1)], ["fc1"])
    n.op("Dropout", ["fc1"], ["fc1", "_fc1_mask"], ratio=0.3, is_test=0)
    n.op("Softmax", ["fc1"], ["prob"])
    n.outputs("prob", "_fc1_mask")
    return n


def train_dropout_net():
    """Training Dropout whose mask feeds DropoutGrad, plus an unseeded CUDNN-engine Dropout (seed 0)."""
    n = Net("train_dropout_net", 2)
    n.input("data", (4, 16))
    n.input("h_grad", (4, 8))
    n.op("FC", ["data", n.weight("fc_w", (8, 16)), n.weight("fc_b", (8,), 0.1)], ["h"])
    n.op("Relu", ["h"], ["h"])
    n.op("Dropout", ["h"], ["h_drop", "h_mask"], seed=7, ratio=0.25, is_test=0)
    n.op("DropoutGrad", ["h_grad", "h_mask"], ["h_grad_in"], seed=7, ratio=0.25, is_test=0)
    n.op("DropoutGrad", ["h_grad"], ["h_grad_test"], ratio=0.25, is_test=1)
    n.op("Dropout", ["h"], ["h_cudnn", "h_cudnn_mask"], engine="CUDNN", ratio=0.5, is_test=0)
    n.op("Tanh", ["h_drop"], ["out"])
    n.outputs("out", "h_mask", "h_grad_in", "h_grad_test", "h_cudnn", "h_cudnn_mask")
    return n


def deconv_net():
    """ConvTranspose (stride, pads, adj) -> Sigmoid -> grouped Conv with dilation -> Tanh."""
    n = Net("deconv_net", 3)
    n.input("data", (1, 4, 5, 5))
    n.op("ConvTranspose", ["data", n.weight("up_w", (4, 6, 3, 3)), n.weight("up_b", (6,), 0.1)], ["up"],
         kernel=3, stride=2, pad=1, adj=1, order="NCHW")  # fmt: skip
    n.op("Sigmoid", ["up"], ["up"])
    n.op("Conv", ["up", n.weight("conv_w", (4, 3, 3, 3)), n.weight("conv_b", (4,), 0.1)], ["conv"],
         kernel=3, dilation=2, pads=[2, 1, 2, 1], group=2, order="NCHW")  # fmt: skip
    n.op("ConvTranspose", ["conv", n.weight("up2_w", (4, 1, 2, 2))], ["up2"], kernels=[2, 2], strides=[2, 1])
    n.op("Tanh", ["up2"], ["out"])
    n.outputs("out")
    return n


def broadcast_net():
    """Legacy broadcast Mul/Add/Div (axis and suffix forms), plain Sub, Reshape with old_shape,
    Softmax on a 3-D blob (2-D coercion), Flatten, FC with axis=2."""
    n = Net("broadcast_net", 4)
    n.input("data", (2, 3, 4, 5))
    n.op("Mul", ["data", n.weight("scale", (3,), 0.5, 1.0)], ["x1"], broadcast=1, axis=1)
    n.op("Add", ["x1", n.weight("bias", (4, 5), 0.3)], ["x2"], broadcast=1)
    n.op("Div", ["x2", n.weight("denom", (2, 3, 1), 0.2, 2.0)], ["x3"], broadcast=1, axis=0)
    n.op("Sub", ["x3", "data"], ["x4"])
    n.op("Mul", ["x4", "x1"], ["x4"])
    n.op("Reshape", ["x4"], ["r", "r_old_shape"], shape=[0, 3, -1])
    n.op("Softmax", ["r"], ["sm"], axis=1)
    n.op("Flatten", ["data"], ["flat"], axis=2)
    n.op("FC", ["r", n.weight("fc_w", (7, 20), 0.2), n.weight("fc_b", (7,), 0.1)], ["fc"], axis=2)
    n.outputs("sm", "r_old_shape", "flat", "fc")
    return n


def pool_concat_net():
    """Caffe-style legacy pooling (ceil sizing), SAME/VALID legacy padding, AveragePool with and
    without padding in the divisor, global pooling, LRN, Concat with split_info and add_axis, Sum."""
    n = Net("pool_concat_net", 5)
    n.input("data", (1, 4, 10, 10))
    n.op("MaxPool", ["data"], ["mp"], kernel=3, stride=2, pad=1, legacy_pad=3)
    n.op("AveragePool", ["data"], ["ap"], kernel=3, stride=2, pad=1, legacy_pad=3)
    n.op("AveragePool", ["data"], ["ap_incl"], kernel=3, stride=2, pad=1, count_include_pad=1)
    n.op("Conv", ["data", n.weight("same_w", (4, 4, 3, 3), 0.3), n.weight("same_b", (4,), 0.1)], ["same"],
         kernel=3, stride=2, legacy_pad=2)  # fmt: skip
    n.op("Conv", ["data", n.weight("valid_w", (4, 4, 3, 3), 0.3), n.weight("valid_b", (4,), 0.1)], ["valid"],
         kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, legacy_pad=1)  # fmt: skip
    n.op("LRN", ["same"], ["lrn", "_lrn_scale"], size=3, alpha=0.001, beta=0.75, bias=2.0)
    n.op("Concat", ["mp", "ap"], ["cat", "cat_split"], order="NCHW")
    n.op("Concat", ["same", "ap_incl"], ["stack", "stack_split"], axis=1, add_axis=1)
    n.op("Sum", ["same", "ap_incl", "lrn"], ["s"])
    n.op("AveragePool", ["cat"], ["gap"], global_pooling=1)
    n.op("MaxPool", ["valid"], ["gmp"], global_pooling=1)
    n.outputs("cat", "cat_split", "stack", "stack_split", "s", "gap", "gmp")
    return n


NETS = [tiny_dropout_net, train_dropout_net, deconv_net, broadcast_net, pool_concat_net]


def write_all(out: Path) -> list:
    written = []
    for make in NETS:
        n = make()
        d = out / n.net.name
        d.mkdir(parents=True, exist_ok=True)
        netdef.write_netdef(n.net, d / "predict_net.pbtxt")
        netdef.write_netdef(n.init, d / "init_net.pb")
        (d / "value_info.json").write_text(json.dumps(n.value_info) + "\n", encoding="utf-8")
        vi = netdef.parse_value_info(n.value_info)
        model = convert(n.net, n.init, vi).model
        model.producer_version = ""  # keep the files stable across package version bumps
        (d / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
        written += [d / f for f in ("predict_net.pbtxt", "init_net.pb", "value_info.json", "model.onnx")]
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    for f in write_all(args.out):
        print(f)


if __name__ == "__main__":
    main()
