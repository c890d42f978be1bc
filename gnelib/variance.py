"""Variance transmission (the model behind Liu et al. 2021, derived in the PWS chapter):
predictions in float64 numpy, and measurement tools that return tidy records (lists of
dicts, one per layer and step) of filter sums, average weight gradients and forward moments.

Notation: a layer computes :math:`y_k = \\mathbf w_k^\\top\\mathbf x` on patches of fan-in n;
per filter :math:`m_k` is the mean, :math:`v_k` the biased variance and
:math:`S_k = n m_k = \\mathbf 1^\\top\\mathbf w_k` the filter sum.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .errors import check_positive_int

__all__ = ["relu_moments", "mean_path_share", "random_weight_second_moment", "transmitted_second_moment", "shift_gain", "MEAN_PATH_SHARE",
           "pws_relu_gain", "pws_gain", "holding_alpha", "bn_ws_correlation", "filter_stats",
           "filter_sums", "average_weight_gradient", "weight_layers", "weight_records",
           "gradient_records", "forward_records", "shifted_chain_records",
           "pws_chain_records"]

#: Share of a ReLU output's second moment carried by its mean, mu^2/E[x^2] = 1/pi (eq. relu-moments).
MEAN_PATH_SHARE = 1.0 / math.pi


def relu_moments(q):
    """Moments of :math:`x = \\max(y, 0)` for :math:`y\\sim\\mathcal N(0, q)` (eq. ``pws-relu-moments``):
    returns ``(second_moment, mean_squared, variance)`` = :math:`(q/2,\\ q/2\\pi,\\ (q/2)(1-1/\\pi))`."""
    q = np.asarray(q, dtype=np.float64)
    return q / 2, q / (2 * np.pi), q / 2 * (1 - 1 / np.pi)


def mean_path_share(n=None):
    r"""Lemma ``pws-relu-moments``: the share of a ReLU layer's second moment carried by the
    patch mean, :math:`E[\bar x^2]/E[x^2] = 1/\pi + (1-1/\pi)/n` for n units whose
    pre-activations are i.i.d. zero-mean Gaussians (1/pi as n grows)."""
    if n is None:
        return 1 / np.pi
    return 1 / np.pi + (1 - 1 / np.pi) / n


def random_weight_second_moment(n, s_w, c, m2, xbar2):
    r"""Theorem ``pws-transmission`` (b): for weights :math:`w_{kj}=z_{kj}+\delta_k` drawn
    independently of the inputs, z i.i.d. with mean 0 and variance s_w, and filter shifts
    with variance c^2/n^2, :math:`E[y^2] = n s_w E[x^2] + c^2 E[\bar x^2]` where
    :math:`E[x^2]` (``m2``) is the mean squared input entry and :math:`\bar x` the patch mean."""
    return n * s_w * m2 + np.asarray(c, dtype=np.float64) ** 2 * xbar2


def transmitted_second_moment(n, v_bar, s2_bar, sigma2, mu2):
    """Theorem ``pws-transmission``: for inputs with common mean mu and variance sigma^2,
    uncorrelated and independent of the weights, the channel-averaged output second moment is
    :math:`n\\bar v\\sigma^2 + \\overline{S^2}(\\sigma^2/n + \\mu^2)` (exact)."""
    return n * v_bar * sigma2 + s2_bar * (sigma2 / n + mu2)


def shift_gain(c, n=None):
    """Corollary ``pws-shift-law``: per-layer gain of the second moment of a He ReLU chain
    whose filter sums have mean square 2 + c^2: :math:`1 + c^2/(2\\pi)`; with ``n`` given the
    exact version including the O(1/n) term, :math:`(1-\\tfrac1\\pi)(1-\\tfrac1n) +
    (2+c^2)\\big(\\tfrac{1-1/\\pi}{2n} + \\tfrac1{2\\pi}\\big)` (centred variance 2(n-1)/n^2)."""
    c = np.asarray(c, dtype=np.float64)
    if n is None:
        return 1 + c**2 / (2 * np.pi)
    _, mu2, sigma2 = relu_moments(1.0)
    return transmitted_second_moment(n, 2 * (n - 1) / n**2, 2 + c**2, sigma2, mu2)


def pws_relu_gain(alpha=1.0, eps=0.0, v=None, n=None, n_f=None):
    """Proposition ``pws-depth-decay``: per-layer gain of the second moment through a PWS
    layer (bias 0) followed by a ReLU, inputs from a zero-mean symmetric pre-activation:
    :math:`\\alpha^2 (n/n_f)\\,(1-1/\\pi)\\, v/(v+\\epsilon)` (the shift path is gone)."""
    gain = np.asarray(alpha, dtype=np.float64) ** 2 * (1 - 1 / np.pi)
    if n is not None and n_f is not None:
        gain = gain * n / n_f
    if eps and v is not None:
        gain = gain * v / (v + eps)
    return gain


def holding_alpha():
    """The alpha that makes :func:`pws_relu_gain` equal 1 at eps = 0: :math:`(1-1/\\pi)^{-1/2}`."""
    return (1 - 1 / np.pi) ** -0.5


def pws_gain(v, eps):
    """Proposition ``pws-eps-gain``: the norm of a PWS filter is
    :math:`\\sqrt2\\,\\alpha_k\\sqrt{n/n_f}\\,\\sqrt{v/(v+\\epsilon)}`; this returns the factor
    :math:`\\sqrt{v/(v+\\epsilon)}`."""
    v = np.asarray(v, dtype=np.float64)
    return np.sqrt(v / (v + eps))


def bn_ws_correlation(v, m):
    """Proposition ``pws-bn-ws``: for i.i.d. inputs the correlation between the BN output of a
    filter and its WS output is :math:`\\sqrt{v/(v+m^2)}`."""
    v = np.asarray(v, dtype=np.float64)
    return np.sqrt(v / (v + np.asarray(m, dtype=np.float64) ** 2))


# --------------------------------------------------------------------------- measurements

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


def pws_chain_records(width: int, depth: int, n_samples: int, alpha: float = 1.0,
                      eps: float = 0.0, data_init: bool = False, shift: float = 0.0,
                      generator: torch.Generator | None = None) -> list[dict]:
    """A chain of ``depth`` PWS dense layers (float32, bias 0) each followed by a ReLU, on
    standard Gaussian inputs; raw weights may carry a per-filter shift of sd ``shift``/n
    (which PWS must ignore). Per layer: the second moment and the unbiased variance of the
    pre-activation (proposition ``pws-depth-decay``)."""
    from .pws import PWSConv1d

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
