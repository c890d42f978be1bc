"""The paper's batch normalisation, the BN MLP and the batched gradient sweeps."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from gnelib.probes.bn_chain import (bn_chain_gaps, bn_forward, bn_inputs, layer_gradient_profile,
                                 layer_log_grad_norms, log_grad_norm_vs_depth,
                                 log_grad_norms_at_depths, stack_weights, torch_threads)
from gnelib.nn.batchnorm import BNMLP, PaperBatchNorm, layer_gains, paper_batch_norm, torch_batch_norm



@pytest.fixture(autouse=True)
def float64_default():
    """Compare in float64, on one torch thread (small matrices; both restored afterwards,
    so other test modules are unaffected)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with torch_threads(1):
        yield
    torch.set_default_dtype(old)


def gen(s=0):
    return torch.Generator().manual_seed(s)


def test_paper_batch_norm_rows():
    h = torch.randn(12, 5, generator=gen(0)) * torch.tensor([0.1, 1, 3, 7, 30.0])
    out = paper_batch_norm(h)
    assert torch.allclose(out.norm(dim=0), torch.ones(5), atol=1e-14)
    assert torch.allclose(paper_batch_norm(h * torch.rand(5, generator=gen(1)) + 0), out, atol=1e-14)
    assert torch.allclose(paper_batch_norm(h, factor="sqrt_n").norm(dim=0),
                          torch.full((5,), math.sqrt(12)), atol=1e-12)
    mr = paper_batch_norm(h, mean_reduction=True)
    assert torch.allclose(mr.mean(0), torch.zeros(5), atol=1e-14)
    assert torch.allclose(mr.norm(dim=0), torch.ones(5), atol=1e-14)
    assert torch.allclose(PaperBatchNorm(True, 2.0)(h), 2 * mr)
    with pytest.raises(ValueError, match="factor"):
        PaperBatchNorm(factor=-1.0)


def test_paper_bn_backward_closed_form():
    """Lemma C.7: the Jacobian of Bn is block diagonal over features, each block
    ||x||^{-1} (I - x^ x^T); check the vector-Jacobian product against autograd."""
    h = torch.randn(9, 4, generator=gen(2), requires_grad=True)
    g = torch.randn(9, 4, generator=gen(3))
    (auto,) = torch.autograd.grad(paper_batch_norm(h), h, g)
    x = h.detach()
    nrm = x.norm(dim=0, keepdim=True)
    xh = x / nrm
    closed = (g - xh * (xh * g).sum(0, keepdim=True)) / nrm
    assert torch.allclose(auto, closed, atol=1e-13)


def test_torch_batch_norm_matches_module():
    h = torch.randn(3, 16, 7, generator=gen(4)) * 4 + 1
    bn = nn.BatchNorm1d(7).double().train()
    want = torch.stack([bn(hi) for hi in h])
    assert torch.allclose(torch_batch_norm(h), want, atol=1e-12)


def test_layer_gains_and_errors():
    assert layer_gains(4, 0.5) == pytest.approx([1, 2 ** -0.5, 3 ** -0.5, 0.5])
    assert layer_gains(3, 0.0, 0.7) == pytest.approx([0.7] * 3)
    with pytest.raises(ValueError, match="gain_exponent"):
        layer_gains(3, -1.0)
    with pytest.raises(ValueError, match="norm"):
        BNMLP(4, 8, 3, 2, norm="layer")
    with pytest.raises(ValueError, match="activation"):
        BNMLP(4, 8, 3, 2, activation="gelu")
    with pytest.raises(ValueError, match="init"):
        BNMLP(4, 8, 3, 2, init="xavier")
    with pytest.raises(ValueError, match="order"):
        BNMLP(4, 8, 3, 2, order="both")
    with pytest.raises(ValueError, match="depth"):
        BNMLP(4, 8, 0, 2)


def test_bnmlp_init_and_shapes():
    m = BNMLP(10, 8, 4, 3, init="orthogonal", bias=True, generator=gen(5)).double()
    w = m.layers[2].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-6)
    w0 = m.layers[0].weight.detach()  # 8 x 10: orthonormal rows
    assert torch.allclose(w0 @ w0.T, torch.eye(8), atol=1e-6)
    assert m(torch.randn(16, 10, generator=gen(6))).shape == (16, 3)
    assert set(m.no_weight_decay()) == {n for n, p in m.named_parameters() if p.ndim == 1}


