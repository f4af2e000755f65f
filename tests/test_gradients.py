"""Every gradient rule against torch autograd (an ONNX->torch interpreter, float64) on random shapes,
attributes and broadcasts: within 1e-4 of the largest gradient magnitude (ORT float32)."""

import numpy as np
import pytest
from onnx import helper as h

import caffe2_ort
from caffe2_ort import gradients as GR
from grad_helpers import check_against_torch, projection_model, rel_err, ort_gradients, torch_ref  # noqa: F401


def fresh_names(used):
    """The ``names`` callback emit_gradient takes: ``base``, else ``base_1``, ``base_2``, ... not in ``used``."""
    def names(base):
        k, n = 0, base
        while n in used:
            k += 1
            n = f"{base}_{k}"
        used.add(n)
        return n
    return names


def rnd(seed, *shape, scale=1.0):
    return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("case", [
    # (kernel, strides, dilations, pads (begin..end), group, x shape)
    ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, (2, 3, 7, 6)),
    ((3, 2), (2, 3), (1, 1), (0, 1, 2, 0), 1, (2, 2, 9, 8)),
    ((3, 3), (2, 2), (2, 1), (1, 0, 0, 1), 2, (1, 4, 11, 9)),
    ((11, 11), (4, 4), (1, 1), (0, 0, 0, 0), 1, (2, 3, 27, 27)),  # dW by SpaceToDepth
    ((11, 11), (4, 4), (1, 1), (0, 0, 0, 0), 1, (2, 3, 30, 29)),  # ... with rows no window reads
    ((5, 5), (2, 2), (1, 1), (2, 1, 1, 2), 1, (2, 3, 12, 13)),  # ... with pads
    ((7, 7), (1, 1), (1, 1), (3, 3, 3, 3), 2, (1, 4, 9, 9)),  # dW as a Conv with dY as the kernel
    ((1, 1), (2, 2), (1, 1), (0, 0, 0, 0), 1, (2, 5, 6, 6)),
    ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 4, (2, 8, 5, 5)),
    ((5,), (2,), (1,), (2, 1), 1, (2, 3, 12)),
    ((3, 3), (1, 1), (2, 2), (2, 1, 0, 2), 2, (2, 4, 8, 7)),  # stride 1: the flipped-kernel Conv for dX
    ((1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 2, (2, 6, 4, 5)),  # 1x1: one MatMul for dW
    ((2, 2, 2), (1, 2, 1), (1, 1, 1), (1, 0, 0, 0, 1, 1), 1, (1, 2, 4, 5, 4)),
])
def test_conv(case):
    k, s, d, pads, g, xs = case
    o = 4 * g // 2 if g > 1 else 5
    seed = hash(case) % 1000
    params = {"X": rnd(seed, *xs), "W": rnd(seed + 1, o, xs[1] // g, *k), "B": rnd(seed + 2, o)}
    node = h.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=list(k), strides=list(s), dilations=list(d),
                       pads=list(pads), group=g)
    _, _, train = check_against_torch([node], params, "Y")
    ops = {n.op_type for n in train.graph.node}
    assert ("SpaceToDepth" in ops) == (np.prod(k) > 9 and len(k) == 2 and s[0] > 1 and g == 1)


@pytest.mark.parametrize("case,form", [
    # (kernel, strides, dilations, pads (begin..end), group, x shape, out channels), the dW form its shape picks
    (((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, (1, 2, 112, 112), 3), "im2col"),
    (((3, 3), (2, 2), (2, 1), (2, 1, 1, 2), 2, (1, 4, 230, 226), 4), "im2col"),
    (((5,), (1,), (2,), (4, 3), 1, (2, 3, 12600), 2), "im2col"),
    (((2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 0, 0, 0, 1, 1), 1, (1, 2, 24, 24, 22), 2), "im2col"),
    (((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, (1, 1, 112, 112), 33), "offsets"),  # too many output channels
    (((1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1, (1, 3, 112, 112), 2), "offsets"),  # 1x1: no windows to gather
    (((3, 3), (1, 1), (1, 1), (0, 1, 1, 0), 2, (2, 4, 40, 40), 4), "offsets"),
    (((3, 3), (2, 2), (1, 2), (1, 0, 0, 1), 2, (2, 4, 11, 9), 4), "batch_in_k"),
    (((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, (3, 5, 28, 28), 6), "batch_in_k"),
    (((1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 2, (2, 6, 4, 5), 4), "batch_in_k"),  # 1x1: the whole X, no Slice
    (((1, 1), (2, 2), (1, 1), (1, 0, 0, 1), 1, (2, 3, 7, 6), 4), "batch_in_k"),
    (((11, 11), (4, 4), (1, 1), (0, 0, 0, 0), 1, (1, 1, 455, 455), 2), "im2col"),  # SpaceToDepth, then 3x3 by im2col
    (((11, 11), (4, 4), (1, 1), (2, 1, 1, 2), 1, (2, 2, 27, 28), 3), "batch_in_k"),  # ... then by the batch in K
])
def test_conv_small_kernel_weight_grad_forms(case, form):
    """Each small-kernel dW form of conv_weight_grad (picked by the output positions and channels) against torch."""
    k, s, d, pads, g, xs, o = case
    seed = hash(case) % 1000
    params = {"X": rnd(seed, *xs), "W": rnd(seed + 1, o, xs[1] // g, *k)}
    node = h.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=list(k), strides=list(s), dilations=list(d),
                       pads=list(pads), group=g)
    _, _, train = check_against_torch([node], params, "Y")
    r = len(k)
    out = [(xs[2 + i] + pads[i] + pads[r + i] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i in range(r)]
    blocked = np.prod(k) > GR.OFFSET_KERNEL_LIMIT  # the SpaceToDepth path: a ceil(k/s) kernel at stride 1
    kq = [-(-v // s[0]) for v in k] if blocked else k
    assert ("SpaceToDepth" in {n.op_type for n in train.graph.node}) == blocked
    assert GR.small_kernel_weight_grad_form(kq, (xs[0], o, *out), g) == form
    marks = {"im2col": "_im2col_", "batch_in_k": "_dy_win_", "offsets": "_win_dy_"}
    names = " ".join(n.name for n in train.graph.node)
    assert [f for f, m in marks.items() if m in names] == [form]
    if form != "im2col":  # windows by Slice, except where X itself is the only window
        whole = all(v == 1 for v in k) and all(v == 1 for v in s) and not any(pads)
        slices = [n.name for n in train.graph.node if n.op_type == "Slice" and n.name.startswith("W_grad")]
        assert bool(slices) != whole, slices


@pytest.mark.parametrize("case", [
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (2, 3, 4, 5)),
    ((4, 3), (2, 1), (1, 0, 2, 1), (0, 0), 1, (1, 2, 3, 3)),
    ((3, 3), (3, 2), (0, 0, 0, 0), (2, 1), 2, (2, 4, 3, 4)),
])
def test_conv_transpose(case):
    k, s, pads, op, g, xs = case
    seed = hash(case) % 1000
    params = {"X": rnd(seed, *xs), "W": rnd(seed + 1, xs[1], 3, *k), "B": rnd(seed + 2, 3 * g)}
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(pads), group=g)
    if any(op):
        attrs["output_padding"] = list(op)
    check_against_torch([h.make_node("ConvTranspose", ["X", "W", "B"], ["Y"], **attrs)], params, "Y")


@pytest.mark.parametrize("ta,tb,alpha,beta,cshape", [
    (0, 0, 1.0, 1.0, (4, 5)), (1, 0, 0.5, 2.0, (5,)), (0, 1, 1.5, 1.0, (1, 5)), (1, 1, 1.0, 0.5, (4, 1)), (0, 1, 1.0, 1.0, ()),
])
def test_gemm(ta, tb, alpha, beta, cshape):
    a = rnd(1, *((3, 4) if ta else (4, 3)))
    b = rnd(2, *((5, 3) if tb else (3, 5)))
    params = {"A": a, "B": b, "C": rnd(3, *cshape)}
    node = h.make_node("Gemm", ["A", "B", "C"], ["Y"], transA=ta, transB=tb, alpha=alpha, beta=beta)
    check_against_torch([node], params, "Y")


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (2, 4, 3)), ((2, 1, 3, 4), (5, 4, 2)),
                                   ((3, 4), (4,)), ((1, 3, 4), (2, 4, 2))])
def test_matmul(sa, sb):
    check_against_torch([h.make_node("MatMul", ["A", "B"], ["Y"])], {"A": rnd(4, *sa), "B": rnd(5, *sb)}, "Y")


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3)), ((), (3, 2))])
def test_binary_broadcast(op, sa, sb):
    b = rnd(7, *sb)
    if op == "Div":
        b = np.where(np.abs(b) < 0.5, 1.5, b).astype(np.float32)
    check_against_torch([h.make_node(op, ["A", "B"], ["Y"])], {"A": rnd(6, *sa), "B": b}, "Y")


def test_sum_variadic_broadcast():
    params = {"A": rnd(1, 2, 3, 4), "B": rnd(2, 3, 1), "C": rnd(3, 4)}
    check_against_torch([h.make_node("Sum", ["A", "B", "C"], ["Y"])], params, "Y")


def test_shared_tensor_gradients_accumulate():
    params = {"A": rnd(1, 3, 4)}
    nodes = [h.make_node("Mul", ["A", "A"], ["sq"]), h.make_node("Tanh", ["A"], ["t"]), h.make_node("Add", ["sq", "t"], ["Y"])]
    check_against_torch(nodes, params, "Y")


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "Identity", "Neg"])
def test_unary(op):
    check_against_torch([h.make_node(op, ["X"], ["Y"])], {"X": rnd(8, 3, 4, 5)}, "Y")


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax(op, axis):
    check_against_torch([h.make_node(op, ["X"], ["Y"], axis=axis)], {"X": rnd(9, 3, 4, 5)}, "Y")


