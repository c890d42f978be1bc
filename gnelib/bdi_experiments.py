"""Measurements behind the block dynamical isometry chapter: Jacobian moments of deep MLPs and
residual stacks, per-block φ of normalised stacks, per-layer gradient norms at initialisation,
and SMN-versus-BN timings. Each function returns raw per-draw measurements; the chapter compares
them with :mod:`gnelib.moments`."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .bdi_inits import haar_orthogonal_
from .errors import check_choice, check_positive_int
from .layers import SecondMomentNorm
from .moments import SELU_ALPHA, SELU_LAMBDA, selu_coefficients
from .probes import jacobian_moments

__all__ = ["mlp_moments", "residual_moments", "normalized_stack_phi", "sws_block_phi",
           "init_gradient_norms", "smn_bn_timing"]


def _weight(n, init, gain, gen):
    w = torch.empty(n, n, dtype=torch.float64)
    if init == "gaussian":
        return w.normal_(0.0, gain / math.sqrt(n), generator=gen)
    return haar_orthogonal_(w, gain, gen)


def _moments_of(jac: torch.Tensor) -> tuple[float, float]:
    """Exact (φ, φ₂) of a batch of per-sample Jacobians (B, n, n), averaged over the batch."""
    n = jac.shape[1]
    a = jac @ jac.transpose(1, 2)
    return (torch.diagonal(a, dim1=1, dim2=2).sum(1).mean().item() / n,
            a.pow(2).sum((1, 2)).mean().item() / n)


def mlp_moments(width: int, depth: int, init: str = "gaussian", activation: str = "relu",
                slope: float = 0.0, gain: float = math.sqrt(2), selu_eps: float | None = None,
                seeds: int = 8, batch: int = 4, seed: int = 0) -> np.ndarray:
    """Exact (φ, φ((JJᵀ)²)) of the input-output Jacobian of a ``depth``-layer MLP, averaged over
    ``batch`` Gaussian inputs, one row per seed (independent weights and inputs).

    Blocks are ``act(W x)`` with W Gaussian :math:`\\mathcal N(0,g^2/n)` or Haar orthogonal × g;
    activation ``relu``/``leaky_relu`` (``slope``) or ``selu`` (coefficients from
    :func:`~gnelib.moments.selu_coefficients` at ``selu_eps``, standard SeLU if None). The
    per-sample Jacobian :math:`J=D_LW_L\\cdots D_1W_1` is built explicitly (float64)."""
    check_choice("init", init, ("gaussian", "orthogonal"))
    check_choice("activation", activation, ("relu", "leaky_relu", "selu"))
    if activation == "selu":
        lam, alpha = (SELU_LAMBDA, SELU_ALPHA) if selu_eps is None else selu_coefficients(selu_eps)

        def act(h):
            return (lam * torch.where(h > 0, h, alpha * torch.expm1(h)),
                    lam * torch.where(h > 0, torch.ones_like(h), alpha * torch.exp(h)))
    else:
        neg = slope if activation == "leaky_relu" else 0.0

        def act(h):
            d = torch.where(h > 0, torch.ones_like(h), torch.full_like(h, neg))
            return h * d, d
    out = []
    for s in range(seeds):
        gen = torch.Generator().manual_seed(seed * 1000 + s)
        x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
        jac = torch.eye(width, dtype=torch.float64).expand(batch, width, width)
        for _ in range(depth):
            w = _weight(width, init, gain, gen)
            x, d = act(x @ w.T)
            jac = d.unsqueeze(2) * (w @ jac)
        out.append(_moments_of(jac))
    return np.array(out)


def residual_moments(width: int, blocks: int, scale: float, seeds: int = 5, batch: int = 4,
                     seed: int = 0) -> np.ndarray:
    """Exact (φ, φ₂) of ``blocks`` residual blocks :math:`x+sW_2\\,\\mathrm{relu}(sW_1x)` with He
    weights, averaged over ``batch`` Gaussian inputs, one row per seed; the per-sample Jacobian
    :math:`\\prod_j(I+s^2W_2D_jW_1)` is built explicitly (float64)."""
    out = []
    eye = torch.eye(width, dtype=torch.float64)
    for s in range(seeds):
        gen = torch.Generator().manual_seed(seed * 1000 + s)
        x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
        jac = eye.expand(batch, width, width)
        for _ in range(blocks):
            w1 = _weight(width, "gaussian", math.sqrt(2), gen) * scale
            w2 = _weight(width, "gaussian", math.sqrt(2), gen) * scale
            h = x @ w1.T
            d = (h > 0).to(h.dtype)
            x = x + torch.relu(h) @ w2.T
            jac = jac + w2 @ (d.unsqueeze(2) * (w1 @ jac))
        out.append(_moments_of(jac))
    return np.array(out)


def normalized_stack_phi(width: int, batch: int, depth: int, norm: str = "bn",
                         centred: bool = False, seed: int = 0) -> np.ndarray:
    """Per-block φ of a Linear→norm→ReLU stack (He weights, optionally centred per row), with
    the batch statistics frozen: the per-sample block Jacobian is
    :math:`J=D\\,\\mathrm{diag}(1/\\sigma_i)W`, so :math:`\\phi=\\tfrac1n\\,\\mathrm{mean}_b\\sum_i
    D_{bi}\\|w_i\\|^2/\\sigma_i^2` exactly (σ the batch std for BN, the root mean square for SMN).
    Returns one φ per block (the first block, fed Gaussian data, included)."""
    check_choice("norm", norm, ("bn", "smn"))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    phis = []
    for _ in range(depth):
        w = _weight(width, "gaussian", math.sqrt(2), gen)
        if centred:
            w = w - w.mean(1, keepdim=True)
        h = x @ w.T
        if norm == "bn":
            z = (h - h.mean(0)) / h.var(0, unbiased=False).sqrt()
            sd = h.var(0, unbiased=False).sqrt()
        else:
            sd = h.pow(2).mean(0).sqrt()
            z = h / sd
        d = (z > 0).to(h.dtype)
        phis.append((d * (w.pow(2).sum(1) / sd**2)).mean().item())
        x = torch.relu(z)
    return np.array(phis)


def sws_block_phi(channels: int, raw_scale: float, standardize: bool = True, size: int = 16,
                  batch: int = 4, probes: int = 16, seed: int = 0):
    """φ of one conv→ReLU block (3×3, circular padding, ``channels`` in and out) whose raw
    weights are :math:`\\mathcal N(0,\\text{raw\\_scale}^2\\cdot 2/\\text{fan-in})`; with
    ``standardize`` the conv uses sWS (γ₀ = 2). Input: post-ReLU Gaussian features (non-zero
    mean, as inside a network). Returns the :class:`~gnelib.probes.JacobianMoments`."""
    from .layers import SWSConv2d
    gen = torch.Generator().manual_seed(seed)
    cls = SWSConv2d if standardize else nn.Conv2d
    conv = cls(channels, channels, 3, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.normal_(0.0, raw_scale * math.sqrt(2 / (9 * channels)), generator=gen)
    x = torch.relu(torch.randn(batch, channels, size, size, generator=gen, dtype=torch.float64))
    return jacobian_moments(lambda t: torch.relu(conv(t)), x, probes=probes, generator=gen)


def init_gradient_norms(make_model, draws: int, input_shape, batch: int = 32,
                        num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Per-layer squared gradient norms :math:`\\|\\partial\\mathcal L/\\partial W_l\\|^2` at
    initialisation, one row per draw (a fresh model from ``make_model(generator)``, a fresh
    batch of Gaussian inputs and uniform random labels, cross-entropy loss), columns in depth
    order (Chen et al.'s gradient figure, taken at initialisation)."""
    check_positive_int("draws", draws)
    rows = []
    for d in range(draws):
        gen = torch.Generator().manual_seed(seed * 1000 + d)
        model = make_model(gen)
        model.train()
        x = torch.randn(batch, *input_shape, generator=gen)
        y = torch.randint(0, num_classes, (batch,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        layers = [m.weight for m in model.weight_layers()]
        grads = torch.autograd.grad(loss, layers)
        rows.append([g.pow(2).sum().item() for g in grads])
    return np.array(rows)


def smn_bn_timing(shapes, repeats: int = 5, device: str | torch.device = "cpu",
                  closed_form: bool = True) -> list[dict]:
    """Forward+backward wall time of :class:`~gnelib.layers.SecondMomentNorm` and
    ``nn.BatchNorm2d`` (training mode) on inputs of each (N, C, H, W) shape, measured
    alternately in one run; the median over ``repeats`` after one warm-up."""
    device = torch.device(device)
    rows = []
    for shape in shapes:
        x = torch.randn(*shape, device=device, requires_grad=True)
        dy = torch.randn(*shape, device=device)
        mods = {"smn": SecondMomentNorm(shape[1], closed_form=closed_form).to(device),
                "bn": nn.BatchNorm2d(shape[1]).to(device)}
        times = {k: [] for k in mods}
        for r in range(repeats + 1):
            for k, m in mods.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                m(x).backward(dy)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r > 0:
                    times[k].append(time.perf_counter() - t0)
                x.grad = None
        rows.append(dict(shape=tuple(shape), smn=float(np.median(times["smn"])),
                         bn=float(np.median(times["bn"]))))
    return rows
