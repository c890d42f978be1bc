"""Batch normalisation as Meterez et al. (2024) define it, and their BN MLP.

Tensors here are **batch-major**, as in torch: a hidden representation ``h`` has shape
``(..., n, d)`` (batch ``n``, width ``d``); the paper's ``d x n`` matrix is ``h.T`` (use
``isometry_gap(h.T)``). Leading dimensions, if any, index independent networks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gnelib.nn.activations import make_activation
from gnelib.base.errors import check_choice, check_positive, check_positive_int

__all__ = ["NORMS", "BN_ACTIVATIONS", "ORDERS", "BN_INITS", "paper_batch_norm",
           "torch_batch_norm", "PaperBatchNorm", "layer_gains", "bn_activation", "BNMLP"]

NORMS = ("paper", "torch", "none")
BN_ACTIVATIONS = ("identity", "tanh", "sin", "relu")
ORDERS = ("norm_act", "act_norm")
BN_INITS = ("orthogonal", "gaussian")


def _factor(factor, n: int) -> float:
    if factor == "sqrt_n":
        return math.sqrt(n)
    return check_positive("factor", factor)


def paper_batch_norm(h: torch.Tensor, mean_reduction: bool = False, factor=1.0) -> torch.Tensor:
    """The batch normalisation of Meterez et al. (2024), eq. (1):
    :math:`\\mathrm{Bn}(X)=\\mathrm{diag}(XX^\\top)^{-1/2}X` for ``X = h.T``, i.e. every
    feature (column of ``h``) divided by its Euclidean norm over the batch (axis ``-2``),
    then multiplied by ``factor`` (1 in the paper's theory; ``"sqrt_n"`` gives features
    of norm :math:`\\sqrt n`, unit mean square, the authors' code default). With
    ``mean_reduction`` the batch mean of each feature is subtracted first. No epsilon."""
    if mean_reduction:
        h = h - h.mean(dim=-2, keepdim=True)
    return h * (_factor(factor, h.shape[-2]) / h.norm(dim=-2, keepdim=True))


def torch_batch_norm(h: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standard batch normalisation in training mode (Ioffe & Szegedy 2015), as
    ``nn.BatchNorm1d`` computes it at initialisation (scale 1, shift 0): subtract the batch
    mean and divide by :math:`\\sqrt{\\mathrm{var}+\\epsilon}` with the biased batch
    variance. Works on stacks ``(..., n, d)``."""
    mu = h.mean(dim=-2, keepdim=True)
    var = h.var(dim=-2, unbiased=False, keepdim=True)
    return (h - mu) / torch.sqrt(var + eps)


class PaperBatchNorm(nn.Module):
    """Module form of :func:`paper_batch_norm` (no parameters, no running statistics: it
    always normalises with the statistics of the batch it is given)."""

    def __init__(self, mean_reduction: bool = False, factor=1.0):
        super().__init__()
        if factor != "sqrt_n":
            check_positive("factor", factor)
        self.mean_reduction = bool(mean_reduction)
        self.factor = factor

    def forward(self, h):
        return paper_batch_norm(h, self.mean_reduction, self.factor)

    def extra_repr(self) -> str:
        return f"mean_reduction={self.mean_reduction}, factor={self.factor!r}"


def bn_activation(name: str):
    """The activation by name, one of :data:`BN_ACTIVATIONS`, as a callable module
    (:func:`~gnelib.nn.activations.make_activation`)."""
    check_choice("activation", name, BN_ACTIVATIONS)
    return make_activation(name)


def layer_gains(depth: int, gain_exponent: float = 0.0, gain: float = 1.0) -> list[float]:
    """Activation-shaping gains :math:`\\alpha_\\ell=\\mathrm{gain}\\cdot\\ell^{-k}` for
    :math:`\\ell=1..L` (Meterez et al. 2024, Section 5, eq. (11), with ``k`` the gain
    exponent; ``k = 0`` and ``gain = 1`` is no shaping)."""
    check_positive_int("depth", depth)
    if not (math.isfinite(gain_exponent) and gain_exponent >= 0):
        raise ValueError(f"gain_exponent must be a finite number >= 0, got {gain_exponent!r}")
    check_positive("gain", gain)
    return [gain * float(ell) ** (-gain_exponent) for ell in range(1, depth + 1)]


def BNMLP(in_dim: int, width: int, depth: int, out_dim: int, init: str = "orthogonal",
          norm: str = "paper", activation: str = "identity", order: str = "norm_act",
          bias: bool = False, gain_exponent: float = 0.0, gain: float = 1.0,
          mean_reduction: bool = False, factor=1.0, generator: torch.Generator | None = None):
    """The BN MLP of Meterez et al. (2024), eq. (11): ``depth`` hidden layers

    .. math:: X_{\\ell} = \\sigma\\big(\\alpha_\\ell\\,\\mathrm{Bn}(W_{\\ell-1} X_{\\ell-1})\\big),
              \\qquad \\ell = 1..L,

    (``order="norm_act"``; ``"act_norm"`` computes :math:`\\mathrm{Bn}(\\sigma(\\alpha_\\ell
    W X))` instead) followed by a linear read-out to ``out_dim`` logits. ``layers[0]`` maps
    ``in_dim -> width``, ``layers[1..L-1]`` are ``width x width``; ``layers[1]`` is the
    layer whose gradient the paper plots.

    - ``init``: ``"orthogonal"`` (Haar, semi-orthogonal rows or columns for non-square
      layers, gain ignored as in the paper) or ``"gaussian"`` (:math:`\\mathcal N(0,1/n_{in})`);
    - ``norm``: ``"paper"`` (:class:`PaperBatchNorm`), ``"torch"`` (``nn.BatchNorm1d``:
      centring, affine, running statistics, eps 1e-5) or ``"none"``;
    - ``activation``: one of :data:`BN_ACTIVATIONS`; ``bias``: zero-initialised biases;
    - ``gain_exponent`` ``k`` and ``gain``: :func:`layer_gains`.

    The result is a :class:`~gnelib.nn.mlp.MLP` (``layers[i]`` its dense layers, ``gains`` the
    α_ℓ, :meth:`~gnelib.nn.mlp.MLP.hidden` the representations); ``gain`` here is the shaping
    gain of :func:`layer_gains`, the init gain is the scheme's (1).
    """
    from gnelib.nn.mlp import MLP

    for name, v in (("in_dim", in_dim), ("width", width), ("depth", depth), ("out_dim", out_dim)):
        check_positive_int(name, v)
    check_choice("init", init, BN_INITS)
    check_choice("norm", norm, NORMS)
    check_choice("order", order, ORDERS)
    check_choice("activation", activation, BN_ACTIVATIONS)
    return MLP(in_dim, width, depth, out_dim, activation=activation, init=init, bias=bias,
               norm=norm, order=order, gains=layer_gains(depth, gain_exponent, gain),
               mean_reduction=mean_reduction, factor=factor, generator=generator)
