"""The per-block records of the bdi MLP runs (mlp_pass) and the paired composition prediction
(realised_composition): exact identities, and the finite-width block moment the chapter
derives (E φ₂ of one Gaussian block D·W) by Monte Carlo."""
import math

import numpy as np
import pytest
import torch

import gnelib.theory.moments as M
from gnelib.runs import bdi as X


def _layers(width, depth, init, gain, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    return x, [X._weight(width, init, gain, gen) for _ in range(depth)]


@pytest.mark.parametrize("init,act,slope", [("gaussian", "relu", 0.0),
                                            ("orthogonal", "leaky_relu", 0.3),
                                            ("gaussian", "selu", 0.0)])
def test_block_records_are_the_moments_of_each_layer_jacobian(init, act, slope):
    width, depth, batch, gain = 10, 3, 2, 1.3
    r = X.mlp_pass(width, (1, depth), init, act, slope, gain, None, batch,
                   torch.Generator().manual_seed(5))
    x, ws = _layers(width, depth, init, gain, batch, 5)
    f = X._activation(act, slope, None)
    for layer, w in enumerate(ws):
        q = gain**2 * x.pow(2).mean(1)
        h = x @ w.T
        y, d = f(h)
        for b in range(batch):
            j = d[b].unsqueeze(1) * w
            a = j @ j.T
            assert r["block_phi"][layer][b] == pytest.approx(a.trace().item() / width, rel=1e-12)
            assert r["block_phi2"][layer][b] == pytest.approx((a @ a).trace().item() / width,
                                                               rel=1e-12)
            assert r["act_phi"][layer][b] == pytest.approx(d[b].pow(2).mean().item(), rel=1e-12)
            assert r["act_phi2"][layer][b] == pytest.approx(d[b].pow(4).mean().item(), rel=1e-12)
            assert r["q_cond"][layer][b] == pytest.approx(q[b].item(), rel=1e-12)
        x = y
    # depth 1: the network is its first block; per-input records average to the batch means
    assert r["phi_b"][0] == pytest.approx(r["block_phi"][0], rel=1e-12)
    assert r["phi2_b"][0] == pytest.approx(r["block_phi2"][0], rel=1e-12)
    assert np.mean(r["phi_b"][1]) == pytest.approx(r["phi"][1], rel=1e-12)


def test_realised_composition_is_the_library_serial_of_the_blocks():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.5, 1.5, size=(4, 3))
    p2 = p1**2 * (1 + rng.uniform(0.1, 2.0, size=(4, 3)))
    got = X.realised_composition(p1, p2, (1, 2, 4))
    assert got.shape == (3, 3, 2)
    for b in range(3):
        for di, depth in enumerate((1, 2, 4)):
            m = M.serial(*[M.Moments(p1[l, b], p2[l, b]) for l in range(depth)])
            assert got[di, b] == pytest.approx([m.phi1, m.phi2], rel=1e-12)


def test_mlp_run_records_the_composition_of_its_own_blocks():
    cfg = X.MLPMomentsConfig(widths=(6,), depths=(1, 3), seeds=2, batch=2)
    r = X.bdi_mlp_moments(cfg)
    assert np.array(r["pred_phi"]).shape == (1, 2, 2, 2)
    # depth 1: the composition of one block is that block, so it equals the end-to-end moments
    np.testing.assert_allclose(r["pred_phi"][0][0], r["phi_b"][0][0], rtol=1e-12)
    np.testing.assert_allclose(r["pred_phi2"][0][0], r["phi2_b"][0][0], rtol=1e-12)
    run = X.mlp_pass(6, (1, 3), "gaussian", "relu", 0.0, math.sqrt(2), None, 2,
                     torch.Generator().manual_seed(1))
    assert r["block_phi"][0][1] == pytest.approx(np.mean(run["block_phi"]), rel=1e-12)


@pytest.mark.parametrize("slope", [0.0, 0.3])
def test_gaussian_block_phi2_has_the_derived_finite_width_term(slope):
    """E φ₂ of D·W (W Gaussian, variance g²/n, D the leaky-ReLU derivative at W x) is
    g⁴(E d⁴ (1 + 2/n) + (E d²)² (1 − 1/n)): the theorem plus 2 g⁴ Var(d²)/n."""
    n, draws, g2 = 6, 40000, 2 / (1 + slope**2)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(draws, n, n, generator=gen, dtype=torch.float64) * math.sqrt(g2 / n)
    x = torch.randn(draws, n, 1, generator=gen, dtype=torch.float64)
    d2 = torch.where((w @ x).squeeze(-1) > 0, 1.0, slope**2).to(torch.float64)
    a = w @ w.transpose(1, 2)
    phi2 = ((d2.unsqueeze(2) * a.pow(2) * d2.unsqueeze(1)).sum((1, 2)) / n).numpy()
    act = M.leaky_relu(slope) if slope else M.relu()
    theorem = M.serial(M.dense(n, n, g2 / n), act).phi2
    derived = theorem + 2 * g2**2 * (act.phi2 - act.phi1**2) / n
    se = phi2.std(ddof=1) / math.sqrt(draws)
    assert abs(phi2.mean() - derived) < 4.5 * se
    assert abs(phi2.mean() - theorem) > 4.5 * se  # the term is resolved at this size
