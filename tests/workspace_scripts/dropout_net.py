"""A net holding seeded Dropouts, created once and run twice (the operators keep their generators),
then run once more by RunNet(name, 2); and RunNetOnce twice (a fresh net each time).

usage: dropout_net.py OUT.npz"""
import sys

import numpy as np

from caffe2.proto import caffe2_pb2
from caffe2.python import workspace

out_path = sys.argv[1]
workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
workspace.ResetWorkspace()

net = caffe2_pb2.NetDef()
net.name = "dropout_net"
net.external_input.append("X")
for op_type, inputs, outputs in [
    ("Relu", ["X"], ["R"]),
    ("Dropout", ["R"], ["D1", "mask1"]),
    ("Dropout", ["D1"], ["D2", "mask2"]),
]:
    op = net.op.add()
    op.type = op_type
    op.input.extend(inputs)
    op.output.extend(outputs)
    if op_type == "Dropout":
        a = op.arg.add()
        a.name = "ratio"
        a.f = 0.5
        a = op.arg.add()
        a.name = "is_test"
        a.i = 0
        op.device_option.random_seed = 77
net.external_output.extend(["D2"])

workspace.FeedBlob("X", np.random.RandomState(3).standard_normal((4, 33)).astype(np.float32))
workspace.CreateNet(net)
saved = {"created/blobs": np.array(workspace.Blobs())}
for k in range(2):
    workspace.RunNet(net.name)
    for b in ("R", "D1", "mask1", "D2", "mask2"):
        saved[f"run{k}/{b}"] = workspace.FetchBlob(b)
workspace.RunNet("dropout_net", 2)
saved["run3/mask1"] = workspace.FetchBlob("mask1")
for k in range(2):
    workspace.RunNetOnce(net)
    saved[f"once{k}/mask1"] = workspace.FetchBlob("mask1")
    saved[f"once{k}/D2"] = workspace.FetchBlob("D2")
np.savez(out_path, **saved)
