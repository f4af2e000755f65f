"""Run Caffe2 nets in real Caffe2 and save the blobs they leave, for the parity suite (tests/parity).

Runs under the Python 3.9 venv of scripts/caffe2_venv.sh (real ``caffe2.python``), never under the
project's own Python. The arguments are applied in this order, in one fresh workspace:

  1. ``--feed FILE.npz``: every array in the file is fed as the blob of its name (repeatable);
  2. ``--init NET``: each init net is run once (``RunNetOnce``), in the order given (repeatable);
  3. ``--net NET``: created once (``CreateNet``), then run ``--iters`` times (default 1); before each
     run the arrays of ``--feed-each FILE.npz`` are fed again;
  4. after each run k the blobs named by ``--fetch`` (repeatable; default: every blob of the
     workspace that holds a tensor) are saved as ``step<k>/<blob>`` in ``--out FILE.npz``.
     With no ``--net``, or with ``--fetch-init``, the blobs are also fetched once after the init
     nets (and the first ``--feed-each``), as ``init/<blob>``.

NET files are NetDefs, binary (.pb) or text (.pbtxt). When Caffe2 refuses a net or a blob cannot
be fetched: exit status 2, a line ``error: <exception>: <first line>``, then the rest of Caffe2's
message (at most 11 lines).
"""

import argparse
import sys

import numpy as np
from caffe2.proto import caffe2_pb2
from caffe2.python import workspace
from google.protobuf import text_format


def read_net(path):
    net = caffe2_pb2.NetDef()
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".pbtxt"):
        text_format.Merge(data.decode("utf-8"), net)
    else:
        net.ParseFromString(data)
    return net


def feed(path):
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            workspace.FeedBlob(name, z[name])


def fetch(names, prefix, out):
    if names:
        for name in names:
            if not workspace.HasBlob(name):
                raise RuntimeError(f"blob {name!r} is not in the workspace")
            value = workspace.FetchBlob(name)
            if not isinstance(value, np.ndarray):
                raise RuntimeError(f"blob {name!r} holds no tensor ({value})")
            out[prefix + name] = value
        return
    for name in workspace.Blobs():
        try:
            value = workspace.FetchBlob(name)
        except Exception:  # a blob that holds no tensor (a mutex, an unwritten blob)
            continue
        if isinstance(value, np.ndarray):
            out[prefix + name] = value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--feed", action="append", default=[])
    p.add_argument("--init", action="append", default=[])
    p.add_argument("--net")
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--feed-each")
    p.add_argument("--fetch", action="append", default=[])
    p.add_argument("--fetch-init", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
    workspace.ResetWorkspace()
    out = {}
    try:
        for path in args.feed:
            feed(path)
        for path in args.init:
            workspace.RunNetOnce(read_net(path))
        if args.feed_each:
            feed(args.feed_each)
        if args.net is None or args.fetch_init:
            fetch(args.fetch, "init/", out)
        if args.net is not None:
            net = read_net(args.net)
            workspace.CreateNet(net)
            for k in range(args.iters):
                if args.feed_each:
                    feed(args.feed_each)
                workspace.RunNet(net.name)
                fetch(args.fetch, f"step{k}/", out)
    except Exception as e:  # Caffe2's own errors are RuntimeErrors with a multi-line message
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        print(f"error: {type(e).__name__}: {lines[0] if lines else e}", file=sys.stderr)
        print("\n".join(lines[1:12]), file=sys.stderr)
        return 2
    np.savez(args.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
