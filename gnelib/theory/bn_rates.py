"""Closed-form rates of batch-normalised chains (BN chapter): the paper's proven local rate,
Yang et al.'s mean-field gradient rate (centred and uncentred), and our Gaussian isometry-gap
rate."""
from __future__ import annotations

import math

import numpy as np

from gnelib.base.errors import check_positive_int

__all__ = ["paper_local_rate", "yang_rate", "gaussian_gap_rate", "bn_output_second_moment"]


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


_ACTS = {"identity": lambda x: x, "tanh": np.tanh, "sin": np.sin,
         "relu": lambda x: np.maximum(x, 0.0)}


def bn_output_second_moment(activation: str, alpha: float, batch: int, centred: bool = True) -> float:
    r""":math:`E\,\sigma(\alpha z)^2` for one entry :math:`z` of a feature of ``batch`` i.i.d.
    Gaussians after a batch normalisation to unit mean square: standard BN (``centred``:
    subtract the batch mean, divide by the biased batch standard deviation, epsilon 0) or
    the paper's Bn with factor :math:`\sqrt n` (not centred). The normalised feature is
    :math:`\sqrt m` times a uniform point of the unit sphere of an m-dimensional space
    (:math:`m=n-1`, the mean-zero subspace, when centred; :math:`m=n` otherwise), so
    :math:`z=\sqrt m\,t` with density :math:`\propto(1-t^2)^{(m-3)/2}` on [-1, 1]: bounded by
    :math:`\sqrt m`, Gaussian only as the batch grows. Ours (the classical law of a
    standardised Gaussian sample); used in: BN chapter, section "Non-linear activations and
    activation shaping", to test each shaped layer."""
    from scipy import integrate

    if activation not in _ACTS:
        raise ValueError(f"activation must be one of {', '.join(_ACTS)}, got {activation!r}")
    n = check_positive_int("batch", batch, minimum=2)
    m = n - 1 if centred else n
    f = _ACTS[activation]

    def even(x):  # E g(z) = E (g(z) + g(-z)) / 2 for the symmetric law of z
        return 0.5 * (f(alpha * x) ** 2 + f(-alpha * x) ** 2)

    if m == 1:
        return float(even(1.0))
    log_norm = math.lgamma(m / 2) - math.lgamma((m - 1) / 2) - 0.5 * math.log(math.pi)
    root, a = math.sqrt(m), (m - 3) / 2
    if m <= 3:  # an integrable endpoint singularity (m = 2): quad's algebraic weight
        val, _ = integrate.quad(lambda t: even(root * t) * (1 + t) ** a, 0.0, 1.0,
                                weight="alg", wvar=(0.0, a), epsabs=1e-13, epsrel=1e-11)
        return float(2 * math.exp(log_norm) * val)
    # in z = sqrt(m) t the density is (1 - z^2/m)^a / sqrt(m), taken in log space (no overflow
    # for large m; a >= 1/2 here, so it vanishes at z = sqrt(m)); beyond z = 60 it is negligible
    def density(z):
        with np.errstate(divide="ignore"):
            return math.exp(log_norm + a * np.log1p(-z * z / m) - math.log(root))

    val, _ = integrate.quad(lambda z: even(z) * density(z), 0.0, min(root, 60.0),
                            epsabs=1e-13, epsrel=1e-11, limit=200)
    return float(2 * val)
