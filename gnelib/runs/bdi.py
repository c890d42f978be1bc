"""Measurements behind the block dynamical isometry chapter (Chen et al. 2020): Jacobian moments
of deep MLPs and residual stacks, per-block φ of normalised stacks, SeLU stacks with their
per-layer statistics, per-block Jacobian moments and per-layer gradient norms of the serial
conv net, training of the serial net and the CIFAR ResNet with gradient norms recorded during
training, and SMN-versus-BN timings. Each function returns raw per-draw measurements; the
chapter compares them with :mod:`gnelib.theory.moments`. The registered experiments' per-profile
tables below are the only source of the chapter's sizes."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gnelib.base.errors import check_choice, check_positive_int
from gnelib.nn.convnets import CONV_ACTIVATIONS
from gnelib.nn.init import CONV_INITS, haar_orthogonal_
from gnelib.nn.norms import SecondMomentNorm
from gnelib.probes.jacobian import jacobian_moments
from gnelib.runs.registry import Config, param, register
from gnelib.theory.moments import SELU_ALPHA, SELU_LAMBDA, Moments, selu_coefficients, serial

__all__ = ["mlp_moments", "mlp_pass", "realised_composition", "residual_moments", "normalized_stack_phi", "sws_block_phi",
           "init_gradient_norms", "conv_block_moments", "serial_blocks", "square_blocks", "smn_bn_timing",
           "weight_layers", "MLPMomentsConfig", "ResidualMomentsConfig", "NormalizedStackConfig",
           "SeluMomentsConfig", "SerialGradientsConfig", "ConvBlockMomentsConfig", "TrainConfig",
           "bdi_mlp_moments", "bdi_residual_moments", "bdi_normalized_stack", "bdi_selu_moments",
           "bdi_serial_gradients", "bdi_conv_block_moments", "bdi_train", "bdi_resnet_train", "bdi_resnet_gradients", "ResNetGradientsConfig", "ResNetTrainConfig", "rule_gain"]


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


def rule_gain(activation: str, slope: float = 0.0) -> float:
    """The init gain of the activation-selection rule, :math:`\\phi_W\\phi_\\text{act}=1`
    (:func:`gnelib.nn.activations.activation_gain`, the one the conv nets use): √2 for ReLU,
    :math:`\\sqrt{2/(1+\\gamma^2)}` for leaky ReLU, 1 for SeLU."""
    from gnelib.nn.activations import activation_gain
    return activation_gain(activation, slope)


def _activation(activation, slope, selu_eps):
    if activation == "selu":
        lam, alpha = (SELU_LAMBDA, SELU_ALPHA) if selu_eps is None else selu_coefficients(selu_eps)

        def act(h):
            return (lam * torch.where(h > 0, h, alpha * torch.expm1(h)),
                    lam * torch.where(h > 0, torch.ones_like(h), alpha * torch.exp(h)))
        return act
    neg = slope if activation == "leaky_relu" else 0.0

    def act(h):
        d = torch.where(h > 0, torch.ones_like(h), torch.full_like(h, neg))
        return h * d, d
    return act


def mlp_pass(width: int, depths, init: str = "gaussian", activation: str = "relu",
             slope: float = 0.0, gain: float = math.sqrt(2), selu_eps: float | None = None,
             batch: int = 4, generator: torch.Generator | None = None) -> dict:
    """One network: exact (φ, φ((JJᵀ)²)) of the input-output Jacobian of an MLP ``act(W x)``
    after each depth in ``depths`` (the product :math:`J=D_LW_L\\cdots D_1W_1` is built
    explicitly in float64), and the per-layer forward statistics: ``q`` (second moment of the
    pre-activations), ``mean`` and ``m2`` (mean and second moment of the activations), each a
    list over layers 1..max(depths). ``phi``/``phi2`` are averaged over the ``batch`` Gaussian
    inputs.

    Per input (lists over the batch): ``phi_b``/``phi2_b`` the end-to-end moments at each depth;
    ``block_phi``/``block_phi2`` the exact moments of each layer's own Jacobian
    :math:`J_l=D_lW_l` at that input, :math:`\\tfrac1n\\sum_i d_i^2\\|w_i\\|^2` and
    :math:`\\tfrac1n\\sum_{ik}d_i^2d_k^2(w_i\\cdot w_k)^2`; ``act_phi``/``act_phi2`` the
    activation's own moments :math:`\\tfrac1n\\sum_i d_i^2` and :math:`\\tfrac1n\\sum_i d_i^4`;
    ``q_cond`` the variance :math:`g^2\\|x\\|^2/n` of a pre-activation given the layer's input
    x (for Gaussian weights each pre-activation is exactly :math:`\\mathcal N(0,q)` given x).
    Per-layer lists run over layers 1..max(depths)."""
    check_choice("init", init, ("gaussian", "orthogonal"))
    check_choice("activation", activation, ("relu", "leaky_relu", "selu"))
    act = _activation(activation, slope, selu_eps)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    want = set(depths)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    jac = torch.eye(width, dtype=torch.float64).expand(batch, width, width)
    keys = ("q_cond", "block_phi", "block_phi2", "act_phi", "act_phi2", "q", "mean", "m2")
    layers = {k: [] for k in keys}  # per layer: tensors, converted once at the end
    ends = {"phi_b": [], "phi2_b": []}
    for layer in range(1, max(depths) + 1):
        w = _weight(width, init, gain, gen)
        q_cond = gain**2 * x.pow(2).mean(1)
        h = x @ w.T
        x, d = act(h)
        jac = d.unsqueeze(2) * (w @ jac)
        d2, gram = d * d, w @ w.T
        for k, v in zip(keys, (q_cond, (d2 * gram.diagonal()).sum(1) / width,
                               ((d2 @ gram.pow(2)) * d2).sum(1) / width, d2.mean(1),
                               d2.pow(2).mean(1), h.pow(2).mean(), x.mean(), x.pow(2).mean())):
            layers[k].append(v)
        if layer in want:
            a = jac @ jac.transpose(1, 2)
            ends["phi_b"].append(torch.diagonal(a, dim1=1, dim2=2).sum(1) / width)
            ends["phi2_b"].append(a.pow(2).sum((1, 2)) / width)
    out = {k: torch.stack(v).tolist() for k, v in {**layers, **ends}.items()}
    out["phi"] = torch.stack(ends["phi_b"]).mean(1).tolist()
    out["phi2"] = torch.stack(ends["phi2_b"]).mean(1).tolist()
    return out


def realised_composition(block_phi, block_phi2, depths) -> np.ndarray:
    """The multiplication theorem applied to one network's own blocks: for each input (columns
    of ``block_phi``/``block_phi2``, shape (layers, batch), the exact moments of each layer's
    Jacobian at that input, :func:`mlp_pass`) and each depth L of ``depths``, the moments
    :func:`gnelib.theory.moments.serial` predicts for :math:`J_L\\cdots J_1` from
    :math:`(\\phi_1,\\phi_2)` of :math:`J_1,\\dots,J_L`. Returns an array (len(depths), batch, 2)
    of (φ, φ₂). Nothing end-to-end enters: the end-to-end moments are measured separately.

    Used in: bdi, §"Serial composition"."""
    p1, p2 = np.asarray(block_phi, dtype=float), np.asarray(block_phi2, dtype=float)
    want, out = set(depths), []
    for b in range(p1.shape[1]):
        acc, row = None, []
        for layer in range(max(depths)):
            blk = Moments(p1[layer, b], p2[layer, b])
            acc = blk if acc is None else serial(acc, blk)
            if layer + 1 in want:
                row.append((acc.phi1, acc.phi2))
        out.append(row)
    return np.asarray(out).transpose(1, 0, 2)


def mlp_moments(width: int, depth: int, init: str = "gaussian", activation: str = "relu",
                slope: float = 0.0, gain: float = math.sqrt(2), selu_eps: float | None = None,
                seeds: int = 8, batch: int = 4, seed: int = 0) -> np.ndarray:
    """Exact (φ, φ((JJᵀ)²)) of the input-output Jacobian of a ``depth``-layer MLP, one row per
    seed (independent weights and inputs; :func:`mlp_pass`). Blocks are ``act(W x)`` with W
    Gaussian :math:`\\mathcal N(0,g^2/n)` or Haar orthogonal × g; activation ``relu``,
    ``leaky_relu`` (``slope``) or ``selu`` (coefficients from
    :func:`~gnelib.theory.moments.selu_coefficients` at ``selu_eps``, standard SeLU if None)."""
    rows = []
    for s in range(seeds):
        r = mlp_pass(width, (depth,), init, activation, slope, gain, selu_eps, batch,
                     torch.Generator().manual_seed(seed * 1000 + s))
        rows.append((r["phi"][0], r["phi2"][0]))
    return np.array(rows)


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
    mean, as inside a network). Returns the :class:`~gnelib.probes.jacobian.JacobianMoments`
    and the fraction ``p_hat`` of positive pre-activations at that input.

    Used in: bdi, §"Scaled weight standardisation gives φ = 1 at any weight scale"."""
    from gnelib.nn.convs import SWSConv2d
    gen = torch.Generator().manual_seed(seed)
    cls = SWSConv2d if standardize else nn.Conv2d
    conv = cls(channels, channels, 3, padding=0, bias=False).double()
    with torch.no_grad():
        conv.weight.normal_(0.0, raw_scale * math.sqrt(2 / (9 * channels)), generator=gen)
    x = torch.relu(torch.randn(batch, channels, size, size, generator=gen, dtype=torch.float64))

    def pre(t):  # circular padding by hand: every output row sees all 9 taps
        return conv(F.pad(t, (1, 1, 1, 1), mode="circular"))

    with torch.no_grad():
        p_hat = (pre(x) > 0).double().mean().item()
    return jacobian_moments(lambda t: torch.relu(pre(t)), x, probes=probes, generator=gen), p_hat


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The conv and linear layers of ``model`` in depth (registration) order."""
    from gnelib.nn.convs import WEIGHT_LAYERS
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]


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
        layers = [m.weight for m in weight_layers(model)]
        grads = torch.autograd.grad(loss, layers)
        rows.append([g.pow(2).sum().item() for g in grads])
    return np.array(rows)


def serial_blocks(model) -> list[nn.Module]:
    """The conv→activation blocks of an un-normalised :class:`~gnelib.nn.convnets.SerialNet`
    (its ``features`` in consecutive pairs)."""
    f = list(model.features)
    if len(f) % 2:
        raise ValueError("serial_blocks needs a SerialNet without normalisation layers")
    return [nn.Sequential(f[i], f[i + 1]) for i in range(0, len(f), 2)]


def conv_block_moments(model, x: torch.Tensor, probes: int = 8,
                       generator: torch.Generator | None = None) -> np.ndarray:
    """(φ, φ₂) of every conv→activation block's Jacobian of an un-normalised serial net, each at
    the input it receives from ``x`` (Hutchinson probes, :func:`~gnelib.probes.jacobian.jacobian_moments`): an array (blocks, 2).

    Used in: bdi, §"Per-layer gradient norms at initialisation in the serial network"."""
    h, out = x, []
    for block in serial_blocks(model):
        m = jacobian_moments(block, h, probes=probes, generator=generator)
        out.append((m.phi1, m.phi2))
        with torch.no_grad():
            h = block(h)
    return np.array(out)


def square_blocks(model, x: torch.Tensor) -> list[int]:
    """Indices of the serial net's blocks whose output has the shape of their input."""
    h, out = x, []
    with torch.no_grad():
        for i, block in enumerate(serial_blocks(model)):
            y = block(h)
            if y.shape == h.shape:
                out.append(i)
            h = y
    return out


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
# Registered experiments (gnelib.runs.registry / gnelib.runs.store). Each profile table is the
# one source of that run's sizes; the chapter only overrides the factor it varies.
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MLPMomentsConfig(Config):
    """Deep MLPs ``act(W x)`` at each width of ``widths``, moments recorded after each depth of
    ``depths`` (see :func:`mlp_pass`). ``gain`` 0 means the selection rule :func:`rule_gain`."""

    widths: tuple[int, ...] = param((128, 256), positive=True)
    depths: tuple[int, ...] = param((1, 2, 4, 8, 16), positive=True)
    init: str = param("gaussian", choices=("gaussian", "orthogonal"))
    activation: str = param("relu", choices=("relu", "leaky_relu"))
    slope: float = param(0.0, minimum=0.0)
    gain: float = param(0.0, minimum=0.0)
    seeds: int = param(16, minimum=2)
    batch: int = param(4, positive=True)
    seed: int = param(0, minimum=0)


