"""Measurements of variance transmission (PWS chapter): tidy records (lists of dicts, one per
layer and step) of filter sums, average weight gradients and forward moments."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gnelib.base.errors import check_positive_int
from gnelib.theory.variance import relu_moments, transmission_terms


def filter_stats(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-filter mean m_k, biased variance v_k and sum S_k = n m_k of a weight
    ``(C_out, C_in, *k)`` or ``(out, in)`` (the definitions above theorem ``pws-transmission``)."""
    w = weight.detach().reshape(weight.shape[0], -1)
    return {"m": w.mean(1), "v": w.var(1, unbiased=False), "S": w.sum(1), "n": w.shape[1]}


def filter_sums(weight: torch.Tensor) -> torch.Tensor:
    """The filter sums :math:`S_k = \\mathbf 1^\\top \\mathbf w_k`, one per output channel."""
    return weight.detach().reshape(weight.shape[0], -1).sum(1)


def average_weight_gradient(grad: torch.Tensor) -> torch.Tensor:
    """The average weight gradient of each filter, :math:`\\bar g_k = \\frac1n\\sum_j
    \\partial L/\\partial w_{kj}` (theorem ``pws-average-gradient``)."""
    return grad.detach().reshape(grad.shape[0], -1).mean(1)


def _raw_weight(module: nn.Module):
    """The raw (trainable) weight of a layer: ``weight`` or WN's ``original1`` direction."""
    p = getattr(module, "parametrizations", None)
    if p is not None and "weight" in p:
        return p.weight.original1
    w = getattr(module, "weight", None)
    return w if isinstance(w, torch.Tensor) and w.dim() >= 2 else None


def _effective_weight(module: nn.Module):
    if hasattr(module, "kernel") and callable(module.kernel):
        return module.kernel()
    return module.weight


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv/linear-like layers of ``model`` in order (modules with a weight of dim >= 2
    or a ``kernel()``), skipping containers."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            continue
        if hasattr(m, "kernel") and callable(m.kernel) or (
                isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))):
            out.append((name, m))
    return out


def weight_records(model: nn.Module, step: int | None = None, effective: bool = True) -> list[dict]:
    """One record per layer: mean :math:`|S_k|`, rms :math:`S_k` and variance of S_k across filters, and n*v
    (the "variance" n Var(w)), of the effective kernel (``effective``) or of the raw weight."""
    recs = []
    with torch.no_grad():
        for depth, (name, m) in enumerate(weight_layers(model)):
            w = _effective_weight(m) if effective else _raw_weight(m)
            st = filter_stats(w)
            s = st["S"].double()
            recs.append({"step": step, "depth": depth, "layer": name, "n": st["n"],
                         "mean_abs_S": s.abs().mean().item(), "rms_S": s.pow(2).mean().sqrt().item(),
                         "var_S": s.var(unbiased=False).item(),
                         "n_v": (st["n"] * st["v"].double().mean()).item()})
    return recs


def gradient_records(model: nn.Module, step: int | None = None) -> list[dict]:
    """After ``backward()``: per layer, the mean absolute average weight gradient of the raw weight
    and its ratio to the rms weight gradient (theorem ``pws-average-gradient``)."""
    recs = []
    for depth, (name, m) in enumerate(weight_layers(model)):
        w = _raw_weight(m)
        if w is None or w.grad is None:
            continue
        gbar = average_weight_gradient(w.grad).double()
        rms = w.grad.double().pow(2).mean().sqrt().item()
        recs.append({"step": step, "depth": depth, "layer": name,
                     "mean_abs_gbar": gbar.abs().mean().item(),
                     "ratio": gbar.abs().mean().item() / rms if rms > 0 else float("nan")})
    return recs


def forward_records(model: nn.Module, x: torch.Tensor, step: int | None = None,
                    layers: list[tuple[str, nn.Module]] | None = None) -> list[dict]:
    """Run ``model(x)`` without gradients and return, per layer output (pre-activation), the
    mean, variance and second moment over every entry, and the mean over channels of the
    squared per-channel means (the "shift" of the output)."""
    layers = weight_layers(model) if layers is None else layers
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: outs.__setitem__(name, out.detach()))
             for name, m in layers]
    was = model.training
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    recs = []
    for depth, (name, _) in enumerate(layers):
        y = outs[name].double()
        ch = y.transpose(0, 1).reshape(y.shape[1], -1)
        recs.append({"step": step, "depth": depth, "layer": name, "mean": y.mean().item(),
                     "var": y.var(unbiased=False).item(), "second_moment": y.pow(2).mean().item(),
                     "channel_mean_sq": ch.mean(1).pow(2).mean().item()})
    return recs



