"""Tests of gnelib.theory.variance: variance-transmission predictions against Monte Carlo (tolerance
4 standard errors) and the exact average-gradient identities."""
import math

import numpy as np
import torch

from gnelib.nn.normnets import PlainConvNet
from gnelib.theory.variance import MEAN_PATH_SHARE, bn_ws_correlation, holding_alpha, mean_path_share, pws_relu_gain, random_weight_second_moment, relu_moments, shift_gain, transmitted_second_moment
from gnelib.probes.variance import average_weight_gradient, filter_stats, forward_records, gradient_records, pws_chain_records, shifted_chain_records, weight_records


def test_relu_moments_monte_carlo():
    rng = np.random.default_rng(0)
    q = 2.0
    x = np.maximum(rng.normal(0, math.sqrt(q), 400_000), 0)
    m2, mu2, var = relu_moments(q)
    se_m2 = (x**2).std() / math.sqrt(x.size)
    assert abs((x**2).mean() - m2) < 4 * se_m2
    se_mu = x.std() / math.sqrt(x.size)
    assert abs(x.mean() - math.sqrt(mu2)) < 4 * se_mu
    assert abs(mu2 / m2 - MEAN_PATH_SHARE) < 1e-15


def test_transmitted_second_moment_monte_carlo_with_shifted_filters():
    """Theorem pws-transmission: E[y^2] averaged over filters, for fixed shifted weights and
    i.i.d. ReLU inputs; tolerance 4 standard errors of the sample mean of y^2."""
    rng = np.random.default_rng(1)
    n, k, N = 64, 32, 200_000
    w = rng.normal(0, math.sqrt(2 / n), (k, n)) + rng.normal(0, 3.0 / n, (k, 1))
    x = np.maximum(rng.normal(0, 1, (N, n)), 0)
    y2 = (x @ w.T) ** 2
    m = w.mean(1)
    v = w.var(1)
    s = w.sum(1)
    _, mu2, sigma2 = relu_moments(1.0)
    pred = transmitted_second_moment(n, v.mean(), (s**2).mean(), sigma2, mu2)
    per_sample = y2.mean(1)
    se = per_sample.std() / math.sqrt(N)
    assert abs(per_sample.mean() - pred) < 4 * se
    assert np.allclose(m * n, s)


def test_shift_gain_in_a_deep_chain():
    """Corollary pws-shift-law: mean per-layer gain q_l/q_{l-1} of a shifted He ReLU chain vs
    1 + c^2/2pi (+ O(1/n)); each layer draws fresh weights, so each ratio has the predicted
    conditional mean; tolerance 4 standard errors of the mean over layers and seeds. Also the
    mean-path share of lemma pws-relu-moments."""
    n, depth, N = 128, 8, 512
    for c in (0.0, 3.0):
        runs = [shifted_chain_records(n, depth, N, c, generator=torch.Generator().manual_seed(s))
                for s in range(4)]
        ratios = np.array([r["gain"] for run in runs for r in run[1:]])
        se = ratios.std(ddof=1) / math.sqrt(ratios.size)
        assert abs(ratios.mean() - shift_gain(c, n)) < 4 * se
        shares = np.array([r["mean_share"] for run in runs for r in run])
        assert abs(shares.mean() - mean_path_share(n)) < 4 * shares.std(ddof=1) / math.sqrt(shares.size)


def test_pws_chain_decays_by_one_minus_one_over_pi():
    """Proposition pws-depth-decay: ratio of consecutive second moments in a PWS ReLU chain."""
    runs = [pws_chain_records(128, 8, 512, 1.0, shift=3.0, generator=torch.Generator().manual_seed(s))
            for s in range(3)]
    ratios = np.array([b["second_moment"] / a["second_moment"] for run in runs
                       for a, b in zip(run, run[1:])])
    se = ratios.std(ddof=1) / math.sqrt(ratios.size)
    assert abs(ratios.mean() - pws_relu_gain(1.0)) < 4 * se
    init = pws_chain_records(64, 4, 256, data_init=True, generator=torch.Generator().manual_seed(9))
    assert all(abs(r["var"] - 2.0) < 1e-4 for r in init)