@register("bdi_mlp_moments", MLPMomentsConfig,
          profiles={"smoke": dict(widths=(32, 64), depths=(1, 2, 4, 8), seeds=96),
                    "book": dict(widths=(128, 256), depths=(1, 2, 4, 8), seeds=56),
                    "full": dict(widths=(256, 512), depths=(1, 2, 4, 8, 16, 32), seeds=64)})
def bdi_mlp_moments(config: MLPMomentsConfig) -> dict:
    """Exact φ(JJᵀ) and φ((JJᵀ)²) of deep MLPs' input-output Jacobians (:func:`mlp_pass`), to
    compare with the multiplication theorem (:func:`gnelib.theory.moments.serial`) and to
    measure its finite-width excess: ``phi[w][d][s]`` and ``phi2[w][d][s]`` for width index w,
    depth index d and seed s (network s at every width is seeded ``1000·seed + s``), averaged
    over the batch. Per input b: ``phi_b[w][d][s][b]``/``phi2_b`` the same moments and
    ``pred_phi[w][d][s][b]``/``pred_phi2`` the theorem applied to that network's own blocks at
    that input (:func:`realised_composition`). ``block_phi[w][s]``/``block_phi2[w][s]``: the
    exact moments of the single blocks :math:`J_l=D_lW_l`, averaged over the layers
    1..max(depths) and the batch of network s."""
    gain = config.gain or rule_gain(config.activation, config.slope)
    keys = ("phi", "phi2", "phi_b", "phi2_b", "pred_phi", "pred_phi2", "block_phi", "block_phi2")
    res = {k: [] for k in keys}
    for width in config.widths:
        runs = [mlp_pass(width, config.depths, config.init, config.activation, config.slope,
                         gain, None, config.batch,
                         torch.Generator().manual_seed(config.seed * 1000 + s))
                for s in range(config.seeds)]
        pred = np.array([realised_composition(r["block_phi"], r["block_phi2"], config.depths)
                         for r in runs])  # (seeds, depths, batch, 2)
        for k in ("phi", "phi2", "phi_b", "phi2_b"):
            res[k].append([[r[k][d] for r in runs] for d in range(len(config.depths))])
        res["pred_phi"].append(pred[..., 0].transpose(1, 0, 2).tolist())
        res["pred_phi2"].append(pred[..., 1].transpose(1, 0, 2).tolist())
        res["block_phi"].append([float(np.mean(r["block_phi"])) for r in runs])
        res["block_phi2"].append([float(np.mean(r["block_phi2"])) for r in runs])
    return {"widths": list(config.widths), "depths": list(config.depths), "gain": gain, **res}