@pytest.mark.parametrize("axes,keep", [([1], 1), ([0, 2], 0), (None, 0), ([-1], 1)])
def test_reduce_sum(axes, keep):
    ins = ["X"] + (["axes"] if axes is not None else [])
    consts = {"axes": np.asarray(axes, np.int64)} if axes is not None else {}
    check_against_torch([h.make_node("ReduceSum", ins, ["Y"], keepdims=keep)], {"X": rnd(10, 2, 3, 4)}, "Y", consts=consts)


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("axes,keep", [([1], 1), ([0, 2], 0), (None, 1)])
def test_reduce_mean(opset, axes, keep):
    consts = {}
    if opset >= 18:
        ins = ["X"] + (["axes"] if axes is not None else [])
        consts = {"axes": np.asarray(axes, np.int64)} if axes is not None else {}
        node = h.make_node("ReduceMean", ins, ["Y"], keepdims=keep)
    else:
        node = h.make_node("ReduceMean", ["X"], ["Y"], keepdims=keep, **({"axes": axes} if axes else {}))
    check_against_torch([node], {"X": rnd(11, 2, 3, 4)}, "Y", consts=consts, opset=opset)


def test_reshape_flatten_transpose_concat_split():
    params = {"A": rnd(12, 2, 3, 4), "B": rnd(13, 2, 3, 2)}
    nodes = [
        h.make_node("Concat", ["A", "B"], ["c"], axis=2),
        h.make_node("Transpose", ["c"], ["t"], perm=[2, 0, 1]),
        h.make_node("Split", ["t", "sizes"], ["s0", "s1"], axis=0),
        h.make_node("Flatten", ["s0"], ["f"], axis=1),
        h.make_node("Reshape", ["s1", "shape"], ["r"]),
        h.make_node("Tanh", ["f"], ["tf"]),
        h.make_node("ReduceSum", ["r", "ax"], ["rs"], keepdims=0),
        h.make_node("Mul", ["tf", "rs"], ["Y"]),
    ]
    consts = {"sizes": np.asarray([4, 2], np.int64), "shape": np.asarray([6, 2], np.int64), "ax": np.asarray([1], np.int64)}
    check_against_torch(nodes, params, "Y", consts=consts)


