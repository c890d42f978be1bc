"""Batch normalisation as Meterez et al. (2024) define it, and their BN MLP.

Tensors here are **batch-major**, as in torch: a hidden representation ``h`` has shape
``(..., n, d)`` (batch ``n``, width ``d``); the paper's ``d x n`` matrix is ``h.T`` (use
``isometry_gap(h.T)``). Leading dimensions, if any, index independent networks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.nn.init import init_weight_

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
    """The activation function by name, one of :data:`BN_ACTIVATIONS`."""
    check_choice("activation", name, BN_ACTIVATIONS)
    return {"identity": lambda x: x, "tanh": torch.tanh, "sin": torch.sin,
            "relu": torch.relu}[name]


def layer_gains(depth: int, gain_exponent: float = 0.0, gain: float = 1.0) -> list[float]:
    """Activation-shaping gains :math:`\\alpha_\\ell=\\mathrm{gain}\\cdot\\ell^{-k}` for
    :math:`\\ell=1..L` (Meterez et al. 2024, Section 5, eq. (11), with ``k`` the gain
    exponent; ``k = 0`` and ``gain = 1`` is no shaping)."""
    check_positive_int("depth", depth)
    if not (math.isfinite(gain_exponent) and gain_exponent >= 0):
        raise ValueError(f"gain_exponent must be a finite number >= 0, got {gain_exponent!r}")
    check_positive("gain", gain)
    return [gain * float(ell) ** (-gain_exponent) for ell in range(1, depth + 1)]


class BNMLP(nn.Module):
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
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int,
                 init: str = "orthogonal", norm: str = "paper", activation: str = "identity",
                 order: str = "norm_act", bias: bool = False, gain_exponent: float = 0.0,
                 gain: float = 1.0, mean_reduction: bool = False, factor=1.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("in_dim", in_dim), ("width", width), ("depth", depth),
                        ("out_dim", out_dim)):
            check_positive_int(name, v)
        check_choice("init", init, BN_INITS)
        check_choice("norm", norm, NORMS)
        check_choice("order", order, ORDERS)
        self.act = bn_activation(activation)
        self.activation, self.order, self.norm_type = activation, order, norm
        self.gains = layer_gains(depth, gain_exponent, gain)
        dims = [in_dim] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims, dims[1:]))
        if norm == "paper":
            self.norms = nn.ModuleList(PaperBatchNorm(mean_reduction, factor) for _ in range(depth))
        elif norm == "torch":
            self.norms = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(depth))
        else:
            self.norms = nn.ModuleList(nn.Identity() for _ in range(depth))
        self.head = nn.Linear(width, out_dim, bias=bias)
        for m in [*self.layers, self.head]:
            init_weight_(m.weight, init, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> list[str]:
        """Biases and BatchNorm parameters get no weight decay."""
        return [n for n, p in self.named_parameters() if p.ndim < 2]

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The hidden representations :math:`X_1..X_L` (each ``(n, width)``)."""
        x = x.flatten(1)
        out = []
        for layer, norm, a in zip(self.layers, self.norms, self.gains):
            h = layer(x)
            x = self.act(a * norm(h)) if self.order == "norm_act" else norm(self.act(a * h))
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x)[-1])