@dataclass(frozen=True)
class SeluMomentsConfig(Config):
    """SeLU MLPs with :math:`\\mathcal N(0,1/n)` weights at each width of ``widths``; ``eps`` < 0
    means the standard SeLU, otherwise the depth-aware coefficients
    :func:`~gnelib.theory.moments.selu_coefficients`."""

    widths: tuple[int, ...] = param((128, 256), positive=True)
    depth: int = param(32, positive=True)
    eps: float = param(0.03)
    seeds: int = param(12, minimum=2)
    batch: int = param(4, positive=True)
    seed: int = param(0, minimum=0)


@register("bdi_selu_moments", SeluMomentsConfig,
          profiles={"smoke": dict(widths=(64, 128), depth=16, seeds=16),
                    "book": dict(widths=(128, 256), depth=16, seeds=80),
                    "full": dict(widths=(256, 512), depth=32, seeds=64)})
def bdi_selu_moments(config: SeluMomentsConfig) -> dict:
    """End-to-end φ, φ₂ of SeLU MLPs and their per-layer statistics (:func:`mlp_pass`), each
    indexed first by width: ``phi``/``phi2`` one per seed (batch means); ``q`` (pre-activation
    second moment), ``mean`` and ``m2`` (activation mean and second moment) one list over
    layers per seed; per input b: ``phi_b[w][s][b]`` the end-to-end φ and ``pred_phi[w][s][b]``
    the product of that network's own block φ's at that input (:func:`realised_composition`);
    ``act_phi[w][s][l][b]``/``act_phi2`` the SeLU derivative's moments
    :math:`\\tfrac1n\\sum_i d_i^2`, :math:`\\tfrac1n\\sum_i d_i^4` at layer l and
    ``q_cond[w][s][l][b]`` the variance of a pre-activation given that layer's input."""
    eps = None if config.eps < 0 else config.eps
    keys = ("phi", "phi2", "q", "mean", "m2", "phi_b", "pred_phi", "act_phi", "act_phi2", "q_cond")
    res = {k: [] for k in keys}
    for width in config.widths:
        runs = [mlp_pass(width, (config.depth,), "gaussian", "selu", 0.0, 1.0, eps,
                         config.batch, torch.Generator().manual_seed(config.seed * 1000 + s))
                for s in range(config.seeds)]
        for k in ("q", "mean", "m2", "act_phi", "act_phi2", "q_cond"):
            res[k].append([r[k] for r in runs])
        for k in ("phi", "phi2", "phi_b"):
            res[k].append([r[k][0] for r in runs])
        res["pred_phi"].append([realised_composition(r["block_phi"], r["block_phi2"],
                                                     (config.depth,))[0, :, 0].tolist()
                                for r in runs])
    return {"widths": list(config.widths), **res}