def test_random_weight_second_moment_monte_carlo():
    """Theorem pws-transmission (b): average over fresh shifted weights for fixed inputs."""
    rng = np.random.default_rng(5)
    n, N, draws, c = 32, 64, 4000, 4.0
    x = np.maximum(rng.normal(0, 1, (N, n)), 0) + 0.3
    w = rng.normal(0, math.sqrt(2 / n), (draws, n)) + rng.normal(0, c / n, (draws, 1))
    y2 = ((x @ w.T) ** 2).mean(0)  # one value per weight draw
    pred = random_weight_second_moment(n, 2 / n, c, (x**2).mean(), (x.mean(1) ** 2).mean())
    assert abs(y2.mean() - pred) < 4 * y2.std(ddof=1) / math.sqrt(draws)


def test_pws_depth_decay_and_holding_alpha():
    assert abs(pws_relu_gain(1.0) - (1 - 1 / math.pi)) < 1e-15
    assert abs(pws_relu_gain(holding_alpha()) - 1.0) < 1e-14
    assert abs(holding_alpha() - 1.2112) < 1e-4


def test_average_gradient_is_input_mean_times_summed_output_gradient():
    """Theorem pws-average-gradient, exact in float64 for a conv layer."""
    g = torch.Generator().manual_seed(2)
    conv = torch.nn.Conv1d(3, 5, 4, bias=False).double()
    x = torch.relu(torch.randn(6, 3, 20, generator=g, dtype=torch.float64))
    gy = torch.randn(6, 5, 17, generator=g, dtype=torch.float64)
    conv(x).backward(gy)
    gbar = average_weight_gradient(conv.weight.grad)
    patches = x.unfold(2, 4, 1)  # (B, C, L', k)
    xbar = patches.mean(dim=(1, 3))  # patch mean, (B, L')
    pred = torch.einsum("bkp,bp->k", gy, xbar)
    assert torch.allclose(gbar, pred, rtol=1e-12, atol=1e-14)


def test_batchnorm_sums_output_gradient_to_zero():
    g = torch.Generator().manual_seed(3)
    bn = torch.nn.BatchNorm1d(5).double()
    y = torch.randn(32, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    out = bn(y)
    out.backward(torch.randn(out.shape, generator=g, dtype=torch.float64))
    scale = y.grad.abs().max()
    assert (y.grad.sum(dim=(0, 2)).abs() / scale).max() < 1e-12


def test_bn_ws_correlation_monte_carlo():
    """Proposition pws-bn-ws: corr(BN output, WS output) = sqrt(v/(v+m^2)) for i.i.d. inputs;
    tolerance 4 standard errors of a correlation, (1 - r^2)/sqrt(N)."""
    rng = np.random.default_rng(4)
    n, N = 256, 20_000
    x = rng.normal(0.7, 1.3, (N, n))
    for shift in (0.0, 0.05):
        w = rng.normal(0, math.sqrt(2 / n), n) + shift
        y = x @ w
        bn = (y - y.mean()) / y.std()
        ws = x @ (w - w.mean())
        r = np.corrcoef(bn, ws)[0, 1]
        pred = bn_ws_correlation(w.var(), w.mean())
        assert abs(r - pred) < 4 * (1 - pred**2) / math.sqrt(N) + 1e-4


def test_records_are_tidy():
    net = PlainConvNet(1, 8, 3, 10, norm="pws", generator=torch.Generator().manual_seed(5))
    x = torch.randn(10, 40)
    recs = forward_records(net, x, step=0)
    assert [r["depth"] for r in recs] == [0, 1, 2, 3]
    for r in recs:
        assert abs(r["second_moment"] - (r["var"] + r["mean"] ** 2)) < 1e-9 * max(1, r["second_moment"])
    w = weight_records(net, step=0)
    assert all(abs(r["mean_abs_S"]) < 1e-4 for r in w[:3])  # PWS kernels sum to zero
    net(x).sum().backward()
    gr = gradient_records(net, step=0)
    assert all(r["ratio"] < 1e-5 for r in gr[:3])
    st = filter_stats(net.units[0][0].weight)
    assert torch.allclose(st["S"], st["m"] * st["n"], rtol=1e-5, atol=1e-6)


def test_chain_parameter_errors():
    import pytest
    with pytest.raises(ValueError, match="width"):
        shifted_chain_records(0, 3, 10)
    with pytest.raises(ValueError, match="n_samples"):
        pws_chain_records(8, 3, 1)


def test_average_gradient_identity_on_overlapping_conv():
    """Identity pws-avg-grad: the mean weight gradient of a filter is the sum over samples and
    positions of the output gradient times the patch mean (exact, float64)."""
    from torch import nn
    from torch.nn import functional as F
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv1d(8, 16, 3, padding=1, bias=False).double()
    x = torch.relu(torch.randn(16, 8, 20, generator=g, dtype=torch.float64))
    out = conv(x)
    gy = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(gy)
    patch_mean = F.pad(x, (1, 1)).unfold(2, 3, 1).mean(dim=(1, 3))
    lhs = average_weight_gradient(conv.weight.grad)
    rhs = torch.einsum("bkp,bp->k", gy, patch_mean)
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-14)


