"""Optimizers as graph builders: Caffe2's update formulas in standard ONNX ops.

Each builder takes an :class:`caffe2_ort.gradients.Emitter` and tensor names and emits the nodes of
one Caffe2 optimizer op, returning the names of its outputs, so both training paths (an ONNX model
plus a loss, and a converted Caffe2 training net) emit the same nodes:

- :func:`iteration` = ``AtomicIter`` (int64 counter of shape [1], +1 per step),
- :func:`learning_rate` = ``LearningRate`` (``base_lr`` times the policy's multiplier at the
  incremented iteration; brew writes ``base_lr`` negative for SGD, Adagrad and Adam, positive for
  momentum SGD),
- :func:`weighted_sum_sgd` = ``WeightedSum([param, ONE, grad, lr])`` (plain SGD, lr negative),
- :func:`momentum_sgd_update` = ``MomentumSGDUpdate`` (lr positive, ``param -= adjusted``),
- :func:`adagrad` = ``Adagrad``, :func:`adam` = ``Adam`` (lr negative, ``t = iteration + 1``),
- :func:`weight_decay` = the regulariser's ``WeightedSum([grad, ONE, param, wd])``.

:data:`OPTIMIZERS` describes the state each optimizer keeps per parameter.
"""

from __future__ import annotations

import numpy as np

POLICIES = ("fixed", "step", "exp", "inv", "multistep")


def iteration(e, it, base="optimizer_iteration"):
    """AtomicIter: it + 1 (int64)."""
    return e.node("Add", [it, e.const(np.ones(1, np.int64), np.int64, f"{base}_one")], f"{base}_next")


def learning_rate(e, it, base_lr, policy="fixed", *, gamma=None, stepsize=None, stepsizes=None, power=None,
                  base="lr"):
    """LearningRate: ``base_lr * multiplier(it)`` as float32 of shape [1]; ``it`` int64 [1].

    fixed: 1; step: gamma^floor(it / stepsize); exp: gamma^it; inv: (1 + gamma it)^-power;
    multistep: gamma^(number of stepsizes <= it).
    """
    f32 = np.float32
    lr = e.const(np.full(1, base_lr, f32), f32, f"{base}_base")
    if policy == "fixed":
        return e.node("Identity", [lr], base)

    def need(name, value):
        if value is None:
            raise ValueError(f"learning-rate policy {policy!r} needs {name}")
        return value

    if policy == "step":
        k = e.node("Div", [it, e.const(np.full(1, int(need("stepsize", stepsize)), np.int64), np.int64, f"{base}_stepsize")],
                   f"{base}_steps")
        mult = e.node("Pow", [e.const(np.full(1, need("gamma", gamma), f32), f32, f"{base}_gamma"),
                              e.node("Cast", [k], f"{base}_steps_f", to=1)], f"{base}_mult")
    elif policy == "exp":
        mult = e.node("Pow", [e.const(np.full(1, need("gamma", gamma), f32), f32, f"{base}_gamma"),
                              e.node("Cast", [it], f"{base}_it_f", to=1)], f"{base}_mult")
    elif policy == "inv":
        itf = e.node("Cast", [it], f"{base}_it_f", to=1)
        g_it = e.node("Mul", [e.const(np.full(1, need("gamma", gamma), f32), f32, f"{base}_gamma"), itf], f"{base}_g_it")
        onep = e.node("Add", [e.const(np.ones(1, f32), f32, f"{base}_one"), g_it], f"{base}_one_plus")
        mult = e.node("Pow", [onep, e.const(np.full(1, -need("power", power), f32), f32, f"{base}_neg_power")], f"{base}_mult")
    elif policy == "multistep":
        steps = np.asarray(need("stepsizes", stepsizes), np.int64).reshape(-1)
        passed = e.node("GreaterOrEqual", [it, e.const(steps, np.int64, f"{base}_stepsizes")], f"{base}_passed")
        count = e.reduce_sum(e.node("Cast", [passed], f"{base}_passed_f", to=1), [0], True, f"{base}_count")
        mult = e.node("Pow", [e.const(np.full(1, need("gamma", gamma), f32), f32, f"{base}_gamma"), count], f"{base}_mult")
    else:
        raise ValueError(f"unknown learning-rate policy {policy!r}; use one of {', '.join(POLICIES)}")
    return e.node("Mul", [lr, mult], base)


def weight_decay(e, grad, param, wd, base):
    """grad + wd * param (Caffe2's WeightDecayBuilder)."""
    c = e.const(np.asarray(wd, np.float32), np.float32, f"{base}_wd")
    return e.node("Add", [grad, e.node("Mul", [param, c], f"{base}_decay")], f"{base}_decayed")


def weighted_sum_sgd(e, param, grad, lr, base):
    """WeightedSum([param, ONE, grad, lr]): param + lr * grad (lr is negative)."""
    return e.node("Add", [param, e.node("Mul", [grad, lr], f"{base}_step")], f"{base}_new")


def momentum_sgd_update(e, param, grad, momentum_state, lr, momentum=0.9, nesterov=False, base="p"):
    """MomentumSGDUpdate -> (adjusted grad, new momentum, new param).

    Plain: adjusted = lr g + mu m, m' = adjusted. Nesterov: m' = mu m + lr g,
    adjusted = (1 + mu) m' - mu m. Then param' = param - adjusted (lr is positive).
    """
    mu = e.const(np.asarray(momentum, np.float32), np.float32, f"{base}_mu")
    lr_g = e.node("Mul", [lr, grad], f"{base}_lr_g")
    mu_m = e.node("Mul", [mu, momentum_state], f"{base}_mu_m")
    if not nesterov:
        adjusted = e.node("Add", [lr_g, mu_m], f"{base}_adjusted")
        new_m = adjusted
    else:
        new_m = e.node("Add", [mu_m, lr_g], f"{base}_momentum_new")
        one_mu = e.const(np.asarray(1 + np.float32(momentum), np.float32), np.float32, f"{base}_one_plus_mu")
        adjusted = e.node("Sub", [e.node("Mul", [one_mu, new_m], f"{base}_ahead"), mu_m], f"{base}_adjusted")
    new_p = e.node("Sub", [param, adjusted], f"{base}_new")
    return adjusted, new_m, new_p