@dataclass(frozen=True)
class ResidualMomentsConfig(Config):
    """``blocks`` residual blocks x + s W₂ relu(s W₁ x) at width ``width`` with
    :math:`s=\\text{blocks}^{-p/4}` (p = 0: s = 1; see :func:`residual_moments`)."""

    width: int = param(128, positive=True)
    blocks: int = param(27, positive=True)
    p: float = param(2.0, minimum=0.0)
    seeds: int = param(8, minimum=2)
    batch: int = param(4, positive=True)
    seed: int = param(0, minimum=0)


@register("bdi_residual_moments", ResidualMomentsConfig,
          profiles={"smoke": dict(width=64, seeds=12), "book": dict(width=128, seeds=16),
                    "full": dict(width=256, seeds=32)})
def bdi_residual_moments(config: ResidualMomentsConfig) -> dict:
    """Exact φ(JJᵀ) and φ((JJᵀ)²) of a stack of scaled residual blocks per independent draw
    (:func:`residual_moments`), to compare with the addition and multiplication theorems and
    the shallow-network trick (:func:`gnelib.theory.moments.residual`): ``scale``, and ``phi``,
    ``phi2`` one entry per seed."""
    s = float(config.blocks) ** (-config.p / 4)
    a = residual_moments(config.width, config.blocks, s, seeds=config.seeds,
                         batch=config.batch, seed=config.seed)
    return {"scale": s, "phi": a[:, 0].tolist(), "phi2": a[:, 1].tolist()}


