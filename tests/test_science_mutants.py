"""Independent checks of formulas that the science-mutation harness (tools/mutate.py) found
unguarded: each test compares a library formula with a closed form derived here or with a Monte
Carlo estimate that does not use the formula, at sizes where the plausible bugs listed in
tools/mutants.toml (off-by-one finite-size terms, wrong constants) are far outside the noise.

Monte Carlo comparisons accept |mean - prediction| <= 5 standard errors of the mean."""
import math

import numpy as np
import pytest
import torch

import gnelib.theory.moments as M
from gnelib.nn.init import init_weight_
from gnelib.nn.convs import standardized_weight
from gnelib.theory.relu import relu_block_phi, relu_block_relative_variance, relu_block_scale

Z = 5.0


def assert_close(values, prediction, what):
    values = np.asarray(values, dtype=float)
    mean, se = values.mean(), values.std(ddof=1) / math.sqrt(len(values))
    assert abs(mean - prediction) <= Z * se, \
        f"{what}: Monte Carlo {mean:.6g} ± {se:.2g}, formula {prediction:.6g}"


# ------------------------------------------------------------------ moments.dense: Wishart phi2
def test_dense_phi2_scalar_is_the_gaussian_fourth_moment():
    """A 1x1 'layer' w ~ N(0, s2): phi2 = E w^4 = 3 s2^2 exactly (so n(n+m+1) = 1*3)."""
    for s2 in (0.5, 1.0, 2.0):
        m = M.dense(1, 1, s2)
        assert m.phi1 == pytest.approx(s2, rel=1e-14)
        assert m.phi2 == pytest.approx(3 * s2**2, rel=1e-14)


@pytest.mark.parametrize("m,n", [(2, 3), (3, 2), (2, 2)])
def test_dense_phi2_small_matrices_monte_carlo(m, n):
    """E tr((W W^T)^2)/m for small Gaussian W, where the finite-size +1 of n(n+m+1) is a
    20-30 % effect."""
    rng = np.random.default_rng(100 + 10 * m + n)
    s2 = 0.7
    w = rng.normal(0.0, math.sqrt(s2), size=(200_000, m, n))
    a = w @ np.swapaxes(w, 1, 2)
    phi2 = np.einsum("bij,bji->b", a, a) / m
    pred = M.dense(m, n, s2)
    assert_close(phi2, pred.phi2, f"dense({m}, {n}) phi2")
    assert_close(np.einsum("bii->b", a) / m, pred.phi1, f"dense({m}, {n}) phi1")


# ------------------------------------------------------------------ moments.sWS: the n - 1
@pytest.mark.parametrize("m,n", [(3, 3), (4, 5)])
def test_sws_phi2_against_standardized_weights(m, n):
    """Rows of sWS weights (gnelib.nn.convs.standardized_weight of Gaussian raw weights) are
    uniform on a sphere of the (n-1)-dimensional subspace orthogonal to 1: at n = 3 the
    formula's (m-1)/(n-1) and an uncorrected (m-1)/n differ by 50 %."""
    g = torch.Generator().manual_seed(7 * m + n)
    raw = torch.randn(100_000, m, n, generator=g, dtype=torch.float64) * 3.0
    w = torch.stack([standardized_weight(r, gain2=2.0) for r in raw[:2000]])  # the layer itself
    w_fast = math.sqrt(2.0) * (raw - raw.mean(2, keepdim=True)) / \
        (raw - raw.mean(2, keepdim=True)).norm(dim=2, keepdim=True)
    assert torch.allclose(w, w_fast[:2000], atol=1e-12)
    a = w_fast @ w_fast.transpose(1, 2)
    phi2 = (a * a).sum((1, 2)).numpy() / m
    pred = M.scaled_weight_standardization(m, n, gain2=2.0)
    assert_close(phi2, pred.phi2, f"sWS({m}, {n}) phi2")
    assert np.allclose(torch.diagonal(a, dim1=1, dim2=2).sum(1).numpy() / m, pred.phi1)


