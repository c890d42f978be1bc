"""Activations by name: one registry for every network of the book.

:func:`make_activation` builds a fresh module; :func:`activation_gain` is the init gain that
makes :math:`\\phi_W\\phi_\\text{act}=1` (block dynamical isometry chapter, the selection rule).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gnelib.base.errors import check_choice
from gnelib.theory.moments import SELU_ALPHA, SELU_LAMBDA, selu_coefficients

__all__ = ["ACTIVATIONS", "SPReLU", "SeLU", "Sin", "make_activation", "activation_gain"]

#: Activation names :func:`make_activation` knows.
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "prelu", "sprelu", "selu", "sin", "identity")


class SPReLU(nn.PReLU):
    """sPReLU: PReLU divided by :math:`\\sqrt{1+a^2}`, so that :math:`\\phi=\\tfrac12` for every
    learned slope a (Chen et al. 2020's scaled PReLU)."""

    def forward(self, x):
        return super().forward(x) / torch.sqrt(1 + self.weight.pow(2))


class SeLU(nn.Module):
    """SeLU with coefficients (λ, α): :math:`\\lambda x` for x > 0, :math:`\\lambda\\alpha(e^x-1)`
    otherwise; ``eps`` given means (λ, α) = :func:`~gnelib.theory.moments.selu_coefficients`
    (eps, gain2), else the standard constants (Klambauer et al. 2017)."""

    def __init__(self, eps: float | None = None, gain2: float = 1.0):
        super().__init__()
        if eps is None:
            self.lam, self.alpha = SELU_LAMBDA, SELU_ALPHA
        else:
            self.lam, self.alpha = selu_coefficients(eps, gain2=gain2)

    def forward(self, x):
        return self.lam * torch.where(x > 0, x, self.alpha * torch.expm1(x))

    def extra_repr(self):
        return f"lam={self.lam:.4f}, alpha={self.alpha:.4f}"


class Sin(nn.Module):
    """:math:`\\sin x` (the odd activation of the batch-normalization chapter's shaping study)."""

    def forward(self, x):
        return torch.sin(x)


def make_activation(name: str, slope: float = 0.18, selu_eps: float | None = None,
                    selu_gain2: float = 1.0) -> nn.Module:
    """A fresh activation module by name (:data:`ACTIVATIONS`): leaky ReLU uses ``slope`` (0.18,
    the block dynamical isometry chapter's default),
    PReLU/sPReLU start at ``slope``, SeLU is :class:`SeLU` (``selu_eps``, ``selu_gain2``)."""
    check_choice("activation", name, ACTIVATIONS)
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    if name == "prelu":
        return nn.PReLU(init=slope)
    if name == "sprelu":
        return SPReLU(init=slope)
    if name == "selu":
        return SeLU(selu_eps, selu_gain2)
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "sin": Sin,
            "identity": nn.Identity}[name]()


def activation_gain(name: str, slope: float = 0.18, selu_gain2: float = 1.0) -> float:
    """The init gain g with :math:`\\phi_W\\phi_\\text{act}=1` (Chen et al.'s selection rule):
    √2 for ReLU, PReLU and sPReLU, :math:`\\sqrt{2/(1+\\gamma^2)}` for leaky ReLU, 1 for tanh,
    sin and identity, :math:`\\sqrt{\\gamma_0}` for SeLU."""
    check_choice("activation", name, ACTIVATIONS)
    if name in ("relu", "prelu", "sprelu"):
        return math.sqrt(2.0)
    if name == "leaky_relu":
        return math.sqrt(2.0 / (1 + slope**2))
    if name == "selu":
        return math.sqrt(selu_gain2)
    if name == "sigmoid":
        raise ValueError("activation 'sigmoid' has no gain with phi_W phi_act = 1 at zero-mean inputs")
    return 1.0
