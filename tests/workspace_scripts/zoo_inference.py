"""Inference of a model-zoo net: init net, a batch fed, the predict net created and run; every tensor
blob saved (the output and the intermediates), plus the workspace's blob list.

usage: zoo_inference.py OUT.npz PREDICT_NET.pbtxt INIT_NET.pb DATA.npz"""
import sys

import numpy as np
from google.protobuf import text_format

from caffe2.proto import caffe2_pb2
from caffe2.python import workspace

out_path, predict_path, init_path, data_path = sys.argv[1:5]
workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
workspace.ResetWorkspace()

predict_net = caffe2_pb2.NetDef()
with open(predict_path) as f:
    text_format.Merge(f.read(), predict_net)
init_net = caffe2_pb2.NetDef()
with open(init_path, "rb") as f:
    init_net.ParseFromString(f.read())

workspace.RunNetOnce(init_net)
with np.load(data_path) as z:
    for name in z.files:
        workspace.FeedBlob(name, z[name])
workspace.CreateNet(predict_net)
workspace.RunNet(predict_net.name)

saved = {}
for name in workspace.Blobs():
    value = workspace.FetchBlob(name)
    if isinstance(value, np.ndarray):
        saved["blob/" + name] = value
saved["blobs"] = np.array(workspace.Blobs())
saved["outputs"] = np.array(list(predict_net.external_output))
saved["has_outputs"] = np.array([workspace.HasBlob(b) for b in predict_net.external_output])
np.savez(out_path, **saved)