# ------------------------------------------------------------------ theory: the first chapter's predictions
@pytest.mark.parametrize("init", ["xavier", "he", "orthogonal", "gaussian"])
def test_relu_block_scale_matches_the_initialisation(init):
    """s = n Var(W_ij) (or g^2) read off the weights gnelib.nn.init.init_weight_ draws for a
    square layer, against relu_block_scale."""
    n, draws = 256, 8
    vals = []
    for d in range(draws):
        w = torch.empty(n, n, dtype=torch.float64)
        init_weight_(w, init, generator=torch.Generator().manual_seed(d))
        vals.append(w.pow(2).sum().item() / n)  # mean squared row norm = n Var(W_ij)
    if init == "orthogonal":
        assert np.allclose(vals, relu_block_scale(init), rtol=1e-12)
    else:
        assert_close(vals, relu_block_scale(init), f"{init} scale")
    # closed forms: Xavier 2/(n_in+n_out) and Gaussian 1/n give s = 1, He 2/n gives 2
    assert relu_block_scale(init) == pytest.approx({"xavier": 1.0, "he": 2.0, "orthogonal": 1.0,
                                                    "gaussian": 1.0}[init], rel=1e-12)
    assert relu_block_scale(init, gain=3.0) == pytest.approx(9.0)  # gain is the full gain g: s = g^2


@pytest.mark.parametrize("init", ["xavier", "he", "orthogonal"])
def test_relu_block_phi_and_relative_variance_monte_carlo(init):
    """phi(JJ^T) and the relative spectral variance of J = D W for a square Linear + ReLU block
    with symmetric pre-activations (D a random half of the units), from the exact matrices."""
    n, draws = 256, 12
    phis, rvs = [], []
    for d in range(draws):
        g = torch.Generator().manual_seed(1000 + d)
        w = torch.empty(n, n, dtype=torch.float64)
        init_weight_(w, init, generator=g)
        x = torch.randn(n, generator=g, dtype=torch.float64)
        dmask = (w @ x > 0).to(torch.float64)
        jac = dmask[:, None] * w
        a = jac @ jac.T
        phi = torch.trace(a).item() / n
        phis.append(phi)
        rvs.append(((a * a).sum().item() / n) / phi**2 - 1)
    assert_close(phis, relu_block_phi(init), f"{init} phi")
    # finite width adds about 1/n to the Gaussian relative variance (Wishart (m+1)/n)
    pred = relu_block_relative_variance(init) + (1 / n if init != "orthogonal" else 0.0)
    assert_close(rvs, pred, f"{init} relative variance")


# ------------------------------------------------------------------ variance: mean-path share and shift law
def test_mean_path_share_small_n_closed_form_and_monte_carlo():
    """E[xbar^2]/E[x^2] for n i.i.d. ReLU(N(0, 1)) units: E x^2 = 1/2, E[xbar^2] =
    mu^2 + var/n with mu^2 = 1/(2 pi), var = (1 - 1/pi)/2, so the share is 1/pi + (1-1/pi)/n;
    n = 1 gives exactly 1 (xbar = x)."""
    from gnelib.theory.variance import mean_path_share
    from scipy import integrate, stats

    assert mean_path_share(1) == pytest.approx(1.0, rel=1e-14)
    # the two ReLU moments by quadrature, independently of gnelib.theory.variance.relu_moments
    m1 = integrate.quad(lambda t: t * stats.norm.pdf(t), 0, np.inf)[0]
    m2 = integrate.quad(lambda t: t * t * stats.norm.pdf(t), 0, np.inf)[0]
    for n in (2, 3, 16):
        assert mean_path_share(n) == pytest.approx((m1**2 + (m2 - m1**2) / n) / m2, rel=1e-9)
    rng = np.random.default_rng(11)
    for n in (2, 3):
        x = np.maximum(rng.normal(size=(400_000, n)), 0)
        num = x.mean(1) ** 2
        den = (x**2).mean()
        assert_close(num / den, mean_path_share(n), f"mean-path share n={n}")
    assert mean_path_share() == pytest.approx(1 / math.pi)


