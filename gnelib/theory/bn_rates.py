"""Closed-form rates of batch-normalised chains (BN chapter): the paper's proven local rate,
Yang et al.'s mean-field gradient rate (centred and uncentred), and our Gaussian isometry-gap
rate."""
from __future__ import annotations

import math

import numpy as np

from gnelib.base.errors import check_positive_int

__all__ = ["paper_local_rate", "yang_rate", "gaussian_gap_rate"]


def paper_local_rate(width: int) -> float:
    """The per-layer contraction the paper proves near isometry (Lemma B.2):
    :math:`\\mathbb E\\phi_{\\ell+1}\\le(1-\\frac1{2d^2})\\phi_\\ell`, i.e. ``1/(2 d^2)``."""
    return 1.0 / (2 * width ** 2)


def yang_rate(batch: int, centred: bool = True) -> float:
    """Per-layer growth of :math:`\\log\\|\\nabla\\|` for Gaussian weights and linear BN in the
    mean-field limit (width to infinity, batch ``B`` fixed): Yang et al. (2019) give the
    squared-norm rate :math:`(B-2)/(B-3)` for centred BN, so the slope is
    :math:`\\tfrac12\\log\\frac{B-2}{B-3}`. Without centring (the paper's Bn) the same
    gradient-independence heuristic (ours, not proven) replaces ``B`` by ``B+1``:
    :math:`\\tfrac12\\log\\frac{B-1}{B-2}`."""
    b = check_positive_int("batch", batch, minimum=4)
    return 0.5 * math.log((b - 2) / (b - 3)) if centred else 0.5 * math.log((b - 1) / (b - 2))


def gaussian_gap_rate(width: int) -> float:
    """Our :math:`\\Delta_d=\\frac1d\\sum_{k=1}^d\\big(\\log d-\\log2-\\psi(k/2)\\big)`, the mean of
    :math:`-\\frac1d\\log\\det(WW^\\top)` for :math:`W_{ij}\\sim\\mathcal N(0,1/d)` (Bartlett
    decomposition: :math:`\\det(WW^\\top)=\\prod_k\\chi^2_k/d`). It is the per-layer growth of
    the isometry gap of a Gaussian BN chain, up to the non-positive term of
    :func:`gaussian_gap_growth`."""
    from scipy.special import digamma
    d = check_positive_int("width", width)
    k = np.arange(1, d + 1)
    return float(np.mean(np.log(d) - np.log(2) - digamma(k / 2)))