def test_split_with_an_unused_output():
    nodes = [h.make_node("Split", ["X", "sizes"], ["a", "b", "c"], axis=1), h.make_node("Mul", ["a", "c"], ["Y"])]
    check_against_torch(nodes, {"X": rnd(14, 2, 6)}, "Y", consts={"sizes": np.asarray([2, 2, 2], np.int64)})


@pytest.mark.parametrize("k,s,pads", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (0, 0, 1, 1)),
                                      ((3, 3), (1, 1), (1, 1, 1, 1)), ((3, 2), (2, 1), (1, 0, 0, 1))])
def test_max_pool_overlapping_windows_accumulate(k, s, pads):
    node = h.make_node("MaxPool", ["X"], ["Y"], kernel_shape=list(k), strides=list(s), pads=list(pads))
    check_against_torch([node], {"X": rnd(15, 2, 3, 7, 8)}, "Y")


def test_max_pool_ties_go_to_the_first_maximum():
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window ties
    node = h.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[2, 2], strides=[2, 2])
    out, _ = ort_gradients(projection_model([node], {"X": x}, "Y"), {"X": x})
    g = out["X_grad"][0, 0]
    assert np.count_nonzero(g) == 4 and all(g[i, j] != 0 for i, j in [(0, 0), (0, 2), (2, 0), (2, 2)])
    node = h.make_node("GlobalMaxPool", ["X"], ["Y"])
    out, _ = ort_gradients(projection_model([node], {"X": x}, "Y"), {"X": x})
    assert np.count_nonzero(out["X_grad"]) == 1 and out["X_grad"][0, 0, 0, 0] != 0


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize("k,s,pads", [((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 3), (1, 2), (0, 1, 1, 0)), ((3, 3), (3, 3), (0, 0, 0, 0))])
def test_average_pool(include, k, s, pads):
    node = h.make_node("AveragePool", ["X"], ["Y"], kernel_shape=list(k), strides=list(s), pads=list(pads),
                       count_include_pad=include)
    check_against_torch([node], {"X": rnd(16, 2, 3, 7, 8)}, "Y")


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(op):
    check_against_torch([h.make_node(op, ["X"], ["Y"])], {"X": rnd(17, 2, 3, 5, 4)}, "Y")