def adagrad(e, param, grad, moment, lr, epsilon=1e-5, decay=1.0, base="p"):
    """Adagrad -> (new param, new moment): h' = decay h + g^2; param' = param + lr g / (sqrt(h') + eps)."""
    sq = e.node("Mul", [grad, grad], f"{base}_g_sq")
    h = moment if decay == 1.0 else e.node("Mul", [moment, e.const(np.asarray(decay, np.float32), np.float32, f"{base}_decay")],
                                           f"{base}_h_decayed")
    new_h = e.node("Add", [h, sq], f"{base}_moment_new")
    denom = e.node("Add", [e.node("Sqrt", [new_h], f"{base}_sqrt_h"), e.const(np.asarray(epsilon, np.float32), np.float32, f"{base}_eps")],
                   f"{base}_denom")
    step = e.node("Div", [e.node("Mul", [lr, grad], f"{base}_lr_g"), denom], f"{base}_step")
    return e.node("Add", [param, step], f"{base}_new"), new_h


def adam(e, param, grad, m1, m2, lr, it, beta1=0.9, beta2=0.999, epsilon=1e-8, base="p"):
    """Adam -> (new param, new m1, new m2), Caffe2's formula with t = it + 1:
    m1' = beta1 m1 + (1 - beta1) g; m2' = beta2 m2 + (1 - beta2) g^2;
    param' = param + lr sqrt(1 - beta2^t) / (1 - beta1^t) * m1' / (sqrt(m2') + eps)."""
    f32 = np.float32

    def c(v, name):
        return e.const(np.asarray(v, f32), f32, f"{base}_{name}")

    new_m1 = e.node("Add", [e.node("Mul", [m1, c(beta1, "beta1")], f"{base}_m1_b"),
                            e.node("Mul", [grad, c(1 - f32(beta1), "one_m_beta1")], f"{base}_g_b1")], f"{base}_m1_new")
    g2 = e.node("Mul", [grad, grad], f"{base}_g_sq")
    new_m2 = e.node("Add", [e.node("Mul", [m2, c(beta2, "beta2")], f"{base}_m2_b"),
                            e.node("Mul", [g2, c(1 - f32(beta2), "one_m_beta2")], f"{base}_g2_b2")], f"{base}_m2_new")
    t = e.node("Cast", [e.node("Add", [it, e.const(np.ones(1, np.int64), np.int64, f"{base}_one_i")], f"{base}_t")],
               f"{base}_t_f", to=1)
    one = c(1, "one")
    b1t = e.node("Sub", [one, e.node("Pow", [c(beta1, "beta1p"), t], f"{base}_b1_t")], f"{base}_one_m_b1t")
    b2t = e.node("Sub", [one, e.node("Pow", [c(beta2, "beta2p"), t], f"{base}_b2_t")], f"{base}_one_m_b2t")
    correction = e.node("Div", [e.node("Sqrt", [b2t], f"{base}_sqrt_b2t"), b1t], f"{base}_correction")
    rate = e.node("Mul", [lr, correction], f"{base}_rate")
    denom = e.node("Add", [e.node("Sqrt", [new_m2], f"{base}_sqrt_m2"), c(epsilon, "eps")], f"{base}_denom")
    step = e.node("Div", [e.node("Mul", [rate, new_m1], f"{base}_rate_m1"), denom], f"{base}_step")
    return e.node("Add", [param, step], f"{base}_new"), new_m1, new_m2


# name -> (sign of the LearningRate's base_lr as brew writes it, per-parameter state suffixes)
OPTIMIZERS = {
    "sgd": (-1.0, ()),
    "momentum": (1.0, ("momentum",)),
    "nesterov": (1.0, ("momentum",)),
    "adagrad": (-1.0, ("moment",)),
    "adam": (-1.0, ("first_moment", "second_moment")),
}

OPTIONS = {
    "sgd": (),
    "momentum": ("momentum",),
    "nesterov": ("momentum",),
    "adagrad": ("epsilon", "decay"),
    "adam": ("beta1", "beta2", "epsilon"),
}


def update(e, optimizer, param, grad, state, lr, it, base, **args):
    """Emit ``optimizer``'s update of one parameter: returns (new param, [new value of each state tensor])."""
    unknown = set(args) - set(OPTIONS[optimizer])
    if unknown:
        raise ValueError(f"optimizer {optimizer!r} takes no option(s) {', '.join(sorted(unknown))}; "
                         f"it takes: {', '.join(OPTIONS[optimizer]) or 'none'}")
    if optimizer == "sgd":
        return weighted_sum_sgd(e, param, grad, lr, base), []
    if optimizer in ("momentum", "nesterov"):
        _, m, p = momentum_sgd_update(e, param, grad, state[0], lr, args.get("momentum", 0.9), optimizer == "nesterov", base)
        return p, [m]
    if optimizer == "adagrad":
        p, h = adagrad(e, param, grad, state[0], lr, args.get("epsilon", 1e-5), args.get("decay", 1.0), base)
        return p, [h]
    p, m1, m2 = adam(e, param, grad, state[0], state[1], lr, it, args.get("beta1", 0.9), args.get("beta2", 0.999),
                     args.get("epsilon", 1e-8), base)
    return p, [m1, m2]
