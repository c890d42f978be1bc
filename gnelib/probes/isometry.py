"""Haar-orthogonal matrices and the isometry gap of Meterez et al. (2024), Section 2.

Convention (used everywhere in the book): a representation ``X`` is a
**features x batch** matrix (``d x n``), as in the paper, so its rows are features and its
columns are samples. The isometry gap is computed from the eigenvalues of the ``d x d``
Gram matrix of the rows, :math:`XX^\\top`. A torch activation tensor of shape
``(batch, features)`` is passed transposed: ``isometry_gap(h.T)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gnelib.base.device import torch_threads
from gnelib.base.errors import check_positive_int

__all__ = ["haar_orthogonal", "isometry_gap", "isometry_gaps", "isometry", "gram_eigenvalues",
           "min_eigenvalue_ratios"]


def haar_orthogonal(d: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64, batch: int | None = None) -> torch.Tensor:
    """A Haar-distributed matrix on the orthogonal group O(d) (Mezzadri 2007).

    Draw ``G`` with i.i.d. standard normal entries, factor ``G = QR`` and return
    ``Q diag(sign(diag R))``: the sign fix makes the law exactly Haar (without it, QR
    routines bias the signs). The factorisation is done in float64 on one thread; the
    result is returned in ``dtype``. With ``batch`` a stack of ``batch`` independent draws,
    shape ``(batch, d, d)``.
    """
    check_positive_int("d", d)
    shape = (d, d) if batch is None else (check_positive_int("batch", batch), d, d)
    g = torch.randn(*shape, generator=generator, dtype=torch.float64)
    with torch_threads(1):  # small QRs: threading only adds contention on a busy CPU
        q, r = torch.linalg.qr(g)
    s = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return (q * s.unsqueeze(-2)).to(dtype)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"X must be a 2-d matrix (features x batch), got shape {x.shape}")
    return x


def gram_eigenvalues(X) -> np.ndarray:
    """Eigenvalues of the row Gram matrix :math:`XX^\\top` (``d`` of them, ascending),
    computed as the squared singular values of ``X`` (float64), padded with zeros when
    ``X`` has fewer columns than rows."""
    x = _as_numpy(X)
    s = np.linalg.svd(x, compute_uv=False)
    lam = np.zeros(x.shape[0])
    lam[: s.size] = s ** 2
    return np.sort(lam)


def _log_ratio(lam, m):
    """log(lam / m), accurately both near 1 (log1p of the difference) and near 0."""
    q = lam / m
    return np.where(q < 0.5, np.log(q), np.log1p((lam - m) / m))


def isometry_gap(X) -> float:
    """The isometry gap of Meterez et al. (2024), eq. (2) (from Joudaki et al. 2023):

    .. math:: \\phi(X) = \\log\\Big(\\frac1d\\sum_k\\lambda_k\\Big)-\\frac1d\\sum_k\\log\\lambda_k,

    with :math:`\\lambda_k` the eigenvalues of :math:`XX^\\top` for a ``d x n`` matrix
    ``X`` (features x batch). :math:`\\phi\\ge0`, with equality iff :math:`XX^\\top` is a
    multiple of the identity. Returns ``+inf`` when the rows of ``X`` are linearly
    dependent (rank < d; for square ``X`` the same as dependent columns), judged
    numerically as numpy's ``matrix_rank`` does (smallest singular value at most
    ``max(d, n) * eps`` times the largest). Computed from singular values in float64, so
    gaps down to about 1e-14 are resolved, and far from isometry the small eigenvalues keep
    their relative accuracy.
    """
    x = _as_numpy(X)
    d, n = x.shape
    s = np.linalg.svd(x, compute_uv=False)
    if s.size < d or s[0] == 0 or s[-1] <= max(d, n) * np.finfo(np.float64).eps * s[0]:
        return math.inf
    s = s / s[0]  # scale-free; avoids under/overflow
    lam = s ** 2
    return float(max(-np.mean(_log_ratio(lam, lam.mean())), 0.0))


def isometry(X) -> float:
    """The isometry :math:`\\mathcal I(X)=e^{-\\phi(X)}` (geometric over arithmetic mean of
    the Gram eigenvalues, Meterez et al. 2024, eq. (2)); 0 for linearly dependent rows."""
    return math.exp(-isometry_gap(X))


def isometry_gaps(X) -> np.ndarray:
    """:func:`isometry_gap` of every matrix in a stack ``X`` of shape ``(..., d, n)``
    (features x batch), vectorised; ``+inf`` where the rows are linearly dependent."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(X, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"X must have shape (..., d, n), got {x.shape}")
    d, n = x.shape[-2:]
    s = np.linalg.svd(x, compute_uv=False)
    out = np.full(x.shape[:-2], np.inf)
    if s.shape[-1] < d:
        return out
    top = s[..., :1]
    ok = (top[..., 0] > 0) & (s[..., -1] > max(d, n) * np.finfo(np.float64).eps * top[..., 0])
    lam = (s / np.where(top > 0, top, 1.0)) ** 2
    m = lam.mean(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.maximum(-np.mean(_log_ratio(lam, m), axis=-1), 0.0)
    out[ok] = phi[ok]
    return out


def min_eigenvalue_ratios(X) -> np.ndarray:
    """:math:`\\lambda_{\\min}/\\bar\\lambda` of the row Gram matrix :math:`XX^\\top` for every
    matrix of a stack ``(..., d, n)``: 1 for an isometry, 0 for rank < d. Near the float64
    rank threshold of :func:`isometry_gap`, :math:`(\\max(d,n)\\,\\varepsilon)^2\\,\\lambda_{\\max}/\\bar\\lambda`,
    the value is rounding noise (the batch is numerically degenerate)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(X, dtype=np.float64)
    d = x.shape[-2]
    s = np.linalg.svd(x, compute_uv=False)
    lam = np.zeros(x.shape[:-2] + (d,))
    lam[..., : s.shape[-1]] = s ** 2
    return lam.min(-1) / lam.mean(-1)
