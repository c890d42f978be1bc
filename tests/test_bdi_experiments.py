"""The chapter's explicit Jacobian builders against jacobian_moments(exact=True) on the same net."""
import math

import pytest
import torch

import gnelib
from gnelib import bdi_experiments as X


def _same_draw(width, batch, seed):
    gen = torch.Generator().manual_seed(seed * 1000)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    return gen, x


@pytest.mark.parametrize("init,act,slope", [("gaussian", "relu", 0.0),
                                            ("orthogonal", "leaky_relu", 0.3),
                                            ("gaussian", "selu", 0.0)])
def test_mlp_moments_exact(init, act, slope):
    width, depth, batch = 12, 3, 1
    got = X.mlp_moments(width, depth, init, act, slope=slope, gain=1.3, seeds=1, batch=batch)[0]
    gen, x = _same_draw(width, batch, 0)
    ws = [X._weight(width, init, 1.3, gen) for _ in range(depth)]
    act_fn = (torch.nn.SELU() if act == "selu"
              else (lambda h: torch.nn.functional.leaky_relu(h, slope)))

    def f(t):
        for w in ws:
            t = act_fn(t @ w.T)
        return t
    ref = gnelib.jacobian_moments(f, x, exact=True)
    assert got[0] == pytest.approx(ref.phi1, rel=1e-10)
    assert got[1] == pytest.approx(ref.phi2, rel=1e-10)


def test_residual_moments_exact():
    width, blocks, s = 10, 4, 0.7
    got = X.residual_moments(width, blocks, s, seeds=1, batch=1)[0]
    gen, x = _same_draw(width, 1, 0)
    ws = [(X._weight(width, "gaussian", math.sqrt(2), gen) * s,
           X._weight(width, "gaussian", math.sqrt(2), gen) * s) for _ in range(blocks)]

    def f(t):
        for w1, w2 in ws:
            t = t + torch.relu(t @ w1.T) @ w2.T
        return t
    ref = gnelib.jacobian_moments(f, x, exact=True)
    assert got[0] == pytest.approx(ref.phi1, rel=1e-10)
    assert got[1] == pytest.approx(ref.phi2, rel=1e-10)


def test_normalized_stack_phi_matches_frozen_statistics_jacobian():
    """normalized_stack_phi's closed form against jacobian_moments on one block with frozen stats."""
    width, batch = 16, 32
    phis = X.normalized_stack_phi(width, batch, 1, "bn", seed=3)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    w = X._weight(width, "gaussian", math.sqrt(2), gen)
    h = x @ w.T
    mu, sd = h.mean(0), h.var(0, unbiased=False).sqrt()
    ref = gnelib.jacobian_moments(lambda t: torch.relu((t @ w.T - mu) / sd), x, exact=True)
    assert phis[0] == pytest.approx(ref.phi1, rel=1e-10)
