"""SMN, L1 moment norm, centred conv, sWS, the BDI inits and the SeLU solver."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import norm
from torch import nn

import gnelib
import gnelib.theory.moments as M
from gnelib.nn.init import delta_orthogonal_, fixup_scale, haar_orthogonal_, init_model_
from gnelib.nn.convs import CentredConv2d, SWSConv2d, centred_kernel, standardized_weight
from gnelib.nn.norms import L1MomentNorm, SecondMomentNorm, SecondMomentNormFunction, second_moment_norm


# ------------------------------------------------------------------ SMN
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 6), (3, 4, 10)])
def test_smn_closed_form_backward_equals_autograd(shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    c = shape[1]
    w = (1 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_()
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = 1e-3
    ref = torch.autograd.grad(second_moment_norm(x, w, b, eps), (x, w, b), dy)
    dims = [0] + list(range(2, x.ndim))
    s = x.detach().pow(2).mean(dims, keepdim=True).sqrt()
    y = SecondMomentNormFunction.apply(x, s, w, b, eps)
    assert torch.allclose(y, second_moment_norm(x, w, b, eps), rtol=0, atol=1e-12)
    got = torch.autograd.grad(y, (x, w, b), dy)
    for a, r in zip(got, ref):
        assert (a - r).abs().max().item() < 1e-10


def test_smn_forward_mode_equals_autograd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64) - 0.2
    t = torch.randn_like(x)
    closed = SecondMomentNorm(3, eps=1e-3).double()
    plain = SecondMomentNorm(3, eps=1e-3, closed_form=False).double()
    a = torch.func.jvp(closed, (x,), (t,))[1]
    b = torch.func.jvp(plain, (x,), (t,))[1]
    assert (a - b).abs().max().item() < 1e-10


def test_smn_gradcheck():
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        s = x.detach().pow(2).mean((0, 2), keepdim=True).sqrt()
        return SecondMomentNormFunction.apply(x, s, w, b, 1e-2)
    # s is fed without gradient, so gradcheck sees the closed form's account of ds/dx
    assert torch.autograd.gradcheck(f, (x, w, b))


def test_smn_running_statistic_and_eval():
    torch.manual_seed(0)
    smn = SecondMomentNorm(3, momentum=0.1).double()
    x = 2.0 * torch.randn(8, 3, 4, 4, dtype=torch.float64)
    s = x.pow(2).mean((0, 2, 3)).sqrt()
    y = smn(x)
    assert torch.allclose(smn.running_rms, 0.9 + 0.1 * s, atol=1e-14)
    # training output: unit second moment per channel (up to eps)
    assert torch.allclose(y.pow(2).mean((0, 2, 3)), (s / (s + smn.eps)) ** 2, atol=1e-12)
    smn.eval()
    ye = smn(x)
    assert torch.allclose(ye, x / (smn.running_rms.reshape(1, 3, 1, 1) + smn.eps), atol=1e-14)
    with pytest.raises(ValueError, match="shape"):
        smn(torch.randn(2, 4))
    with pytest.raises(ValueError, match="momentum"):
        SecondMomentNorm(3, momentum=2.0)


def test_smn_equals_bn_on_zero_mean_channels():
    """SMN divides by the root mean square, BN by the standard deviation: identical outputs
    when every channel has zero batch mean (what centred weights approximately achieve)."""
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5, dtype=torch.float64)
    x = x - x.mean((0, 2, 3), keepdim=True)
    bn = nn.BatchNorm2d(4, eps=1e-12, affine=False).double()
    smn = SecondMomentNorm(4, eps=1e-12, affine=False).double()
    assert (bn(x) - smn(x)).abs().max().item() < 1e-9


def test_l1_moment_norm():
    torch.manual_seed(0)
    l1 = L1MomentNorm(3, eps=1e-12).double()
    x = torch.randn(8, 3, 7, dtype=torch.float64) + 0.5
    y = l1(x)
    assert torch.allclose(y.abs().mean((0, 2)), torch.ones(3, dtype=torch.float64), atol=1e-10)


# ------------------------------------------------------------------ weight reparameterisations
def test_centered_conv():
    torch.manual_seed(0)
    conv = CentredConv2d(3, 5, 3, padding=1).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    cw = centred_kernel(conv.weight)
    assert cw.sum((1, 2, 3)).abs().max().item() < 1e-12
    ref = nn.functional.conv2d(x, cw, conv.bias, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-12)


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_sws_filter_norms_and_scale_invariance(scale):
    torch.manual_seed(0)
    conv = SWSConv2d(4, 6, 3, padding=1, bias=False).double()
    w0 = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight.mul_(scale).add_(0.7)  # any positive rescaling and constant offset
    w = standardized_weight(conv.weight, 2.0)
    assert torch.allclose(w.pow(2).sum((1, 2, 3)), torch.full((6,), 2.0, dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(w, standardized_weight(w0, 2.0), atol=1e-10)


# ------------------------------------------------------------------ inits
@pytest.mark.parametrize("shape", [(32, 32), (16, 48), (48, 16), (8, 4, 3, 3)])
def test_haar_orthogonal(shape):
    g = torch.Generator().manual_seed(0)
    w = haar_orthogonal_(torch.empty(shape, dtype=torch.float64), gain=1.7, generator=g)
    a = w.reshape(shape[0], -1)
    small = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    assert torch.allclose(small, 1.7**2 * torch.eye(small.shape[0], dtype=torch.float64),
                          atol=1e-12)


def test_haar_orthogonal_is_unbiased():
    """Haar measure: E[W_11] = 0 and E[W_11^2] = 1/n. Without the sign fix of QR the diagonal
    has a positive mean; the check is 4.5 standard errors."""
    n, draws = 8, 2000
    g = torch.Generator().manual_seed(0)
    vals = torch.stack([haar_orthogonal_(torch.empty(n, n, dtype=torch.float64), generator=g)[0, 0]
                        for _ in range(draws)])
    se = vals.std() / math.sqrt(draws)
    assert abs(vals.mean().item()) < 4.5 * se.item()
    se2 = vals.pow(2).std() / math.sqrt(draws)
    assert abs(vals.pow(2).mean().item() - 1 / n) < 4.5 * se2.item()


def test_delta_orthogonal():
    g = torch.Generator().manual_seed(0)
    w = delta_orthogonal_(torch.empty(6, 6, 3, 3, dtype=torch.float64), gain=2.0, generator=g)
    centre = w[:, :, 1, 1]
    assert torch.allclose(centre @ centre.T, 4 * torch.eye(6, dtype=torch.float64), atol=1e-12)
    assert w.abs().sum().item() == pytest.approx(centre.abs().sum().item(), abs=1e-12)
    with pytest.raises(ValueError, match="odd"):
        delta_orthogonal_(torch.empty(4, 4, 2, 2))
    with pytest.raises(ValueError, match="conv kernel"):
        delta_orthogonal_(torch.empty(4, 4))


def test_fixup_scale():
    assert fixup_scale(27, 2, 2) == pytest.approx(27 ** -0.5, abs=1e-15)
    assert fixup_scale(27, 1.5, 2) == pytest.approx(27 ** -0.375, abs=1e-15)
    with pytest.raises(ValueError, match="num_blocks"):
        fixup_scale(0)


def test_init_model_kaiming_variance():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Linear(64, 64))
    init_model_(model, "kaiming", gain=math.sqrt(2), generator=g)
    for mod, fan_in in ((model[0], 144), (model[1], 64)):
        w2 = mod.weight.detach().double().pow(2).flatten()
        se = w2.std() / math.sqrt(w2.numel())
        assert abs(w2.mean().item() - 2 / fan_in) < 4.5 * se.item()
    with pytest.raises(ValueError, match="init"):
        init_model_(model, "bogus")


# ------------------------------------------------------------------ SeLU solver
def _selu_second_moment(lam, alpha, v):
    """E[selu(h)^2], h ~ N(0, v), by adaptive quadrature (independent of the solver's closed forms)."""
    sd = math.sqrt(v)
    neg = quad(lambda t: (lam * alpha * math.expm1(t)) ** 2 * norm.pdf(t, scale=sd), -np.inf, 0)[0]
    pos = quad(lambda t: (lam * t) ** 2 * norm.pdf(t, scale=sd), 0, np.inf)[0]
    return neg + pos


@pytest.mark.parametrize("eps,gain2", [(0.0716, 1.0), (0.03, 1.0), (0.03, 2.0), (0.065, 1.0),
                                       (0.01, 1.0)])
def test_selu_coefficients_solve_both_equations(eps, gain2):
    lam, alpha = gnelib.selu_coefficients(eps, gain2=gain2, q=1.0)
    v = gain2
    assert gain2 * M.selu(lam, alpha, v).phi1 == pytest.approx(1 + eps, abs=1e-10)
    assert _selu_second_moment(lam, alpha, v) == pytest.approx(1.0, abs=1e-8)


def test_selu_coefficients_known_values():
    lam, alpha = gnelib.selu_coefficients(0.0716)
    assert abs(lam - M.SELU_LAMBDA) < 5e-4 and abs(alpha - M.SELU_ALPHA) < 5e-3
    lam, alpha = gnelib.selu_coefficients(0.0)
    assert lam == pytest.approx(math.sqrt(2), abs=1e-15) and alpha == 0.0
    lam, alpha = gnelib.selu_coefficients(1e-9)
    assert lam == pytest.approx(math.sqrt(2), abs=1e-6) and alpha < 1e-3
    with pytest.raises(ValueError, match="no SeLU solution"):
        gnelib.selu_coefficients(1.0)
    with pytest.raises(ValueError, match="eps"):
        gnelib.selu_coefficients(-0.01)
    with pytest.raises(ValueError, match="gain2"):
        gnelib.selu_coefficients(0.03, gain2=0.0)


def test_smn_traces_with_torch_compile_fullgraph():
    """The module (closed-form path) compiles without graph breaks and keeps its gradients and
    running statistic (aot_eager backend: no C compiler needed)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    m, ref = SecondMomentNorm(3), SecondMomentNorm(3)
    torch.compile(m, backend="aot_eager", fullgraph=True)(x).pow(2).sum().backward()
    xr = x.detach().clone().requires_grad_()
    ref(xr).pow(2).sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)
    assert torch.allclose(m.running_rms, ref.running_rms)
