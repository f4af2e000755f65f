"""Every bad input gives the promised error, at session creation or at run time, and the process lives on."""

import numpy as np
import pytest
from onnx import TensorProto, helper

import caffe2_ort
from ort_helpers import grad_model, make_model, plain_dropout_model, session


def creation_error(model):
    with pytest.raises(Exception) as info:
        session(model)
    return str(info.value)


@pytest.mark.parametrize("op", ["Dropout", "DropoutGrad"])
@pytest.mark.parametrize(
    "ratio,shown",
    [(-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan"), (1.0000001, "1.0000001"), (-1e-45, "-1.4013e-45")],
)
def test_bad_ratio_fails_at_session_creation(op, ratio, shown):
    model = (
        plain_dropout_model(name="my_node", ratio=ratio)
        if op == "Dropout"
        else grad_model(name="my_node", ratio=ratio)
    )
    msg = creation_error(model)
    assert f"ai.caffe2 {op} node 'my_node'" in msg
    assert f"ratio = {shown} is out of range" in msg
    assert "0 <= ratio <= 1" in msg


def test_unknown_engine_lists_accepted_ones():
    msg = creation_error(plain_dropout_model(name="n1", engine="MKLDNN"))
    assert "engine = 'MKLDNN' is not supported" in msg
    assert "'DEFAULT'" in msg and "'CUDNN'" in msg and "node 'n1'" in msg


def test_cudnn_engine_on_cpu_runs_the_default_kernel():
    x = np.ones(1000, np.float32)
    a = session(plain_dropout_model(ratio=0.5, seed=4, engine="CUDNN")).run(None, {"X": x})
    b = session(plain_dropout_model(ratio=0.5, seed=4)).run(None, {"X": x})
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


@pytest.mark.parametrize("attr,value,kind,got", [("ratio", 1, "FLOAT", "INT"), ("is_test", 1.0, "INT", "FLOAT"),
                                                ("engine", 3, "STRING", "INT"), ("seed", 1.5, "INT", "FLOAT"),
                                                ("rng", [1], "STRING", "INTS")])
def test_wrongly_typed_attributes(attr, value, kind, got):
    msg = creation_error(plain_dropout_model(name="typed", **{attr: value}))
    assert f"ai.caffe2 Dropout node 'typed': attribute {attr} must be {kind}, got {got}" in msg


def test_training_grad_without_mask_fails_at_session_creation():
    msg = creation_error(grad_model(with_mask=False, name="g0", ratio=0.5))
    assert "ai.caffe2 DropoutGrad node 'g0'" in msg
    assert "needs the mask input" in msg


def test_mismatched_mask_count_is_a_runtime_invalid_argument():
    sess = session(grad_model(ratio=0.5, name="g1"))
    with pytest.raises(Exception) as info:
        sess.run(None, {"dY": np.ones(6, np.float32), "mask": np.ones(5, bool)})
    msg = str(info.value)
    assert "INVALID_ARGUMENT" in msg
    assert "ai.caffe2 DropoutGrad node 'g1': mask has 5 elements but dY has 6" in msg
    # the session is still usable
    (dx,) = sess.run(None, {"dY": np.ones(6, np.float32), "mask": np.ones(6, bool)})
    assert np.all(dx == 2)


def test_unsupported_element_type_is_refused():
    msg = creation_error(plain_dropout_model(TensorProto.INT32, ratio=0.5))
    assert "Dropout" in msg and ("implementation" in msg or "type" in msg.lower())


def test_wrong_mask_type_is_refused():
    msg = creation_error(grad_model(mask_type=TensorProto.FLOAT, ratio=0.5))
    assert "DropoutGrad" in msg


def test_absent_optional_mask_input_written_as_empty_name():
    node = helper.make_node("DropoutGrad", ["dY", ""], ["dX"], domain=caffe2_ort.DOMAIN, name="g2", ratio=0.5, is_test=1)
    model = make_model(
        [node],
        [helper.make_tensor_value_info("dY", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("dX", TensorProto.FLOAT, [3])],
    )
    (dx,) = session(model).run(None, {"dY": np.arange(3, dtype=np.float32)})
    assert np.array_equal(dx, np.arange(3, dtype=np.float32))