def transmission_records(model: nn.Module, x: torch.Tensor, replica: int = 0) -> list[dict]:
    """Theorem ``pws-transmission`` (a) measured layer by layer on a
    :class:`~gnelib.nn.kernelmlp.KernelMLP` (replica ``replica``) fed the batch ``x``. For layer
    l with input entries of mean μ and (biased) variance σ² over the batch and the units, and
    effective kernel with mean filter variance v̄ and mean squared filter sum mean(S²):
    ``centred`` = n v̄ σ², ``shift`` = mean(S²)(μ² + σ²/n)
    (:func:`~gnelib.theory.variance.transmission_terms`), ``bias`` = mean over filters of
    b_k² + 2 b_k μ S_k, and ``q`` the measured mean of the squared pre-activations (their
    sum is its prediction when the input entries are uncorrelated, with a common mean and
    variance). Also ``mean_S2``, ``n_v``, ``mu2``, ``sigma2``, and the two paths measured
    literally, from :math:`y_k = S_k\\bar x + \\sum_j K_{kj}(x_j-\\bar x)` with :math:`\\bar x`
    each sample's mean over the units: ``shift_measured`` the mean square of
    :math:`S_k\\bar x`, ``centred_measured`` that of the rest (each path's prediction is its
    expectation over i.i.d. input entries; the mean cross term is not recorded).

    Used in: PWS chapter, section "What grows first"."""
    with torch.no_grad():
        inputs, pre, _ = model.trace(x)
        kernels = model.kernels()
        recs = []
        for depth, (xin, y, k) in enumerate(zip(inputs, pre, kernels)):
            xin, y, k = xin[replica].double(), y[replica].double(), k[replica].double()
            b = model.bias[replica, depth].double()
            n = k.shape[1]
            mu = xin.mean().item()
            sigma2 = xin.var(unbiased=False).item()
            s = k.sum(1)
            v_bar = k.var(1, unbiased=False).mean().item()
            s2 = s.pow(2).mean().item()
            centred, shift = transmission_terms(n, v_bar, s2, sigma2, mu * mu)
            xbar = xin.mean(1, keepdim=True)
            recs.append({"depth": depth, "n": n, "centred": float(centred), "shift": float(shift),
                         "bias": (b.pow(2) + 2 * b * mu * s).mean().item(),
                         "q": y.pow(2).mean().item(), "mean_S2": s2, "n_v": n * v_bar,
                         "mu2": mu * mu, "sigma2": sigma2,
                         "shift_measured": (xbar * s).pow(2).mean().item(),
                         "centred_measured": ((xin - xbar) @ k.T).pow(2).mean().item()})
    return recs


# --------------------------------------------------------------------------- chains

def _check_chain(width, depth, n_samples):
    check_positive_int("width", width)
    check_positive_int("depth", depth)
    check_positive_int("n_samples", n_samples, minimum=2)


def shifted_chain_records(width: int, depth: int, n_samples: int, c: float = 0.0,
                          generator: torch.Generator | None = None) -> list[dict]:
    """A ReLU chain of ``depth`` He-initialised dense layers (float64, no bias) whose filters
    get a random common shift :math:`\\delta_k\\sim\\mathcal N(0, c^2/n^2)`, so that
    :math:`\\mathrm{sd}(S_k)` grows by c (the setting of corollary ``pws-shift-law``). Inputs are
    ReLU of standard Gaussians. Per layer: the pre-activation second moment q, the gain
    q_l/q_{l-1}, and the mean-path share of the ReLU output: the mean over samples of the
    squared per-sample mean over units (the patch mean of the next layer), over the second
    moment (:func:`mean_path_share`)."""
    _check_chain(width, depth, n_samples)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(n_samples, width, generator=g, dtype=torch.float64))
    recs, q_prev = [], None
    for layer in range(depth):
        w = torch.randn(width, width, generator=g, dtype=torch.float64) * math.sqrt(2 / width)
        w = w + torch.randn(width, 1, generator=g, dtype=torch.float64) * (c / width)
        y = x @ w.T
        q = y.pow(2).mean().item()
        x = torch.relu(y)
        share = (x.mean(1).pow(2).mean() / x.pow(2).mean()).item()
        recs.append({"depth": layer + 1, "c": c, "second_moment": q,
                     "gain": q / q_prev if q_prev is not None else float("nan"),
                     "mean_share": share})
        q_prev = q
    return recs


