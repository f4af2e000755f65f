"""The semantics of Caffe2's optimizer and learning-rate ops (and of SpatialBN's training state), as
docs/caffe2-training.md states them, checked against real Caffe2: each rule is written out in numpy
(float32, in the order of operations that reproduces Caffe2 bit for bit) and compared with what
Caffe2 computes."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2_helpers import make_net

pytestmark = pytest.mark.parity

f32, f64 = np.float32, np.float64
N = 1000


def powf(a, b):
    """C's powf of two float32 values: the double power rounded once to float32 (glibc's powf is
    correctly rounded; numpy's float32 power is not always)."""
    return f32(np.power(f64(f32(a)), f64(f32(b))))


def rule_lr(policy, base_lr, it, **kw):
    """LearningRate: base_lr * factor(iter), everything in float32."""
    it = f32(it)
    one = f32(1)
    if policy == "fixed":
        factor = one
    elif policy == "step":
        factor = powf(kw["gamma"], np.floor(it / f32(kw["stepsize"])))
    elif policy == "exp":
        factor = powf(kw["gamma"], it)
    elif policy == "inv":
        factor = powf(one + f32(kw["gamma"]) * it, -f32(kw["power"]))
    elif policy == "poly":
        factor = powf(one - it / f32(kw["max_iter"]), kw["power"])
    else:
        raise ValueError(policy)
    return f32(base_lr) * factor


def rule_weighted_sum(xs, ws):
    """WeightedSum: Y = X0*w0, then Y += w_i*X_i, each += one fused multiply-add (MKL's axpy)."""
    y = xs[0] * ws[0]
    for x, w in zip(xs[1:], ws[1:]):
        y = (f64(w) * x.astype(f64) + y.astype(f64)).astype(f32)  # exact product, one rounding
    return y


def rule_momentum_sgd(g, m, lr, momentum, nesterov):
    """MomentumSGD(Update): returns (grad_out, momentum_out, step subtracted from the param)."""
    mu = f32(momentum)
    if not nesterov:
        adjusted = lr * g + mu * m
        return adjusted, adjusted, adjusted
    m_new = mu * m + lr * g
    g_out = (f32(1) + mu) * m_new - mu * m
    return g_out, m_new, g_out


def rule_adagrad(p, h, g, lr, epsilon, decay):
    h_new = f32(decay) * h + g * g
    return p + lr * g / (np.sqrt(h_new) + f32(epsilon)), h_new


def rule_adam(p, m1, m2, g, lr, it, beta1, beta2, epsilon):
    b1, b2 = f32(beta1), f32(beta2)
    t = int(it) + 1
    correction = f32(np.sqrt(1 - f64(b2) ** t) / (1 - f64(b1) ** t))  # in double, from the float betas
    m1n = m1 * b1 + g * (f32(1) - b1)
    m2n = m2 * b2 + (g * g) * (f32(1) - b2)
    denom = np.sqrt(m2n) + f32(epsilon)
    g_out = correction * m1n / denom
    # 3 outputs: one expression; 4 outputs (the grad too): the param moves by lr * grad_out
    return p + lr * correction * m1n / denom, m1n, m2n, g_out, p + lr * g_out


def rule_rmsprop(g, ms, mom, lr, decay, momentum, epsilon):
    """Caffe2 evaluates the square root with Eigen's vectorised fast path (not correctly rounded),
    so the momentum matches this only to a few float32 ulps; mean_squares matches bit for bit."""
    ms_new = ms + (f32(1) - f32(decay)) * (g * g - ms)
    mom_new = mom * f32(momentum) + lr * g / np.sqrt(f32(epsilon) + ms_new)
    return mom_new, ms_new, mom_new  # grad_out, mean_squares, momentum


POLICIES = {
    "fixed": {},
    "step": {"stepsize": 3, "gamma": 0.5},
    "exp": {"gamma": 0.9},
    "inv": {"gamma": 0.1, "power": 0.75},
    "poly": {"max_iter": 20, "power": 0.9},
}
LR_RUNS = 12


@pytest.fixture(scope="module")
def lr_runs(caffe2):
    ops = [("AtomicIter", ["mutex", "iter"], ["iter"]), ("Iter", ["iter2"], ["iter2"])]
    ops += [("LearningRate", ["iter"], [f"lr_{p}"], {"base_lr": -0.1, "policy": p, **kw}) for p, kw in POLICIES.items()]
    init = make_net("init", [("CreateMutex", [], ["mutex"])])
    feeds = {"iter": np.array([0], np.int64), "iter2": np.array([41], np.int64)}
    net = make_net("lr", ops, inputs=["mutex", "iter", "iter2"])
    return caffe2.run(net, init=[init], feed=feeds, iters=LR_RUNS)


def test_iter_and_atomic_iter_add_one_before_the_learning_rate_reads_them(lr_runs):
    for k in range(LR_RUNS):
        it = lr_runs[f"step{k}/iter"]
        assert it.dtype == np.int64 and it.shape == (1,) and int(it[0]) == k + 1
        assert int(lr_runs[f"step{k}/iter2"][0]) == 42 + k