@pytest.mark.parametrize("size,beta", [(1, 0.75), (3, 0.75), (5, 0.75), (7, 0.75), (5, 0.5), (3, 0.6)])
@pytest.mark.parametrize("band", [True, False])
def test_lrn(size, beta, band, monkeypatch):
    """Both channel-window sums (the banded 1x1 Conv, and Slices above LRN_BAND_CHANNELS) and the three
    ways to s^-beta (square roots for 1/2 and 3/4, Exp/Log otherwise)."""
    if not band:
        monkeypatch.setattr(GR, "LRN_BAND_CHANNELS", 6)
    node = h.make_node("LRN", ["X"], ["Y"], size=size, alpha=0.3, beta=beta, bias=1.5)
    _, _, train = check_against_torch([node], {"X": rnd(18, 2, 7, 3, 4)}, "Y")
    ops = [n.op_type for n in train.graph.node]
    assert ("Slice" in ops) == (not band and size > 1) and ("Conv" in ops) == band
    assert ("Exp" in ops) == (beta not in (0.5, 0.75))


@pytest.mark.parametrize("shape", [(2, 7, 5), (1, 6, 2, 3, 2)])
def test_lrn_other_ranks(shape):
    node = h.make_node("LRN", ["X"], ["Y"], size=3, alpha=0.3, beta=0.75, bias=1.5)
    check_against_torch([node], {"X": rnd(37, *shape)}, "Y")