@dataclass(frozen=True)
class NormalizedStackConfig(Config):
    """Linear→norm→ReLU stacks of ``depth`` blocks with frozen batch statistics at every
    (width, batch) pair of ``widths`` × ``batches`` (see :func:`normalized_stack_phi`)."""

    widths: tuple[int, ...] = param((256, 512), positive=True)
    batches: tuple[int, ...] = param((128, 512), minimum=4)
    depth: int = param(6, minimum=2)
    norm: str = param("bn", choices=("bn", "smn"))
    centred: bool = param(False)
    draws: int = param(12, minimum=2)
    seed: int = param(0, minimum=0)


@register("bdi_normalized_stack", NormalizedStackConfig,
          profiles={"smoke": dict(widths=(128, 256), batches=(64, 256), draws=10),
                    "book": dict(widths=(128, 256), batches=(128, 512), draws=10),
                    "full": dict(widths=(512, 1024, 2048), batches=(128, 512, 2048), draws=16)})
def bdi_normalized_stack(config: NormalizedStackConfig) -> dict:
    """Exact per-block φ(JJᵀ) of BN/SMN stacks with frozen batch statistics
    (:func:`normalized_stack_phi`), to compare with the BN rate π/(π−1) (our derivation from
    the second-moment lemma): ``phi[w][b][d]`` is the mean over blocks 2..depth (the first
    block sees Gaussian, not post-ReLU, input) of draw d at width index w and batch index b."""
    phi = [[[float(normalized_stack_phi(w, b, config.depth, config.norm, config.centred,
                                        seed=config.seed * 100 + d)[1:].mean())
             for d in range(config.draws)] for b in config.batches] for w in config.widths]
    return {"widths": list(config.widths), "batches": list(config.batches), "phi": phi}


