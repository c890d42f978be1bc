"""Measurements behind the block dynamical isometry chapter: Jacobian moments of deep MLPs and
residual stacks, per-block φ of normalised stacks, per-layer gradient norms at initialisation,
and SMN-versus-BN timings. Each function returns raw per-draw measurements; the chapter compares
them with :mod:`gnelib.theory.moments`."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gnelib.nn.init import haar_orthogonal_
from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.runs.registry import profiles_from_sizes, register
from gnelib.nn.norms import SecondMomentNorm
from gnelib.theory.moments import SELU_ALPHA, SELU_LAMBDA, selu_coefficients
from gnelib.probes.jacobian import jacobian_moments

__all__ = ["mlp_moments", "residual_moments", "normalized_stack_phi", "sws_block_phi",
           "init_gradient_norms", "smn_bn_timing", "MLPMomentsConfig", "ResidualMomentsConfig",
           "NormalizedStackConfig", "bdi_mlp_moments", "bdi_residual_moments",
           "bdi_normalized_stack", "SerialGradientsConfig", "bdi_serial_gradients"]


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
    :func:`~gnelib.theory.moments.selu_coefficients` at ``selu_eps``, standard SeLU if None). The
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
    mean, as inside a network). Returns the :class:`~gnelib.probes.jacobian.JacobianMoments`."""
    from gnelib.nn.convs import SWSConv2d
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
    """Forward+backward wall time of :class:`~gnelib.nn.norms.SecondMomentNorm` and
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


# --------------------------------------------------------------------------------------
# Registered experiments (gnelib.runs.registry / gnelib.runs.store): the chapter's serial and
# residual Jacobian-moment measurements as configuration -> JSON-able record. Profile
# defaults are read from SIZES["bdi"], the one source of the chapter's sizes.
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MLPMomentsConfig:
    """A deep MLP ``act(W x)`` of ``depth`` blocks at width ``width`` (see :func:`mlp_moments`)."""

    width: int = 256
    depth: int = 16
    init: str = "gaussian"
    activation: str = "relu"
    slope: float = 0.0
    gain: float = math.sqrt(2)
    seeds: int = 10
    batch: int = 4
    seed: int = 0

    def __post_init__(self):
        check_choice("init", self.init, ("gaussian", "orthogonal"))
        check_choice("activation", self.activation, ("relu", "leaky_relu"))
        check_positive("gain", self.gain)
        for f in ("width", "depth", "batch"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("seeds", self.seeds, minimum=2)
        check_positive_int("seed", self.seed, minimum=0)


@register("bdi_mlp_moments", MLPMomentsConfig,
          profiles=profiles_from_sizes("bdi", {"width": "mlp_width", "depth": lambda z: z["depths"][-1],
                                  "seeds": "seeds", "batch": "batch"}))
def bdi_mlp_moments(config: MLPMomentsConfig) -> dict:
    """Exact φ(JJᵀ) and φ((JJᵀ)²) of a deep MLP's input-output Jacobian per independent
    network (:func:`mlp_moments`), to compare with the multiplication theorem (Chen et al.
    2020; :func:`gnelib.theory.moments.serial`): ``phi``, ``phi2`` and ``relative_variance`` (φ₂/φ² − 1), one entry
    per seed."""
    a = mlp_moments(config.width, config.depth, config.init, config.activation,
                    slope=config.slope, gain=config.gain, seeds=config.seeds,
                    batch=config.batch, seed=config.seed)
    return {"phi": a[:, 0].tolist(), "phi2": a[:, 1].tolist(),
            "relative_variance": (a[:, 1] / a[:, 0] ** 2 - 1).tolist()}


@dataclass(frozen=True)
class ResidualMomentsConfig:
    """``blocks`` residual blocks x + s W₂ relu(s W₁ x) at width ``width`` (see
    :func:`residual_moments`)."""

    width: int = 128
    blocks: int = 27
    scale: float = 1.0
    seeds: int = 5
    batch: int = 4
    seed: int = 0

    def __post_init__(self):
        check_positive("scale", self.scale)
        for f in ("width", "blocks", "batch"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("seeds", self.seeds, minimum=2)
        check_positive_int("seed", self.seed, minimum=0)


@register("bdi_residual_moments", ResidualMomentsConfig,
          profiles=profiles_from_sizes("bdi", {"width": "res_width", "seeds": "res_seeds", "batch": "batch"}))
def bdi_residual_moments(config: ResidualMomentsConfig) -> dict:
    """Exact φ(JJᵀ) and φ((JJᵀ)²) of a stack of scaled residual blocks per independent draw
    (:func:`residual_moments`), to compare with the addition and multiplication theorems and
    the shallow-network trick (Chen et al. 2020; :func:`gnelib.theory.moments.residual`): ``phi``, ``phi2`` and
    ``relative_variance``, one entry per seed."""
    a = residual_moments(config.width, config.blocks, config.scale, seeds=config.seeds,
                         batch=config.batch, seed=config.seed)
    return {"phi": a[:, 0].tolist(), "phi2": a[:, 1].tolist(),
            "relative_variance": (a[:, 1] / a[:, 0] ** 2 - 1).tolist()}


@dataclass(frozen=True)
class NormalizedStackConfig:
    """``draws`` Linear→norm→ReLU stacks of ``depth`` blocks with frozen batch statistics
    (see :func:`normalized_stack_phi`)."""

    width: int = 256
    batch: int = 512
    depth: int = 10
    norm: str = "bn"
    centred: bool = False
    draws: int = 3
    seed: int = 0

    def __post_init__(self):
        check_choice("norm", self.norm, ("bn", "smn"))
        for f in ("width", "depth"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("batch", self.batch, minimum=2)
        check_positive_int("draws", self.draws)
        check_positive_int("seed", self.seed, minimum=0)


@register("bdi_normalized_stack", NormalizedStackConfig,
          profiles=profiles_from_sizes("bdi", {"width": lambda z: z["stack_widths"][-1], "batch": "stack_batch",
                                  "depth": "stack_depth", "draws": "stack_seeds"}))
def bdi_normalized_stack(config: NormalizedStackConfig) -> dict:
    """Exact per-block φ(JJᵀ) of BN/SMN stacks with frozen batch statistics
    (:func:`normalized_stack_phi`), to compare with the BN rate π/(π−1) (our derivation from
    the second-moment lemma): ``phi`` holds one list of ``depth`` per-block values per draw,
    draw ``d`` seeded ``100·seed + d``."""
    return {"phi": [normalized_stack_phi(config.width, config.batch, config.depth, config.norm,
                                         config.centred, seed=config.seed * 100 + d).tolist()
                    for d in range(config.draws)]}


@dataclass(frozen=True)
class SerialGradientsConfig:
    """``draws`` fresh :class:`~gnelib.nn.convnets.SerialNet` models at initialisation on
    ``image``×``image`` Gaussian inputs (see :func:`init_gradient_norms`). ``slope`` is used
    by the leaky activations only; ``selu_eps`` < 0 means the standard SeLU."""

    width: int = 8
    norm: str = "none"
    init: str = "kaiming"
    activation: str = "relu"
    slope: float = 0.18
    selu_eps: float = -1.0
    image: int = 16
    batch: int = 32
    draws: int = 8
    seed: int = 0

    def __post_init__(self):
        from gnelib.nn.init import CONV_INITS
        from gnelib.nn.convnets import CONV_ACTIVATIONS, NORMS
        check_choice("norm", self.norm, NORMS)
        check_choice("init", self.init, CONV_INITS)
        check_choice("activation", self.activation, CONV_ACTIVATIONS)
        for f in ("width", "image", "batch", "draws"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("seed", self.seed, minimum=0)


@register("bdi_serial_gradients", SerialGradientsConfig,
          profiles=profiles_from_sizes("bdi", {"width": "net_width", "image": "net_image",
                                  "batch": "net_batch", "draws": "net_draws"}))
def bdi_serial_gradients(config: SerialGradientsConfig) -> dict:
    """Per-layer squared weight-gradient norms of Chen et al.'s serial network at
    initialisation (:func:`init_gradient_norms`, the paper's gradient figure taken at
    initialisation): ``grad_sq_norms`` holds one list (layers in depth order) per draw."""
    from gnelib.nn.convnets import SerialNet

    def make(gen):
        return SerialNet(width=config.width, norm=config.norm, init=config.init,
                         activation=config.activation, slope=config.slope,
                         selu_eps=None if config.selu_eps < 0 else config.selu_eps,
                         generator=gen)

    a = init_gradient_norms(make, config.draws, (3, config.image, config.image),
                            batch=config.batch, seed=config.seed)
    return {"grad_sq_norms": a.tolist()}