def test_lrn_forward_is_lowered_and_its_terms_reused():
    """In a differentiated graph the forward LRN is x * s^-beta: its Y equals ORT's LRN, and the gradient
    reads the forward's s and s^-beta (one Sqrt chain, one window sum each way) instead of recomputing them."""
    from ort_helpers import session
    x = rnd(34, 2, 9, 5, 6) * 3
    node = h.make_node("LRN", ["X"], ["Y"], size=5, alpha=0.3, beta=0.75, bias=1.5)
    model = projection_model([node], {"X": x}, "Y")
    out, train = ort_gradients(model, {"X": x})
    ops = [n.op_type for n in train.graph.node]
    assert "LRN" not in ops and ops.count("Sqrt") == 2 and ops.count("Conv") == 2
    fwd = h.make_model(h.make_graph([node], "lrn", [h.make_tensor_value_info("X", 1, list(x.shape))],
                                    [h.make_tensor_value_info("Y", 1, None)]), opset_imports=[h.make_opsetid("", 17)],
                       ir_version=8)
    assert rel_err(out["Y"], session(fwd).run(None, {"X": x})[0]) < 1e-6
    restored = GR.restore_forward(train)  # what an export does: the LRN node back, the record gone
    assert [n for n in restored.graph.node if n.output[0] == "Y"][0] == node
    assert not any(p.key == GR.LOWERED_KEY for p in restored.metadata_props)
    kept, _, _ = GR.add_backward(model, "loss", ["X"], lower_forward=False)
    assert [n.op_type for n in kept.graph.node].count("LRN") == 1


@pytest.mark.parametrize("training", [0, 1])
def test_batch_norm(training):
    params = {"X": rnd(19, 4, 3, 5, 2), "scale": rnd(20, 3), "B": rnd(21, 3)}
    consts = {"mean": rnd(22, 3), "var": np.abs(rnd(23, 3)) + 0.5}
    outs = ["Y", "rm", "rv"] if training else ["Y"]
    node = h.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], outs, epsilon=1e-3,
                       **({"training_mode": 1} if training else {}))
    out, ref, train = check_against_torch([node], params, "Y", consts=consts)


@pytest.mark.parametrize("training,opset", [(0, 17), (1, 17), (1, 18)])  # ReduceSumSquare's axes: attribute, input
@pytest.mark.parametrize("wrt,xshape,shift", [(("X",), (6, 4, 3, 3), 0.0), (("scale",), (5, 4, 2, 3), 0.0),
                                              (("B", "X"), (7, 3), 0.0), (("X", "scale"), (4, 2, 6), 20.0)])
def test_batch_norm_gradient_subsets(training, opset, wrt, xshape, shift):
    """Each of dX, dscale, dbias on its own or in pairs, rank 2 and 3, and activations far from zero mean."""
    c = xshape[1]
    values = {"X": rnd(24, *xshape) + np.float32(shift), "scale": rnd(25, c), "B": rnd(26, c)}
    consts = {"mean": rnd(27, c) + np.float32(shift), "var": np.abs(rnd(28, c)) + 0.5}
    consts.update({k: v for k, v in values.items() if k not in wrt})
    outs = ["Y", "rm", "rv"] if training else ["Y"]
    node = h.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], outs, epsilon=1e-3,
                       **({"training_mode": 1} if training else {}))
    check_against_torch([node], {k: values[k] for k in wrt}, "Y", consts=consts, opset=opset)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,ignore", [(False, None), (True, None), (False, 2), (True, 1)])