def test_bn_summed_output_gradient_vanishes():
    from torch import nn
    g = torch.Generator().manual_seed(1)
    y = torch.randn(64, 8, 1, generator=g, dtype=torch.float64, requires_grad=True)
    (nn.BatchNorm1d(8).double()(y) * torch.randn(64, 8, 1, generator=g, dtype=torch.float64)).sum().backward()
    assert y.grad.sum(0).abs().max() < 1e-12 * y.grad.abs().max()


def test_shifted_chain_gains_and_share_draws():
    from gnelib.probes.variance import relu_share_draws, shifted_chain_gains
    r = shifted_chain_gains(16, 4, 64, 3.0, 8, generator=torch.Generator().manual_seed(2))
    assert r["q"].shape == (8, 4) and np.isnan(r["gain"][:, 0]).all() and np.isnan(r["increment"][:, 0]).all()
    assert np.all(r["increment"][:, 1:] > -1)
    z = shifted_chain_gains(16, 4, 64, 0.0, 8, generator=torch.Generator().manual_seed(2))
    assert np.all(z["increment"][:, 1:] == 0)
    d = relu_share_draws(3, 1000, generator=torch.Generator().manual_seed(3))
    assert d["xbar2"].shape == (1000,) and np.all(d["xbar2"] <= d["x2"] + 1e-15)


def test_shift_gain_exact_and_asymptotic_forms_agree():
    """He's fixed point is exact at every width (c = 0 gives gain 1), and the exact law tends
    to the asymptotic 1 + c^2/2pi as n grows (its 1/n term vanishes)."""
    for n in (4, 16, 128):
        assert abs(shift_gain(0.0, n) - 1.0) < 1e-14
    for c in (1.0, 3.0):
        big = shift_gain(c, 10**9)
        assert abs(big - shift_gain(c)) < 1e-8
        assert abs(shift_gain(c) - 1 - c**2 / (2 * math.pi)) < 1e-14


def test_mean_path_share_small_n_monte_carlo():
    """Lemma pws-relu-moments at n = 2 and 4, where the 1/n term is large (4 standard errors)."""
    from gnelib.book.checks import ratio_se
    from gnelib.probes.variance import relu_share_draws
    for n in (2, 4):
        d = relu_share_draws(n, 400_000, generator=torch.Generator().manual_seed(n))
        a, b, N = d["xbar2"], d["x2"], 400_000
        se = ratio_se(a.mean(), a.std(ddof=1) / math.sqrt(N), b.mean(), b.std(ddof=1) / math.sqrt(N),
                      np.cov(a, b)[0, 1] / N)
        assert abs(a.mean() / b.mean() - mean_path_share(n)) < 4 * se