@pytest.mark.parametrize("policy", POLICIES)
def test_learning_rate_policy(lr_runs, policy):
    for k in range(LR_RUNS):
        lr = lr_runs[f"step{k}/lr_{policy}"]
        assert lr.dtype == np.float32 and lr.shape == ()  # a rank-0 float: the sign is base_lr's
        want = rule_lr(policy, -0.1, k + 1, **POLICIES[policy])
        assert lr.view(np.uint32) == np.asarray(want).view(np.uint32), f"iter {k + 1}: {lr!r} vs {want!r}"


def test_unknown_learning_rate_policy_is_refused_at_net_creation(caffe2):
    from caffe2_oracle import Caffe2Error

    net = make_net("bad_lr", [("LearningRate", ["iter"], ["lr"], {"base_lr": -0.1, "policy": "multistep"})], ["iter"])
    with pytest.raises(Caffe2Error, match="Unknown learning rate policy: multistep"):
        caffe2.run(net, feed={"iter": np.array([0], np.int64)})


@pytest.fixture(scope="module")
def update_case(caffe2):
    rng = np.random.default_rng(5)
    g, p, m = (rng.standard_normal(N).astype(f32) for _ in range(3))
    h = np.abs(rng.standard_normal(N)).astype(f32)
    feeds = {"g": g, "p": p, "m": m, "h": h, "lr_neg": np.array([-0.05], f32), "lr_pos": np.array([0.05], f32),
             "it3": np.array([3], np.int64), "it0": np.array([0], np.int64), "w0": np.array([1.0], f32),
             "w1": np.array([-0.3], f32), "w2": np.array([0.7], f32)}  # fmt: skip
    ops = [("WeightedSum", ["p", "w0", "g", "w1"], ["ws2"]), ("WeightedSum", ["p", "w2", "g", "w1", "m", "w2"], ["ws3"])]
    for nest in (0, 1):
        ops += [("Copy", ["g"], [f"msu_g{nest}"]), ("Copy", ["m"], [f"msu_m{nest}"]), ("Copy", ["p"], [f"msu_p{nest}"]),
                ("MomentumSGDUpdate", [f"msu_g{nest}", f"msu_m{nest}", "lr_pos", f"msu_p{nest}"],
                 [f"msu_g{nest}", f"msu_m{nest}", f"msu_p{nest}"], {"momentum": 0.9, "nesterov": nest}),
                ("Copy", ["g"], [f"ms_g{nest}"]), ("Copy", ["m"], [f"ms_m{nest}"]),
                ("MomentumSGD", [f"ms_g{nest}", f"ms_m{nest}", "lr_pos"], [f"ms_g{nest}", f"ms_m{nest}"],
                 {"momentum": 0.9, "nesterov": nest})]  # fmt: skip
    for i, decay in enumerate((1.0, 0.9)):
        ops += [("Copy", ["p"], [f"ada_p{i}"]), ("Copy", ["h"], [f"ada_h{i}"]),
                ("Adagrad", [f"ada_p{i}", f"ada_h{i}", "g", "lr_neg"], [f"ada_p{i}", f"ada_h{i}"],
                 {"epsilon": 1e-4, "decay": decay})]  # fmt: skip
    for it in ("it0", "it3"):
        for n in (3, 4):
            c = f"{it}_{n}"
            ops += [("Copy", ["p"], [f"adam_p_{c}"]), ("Copy", ["m"], [f"adam_m1_{c}"]), ("Copy", ["h"], [f"adam_m2_{c}"]),
                    ("Adam", [f"adam_p_{c}", f"adam_m1_{c}", f"adam_m2_{c}", "g", "lr_neg", it],
                     [f"adam_p_{c}", f"adam_m1_{c}", f"adam_m2_{c}", f"adam_g_{c}"][:n],
                     {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8})]  # fmt: skip
    ops += [("Copy", ["h"], ["rms_ms"]), ("Copy", ["m"], ["rms_mom"]),
            ("RmsProp", ["g", "rms_ms", "rms_mom", "lr_pos"], ["rms_g", "rms_ms", "rms_mom"],
             {"decay": 0.9, "momentum": 0.5, "epsilon": 1e-5})]  # fmt: skip
    out = caffe2.run(make_net("updates", ops, inputs=list(feeds)), feed=feeds)
    return feeds, {k[len("step0/") :]: v for k, v in out.items()}


def _same(got, want, what):
    want = np.asarray(want, f32)
    assert got.dtype == np.float32 and got.shape == want.shape, what
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert not bad.size, f"{what}: {bad.size} of {got.size} differ, first at {bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}"


def test_weighted_sum(update_case):
    x, out = update_case
    _same(out["ws2"], rule_weighted_sum([x["p"], x["g"]], [x["w0"][0], x["w1"][0]]), "WeightedSum 2 terms")
    _same(out["ws3"], rule_weighted_sum([x["p"], x["g"], x["m"]], [x["w2"][0], x["w1"][0], x["w2"][0]]), "WeightedSum 3 terms")


