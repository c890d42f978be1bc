"""Closed-form predictions of the first chapter: a Linear + ReLU block at initialisation.

For a block :math:`x \\mapsto \\mathrm{ReLU}(Wx)` with square :math:`W` the Jacobian is
:math:`J = DW`, with :math:`D` the diagonal 0/1 matrix of active units (a fraction
:math:`p = 1/2` of them for symmetric pre-activations). With :math:`s = n\\,\\Var(W_{ij})`
(Gaussian) or :math:`s = g^2` (orthogonal, gain :math:`g`):

- :math:`\\phi(JJ^\\top) = p\\,s` (both cases: each row of :math:`W` has squared norm
  :math:`s` in expectation, exactly for orthogonal :math:`W`);
- relative spectral variance :math:`\\phi((JJ^\\top)^2)/\\phi(JJ^\\top)^2 - 1`: relative
  variances add under free multiplication (Chen et al.'s multiplication theorem), with
  :math:`1/p - 1` for :math:`D` and :math:`1` for a square Gaussian :math:`WW^\\top`
  (Marchenko–Pastur, ratio 1) or :math:`0` for orthogonal :math:`W`.
"""
from __future__ import annotations

from gnelib.base.errors import check_choice

__all__ = ["relu_block_scale", "relu_block_phi", "relu_block_relative_variance"]


def relu_block_scale(init: str, gain: float | None = None) -> float:
    """:math:`s = n\\Var(W_{ij})` (or :math:`g^2`) of a square layer initialised by
    :func:`~gnelib.nn.init.init_weight_` with full gain ``gain``: :math:`s = g^2` for every
    scheme; ``None`` (or 0) takes the scheme's default gain, √2 for ``he``, 1 otherwise."""
    check_choice("init", init, ("xavier", "he", "orthogonal", "gaussian"))
    g = (2.0 ** 0.5 if init == "he" else 1.0) if not gain else float(gain)
    return g * g


def relu_block_phi(init: str, gain: float | None = None, p: float = 0.5) -> float:
    """Predicted :math:`\\phi(JJ^\\top) = p\\,s` of a square Linear + ReLU block."""
    return p * relu_block_scale(init, gain)


def relu_block_relative_variance(init: str, p: float = 0.5) -> float:
    """Predicted relative spectral variance of a square Linear + ReLU block:
    :math:`(1/p - 1) + 1` for Gaussian weights, :math:`1/p - 1` for orthogonal ones."""
    check_choice("init", init, ("xavier", "he", "orthogonal", "gaussian"))
    return (1.0 / p - 1.0) + (0.0 if init == "orthogonal" else 1.0)
