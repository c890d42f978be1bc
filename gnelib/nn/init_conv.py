"""Initialisations used with block dynamical isometry (Chen et al. 2020): Haar orthogonal,
delta-orthogonal convolution kernels, Fixup-style residual branch scaling, and a helper that
initialises every conv/linear weight of a model by scheme name."""
from __future__ import annotations

import math

import torch
from torch import nn

from gnelib.base.errors import check_choice, check_positive, check_positive_int

__all__ = ["haar_orthogonal_", "delta_orthogonal_", "fixup_scale", "CONV_INITS", "init_model_"]

#: Schemes :func:`init_model_` knows.
CONV_INITS = ("kaiming", "xavier", "orthogonal", "delta_orthogonal")


def haar_orthogonal_(w: torch.Tensor, gain: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``w`` (out × rest, flattened) with a Haar-distributed (semi-)orthogonal matrix times
    ``gain``: ``torch.nn.init.orthogonal_``, which takes the QR factor of a Gaussian matrix with
    the signs of R's diagonal moved into Q (Mezzadri 2007), so rows are orthonormal when
    out ≤ rest and columns otherwise."""
    with torch.no_grad():
        return nn.init.orthogonal_(w, gain=float(gain), generator=generator)


def delta_orthogonal_(w: torch.Tensor, gain: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Delta-orthogonal conv kernel (Xiao et al. 2018): zero everywhere except the centre tap,
    which is a Haar (semi-)orthogonal c_out × c_in matrix times ``gain``; the conv's Jacobian is
    then that matrix at every position (φ = g², ϕ = 0 for square layers)."""
    if w.ndim < 3:
        raise ValueError(f"delta_orthogonal_ needs a conv kernel (ndim >= 3), got shape {tuple(w.shape)}")
    if any(k % 2 == 0 for k in w.shape[2:]):
        raise ValueError(f"delta_orthogonal_ needs odd kernel sizes, got {tuple(w.shape[2:])}")
    with torch.no_grad():
        w.zero_()
        centre = (slice(None), slice(None)) + tuple(k // 2 for k in w.shape[2:])
        tap = torch.empty(w.shape[0], w.shape[1], dtype=w.dtype)
        haar_orthogonal_(tap, gain, generator)
        w[centre] = tap
    return w


def fixup_scale(num_blocks: int, p: float = 2.0, m: int = 2) -> float:
    """Fixup-style factor :math:`L^{-p/(2m)}` for each of the m convolutions of a residual branch
    among L blocks (Zhang et al. 2019; Chen et al.'s variant keeps the last conv non-zero): the
    branch φ scales as :math:`L^{-p}`, so the end-to-end :math:`\\phi=(1+cL^{-p})^L` stays bounded
    for p > 1 (the shallow-network trick)."""
    num_blocks = check_positive_int("num_blocks", num_blocks)
    p = check_positive("p", p)
    m = check_positive_int("m", m)
    return float(num_blocks) ** (-p / (2 * m))


def init_model_(model: nn.Module, scheme: str = "kaiming", gain: float = math.sqrt(2.0),
                generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every ``Conv1d``/``Conv2d``/``Linear`` weight of ``model`` with ``scheme``:

    - ``kaiming``: :math:`\\mathcal N(0, g^2/\\text{fan-in})` (He et al. 2015 with g = √2);
    - ``xavier``: :math:`\\mathcal N(0, 2g^2/(\\text{fan-in}+\\text{fan-out}))`, g as given;
    - ``orthogonal``: :func:`haar_orthogonal_` on the flattened kernel, times g;
    - ``delta_orthogonal``: :func:`delta_orthogonal_` for convs, orthogonal for linear layers.

    Biases are zeroed. The gain g realises φ_W·φ_act = 1: √2 for ReLU, √(2/(1+γ²)) for leaky
    ReLU, 1 for tanh and SeLU.
    """
    check_choice("init", scheme, CONV_INITS)
    g = float(gain)
    for mod in model.modules():
        if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        w = mod.weight
        with torch.no_grad():
            fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
            if scheme == "kaiming":
                w.normal_(0.0, g / math.sqrt(fan_in), generator=generator)
            elif scheme == "xavier":
                w.normal_(0.0, g * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
            elif scheme == "delta_orthogonal" and w.ndim >= 3 and all(k % 2 for k in w.shape[2:]):
                delta_orthogonal_(w, g, generator)
            else:
                haar_orthogonal_(w, g, generator)
            if mod.bias is not None:
                mod.bias.zero_()
    return model