@pytest.mark.parametrize("nesterov", [0, 1])
def test_momentum_sgd_update_and_momentum_sgd(update_case, nesterov):
    x, out = update_case
    g_out, m_out, step = rule_momentum_sgd(x["g"], x["m"], x["lr_pos"][0], 0.9, nesterov)
    _same(out[f"msu_g{nesterov}"], g_out, "MomentumSGDUpdate grad")
    _same(out[f"msu_m{nesterov}"], m_out, "MomentumSGDUpdate momentum")
    _same(out[f"msu_p{nesterov}"], x["p"] - step, "MomentumSGDUpdate param")
    _same(out[f"ms_g{nesterov}"], g_out, "MomentumSGD grad")
    _same(out[f"ms_m{nesterov}"], m_out, "MomentumSGD momentum")


@pytest.mark.parametrize("i,decay", [(0, 1.0), (1, 0.9)])
def test_adagrad(update_case, i, decay):
    x, out = update_case
    p_new, h_new = rule_adagrad(x["p"], x["h"], x["g"], x["lr_neg"][0], 1e-4, decay)
    _same(out[f"ada_h{i}"], h_new, "Adagrad moment")
    _same(out[f"ada_p{i}"], p_new, "Adagrad param")


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("it", ["it0", "it3"])
def test_adam(update_case, it, n):
    x, out = update_case
    c = f"{it}_{n}"
    p3, m1, m2, g_out, p4 = rule_adam(x["p"], x["m"], x["h"], x["g"], x["lr_neg"][0], x[it][0], 0.9, 0.999, 1e-8)
    _same(out[f"adam_m1_{c}"], m1, "Adam first moment")
    _same(out[f"adam_m2_{c}"], m2, "Adam second moment")
    _same(out[f"adam_p_{c}"], p3 if n == 3 else p4, "Adam param")
    if n == 4:
        _same(out[f"adam_g_{c}"], g_out, "Adam grad output")


def test_rmsprop(update_case):
    x, out = update_case
    g_out, ms, mom = rule_rmsprop(x["g"], x["h"], x["m"], x["lr_pos"][0], 0.9, 0.5, 1e-5)
    _same(out["rms_ms"], ms, "RmsProp mean squares")
    # each term within 2 ulps: |error| <= 2^-22 (|momentum * mom| + |lr * g / sqrt(.)|)
    bound = 2.0**-22 * (np.abs(f64(0.5) * x["m"]) + np.abs(f64(mom) - f64(0.5) * x["m"]))
    err = np.abs(f64(out["rms_mom"]) - f64(mom))
    assert (err <= bound).all(), f"RmsProp momentum: worst error {float(np.max(err / np.maximum(bound, 1e-30))):.2f} x the bound"
    _same(out["rms_g"], out["rms_mom"], "RmsProp grad output = its momentum")


def test_spatial_bn_training_outputs_and_running_statistics(caffe2):
    """SpatialBN in training (the other state a training step updates): normalises with the biased
    batch variance, but folds the unbiased one into running_var."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(f32)
    feeds = {"x": x, "scale": (rng.random(3) + 0.5).astype(f32), "bias": rng.standard_normal(3).astype(f32),
             "rm": rng.standard_normal(3).astype(f32), "rv": (rng.random(3) + 0.5).astype(f32),
             "dy": rng.standard_normal(x.shape).astype(f32)}  # fmt: skip
    net = make_net("bn", [("SpatialBN", ["x", "scale", "bias", "rm", "rv"], ["y", "rm", "rv", "saved_mean", "saved_inv_std"],
                           {"is_test": 0, "epsilon": 1e-3, "momentum": 0.9}),
                          ("SpatialBNGradient", ["x", "scale", "dy", "saved_mean", "saved_inv_std"], ["dx", "dscale", "dbias"],
                           {"is_test": 0, "epsilon": 1e-3})], inputs=list(feeds))  # fmt: skip
    out = caffe2.run(net, feed=feeds)
    xd = x.astype(f64)
    n = x.size // 3
    mean, var = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3))
    inv_std = 1 / np.sqrt(var + 1e-3)
    c = (slice(None), None, None)
    xhat = (xd - mean[c]) * inv_std[c]
    dy = feeds["dy"].astype(f64)
    dbias, dscale = dy.sum(axis=(0, 2, 3)), (dy * xhat).sum(axis=(0, 2, 3))
    want = {
        "dx": (feeds["scale"] * inv_std)[c] * (dy - dbias[c] / n - xhat * dscale[c] / n),
        "dscale": dscale,
        "dbias": dbias,
        "y": (xd - mean[c]) * inv_std[c] * feeds["scale"][c] + feeds["bias"][c],
        "rm": 0.9 * feeds["rm"] + 0.1 * mean,
        "rv": 0.9 * feeds["rv"] + 0.1 * var * n / (n - 1),
        "saved_mean": mean,
        "saved_inv_std": inv_std,
    }
    for name, w in want.items():
        got = out[f"step0/{name}"]
        assert got.shape == w.shape, name
        err = float(np.max(np.abs(got - w)) / np.max(np.abs(w)))
        assert err < 1e-5, f"SpatialBN {name}: relative error {err:.2g}"
