"""An ONNX graph evaluated op by op with PyTorch (``pip install caffe2-ort[autodiff]``).

It is the independent autodiff the gradient rules are checked against, and the PyTorch side of
``caffe2-ort bench --training``: every ONNX op is written from its definition with torch functional
ops (no code shared with :mod:`caffe2_ort.gradients`), so ``torch.autograd`` gives the reference
gradients. Dropout masks are inputs (``masks={mask output name: array}``), as the ORT run drew them.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("caffe2_ort.torch_ref needs PyTorch: pip install 'caffe2-ort[autodiff]'") from e


def _attrs(node):
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _pads(a, r):
    p = list(a.get("pads", [0] * 2 * r))
    return p[:r], p[r:]


def _torch_pad(pb, pe):
    """F.pad's argument (last dim first) for begin/end pads of the spatial dims."""
    out = []
    for b, e in zip(reversed(pb), reversed(pe)):
        out += [b, e]
    return out


def _conv(x, w, b, a):
    r = w.dim() - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise NotImplementedError("torch_ref: Conv auto_pad")
    pb, pe = _pads(a, r)
    fn = (F.conv1d, F.conv2d, F.conv3d)[r - 1]
    kw = dict(stride=a.get("strides", [1] * r), dilation=a.get("dilations", [1] * r), groups=a.get("group", 1))
    if pb == pe:
        return fn(x, w, b, padding=pb, **kw)
    return fn(F.pad(x, _torch_pad(pb, pe)), w, b, **kw)


def _conv_transpose(x, w, b, a):
    r = w.dim() - 2
    s, d = a.get("strides", [1] * r), a.get("dilations", [1] * r)
    op = a.get("output_padding", [0] * r)
    pb, pe = _pads(a, r)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[r - 1]
    y = fn(x, w, None, stride=s, dilation=d, groups=a.get("group", 1))
    y = F.pad(y, _torch_pad([0] * r, op))
    idx = [slice(None), slice(None)] + [slice(pb[i], y.shape[2 + i] - pe[i]) for i in range(r)]
    y = y[tuple(idx)]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * r)
    return y


def _max_pool(x, a):
    k = a["kernel_shape"]
    r = len(k)
    pb, pe = _pads(a, r)
    xp = F.pad(x, _torch_pad(pb, pe), value=float("-inf")) if any(pb) or any(pe) else x
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[r - 1]
    return fn(xp, k, stride=a.get("strides", [1] * r), dilation=a.get("dilations", [1] * r),
              ceil_mode=bool(a.get("ceil_mode", 0)))


def _avg_pool(x, a):
    k = a["kernel_shape"]
    r = len(k)
    pb, pe = _pads(a, r)
    s = a.get("strides", [1] * r)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[r - 1]
    xp = F.pad(x, _torch_pad(pb, pe))
    mean_padded = fn(xp, k, stride=s)
    if a.get("count_include_pad", 0):
        return mean_padded
    ones = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype), _torch_pad(pb, pe))
    frac = fn(ones, k, stride=s)  # valid elements / kernel size per window
    return mean_padded / frac


def _lrn(x, a):
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    c = x.shape[1]
    sq = F.pad((x * x).unsqueeze(1), [0, 0] * (x.dim() - 2) + [lo, hi]).squeeze(1)
    total = sum(sq[:, j:j + c] for j in range(size))
    return x / (bias + alpha / size * total) ** beta


def _reduce_axes(node, a, consts, x, opset, input_axes_since):
    if opset >= input_axes_since:
        axes = consts[node.input[1]].tolist() if len(node.input) > 1 and node.input[1] else []
    else:
        axes = list(a.get("axes", []))
    if not axes:
        return None if a.get("noop_with_empty_axes", 0) else list(range(x.dim()))
    return [int(v) % x.dim() for v in axes]


def _reshape(x, shape, allowzero=0):
    shape = [int(v) for v in shape]
    if not allowzero:
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


