"""A Caffe2 training net: the checkpointed initial state run once, a batch fed, the training net
created and run for 4 steps with RunNet; the parameters and optimizer state fetched after each.

usage: train_net.py OUT.npz NET_DIR STEPS"""
import sys

import numpy as np
from google.protobuf import text_format

from caffe2.proto import caffe2_pb2
from caffe2.python import workspace

out_path, net_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
workspace.ResetWorkspace()
init_values = caffe2_pb2.NetDef()
with open(net_dir + "/init_values.pb", "rb") as f:
    init_values.ParseFromString(f.read())
train_net = caffe2_pb2.NetDef()
with open(net_dir + "/train_net.pbtxt") as f:
    text_format.Merge(f.read(), train_net)
workspace.RunNetOnce(init_values)
with np.load(net_dir + "/trajectory.npz") as z:
    for key in z.files:
        if key.startswith("fed/"):
            workspace.FeedBlob(key[len("fed/"):], z[key])
params = [b for op in init_values.op for b in op.output]
workspace.CreateNet(train_net)
saved = {}
for k in range(steps):
    workspace.RunNet(train_net.name)
    for name in params + ["loss"]:
        value = workspace.FetchBlob(name)
        if isinstance(value, np.ndarray):
            saved[f"step{k}/{name}"] = value
np.savez(out_path, **saved)
