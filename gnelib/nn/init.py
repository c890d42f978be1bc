"""Weight initialisation: one module, one meaning of ``gain``.

``gain`` is always the **full** gain :math:`g` of the scheme, i.e. the weight is
:math:`g\\,\\times` a matrix of unit scale:

- ``he`` (also ``kaiming``): :math:`\\mathcal N(0, g^2/n_\\text{in})`, default :math:`g=\\sqrt2`;
- ``gaussian``: :math:`\\mathcal N(0, g^2/n_\\text{in})`, default 1;
- ``xavier``: :math:`\\mathcal N(0, 2g^2/(n_\\text{in}+n_\\text{out}))`, default 1;
- ``orthogonal``: :math:`g\\,\\times` a Haar (semi-)orthogonal matrix, default 1;
- ``delta_orthogonal``: a conv kernel that is zero but for the centre tap, :math:`g\\,\\times`
  Haar, default 1.

For a square layer the block scale is :math:`s = n\\Var(W_{ij}) = g^2` in every case
(:func:`gnelib.theory.relu.relu_block_scale`), and the gain that makes
:math:`\\phi_W\\phi_\\text{act}=1` is :math:`\\sqrt2` for ReLU, :math:`\\sqrt{2/(1+\\gamma^2)}` for
leaky ReLU, 1 for tanh and SeLU (block dynamical isometry chapter).
``n_in`` is the fan-in (input channels × kernel size). Built on ``torch.nn.init``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gnelib.base.errors import check_choice, check_positive, check_positive_int

__all__ = ["INITS", "CONV_INITS", "default_gain", "init_weight_", "init_model_", "haar_orthogonal_",
           "delta_orthogonal_", "fixup_scale"]

#: Initialisation schemes (``kaiming`` is another name for ``he``).
INITS = ("he", "kaiming", "gaussian", "xavier", "orthogonal", "delta_orthogonal")
#: The schemes the conv nets of the block dynamical isometry chapter compare.
CONV_INITS = ("kaiming", "xavier", "orthogonal", "delta_orthogonal")


def default_gain(scheme: str) -> float:
    """The gain a scheme uses when none is given: √2 for ``he``/``kaiming``, else 1."""
    check_choice("init", scheme, INITS)
    return math.sqrt(2.0) if scheme in ("he", "kaiming") else 1.0


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


def init_weight_(weight: torch.Tensor, scheme: str, gain: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Initialise ``weight`` (out × in [× kernel]) in place with ``scheme`` and full gain
    ``gain`` (default :func:`default_gain`); see the module docstring for the table.
    ``delta_orthogonal`` on a dense weight (or an even kernel) falls back to ``orthogonal``."""
    check_choice("init", scheme, INITS)
    g = default_gain(scheme) if gain is None else float(gain)
    with torch.no_grad():
        fan_in = weight[0].numel()
        if scheme in ("he", "kaiming", "gaussian"):
            return weight.normal_(0.0, g / math.sqrt(fan_in), generator=generator)
        if scheme == "xavier":
            fan_out = weight.shape[0] * weight[0, 0].numel()
            return weight.normal_(0.0, g * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
        if scheme == "delta_orthogonal" and weight.ndim >= 3 and all(k % 2 for k in weight.shape[2:]):
            return delta_orthogonal_(weight, g, generator)
        return haar_orthogonal_(weight, g, generator)


def init_model_(model: nn.Module, scheme: str = "kaiming", gain: float | None = None,
                generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every dense/conv weight of ``model`` (``nn.Linear``, ``nn.Conv1d``,
    ``nn.Conv2d`` and the re-parametrised convolutions of :mod:`gnelib.nn.convs`, whose raw
    weight is ``weight``) with :func:`init_weight_` (``scheme``, full ``gain``); biases are
    zeroed."""
    from gnelib.nn.convs import WEIGHT_LAYERS

    check_choice("init", scheme, INITS)
    for mod in model.modules():
        if not isinstance(mod, WEIGHT_LAYERS):
            continue
        init_weight_(mod.weight, scheme, gain, generator)
        if mod.bias is not None:
            with torch.no_grad():
                mod.bias.zero_()
    return model


def fixup_scale(num_blocks: int, p: float = 2.0, m: int = 2) -> float:
    """Fixup-style factor :math:`L^{-p/(2m)}` for each of the m convolutions of a residual branch
    among L blocks (Zhang et al. 2019; Chen et al.'s variant keeps the last conv non-zero): the
    branch φ scales as :math:`L^{-p}`, so the end-to-end :math:`\\phi=(1+cL^{-p})^L` stays bounded
    for p > 1 (the shallow-network trick)."""
    num_blocks = check_positive_int("num_blocks", num_blocks)
    p = check_positive("p", p)
    m = check_positive_int("m", m)
    return float(num_blocks) ** (-p / (2 * m))