def test_softmax_cross_entropy(reduction, weighted, ignore):
    labels = np.array([0, 2, 1, 2, 3, 1], np.int64)
    params = {"S": rnd(24, 6, 4)}
    consts = {"labels": labels}
    ins = ["S", "labels"]
    if weighted:
        consts["w"] = np.array([0.5, 1.0, 2.0, 0.25], np.float32)
        ins.append("w")
    attrs = {"reduction": reduction}
    if ignore is not None:
        attrs["ignore_index"] = ignore
    check_against_torch([h.make_node("SoftmaxCrossEntropyLoss", ins, ["Y"], **attrs)], params, "Y", consts=consts)


def test_softmax_cross_entropy_nd_scores():
    labels = np.random.RandomState(3).randint(0, 3, size=(2, 4, 5)).astype(np.int64)
    check_against_torch([h.make_node("SoftmaxCrossEntropyLoss", ["S", "labels"], ["Y"])], {"S": rnd(25, 2, 3, 4, 5)},
                        "Y", consts={"labels": labels})


@pytest.mark.parametrize("is_test", [0, 1])
def test_caffe2_dropout_wiring(is_test):
    node = h.make_node("Dropout", ["X"], ["Y"], domain=caffe2_ort.DOMAIN, ratio=0.3, is_test=is_test)
    params = {"X": rnd(26, 4, 50)}
    model = projection_model([node], params, "Y")
    out, train = ort_gradients(model, params)
    grads = [n for n in train.graph.node if n.op_type == "DropoutGrad"]
    assert len(grads) == 1 and len(grads[0].input) == (1 if is_test else 2)
    attrs = {a.name: h.get_attribute_value(a) for a in grads[0].attribute}
    assert attrs["is_test"] == is_test and abs(attrs["ratio"] - 0.3) < 1e-7
    check_against_torch([node], params, "Y", masks_from={} if is_test else {"Y": train.graph.node[0].output[1]})


def test_onnx_dropout_training_mode():
    node = h.make_node("Dropout", ["X", "ratio", "tm"], ["Y", "m"])
    consts = {"ratio": np.array(0.25, np.float32), "tm": np.array(True)}
    check_against_torch([node], {"X": rnd(27, 3, 40)}, "Y", consts=consts, masks_from={"Y": "m"})


def test_onnx_dropout_inference_mode_and_missing_mask():
    node = h.make_node("Dropout", ["X", "ratio"], ["Y"])
    check_against_torch([node], {"X": rnd(27, 3, 5)}, "Y", consts={"ratio": np.array(0.25, np.float32)})
    node = h.make_node("Dropout", ["X", "ratio", "tm"], ["Y"])  # training, no mask output: one is added
    out, _, train = check_against_torch([node], {"X": rnd(28, 3, 40)}, "Y", masks_from={"Y": "Y_mask"},
                                        consts={"ratio": np.array(0.5, np.float32), "tm": np.array(True)})
    assert 0 < out["Y_mask"].mean() < 1


def test_cast_float_and_integer_ops_pass_through():
    params = {"X": rnd(28, 3, 4)}
    nodes = [h.make_node("Shape", ["X"], ["shp"]), h.make_node("Reshape", ["X", "shp"], ["r"]),
             h.make_node("Cast", ["r"], ["d"], to=11), h.make_node("Tanh", ["d"], ["t"]),
             h.make_node("Cast", ["t"], ["Y"], to=1)]
    check_against_torch(nodes, params, "Y")


def test_missing_rules_are_listed_once_with_counts_and_names():
    nodes = [h.make_node("Erf", ["X"], ["a"], name="erf1"), h.make_node("Erf", ["a"], ["b"], name="erf2"),
             h.make_node("Sin", ["b"], ["c"], name="sin1"), h.make_node("Relu", ["c"], ["Y"])]
    model = projection_model(nodes, {"X": rnd(29, 3)}, "Y")
    with pytest.raises(GR.UnsupportedGradientError) as ei:
        GR.add_backward(model, "loss", ["X"])
    msg = str(ei.value)
    assert "Erf x2 (erf1, erf2)" in msg and "Sin x1 (sin1)" in msg and "Relu" not in msg