class TorchGraph:
    """Evaluate an ONNX ``ModelProto`` with torch ops; ``run`` returns every tensor it computed."""

    def __init__(self, model, dtype=None, sample_dropout=False):
        self.model = model
        self.sample_dropout = sample_dropout  # draw training-mode Dropout masks with torch instead of taking them
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.dtype = dtype
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def tensor(self, arr):
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        return t

    def run(self, feeds, masks=None, leaves=None):
        """``feeds``: numpy (or torch) values of inputs; ``leaves``: {name: torch tensor} used as-is (e.g.
        parameters with requires_grad); ``masks``: Dropout masks by mask output name."""
        env = {k: self.tensor(v) for k, v in self.inits.items()}
        env.update({k: (v if isinstance(v, torch.Tensor) else self.tensor(v)) for k, v in feeds.items()})
        env.update(leaves or {})
        consts = {k: v for k, v in self.inits.items()}
        masks = masks or {}
        for node in self.model.graph.node:
            outs = self.eval(node, env, consts, masks)
            for name, v in zip(node.output, outs):
                if name:
                    env[name] = v
        return env

    def eval(self, n, env, consts, masks):
        a = _attrs(n)
        ins = [env[i] if i else None for i in n.input]
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        x = ins[0] if ins else None
        if op == "Constant":
            v = numpy_helper.to_array(a["value"]) if "value" in a else np.asarray(next(iter(a.values())))
            consts[n.output[0]] = v
            return [self.tensor(v)]
        if op == "Conv":
            return [_conv(x, ins[1], ins[2] if len(ins) > 2 else None, a)]
        if op == "ConvTranspose":
            return [_conv_transpose(x, ins[1], ins[2] if len(ins) > 2 else None, a)]
        if op == "Gemm":
            A = ins[0].t() if a.get("transA", 0) else ins[0]
            B = ins[1].t() if a.get("transB", 0) else ins[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(ins) > 2 and ins[2] is not None:
                y = y + a.get("beta", 1.0) * ins[2]
            return [y]
        if op == "MatMul":
            return [torch.matmul(ins[0], ins[1])]
        if op == "MaxPool":
            return [_max_pool(x, a)]
        if op == "AveragePool":
            return [_avg_pool(x, a)]
        if op == "GlobalAveragePool":
            return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]
        if op == "GlobalMaxPool":
            return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]
        if op == "LRN":
            return [_lrn(x, a)]
        if op == "BatchNormalization":
            training = bool(a.get("training_mode", 0))
            mean, var = ins[3].clone(), ins[4].clone()
            mom = a.get("momentum", 0.9)
            y = F.batch_norm(x, mean, var, ins[1], ins[2], training=training, momentum=1 - mom, eps=a.get("epsilon", 1e-5))
            return [y, mean, var] if training else [y]
        if op == "Concat":
            return [torch.cat(ins, dim=a["axis"])]
        if op == "Split":
            axis = a.get("axis", 0) % x.dim()
            if len(ins) > 1 and ins[1] is not None:
                sizes = consts[n.input[1]].tolist()
            elif "split" in a:
                sizes = list(a["split"])
            else:
                k = len(n.output)
                sizes = [-(-x.shape[axis] // k)] * k
                sizes[-1] = x.shape[axis] - sum(sizes[:-1])
            return list(torch.split(x, sizes, dim=axis))
        if op in ("Add", "Sub", "Mul", "Div"):
            return [{"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](ins[0], ins[1])]
        if op == "Sum":
            y = ins[0]
            for t in ins[1:]:
                y = y + t
            return [y]
        if op == "Neg":
            return [-x]
        if op == "Reshape":
            return [_reshape(x, ins[1].tolist(), a.get("allowzero", 0))]
        if op == "Flatten":
            axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
            return [x.reshape(int(np.prod(x.shape[:axis])), -1)]
        if op == "Transpose":
            return [x.permute(*a.get("perm", list(range(x.dim()))[::-1]))]
        if op == "Unsqueeze":
            y = x
            for ax in sorted(int(v) % (x.dim() + len(consts[n.input[1]])) for v in consts[n.input[1]].reshape(-1)):
                y = y.unsqueeze(ax)
            return [y]
        if op == "Squeeze":
            axes = consts[n.input[1]].reshape(-1).tolist() if len(ins) > 1 else [i for i, d in enumerate(x.shape) if d == 1]
            return [x.squeeze(tuple(int(v) % x.dim() for v in axes))]
        if op == "Identity":
            return [x]
        if op == "Relu":
            return [torch.relu(x)]
        if op == "Sigmoid":
            return [torch.sigmoid(x)]
        if op == "Tanh":
            return [torch.tanh(x)]
        if op == "Softmax":
            return [torch.softmax(x, dim=a.get("axis", -1))]
        if op == "LogSoftmax":
            return [torch.log_softmax(x, dim=a.get("axis", -1))]
        if op in ("ReduceSum", "ReduceMean"):
            axes = _reduce_axes(n, a, consts, x, self.opset, 13 if op == "ReduceSum" else 18)
            if axes is None:
                return [x]
            fn = torch.sum if op == "ReduceSum" else torch.mean
            return [fn(x, dim=tuple(axes), keepdim=bool(a.get("keepdims", 1)))]
        if op == "SoftmaxCrossEntropyLoss":
            kw = {"reduction": a.get("reduction", "mean")}
            if "ignore_index" in a:
                kw["ignore_index"] = a["ignore_index"]
            w = ins[2] if len(ins) > 2 else None
            return [F.cross_entropy(x, ins[1].long(), weight=w, **kw)]
        if op == "Cast":
            to = helper.tensor_dtype_to_np_dtype(a["to"])
            if np.issubdtype(to, np.floating):
                return [x.to(self.dtype or getattr(torch, np.dtype(to).name))]
            return [x.to(getattr(torch, np.dtype(to).name))]
        if op == "Shape":
            return [torch.tensor(list(x.shape), dtype=torch.int64)]
        if op.endswith("::DropoutGrad"):
            if a.get("is_test", 0):
                return [x]
            return [x * ins[1].to(x.dtype) * (1.0 / (1.0 - a.get("ratio", 0.5)))]
        if op.endswith("::Dropout") or op == "Dropout":
            if op == "Dropout":
                ratio = float(consts[n.input[1]]) if len(n.input) > 1 and n.input[1] else 0.5
                is_test = not (len(n.input) > 2 and n.input[2] and bool(consts[n.input[2]]))
            else:
                ratio, is_test = a.get("ratio", 0.5), a.get("is_test", 0)
            if is_test:
                return [x]
            m = masks.get(n.output[0])
            if m is None and self.sample_dropout:
                m = torch.rand(x.shape) >= ratio
            if m is None:
                raise ValueError(f"torch_ref: training-mode Dropout {n.name or n.output[0]!r} needs its mask "
                                 f"(masks={{{n.output[0]!r}: ...}})")
            mask = m if isinstance(m, torch.Tensor) else torch.from_numpy(np.asarray(m))
            return [x * mask.to(x.dtype) * (1.0 / (1.0 - ratio)), mask]
        raise NotImplementedError(f"torch_ref: no torch translation for {op}")


def gradients(model, feeds, loss, params, masks=None, dtype=None):
    """(loss value, {param: d loss / d param}) by torch.autograd, params taken from the model's initializers
    or ``feeds``."""
    tg = TorchGraph(model, dtype)
    leaves = {}
    for p in params:
        src = feeds[p] if p in feeds else tg.inits[p]
        leaves[p] = tg.tensor(src).clone().requires_grad_(True)
    feeds = {k: v for k, v in feeds.items() if k not in leaves}
    env = tg.run(feeds, masks=masks, leaves=leaves)
    value = env[loss]
    value.sum().backward()
    return value.detach().numpy(), {p: (leaves[p].grad.numpy() if leaves[p].grad is not None
                                        else np.zeros(tuple(leaves[p].shape), leaves[p].detach().numpy().dtype))
                                    for p in params}