def _serial_net(width, norm, init, activation, slope, selu_eps, gen, blocks=5, in_channels=3,
                dims=2):
    from gnelib.nn.convnets import SerialNet
    return SerialNet(in_channels=in_channels, width=width, blocks=blocks, norm=norm, init=init,
                     activation=activation, slope=slope,
                     selu_eps=None if selu_eps < 0 else selu_eps, dims=dims, generator=gen)


_NORMS = ("bn", "smn", "sws", "l1", "none", "fixup")


@dataclass(frozen=True)
class ConvActivationFields(Config):
    """Fields shared by every convolutional BDI experiment: the initialisation, the activation
    (one of :data:`~gnelib.nn.convnets.CONV_ACTIVATIONS`) and the leaky slope."""

    init: str = param("kaiming", choices=CONV_INITS)
    activation: str = param("relu", choices=CONV_ACTIVATIONS)
    slope: float = param(0.18, minimum=0.0)


@dataclass(frozen=True)
class ConvNetFields(ConvActivationFields):
    """:class:`ConvActivationFields` plus the network: Chen et al.'s serial net
    (``arch='serial'``, norm ∈ bn/smn/sws/l1/none) or the CIFAR ResNet-(6·blocks+2)
    (``arch='resnet'``, norm ∈ bn/smn/fixup). ``selu_eps`` < 0 means the standard SeLU."""

    arch: str = param("serial", choices=("serial", "resnet"))
    blocks: int = param(5, positive=True)
    width: int = param(8, positive=True)
    norm: str = param("none", choices=_NORMS)
    selu_eps: float = param(-1.0)

    def __post_init__(self):
        super().__post_init__()
        allowed = ("bn", "smn", "fixup") if self.arch == "resnet" else ("bn", "smn", "sws", "l1", "none")
        check_choice(f"norm for arch {self.arch!r}", self.norm, allowed)


@dataclass(frozen=True)
class SerialGradientsConfig(ConvNetFields):
    """``draws`` fresh networks (:class:`ConvNetFields`) at initialisation on
    ``image``×``image`` Gaussian inputs (see :func:`init_gradient_norms`)."""

    image: int = param(16, positive=True)
    batch: int = param(32, positive=True)
    draws: int = param(30, minimum=2)
    seed: int = param(0, minimum=0)


@register("bdi_serial_gradients", SerialGradientsConfig,
          profiles={"smoke": dict(width=8, image=8, batch=8, draws=16),
                    "book": dict(width=8, image=8, batch=16, draws=32),
                    "full": dict(width=16, image=32, batch=128, draws=64)})
def bdi_serial_gradients(config: SerialGradientsConfig) -> dict:
    """Per-layer squared weight-gradient norms of Chen et al.'s serial network at
    initialisation (:func:`init_gradient_norms`, the paper's gradient figure taken at
    initialisation): ``grad_sq_norms`` holds one list (layers in depth order) per draw."""
    def make(gen):
        if config.arch == "resnet":
            from gnelib.nn.convnets import ResNet
            return ResNet(width=config.width, blocks=config.blocks, norm=config.norm,
                          generator=gen)
        return _serial_net(config.width, config.norm, config.init, config.activation,
                           config.slope, config.selu_eps, gen, config.blocks)

    a = init_gradient_norms(make, config.draws, (3, config.image, config.image),
                            batch=config.batch, seed=config.seed)
    return {"grad_sq_norms": a.tolist()}


