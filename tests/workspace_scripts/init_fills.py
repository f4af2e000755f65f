"""A Caffe2-built init net (random fills: XavierFill, ConstantFill, CreateMutex, seeded) run once;
every tensor blob saved.

usage: init_fills.py OUT.npz INIT_NET.pbtxt"""
import sys

import numpy as np
from google.protobuf import text_format

from caffe2.proto import caffe2_pb2
from caffe2.python import workspace

out_path, init_path = sys.argv[1:3]
workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
workspace.ResetWorkspace()
init_net = caffe2_pb2.NetDef()
with open(init_path) as f:
    text_format.Merge(f.read(), init_net)
workspace.RunNetOnce(init_net)
saved = {"blobs": np.array(workspace.Blobs())}
for name in workspace.Blobs():
    value = workspace.FetchBlob(name)
    if isinstance(value, np.ndarray):
        saved["blob/" + name] = value
# fills of every random kind, one seed
for k, (op_type, args) in enumerate([
    ("XavierFill", {}), ("MSRAFill", {}), ("UniformFill", {"min": -2.0, "max": 3.0}),
    ("GaussianFill", {"mean": 1.0, "std": 0.5}),
]):
    op = caffe2_pb2.OperatorDef()
    op.type = op_type
    op.output.append(op_type)
    a = op.arg.add()
    a.name = "shape"
    a.ints.extend([6, 5, 3])
    for name, v in args.items():
        a = op.arg.add()
        a.name = name
        a.f = v
    op.device_option.random_seed = 99 + k
    workspace.RunOperatorOnce(op)
    saved["fill/" + op_type] = workspace.FetchBlob(op_type)
np.savez(out_path, **saved)
