"""The moment calculus (gnelib.theory.moments) against Monte Carlo estimates from jacobian_moments.

Where a prediction is an expectation (over weights or pre-activations) we average several
independent draws and accept |mean - prediction| <= K standard errors of that mean, the
standard error taken from the spread across draws (which includes the probe noise). Where a
prediction is an exact identity for the given input, we use exact Jacobians and float64
precision.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

import gnelib
import gnelib.theory.moments as M
from gnelib.nn.init import delta_orthogonal_, haar_orthogonal_
from gnelib.nn.norms import L1MomentNorm, SecondMomentNorm
from gnelib.nn.convs import SWSLinear

K = 4.5  # standard errors; with >= 10 draws a t(9) variate exceeds 4.5 with prob. ~0.15 %
DRAWS = 10


def mc(draw, draws=DRAWS):
    """Mean and standard error of (phi1, phi2) over independent draws; draw(gen) -> JacobianMoments."""
    vals = []
    for i in range(draws):
        g = torch.Generator().manual_seed(1000 + i)
        r = draw(g)
        vals.append((r.phi1, r.phi2))
    vals = np.array(vals)
    return vals.mean(0), vals.std(0, ddof=1) / math.sqrt(draws)


def assert_matches(pred: M.Moments, draw, draws=DRAWS):
    mean, se = mc(draw, draws)
    for k, (p, m, s) in enumerate(zip((pred.phi1, pred.phi2), mean, se)):
        if s == 0:  # the same value in every draw: an exact identity
            assert m == pytest.approx(p, abs=1e-10)
            continue
        assert abs(m - p) <= K * s, f"phi{k + 1}: measured {m:.6g} ± {s:.2g}, predicted {p:.6g}"


def act_draw(fn, q, n=4096, probes=8):
    def draw(g):
        x = math.sqrt(q) * torch.randn(n, generator=g, dtype=torch.float64)
        return gnelib.jacobian_moments(fn, x, probes=probes, generator=g)
    return draw


# ------------------------------------------------------------------ algebra
def test_moments_value_type():
    m = M.Moments.from_variance(2.0, 1.0)
    assert m.phi2 == 5.0 and m.variance == pytest.approx(1.0) and m.relative_variance == 0.25
    with pytest.raises(ValueError, match="phi2"):
        M.Moments(1.0, 0.5)
    with pytest.raises(ValueError, match="phi1"):
        M.Moments(float("nan"), 1.0)


def test_serial_multiplies_phi_and_adds_relative_variance():
    a, b = M.Moments(2.0, 5.0), M.Moments(0.5, 0.5)
    s = M.serial(a, b)
    assert s.phi1 == pytest.approx(1.0, abs=1e-14)
    assert s.relative_variance == pytest.approx(a.relative_variance + b.relative_variance, abs=1e-14)


def test_parallel_is_addition_theorem_and_shapes_checked():
    a, b = M.Moments(1.0, 1.0), M.Moments(0.3, 0.3 * 0.3 * 2)
    p = M.parallel(a, b)
    assert p.phi1 == pytest.approx(1.3, abs=1e-14)
    assert p.variance == pytest.approx(a.variance + b.variance + 2 * 0.3, abs=1e-14)
    with pytest.raises(ValueError, match="same shape"):
        M.parallel(M.dense(4, 8, 1.0), M.identity())


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="p must"):
        M.relu(0.0)
    with pytest.raises(ValueError, match="q must"):
        M.tanh(-1.0)
    with pytest.raises(ValueError, match="M must"):
        M.batch_norm(2)
    with pytest.raises(ValueError, match="keep"):
        M.dropout(1.5)


# ------------------------------------------------------------------ activations
@pytest.mark.parametrize("slope", [0.0, 0.18, 0.5])
def test_leaky_relu(slope):
    fn = (lambda x: torch.relu(x)) if slope == 0 else nn.LeakyReLU(slope)
    pred = M.relu(0.5) if slope == 0 else M.leaky_relu(slope)
    assert_matches(pred, act_draw(fn, 1.0))


def test_relu_shifted_p():
    # h ~ N(0.5, 1): p = Phi(0.5).
    p = 0.5 * (1 + math.erf(0.5 / math.sqrt(2)))

    def draw(g):
        x = torch.randn(8192, generator=g, dtype=torch.float64) + 0.5
        return gnelib.jacobian_moments(torch.relu, x, probes=8, generator=g)
    assert_matches(M.relu(p), draw)


def test_prelu_and_sprelu():
    a = 0.25
    prelu = nn.PReLU(init=a).double()
    assert_matches(M.prelu(a), act_draw(prelu, 1.0))
    sprelu = lambda x: prelu(x) / math.sqrt(1 + a * a)  # noqa: E731
    assert_matches(M.sprelu(a), act_draw(sprelu, 1.0))
    assert M.sprelu(0.7).phi1 == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("q", [0.1, 1.0])
def test_tanh_sigmoid(q):
    assert_matches(M.tanh(q), act_draw(torch.tanh, q))
    assert_matches(M.sigmoid(q), act_draw(torch.sigmoid, q))


def test_sigmoid_small_input_limit():
    assert M.sigmoid(1e-8).phi1 == pytest.approx(1 / 16, rel=1e-6)
    assert M.tanh(1e-8).phi1 == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("q", [0.5, 1.0])
def test_selu(q):
    assert_matches(M.selu(q=q), act_draw(nn.SELU(), q))
    lam, alpha = gnelib.selu_coefficients(0.03)
    f = lambda x: lam * torch.where(x > 0, x, alpha * torch.expm1(x))  # noqa: E731
    assert_matches(M.selu(lam, alpha, q), act_draw(f, q))


# ------------------------------------------------------------------ linear layers
def weight_draw(make_weight, n, batch=1):
    def draw(g):
        w = make_weight(g)
        x = torch.randn(batch, n, generator=g, dtype=torch.float64)
        return gnelib.jacobian_moments(lambda t: t @ w.T, x, exact=True)
    return draw


@pytest.mark.parametrize("m,n", [(96, 96), (64, 128), (128, 64)])
def test_dense_gaussian(m, n):
    s2 = 1.7 / n
    draw = weight_draw(lambda g: math.sqrt(s2) * torch.randn(m, n, generator=g,
                                                             dtype=torch.float64), n)
    assert_matches(M.dense(m, n, s2), draw, draws=20)


def test_conv_iid_kernel_circular():
    c_in, c_out, k, hw = 4, 6, 3, 8
    s2 = 2.0 / (c_in * k * k)

    def draw(g):
        conv = nn.Conv2d(c_in, c_out, k, padding=1, padding_mode="circular", bias=False).double()
        with torch.no_grad():
            conv.weight.normal_(0, math.sqrt(s2), generator=g)
        x = torch.randn(1, c_in, hw, hw, generator=g, dtype=torch.float64)
        return gnelib.jacobian_moments(conv, x, probes=16, generator=g)
    assert_matches(M.conv(c_in, c_out, k, s2), draw, draws=20)


@pytest.mark.parametrize("m,n", [(64, 64), (32, 64), (64, 32)])
def test_orthogonal_exact(m, n):
    g = torch.Generator().manual_seed(0)
    w = haar_orthogonal_(torch.empty(m, n, dtype=torch.float64), gain=1.3, generator=g)
    r = gnelib.jacobian_moments(lambda t: t @ w.T, torch.randn(1, n, dtype=torch.float64),
                                exact=True)
    pred = M.orthogonal(m, n, 1.3)
    assert r.phi1 == pytest.approx(pred.phi1, abs=1e-12)
    assert r.phi2 == pytest.approx(pred.phi2, abs=1e-12)


def test_delta_orthogonal_exact():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False).double()
    delta_orthogonal_(conv.weight, gain=math.sqrt(2), generator=g)
    r = gnelib.jacobian_moments(conv, torch.randn(2, 8, 6, 6, dtype=torch.float64), exact=True)
    pred = M.delta_orthogonal(8, 8, math.sqrt(2))
    assert r.phi1 == pytest.approx(pred.phi1, abs=1e-12)
    assert r.phi2 == pytest.approx(pred.phi2, abs=1e-12)
    assert pred.variance == pytest.approx(0.0, abs=1e-12)


def test_weight_norm():
    m, n, gval = 64, 96, 1.5

    def make(g):
        v = torch.randn(m, n, generator=g, dtype=torch.float64)
        lin = nn.Linear(n, m, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(v)
        lin = nn.utils.parametrizations.weight_norm(lin)
        with torch.no_grad():
            lin.parametrizations.weight.original0.fill_(gval)
        return lin.weight.detach()
    assert_matches(M.weight_norm(m, n, gval), weight_draw(make, n), draws=20)


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_scaled_weight_standardization(scale):
    m, n = 64, 96

    def make(g):
        lin = SWSLinear(n, m, bias=False).double()
        with torch.no_grad():
            lin.weight.normal_(0.3, scale, generator=g)  # raw scale and offset are irrelevant
        return gnelib.standardized_weight(lin.weight.detach(), 2.0)
    assert_matches(M.scaled_weight_standardization(m, n), weight_draw(make, n), draws=20)
    # phi1 = 2 exactly for any draw: every filter has squared norm 2.
    r = weight_draw(make, n)(torch.Generator().manual_seed(0))
    assert r.phi1 == pytest.approx(2.0, abs=1e-12)


# ------------------------------------------------------------------ normalisation (exact)
def _per_channel(x):
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def test_batch_norm_exact_projection():
    torch.manual_seed(0)
    x = 2.0 * torch.randn(3, 4, 4, 4, dtype=torch.float64) + 0.7
    for eps in (1e-12, 0.1):
        bn = nn.BatchNorm2d(4, eps=eps, affine=False).double().train()
        r = gnelib.jacobian_moments(bn, x, exact=True)
        xc = _per_channel(x)
        pred = M.direct_sum([M.batch_norm(xc.shape[1], v.item(), eps=eps)
                             for v in xc.var(1, unbiased=False)], [xc.shape[1]] * 4)
        assert r.phi1 == pytest.approx(pred.phi1, abs=1e-10)
        assert r.phi2 == pytest.approx(pred.phi2, abs=1e-10)


@pytest.mark.parametrize("closed_form", [True, False])
def test_second_moment_norm_exact(closed_form):
    torch.manual_seed(1)
    x = 1.5 * torch.randn(3, 4, 4, 4, dtype=torch.float64) + 0.4
    for eps in (0.0, 0.1):
        smn = SecondMomentNorm(4, eps=max(eps, 1e-300), closed_form=closed_form).double()
        r = gnelib.jacobian_moments(smn, x, exact=True)
        xc = _per_channel(x)
        pred = M.direct_sum([M.second_moment_norm(xc.shape[1], v.item(), eps=eps)
                             for v in xc.pow(2).mean(1)], [xc.shape[1]] * 4)
        assert r.phi1 == pytest.approx(pred.phi1, abs=1e-10)
        assert r.phi2 == pytest.approx(pred.phi2, abs=1e-10)


def test_l1_moment_norm_exact_and_gaussian_limit():
    torch.manual_seed(2)
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64) + 0.3
    l1 = L1MomentNorm(4, eps=1e-300).double()
    r = gnelib.jacobian_moments(l1, x, exact=True)
    xc = _per_channel(x)
    pred = M.direct_sum([M.l1_moment_norm(xc.shape[1], a.item(), s.item()) for a, s in
                         zip(xc.abs().mean(1), xc.pow(2).mean(1).sqrt())], [xc.shape[1]] * 4)
    assert r.phi1 == pytest.approx(pred.phi1, abs=1e-10)
    assert r.phi2 == pytest.approx(pred.phi2, abs=1e-10)
    assert M.l1_moment_norm(10**9).phi1 == pytest.approx(math.pi / 2, rel=1e-8)


# ------------------------------------------------------------------ others
def test_dropout():
    keep = 0.8

    def draw(g):
        x = torch.randn(8192, generator=g, dtype=torch.float64)
        seed = int(torch.randint(0, 2**31, (1,), generator=g))

        def f(t):  # the same mask at every call: a fixed draw of nn.Dropout's mask
            torch.manual_seed(seed)
            return nn.functional.dropout(t, 1 - keep, training=True)
        return gnelib.jacobian_moments(f, x, probes=8, generator=g)
    assert_matches(M.dropout(keep), draw)


def test_avg_pool_exact():
    r = gnelib.jacobian_moments(nn.AvgPool2d(2), torch.randn(1, 3, 8, 8, dtype=torch.float64),
                                exact=True)
    pred = M.avg_pool(2)
    assert (r.phi1, r.phi2) == pytest.approx((pred.phi1, pred.phi2), abs=1e-14)


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_residual_addition_theorem(sigma):
    n = 128
    draw = weight_draw(lambda g: torch.eye(n, dtype=torch.float64) + sigma / math.sqrt(n)
                       * torch.randn(n, n, generator=g, dtype=torch.float64), n)
    assert_matches(M.residual(M.dense(n, n, sigma**2 / n)), draw, draws=20)


def test_concatenation():
    c, k = 24, 8

    def draw(g):
        conv = nn.Conv1d(c, k, 3, padding=1, padding_mode="circular", bias=False).double()
        with torch.no_grad():
            conv.weight.normal_(0, math.sqrt(1.0 / (3 * c)), generator=g)
        x = torch.randn(1, c, 12, generator=g, dtype=torch.float64)
        return gnelib.jacobian_moments(lambda t: torch.cat([t, conv(t)], 1), x, probes=16,
                                       generator=g)
    assert_matches(M.concatenation(c, k, M.conv(c, k, 3, 1.0 / (3 * c), dims=1)), draw, draws=20)


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_serial_relu_mlp(init):
    """Depth-4 ReLU MLP, width 128: φ = 1 and relative variance 4·(1 + weight part)."""
    n, depth = 128, 4

    def draw(g):
        ws = []
        for _ in range(depth):
            w = torch.empty(n, n, dtype=torch.float64)
            if init == "gaussian":
                w.normal_(0, math.sqrt(2 / n), generator=g)
            else:
                haar_orthogonal_(w, math.sqrt(2), g)
            ws.append(w)

        def f(x):
            for w in ws:
                x = torch.relu(x @ w.T)
            return x
        x = torch.randn(4, n, generator=g, dtype=torch.float64)
        return gnelib.jacobian_moments(f, x, probes=16, generator=g)
    wm = M.dense(n, n, 2 / n) if init == "gaussian" else M.orthogonal(n, n, math.sqrt(2))
    pred = M.serial(*[M.serial(wm, M.relu()) for _ in range(depth)])
    assert_matches(pred, draw, draws=12)