@dataclass(frozen=True)
class ResNetGradientsConfig(SerialGradientsConfig):
    """:class:`SerialGradientsConfig` for the CIFAR ResNet family (ResNet-20 at ``blocks=3``,
    ResNet-56 at ``blocks=9``; norm ∈ bn/smn/fixup)."""

    arch: str = param("resnet", choices=("serial", "resnet"))
    blocks: int = param(3, positive=True)
    norm: str = param("bn", choices=_NORMS)


@register("bdi_resnet_gradients", ResNetGradientsConfig,
          profiles={"smoke": dict(blocks=1, width=8, image=8, batch=8, draws=16),
                    "book": dict(blocks=3, width=8, image=8, batch=16, draws=16),
                    "full": dict(blocks=9, width=16, image=32, batch=128, draws=32)})
def bdi_resnet_gradients(config: ResNetGradientsConfig) -> dict:
    """Per-layer squared weight-gradient norms of the ResNet at initialisation
    (:func:`bdi_serial_gradients` with ``arch='resnet'``): ``grad_sq_norms`` one list per draw."""
    return bdi_serial_gradients(config)


@dataclass(frozen=True)
class ConvBlockMomentsConfig(ConvActivationFields):
    """Per-block Jacobian moments of un-normalised serial nets at each width of ``widths``."""

    widths: tuple[int, ...] = param((8, 16, 32), positive=True)
    image: int = param(16, positive=True)
    batch: int = param(2, positive=True)
    probes: int = param(4, minimum=2)
    draws: int = param(6, minimum=2)
    seed: int = param(0, minimum=0)


@register("bdi_conv_block_moments", ConvBlockMomentsConfig,
          profiles={"smoke": dict(widths=(8, 16), image=8, draws=3),
                    "book": dict(widths=(8, 16, 32), image=8, draws=4),
                    "full": dict(widths=(8, 16, 32, 64), image=32, draws=16, probes=8)})
def bdi_conv_block_moments(config: ConvBlockMomentsConfig) -> dict:
    """(φ, φ₂) of each conv→activation block of an un-normalised serial net at
    initialisation (:func:`conv_block_moments`, Gaussian inputs): ``phi[w][d]`` and
    ``phi2[w][d]`` one list over the blocks for width index w and draw d; ``square`` the
    indices of the blocks whose output has the shape of their input (stride 1, as many channels
    out as in: the blocks the square component entries describe)."""
    phi, phi2, square = [], [], []
    for width in config.widths:
        pw, p2w = [], []
        for d in range(config.draws):
            gen = torch.Generator().manual_seed(config.seed * 1000 + d)
            model = _serial_net(width, "none", config.init, config.activation, config.slope,
                                -1.0, gen).double()
            x = torch.randn(config.batch, 3, config.image, config.image, generator=gen,
                            dtype=torch.float64)
            a = conv_block_moments(model, x, probes=config.probes, generator=gen)
            if not square:
                square = square_blocks(model, x)
            pw.append(a[:, 0].tolist())
            p2w.append(a[:, 1].tolist())
        phi.append(pw)
        phi2.append(p2w)
    return {"widths": list(config.widths), "phi": phi, "phi2": phi2, "square": square}


@dataclass(frozen=True)
class TrainConfig(ConvNetFields):
    """SGD training of a network (:class:`ConvNetFields`) on MNIST-1D with 1-d
    convolutions (or CIFAR-10 with ``dataset='cifar10'``), momentum 0.9, weight decay 5e-4.
    Per-layer squared weight-gradient norms of the training batch are recorded every
    ``grad_every`` steps."""

    dataset: str = param("mnist1d", choices=("mnist1d", "cifar10"))
    steps: int = param(300, positive=True)
    lr: float = param(0.02, positive=True)
    batch_size: int = param(64, positive=True)
    n_train: int = param(4000, positive=True)
    eval_every: int = param(50, positive=True)
    grad_every: int = param(10, positive=True)
    seeds: int = param(3, positive=True)
    seed: int = param(0, minimum=0)


