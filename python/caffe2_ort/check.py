"""``python -m caffe2_ort check``: load the plugin into ONNX Runtime, run every op of the table
(Dropout, DropoutGrad, BitmaskDropout, BitmaskDropoutGrad) on every provider that can, compare with the
numpy reference, and say what failed and why."""

from __future__ import annotations

import platform
import sys
import traceback

import numpy as np


def _model(op_type, dtype, inputs, outputs, **attrs):
    from onnx import TensorProto, helper

    from . import opdefs
    from ._library import DOMAIN

    node = helper.make_node(op_type, inputs, outputs, domain=DOMAIN, name=f"check_{op_type}", **attrs)
    mask = TensorProto.UINT32 if opdefs.mask_format_of(op_type) == "bits" else TensorProto.BOOL
    types = {"X": dtype, "dY": dtype, "Y": dtype, "dX": dtype, "mask": mask}
    graph = helper.make_graph(
        [node],
        "caffe2_ort_check",
        [helper.make_tensor_value_info(n, types[n], None) for n in inputs],
        [helper.make_tensor_value_info(n, types[n], None) for n in outputs],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)], ir_version=8
    )


def run_checks(out=sys.stdout) -> int:
    """Prints a report; returns the number of failed checks."""
    from . import __version__, opdefs, reference
    from ._library import available_providers, get_library_path

    failures = 0
    print(f"caffe2-ort {__version__} on Python {platform.python_version()} ({platform.machine()})", file=out)
    try:
        import onnxruntime as ort

        print(f"onnxruntime {ort.__version__}, providers: {', '.join(ort.get_available_providers())}", file=out)
    except ImportError as e:
        print(f"FAIL  import onnxruntime: {e}  (pip install onnxruntime, or onnxruntime-gpu)", file=out)
        return 1
    try:
        import onnx

        print(f"onnx {onnx.__version__}, numpy {np.__version__}", file=out)
    except ImportError as e:
        print(f"FAIL  import onnx: {e}", file=out)
        return 1

    try:
        path = get_library_path()
        print(f"library: {path}", file=out)
    except Exception as e:
        print(f"FAIL  finding the library: {e}", file=out)
        return 1

    from onnx import TensorProto

    x = np.random.default_rng(0).standard_normal((4, 1001)).astype(np.float32)
    seed, ratio = 1234, 0.3
    expected_y, expected_mask = reference.dropout(x, ratio=ratio, seed=seed)
    expected_dx = reference.dropout_grad(x, expected_mask, ratio=ratio)
    mt = opdefs.RNG_CAFFE2
    mt_y, mt_mask = reference.dropout(x, ratio=ratio, seed=seed, rng=mt)
    checks = [
        ("Dropout", _model("Dropout", TensorProto.FLOAT, ["X"], ["Y", "mask"], ratio=ratio, seed=seed),
         {"X": x}, [expected_y, expected_mask]),
        ("DropoutGrad", _model("DropoutGrad", TensorProto.FLOAT, ["dY", "mask"], ["dX"], ratio=ratio),
         {"dY": x, "mask": expected_mask}, [expected_dx]),
        (f"Dropout rng={mt}", _model("Dropout", TensorProto.FLOAT, ["X"], ["Y", "mask"], ratio=ratio, seed=seed, rng=mt),
         {"X": x}, [mt_y, mt_mask]),
        ("BitmaskDropout", _model("BitmaskDropout", TensorProto.FLOAT, ["X"], ["Y", "mask"], ratio=ratio, seed=seed),
         {"X": x}, [expected_y, reference.pack_mask(expected_mask)]),
        ("BitmaskDropoutGrad", _model("BitmaskDropoutGrad", TensorProto.FLOAT, ["dY", "mask"], ["dX"], ratio=ratio),
         {"dY": x, "mask": reference.pack_mask(expected_mask)}, [expected_dx]),
        (f"BitmaskDropout rng={mt}", _model("BitmaskDropout", TensorProto.FLOAT, ["X"], ["Y", "mask"], ratio=ratio,
                                            seed=seed, rng=mt),
         {"X": x}, [mt_y, reference.pack_mask(mt_mask)]),
    ]
    for provider in available_providers():
        for name, model, feeds, expected in checks:
            label = f"{name} on {provider}"
            try:
                so = ort.SessionOptions()
                so.register_custom_ops_library(path)
                sess = ort.InferenceSession(model.SerializeToString(), so, providers=[provider])
                got = sess.run(None, feeds)
                same = all(np.array_equal(g, e) for g, e in zip(got, expected))
                if same:
                    print(f"ok    {label}: matches the numpy reference bit for bit", file=out)
                else:
                    failures += 1
                    print(f"FAIL  {label}: output differs from the numpy reference", file=out)
            except Exception as e:  # report, never crash
                failures += 1
                print(f"FAIL  {label}: {type(e).__name__}: {e}".rstrip(), file=out)
                if "--verbose" in sys.argv:
                    traceback.print_exc(file=out)
    print("all checks passed" if failures == 0 else f"{failures} check(s) failed", file=out)
    return failures


def main(argv=None) -> int:
    return 1 if run_checks() else 0


if __name__ == "__main__":
    sys.exit(main())
