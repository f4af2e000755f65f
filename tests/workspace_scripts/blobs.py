"""HasBlob / Blobs / ResetWorkspace / FetchBlobs, string blobs, and the errors scripts catch
(RuntimeError): an unknown blob, an unknown net, a net created twice, a net reading a missing blob.

usage: blobs.py OUT.npz"""
import sys

import numpy as np

from caffe2.proto import caffe2_pb2
from caffe2.python import workspace

out_path = sys.argv[1]
workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
saved = {}
workspace.ResetWorkspace()
saved["empty"] = np.array(workspace.Blobs(), dtype=str)
workspace.FeedBlob("b", np.arange(6, dtype=np.int64).reshape(2, 3))
workspace.FeedBlob("a", np.ones(3, np.float32))
workspace.FeedBlob("s", "a string")
saved["fed"] = np.array(workspace.Blobs())
saved["has"] = np.array([workspace.HasBlob(n) for n in ("a", "b", "s", "c")])
a, b = workspace.FetchBlobs(["a", "b"])
saved["a"], saved["b"] = a, b
saved["s"] = np.array(workspace.FetchBlob("s"))


def refused(call):
    try:
        call()
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return ""


def relu_net(name, x, y):
    net = caffe2_pb2.NetDef()
    net.name = name
    op = net.op.add()
    op.type = "Relu"
    op.input.append(x)
    op.output.append(y)
    return net


net = relu_net("n", "a", "r")
workspace.CreateNet(net)
saved["created"] = np.array(workspace.Blobs())
saved["err/fetch"] = np.array(refused(lambda: workspace.FetchBlob("nope")))
saved["err/runnet"] = np.array(refused(lambda: workspace.RunNet("no_such_net")))
saved["err/twice"] = np.array(refused(lambda: workspace.CreateNet(net)))
saved["overwrite"] = np.array(workspace.CreateNet(net, overwrite=True))
bad = relu_net("bad", "missing", "q")
saved["err/missing"] = np.array(refused(lambda: workspace.CreateNet(bad)))
saved["after_bad"] = np.array(workspace.Blobs())
workspace.RunNet("n")
saved["r"] = workspace.FetchBlob("r")
saved["reset"] = np.array(workspace.ResetWorkspace())
saved["after_reset"] = np.array(workspace.Blobs(), dtype=str)
saved["has_after_reset"] = np.array(workspace.HasBlob("a"))
saved["err/runnet_after_reset"] = np.array(refused(lambda: workspace.RunNet("n")))
np.savez(out_path, **saved)