_TRAIN_PROFILES = {
    "smoke": dict(blocks=2, width=4, steps=30, batch_size=32, n_train=512, eval_every=10,
                  grad_every=5, seeds=3),
    "book": dict(blocks=2, width=8, steps=250, batch_size=32, eval_every=50, grad_every=10,
                 seeds=3),
    "full": dict(dataset="cifar10", blocks=5, width=16, steps=50000, batch_size=128, lr=0.01,
                 n_train=50000, eval_every=1000, grad_every=100, seeds=4)}


def _train_one(config, seed: int, device, progress) -> dict:
    from gnelib.data import cifar10, mnist1d
    from gnelib.nn.convnets import ResNet
    from gnelib.training import train

    if config.dataset == "cifar10":
        data, in_ch, dims = cifar10(), 3, 2
    else:
        data, in_ch, dims = mnist1d(), 1, 1
        data.x_train, data.x_test = data.x_train.unsqueeze(1), data.x_test.unsqueeze(1)
    data = data.subset(config.n_train)
    gen = torch.Generator().manual_seed(seed)
    if config.arch == "serial":
        model = _serial_net(config.width, config.norm, config.init, config.activation,
                            config.slope, config.selu_eps, gen, config.blocks, in_ch, dims)
    else:
        model = ResNet(in_channels=in_ch, width=config.width, blocks=config.blocks,
                       norm=config.norm, dims=dims, generator=gen)
    layers = [m.weight for m in weight_layers(model)]
    grad_step, grads = [], []

    def record(step, _model, _loss):
        if step == 1 or step % config.grad_every == 0:
            grad_step.append(step)
            grads.append([float(w.grad.pow(2).sum()) if w.grad is not None else 0.0
                          for w in layers])

    hist = train(model, data, config.steps, batch_size=config.batch_size, lr=config.lr,
                 momentum=0.9, weight_decay=5e-4, device=device, generator=gen,
                 eval_every=config.eval_every, progress=progress, desc="bdi_train",
                 callback=record)
    return {"eval_step": hist.eval_step, "test_accuracy": hist.test_accuracy,
            "final_accuracy": hist.test_accuracy[-1] if hist.test_accuracy else None,
            "diverged_step": hist.diverged_step, "grad_step": grad_step, "grad_sq_norms": grads}


@register("bdi_train", TrainConfig, profiles=_TRAIN_PROFILES)
def bdi_train(config: TrainConfig, device="cpu", progress: bool = False) -> dict:
    """Train ``seeds`` networks (seed ``1000·seed + s``; :func:`~gnelib.training.train`) and
    return, per seed (``runs``), the test-accuracy history (``eval_step``, ``test_accuracy``,
    ``final_accuracy``, ``diverged_step``) and the per-layer squared gradient norms of the
    training batch (``grad_step``, ``grad_sq_norms``: one list over weight layers per recorded
    step)."""
    return {"runs": [_train_one(config, config.seed * 1000 + s, device, progress)
                     for s in range(config.seeds)]}


@dataclass(frozen=True)
class ResNetTrainConfig(TrainConfig):
    """:class:`TrainConfig` for the CIFAR ResNet family (ResNet-20 at ``blocks=3``, ResNet-56 at
    ``blocks=9``)."""

    arch: str = param("resnet", choices=("serial", "resnet"))
    blocks: int = param(3, positive=True)
    norm: str = param("bn", choices=_NORMS)


@register("bdi_resnet_train", ResNetTrainConfig,
          profiles={"smoke": dict(blocks=1, width=4, steps=20, batch_size=32, n_train=512,
                                  eval_every=10, grad_every=2, seeds=1),
                    "book": dict(blocks=3, width=8, steps=150, batch_size=32, eval_every=50,
                                 grad_every=5, seeds=1),
                    "full": dict(dataset="cifar10", blocks=9, width=16, steps=78000,
                                 batch_size=128, lr=0.1, n_train=50000, eval_every=1000,
                                 grad_every=100, seeds=4)})
def bdi_resnet_train(config: ResNetTrainConfig, device="cpu", progress: bool = False) -> dict:
    """:func:`bdi_train` for the ResNet family (BN, SMN or Fixup-style scaling): per-layer
    gradient norms during training, the counterpart of the paper's ResNet-56 gradient figure."""
    return {"runs": [_train_one(config, config.seed * 1000 + s, device, progress)
                     for s in range(config.seeds)]}
