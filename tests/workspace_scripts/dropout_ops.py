"""RunOperatorOnce of a seeded Dropout and of DropoutGrad, twice each: Caffe2 creates a fresh operator
per call, so the same mask comes back.

usage: dropout_ops.py OUT.npz"""
import sys

import numpy as np

from caffe2.proto import caffe2_pb2
from caffe2.python import workspace

out_path = sys.argv[1]
workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
workspace.ResetWorkspace()


def make_op(op_type, inputs, outputs, seed=None, **args):
    op = caffe2_pb2.OperatorDef()
    op.type = op_type
    op.input.extend(inputs)
    op.output.extend(outputs)
    for k, v in args.items():
        a = op.arg.add()
        a.name = k
        if isinstance(v, float):
            a.f = v
        else:
            a.i = v
    if seed is not None:
        op.device_option.random_seed = seed
    return op


x = np.random.RandomState(0).standard_normal((3, 5, 7)).astype(np.float32)
workspace.FeedBlob("X", x)
dropout = make_op("Dropout", ["X"], ["Y", "mask"], seed=2024, ratio=0.3, is_test=0)
saved = {}
for k in range(2):
    workspace.RunOperatorOnce(dropout)
    saved[f"run{k}/Y"] = workspace.FetchBlob("Y")
    saved[f"run{k}/mask"] = workspace.FetchBlob("mask")

workspace.FeedBlob("dY", np.random.RandomState(1).standard_normal(x.shape).astype(np.float32))
grad = make_op("DropoutGrad", ["dY", "mask"], ["dX"], ratio=0.3, is_test=0)
grad_test = make_op("DropoutGrad", ["dY"], ["dX_test"], ratio=0.3, is_test=1)
for k in range(2):
    workspace.RunOperatorsOnce([grad, grad_test])
    saved[f"run{k}/dX"] = workspace.FetchBlob("dX")
    saved[f"run{k}/dX_test"] = workspace.FetchBlob("dX_test")
saved["blobs"] = np.array(workspace.Blobs())
np.savez(out_path, **saved)