def module_from(weights, head, s, norm, activation, order, k, mean_reduction=False):
    """A BNMLP holding seed s of the stacked weights (prefix of len(weights) layers)."""
    L = len(weights)
    m = BNMLP(weights[0].shape[2], weights[0].shape[1], L, head.shape[1], norm=norm,
              activation=activation, order=order, gain_exponent=k,
              mean_reduction=mean_reduction).double()
    with torch.no_grad():
        for lin, w in zip(m.layers, weights):
            lin.weight.copy_(w[s])
        m.head.weight.copy_(head[s])
    return m


@pytest.mark.parametrize("norm,activation,order,k", [
    ("paper", "identity", "norm_act", 0.0), ("paper", "tanh", "norm_act", 0.4),
    ("torch", "sin", "norm_act", 0.4), ("torch", "relu", "act_norm", 0.0),
    ("none", "tanh", "norm_act", 0.0), ("paper", "identity", "act_norm", 0.2)])
def test_sweep_equals_module_autograd(norm, activation, order, k):
    """The batched prefix sweep gives, for every depth, the gradient of an ordinary BNMLP of
    that depth holding the same weights: the prefix reuse is exact."""
    S, n, d, L = 3, 12, 6, 9
    x, y = bn_inputs(S, n, 5, 4, generator=gen(7))
    weights, head = stack_weights(S, 5, d, L, 4, "orthogonal", gen(8))
    depths = [2, 5, 9]
    net = dict(norm=norm, activation=activation, order=order, gains=layer_gains(L, k))
    got = log_grad_norms_at_depths(x, y, weights, head, depths, layer=1, **net)
    prof = layer_log_grad_norms(x, y, weights, head, **net)
    for s in range(S):
        for j, Lp in enumerate(depths):
            m = module_from(weights[:Lp], head, s, norm, activation, order, k)
            loss = nn.functional.cross_entropy(m(x[s]), y[s])
            loss.backward()
            assert got[s, j].item() == pytest.approx(m.layers[1].weight.grad.norm().log().item(),
                                                     abs=1e-10)
            if Lp == L:
                want = [lin.weight.grad.norm().log().item() for lin in m.layers]
                assert np.allclose(prof[s].numpy(), want, atol=1e-10)


def test_bn_forward_matches_module_mean_reduction():
    x, _ = bn_inputs(2, 10, 6, 3, generator=gen(9))
    weights, head = stack_weights(2, 6, 6, 4, 3, "gaussian", gen(10))
    hs = bn_forward(x, weights, norm="paper", mean_reduction=True)
    m = module_from(weights, head, 1, "paper", "identity", "norm_act", 0.0, mean_reduction=True)
    assert torch.allclose(hs[-1][1], m.hidden(x[1])[-1], atol=1e-12)


def test_sweep_api_shapes_determinism_and_errors():
    a = log_grad_norm_vs_depth([2, 4, 8], width=8, batch=8, seeds=3, seed=1)
    b = log_grad_norm_vs_depth([2, 4, 8], width=8, batch=8, seeds=3, seed=1)
    assert a.shape == (3, 3) and np.array_equal(a, b) and np.isfinite(a).all()
    p = layer_gradient_profile(6, width=8, batch=8, seeds=2, activation="tanh",
                               norm="torch", gain_exponent=0.4, distinct=4)
    assert p.shape == (2, 6) and np.isfinite(p).all()
    with pytest.raises(ValueError, match="layer"):
        log_grad_norm_vs_depth([1, 4], width=8, batch=8)
    with pytest.raises(ValueError, match="distinct"):
        log_grad_norm_vs_depth([4], width=8, batch=8, distinct=9)
    with pytest.raises(ValueError, match="norm"):
        log_grad_norm_vs_depth([4], width=8, batch=8, norm="batch")
    threads = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_degenerate_input_stays_degenerate():
    """No product and no Bn can raise the rank (necessity of non-degeneracy)."""
    x, _ = bn_inputs(2, 8, 8, 2, distinct=5, generator=gen(11))
    gaps = bn_chain_gaps(x, 20, generator=gen(12))
    assert np.isinf(gaps).all()