def test_shift_gain_exact_closed_form_and_one_layer_monte_carlo():
    """Exact per-layer gain of the shifted He ReLU chain, derived here: with w = z + delta,
    z ~ N(0, 2/n) i.i.d., delta ~ N(0, c^2/n^2) per filter, and x = ReLU(N(0, 1)) inputs,
    E y^2 = sigma^2 E||w||^2 + mu^2 E S^2 = (1-1/pi)(1 + c^2/(2n)) + (2 + c^2)/(2 pi)."""
    from gnelib.theory.variance import shift_gain

    for n in (2, 5, 64):
        for c in (0.0, 1.5, 4.0):
            exact = (1 - 1 / math.pi) * (1 + c * c / (2 * n)) + (2 + c * c) / (2 * math.pi)
            assert shift_gain(c, n) == pytest.approx(exact, rel=1e-12)
            # the large-n law 1 + c^2/(2 pi) misses exactly the O(c^2/n) term
            assert shift_gain(c, n) - shift_gain(c) == pytest.approx((1 - 1 / math.pi) * c * c / (2 * n), abs=1e-12)
    rng = np.random.default_rng(12)
    n, c, draws = 3, 2.0, 400_000
    w = rng.normal(0, math.sqrt(2 / n), (draws, n)) + rng.normal(0, c / n, (draws, 1))
    x = np.maximum(rng.normal(size=(draws, n)), 0)
    y2 = (w * x).sum(1) ** 2
    assert_close(y2, shift_gain(c, n), "one shifted He layer, n = 3")


# ------------------------------------------------------------------ BN chain: the local contraction rate
@pytest.mark.parametrize("d", [4, 8])
def test_local_rate_prediction_against_independent_haar_monte_carlo(d):
    """The per-layer decay that local_decay and one_step_contraction predict for the orthogonal
    BN chain near isometry, against E[phi(Bn(WX))]/phi(X) with Haar W drawn by scipy (not by
    gnelib) and gaps from the Gram eigenvalues directly. At d = 4 the rates 2/(d+2) and
    2/(d+1) differ by 20 %."""
    from scipy.stats import ortho_group

    import gnelib.runs.bn as bx

    g = torch.Generator().manual_seed(d)
    pred = bx.local_decay(d, 2, 2, [0, 2], g)["predicted"]
    one = bx.one_step_contraction(d, 200, g)["predicted"]
    assert one == pytest.approx(1 - pred, rel=1e-12)

    def gap(x):  # log of arithmetic over geometric mean of the eigenvalues of X X^T
        lam = np.linalg.eigvalsh(x @ np.swapaxes(x, -1, -2))
        return np.log(lam.mean(-1)) - np.log(lam).mean(-1)

    rng = np.random.default_rng(d)
    x = 0.999 * np.eye(d) + 0.001 * np.outer(rng.uniform(size=d), rng.uniform(size=d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    phi0 = gap(x)
    W = ortho_group.rvs(d, size=20000, random_state=rng)
    xp = W @ x
    ratios = gap(xp / np.linalg.norm(xp, axis=2, keepdims=True)) / phi0
    assert_close(ratios, 1 - pred, f"one-step contraction at d = {d}")


def test_bn_quoted_rates_are_the_published_formulas():
    """Meterez et al.'s Lemma B.2 contraction 1/(2 d^2), and Yang et al.'s mean-field rate
    1/2 log((B-2)/(B-3)) for centred BN (ours, with B+1 for B, for the uncentred BN): the
    numbers the BN chapter quotes, written out from the formulas."""
    import math
    from gnelib.theory.bn_rates import paper_local_rate, yang_rate
    assert paper_local_rate(10) == 1 / 200
    assert yang_rate(6) == 0.5 * math.log(4 / 3)
    assert yang_rate(6, centred=False) == 0.5 * math.log(5 / 4)