def test_bad_loss_and_params_are_errors():
    model = projection_model([h.make_node("Relu", ["X"], ["Y"])], {"X": rnd(30, 3)}, "Y")
    with pytest.raises(ValueError, match="'nope' is not a tensor"):
        GR.add_backward(model, "nope", ["X"])
    with pytest.raises(ValueError, match="must be a scalar"):
        GR.add_backward(model, "Y", ["X"])
    model.graph.initializer.append(h.make_tensor("steps", 7, [1], [3]))
    with pytest.raises(ValueError, match="'steps' is not a floating-point tensor"):
        GR.add_backward(model, "loss", ["steps"])


def test_emit_gradient_lowers_one_node_on_its_own():
    """The entry a Caffe2 gradient op lowers through: a MaxPool node alone (no Indices output) recomputes them."""
    from onnx import helper, TensorProto
    node = h.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[3, 3], strides=[2, 2], name="pool")
    types = {"X": helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 2, 7, 7]),
             "Y": helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 2, 3, 3])}
    names = fresh_names(set())

    nodes, grads = GR.emit_gradient(node, ["dY"], [True], types=types, names=names)
    assert grads[0] and any(n.op_type == "ScatterElements" for n in nodes)
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("X", 1, [1, 2, 7, 7]), h.make_tensor_value_info("dY", 1, [1, 2, 3, 3])],
                         [h.make_tensor_value_info(grads[0], 1, None)])
    from ort_helpers import session
    sess = session(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8))
    x, dy = rnd(31, 1, 2, 7, 7), rnd(32, 1, 2, 3, 3)
    got = sess.run(None, {"X": x, "dY": dy})[0]
    t = torch_ref.torch.from_numpy(x).requires_grad_(True)
    torch_ref.F.max_pool2d(t, 3, 2).backward(torch_ref.torch.from_numpy(dy))
    assert rel_err(got, t.grad.numpy()) < 1e-6
    with pytest.raises(GR.UnsupportedGradientError, match="Erf x1"):
        GR.emit_gradient(h.make_node("Erf", ["X"], ["Y"]), ["dY"], [True], types=types, names=names)


def test_emit_gradient_lrn_alone_computes_its_terms():
    """A Caffe2 LRNGradient lowers the LRN rule with no lowered forward: it computes s and s^-beta itself."""
    from onnx import helper, TensorProto
    from ort_helpers import session
    shape = [2, 6, 4, 3]
    node = h.make_node("LRN", ["X"], ["Y"], size=5, alpha=0.2, beta=0.75, bias=2.0)
    types = {t: helper.make_tensor_type_proto(TensorProto.FLOAT, shape) for t in ("X", "Y", "dY")}
    names = fresh_names(set(types))

    nodes, grads = GR.emit_gradient(node, ["dY"], [True], types=types, names=names)
    graph = h.make_graph([node] + nodes, "g", [h.make_tensor_value_info(t, 1, shape) for t in ("X", "dY")],
                         [h.make_tensor_value_info(grads[0], 1, None)])
    sess = session(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8))
    x, dy = rnd(35, *shape) * 2, rnd(36, *shape)
    got = sess.run(None, {"X": x, "dY": dy})[0]
    t = torch_ref.torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    torch_ref.F.local_response_norm(t, 5, alpha=0.2, beta=0.75, k=2.0).backward(torch_ref.torch.from_numpy(dy.astype(np.float64)))
    assert rel_err(got, t.grad.numpy()) < 1e-5


def test_low_opset_models_are_raised_to_17():
    model = projection_model([h.make_node("Relu", ["X"], ["Y"])], {"X": rnd(33, 3)}, "Y", opset=13)
    out, train = ort_gradients(model, {"X": rnd(33, 3)})
    assert [o.version for o in train.opset_import if o.domain == ""] == [17]
