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

__all__ = ["relu_moments", "mean_path_share", "random_weight_second_moment",
           "transmitted_second_moment", "transmission_terms", "shift_gain", "MEAN_PATH_SHARE", "pws_relu_gain",
           "pws_gain", "holding_alpha", "bn_ws_correlation", "init_gains",
           "ws_relu_forward_gain"]

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


def transmission_terms(n, v_bar, s2_bar, sigma2, mu2):
    """The two paths of theorem ``pws-transmission`` (a), ``(centred, shift)``:
    :math:`n\\bar v\\sigma^2` and :math:`\\overline{S^2}(\\mu^2+\\sigma^2/n)`; their sum is
    :func:`transmitted_second_moment`. Used in: PWS chapter, section "What grows first"."""
    centred = n * np.asarray(v_bar, dtype=np.float64) * sigma2
    return centred, transmitted_second_moment(n, v_bar, s2_bar, sigma2, mu2) - centred


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




def ws_relu_forward_gain(n):
    r"""Forward gain of a ReLU chain of weight-standardised layers of fan-in n and filter norm
    :math:`\sqrt2` (rows uniform on the sphere of the mean-zero subspace), exact in
    expectation at every n: :math:`1-\tfrac{m}{2}\,(E|u|)^2` with :math:`m=n-1` and
    :math:`E|u|=\Gamma(m/2)/(\sqrt\pi\,\Gamma((m+1)/2))` the mean absolute coordinate of a
    uniform unit vector in :math:`\mathbb R^m`. (Given the previous layer, the
    pre-activations are i.i.d. but not Gaussian: a coordinate of a point on a sphere; the
    ReLU output's variance is :math:`s^2/2-(E|x|)^2/4`, and the next standardised row keeps
    :math:`2/m` times its sum of squared deviations.) Tends to :math:`1-1/\pi` from below,
    as :math:`1-\tfrac1\pi(1+\tfrac1{2m})+O(m^{-2})`; ``n`` may be ``math.inf``. Ours;
    used in: PWS chapter, section "Equal footing"."""
    if math.isinf(n):
        return np.float64(1 - 1 / np.pi)
    if n < 2 or int(n) != n:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    m = int(n) - 1
    e_abs = math.exp(math.lgamma(m / 2) - math.lgamma((m + 1) / 2)) / math.sqrt(math.pi)
    return np.float64(1 - m * e_abs**2 / 2)


def init_gains(arm: str, a: float, n: int) -> tuple[float, float]:
    """Per-layer gains at initialisation of a deep ReLU chain of square layers of width n
    whose kernels are those of arm ``arm`` with gain parameter ``a`` (the arms of
    :mod:`gnelib.nn.kernelmlp`; bias 0, epsilon 0): ``(forward, backward)``, the factors by
    which the second moment of the pre-activations and of their gradients change per layer.

    Forward, exact at every finite n in expectation: He weights times a keep both paths,
    :math:`a^2`; centring keeps the centred path, :math:`a^2(1-1/\\pi)(n-1)/n`; WN (filter
    norm a, not centred) :math:`a^2/2`; WS/PWS :func:`ws_relu_forward_gain`, which tends to
    :math:`a^2(1-1/\\pi)` (:func:`pws_relu_gain`); ``n`` may be ``math.inf``. Backward: the
    gradient is zero-mean, so only the squared kernel entries count,
    :math:`\\tfrac n2\\,\\overline{K^2}`: :math:`a^2`, :math:`a^2(n-1)/n`, :math:`a^2`,
    :math:`a^2/2` (the standardised arms' O(1/n) backward term is not included). Used in: PWS
    chapter, section "Equal footing"."""
    r2 = 1 - 1 / np.pi
    a2 = float(a) ** 2
    fin = 1.0 if math.isinf(n) else (n - 1) / n
    ws = a2 * float(ws_relu_forward_gain(n))
    table = {"none": (a2, a2), "centre": (a2 * r2 * fin, a2 * fin),
             "ws": (ws, a2), "pws": (ws, a2), "wn": (a2 / 2, a2 / 2)}
    if arm not in table:
        raise ValueError(f"arm must be one of {', '.join(table)}, got {arm!r}")
    return table[arm]