def shifted_chain_gains(width: int, depth: int, n_samples: int, c: float, seeds: int,
                        generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """``seeds`` independent ReLU chains at once (float64, no bias): He weights plus a shift
    :math:`\\delta_k` per filter whose spread is exactly c (:math:`\\delta` is drawn Gaussian and
    rescaled so that the mean over filters of :math:`(n\\delta_k)^2` is :math:`c^2`: by symmetry
    :math:`E[\\delta_k^2]=c^2/n^2` still, with less noise). Inputs are ReLU of standard
    Gaussians. Returns ``(seeds, depth)`` arrays: ``q`` (pre-activation second moment), ``gain``
    :math:`q_l/q_{l-1}` (NaN at layer 1) and the paired shift increment ``increment``
    :math:`(q_l-q_l^{0})/q_{l-1}`, where :math:`q_l^0` is the same layer's output without the
    shift, from the same input and the same :math:`z`; its expectation is :math:`c^2` times
    half the mean-path share (corollary ``pws-shift-law``).

    Used in: PWS chapter, section "Variance transmission"."""
    _check_chain(width, depth, n_samples)
    check_positive_int("seeds", seeds)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    opts = dict(generator=g, dtype=torch.float64)
    x = torch.relu(torch.randn(seeds, n_samples, width, **opts))
    q = np.zeros((seeds, depth))
    inc = np.full((seeds, depth), np.nan)
    for layer in range(depth):
        z = torch.randn(seeds, width, width, **opts) * math.sqrt(2 / width)
        y0 = torch.bmm(x, z.transpose(1, 2))
        y = y0
        if c:
            d = torch.randn(seeds, 1, width, **opts)
            d = d / d.pow(2).mean(-1, keepdim=True).sqrt() * (c / width)
            y = y0 + x.sum(-1, keepdim=True) * d
        q[:, layer] = y.pow(2).mean((1, 2)).numpy()
        if layer:
            inc[:, layer] = (q[:, layer] - y0.pow(2).mean((1, 2)).numpy()) / q[:, layer - 1]
        x = torch.relu(y)
    gain = np.full((seeds, depth), np.nan)
    gain[:, 1:] = q[:, 1:] / q[:, :-1]
    return {"q": q, "gain": gain, "increment": inc}


def relu_share_draws(n: int, n_draws: int, generator: torch.Generator | None = None) -> dict:
    """Monte Carlo of lemma ``pws-relu-moments``: ``n_draws`` vectors of n i.i.d. ReLU(N(0,1))
    units; returns the per-draw squared mean ``xbar2`` and mean square ``x2`` (float64
    arrays), whose mean ratio estimates the mean-path share :math:`1/\\pi+(1-1/\\pi)/n`.

    Used in: PWS chapter, section "Variance transmission"."""
    check_positive_int("n", n)
    check_positive_int("n_draws", n_draws, minimum=2)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(n_draws, n, generator=g, dtype=torch.float64))
    return {"xbar2": x.mean(1).pow(2).numpy(), "x2": x.pow(2).mean(1).numpy()}


def backward_forward_gains(model: nn.Module, x: torch.Tensor,
                           generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """Per-layer gains at one point of a :class:`~gnelib.nn.kernelmlp.KernelMLP` (every
    replica): ``forward`` :math:`q_l/q_{l-1}` of the pre-activation second moments and
    ``backward`` :math:`E[g_{l}^2]/E[g_{l+1}^2]` of the gradients with respect to the
    pre-activations, for the loss :math:`\\sum r\\cdot\\text{logits}` with Gaussian r; arrays
    (replicas, depth - 1), layer pairs in order; and the second moments themselves, ``q`` and
    ``gg`` (replicas, depth).

    Used in: PWS chapter, section "Equal footing"."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    _, pre, out = model.trace(x)
    for y in pre:
        y.retain_grad()
    r = torch.randn(out.shape, generator=g, dtype=out.dtype)
    (out * r).sum().backward()
    q = torch.stack([y.detach().double().pow(2).mean((1, 2)) for y in pre], 1)
    gg = torch.stack([y.grad.double().pow(2).mean((1, 2)) for y in pre], 1)
    model.zero_grad(set_to_none=True)
    return {"forward": (q[:, 1:] / q[:, :-1]).numpy(), "backward": (gg[:, :-1] / gg[:, 1:]).numpy(),
            "q": q.numpy(), "gg": gg.numpy()}


def pws_chain_records(width: int, depth: int, n_samples: int, alpha: float = 1.0,
                      eps: float = 0.0, data_init: bool = False, shift: float = 0.0,
                      generator: torch.Generator | None = None) -> list[dict]:
    """A chain of ``depth`` PWS dense layers (float32, bias 0) each followed by a ReLU, on
    standard Gaussian inputs; raw weights may carry a per-filter shift of sd ``shift``/n
    (which PWS must ignore). Per layer: the second moment and the unbiased variance of the
    pre-activation (proposition ``pws-depth-decay``)."""
    from gnelib.nn.convs import PWSConv1d

    _check_chain(width, depth, n_samples)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randn(n_samples, width, 1, generator=g)
    recs = []
    for layer in range(depth):
        conv = PWSConv1d(width, width, 1, eps=eps, alpha_init=alpha, data_init=data_init,
                         generator=g)
        if shift:
            with torch.no_grad():
                conv.weight.add_(torch.randn(width, 1, 1, generator=g) * shift / width)
        with torch.no_grad():
            y = conv(x)
        recs.append({"depth": layer + 1, "alpha": alpha, "data_init": data_init,
                     "second_moment": y.double().pow(2).mean().item(),
                     "var": y.double().var().item()})
        x = torch.relu(y)
    return recs
