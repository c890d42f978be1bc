"""Isometry gap (Meterez et al. 2024, eq. 2), Lemma 2's exact identity, pathwise monotonicity
and the local contraction rate 2/(d+2) of the BN chain."""
import math

import numpy as np
import pytest
import torch

from gnelib.probes.bn_chain import bn_chain_gaps
from gnelib.probes.isometry import (gram_eigenvalues, haar_orthogonal, isometry, isometry_gap,
                             isometry_gaps)


def bn_rows(x):
    """Bn(X) = diag(X X^T)^{-1/2} X for a features x batch matrix (paper, eq. 1)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_gap_against_det_trace_form():
    rng = np.random.default_rng(0)
    for d, n in [(5, 5), (6, 11), (20, 20)]:
        x = rng.standard_normal((d, n))
        g = x @ x.T
        sign, logdet = np.linalg.slogdet(g)
        want = -(logdet / d - np.log(np.trace(g) / d))
        assert sign > 0
        assert isometry_gap(x) == pytest.approx(want, rel=1e-10)
        assert isometry(x) == pytest.approx(math.exp(-want), rel=1e-10)
        assert np.allclose(gram_eigenvalues(x), np.linalg.eigvalsh(g), rtol=1e-9, atol=1e-12)


def test_gap_zero_invariances_and_degenerate():
    q = haar_orthogonal(7, generator=torch.Generator().manual_seed(0))
    assert isometry_gap(3.0 * q) < 1e-14
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 9))
    u = haar_orthogonal(6, generator=torch.Generator().manual_seed(1)).numpy()
    v = haar_orthogonal(9, generator=torch.Generator().manual_seed(2)).numpy()
    assert isometry_gap(u @ x @ v) == pytest.approx(isometry_gap(x), rel=1e-10)
    assert isometry_gap(5.0 * x) == pytest.approx(isometry_gap(x), rel=1e-12)
    x[3] = 2 * x[1] - x[0]  # linearly dependent rows
    assert isometry_gap(x) == math.inf and isometry(x) == 0.0
    assert isometry_gap(rng.standard_normal((6, 4))) == math.inf  # rank 4 < d = 6
    stack = rng.standard_normal((4, 5, 7))
    stack[2, 4] = stack[2, 0]
    got = isometry_gaps(stack)
    assert np.allclose(got[[0, 1, 3]], [isometry_gap(s) for s in stack[[0, 1, 3]]], rtol=1e-12)
    assert got[2] == math.inf
    with pytest.raises(ValueError, match="2-d"):
        isometry_gap(np.ones(3))


@pytest.mark.parametrize("d,n", [(8, 8), (24, 24), (10, 30)])
def test_lemma2_exact_identity(d, n):
    """I(Bn(WX)) = I(X) mean(r)/geomean(r), r_j the squared row norms of X' = WX, and the
    inequality of Lemma 2 that follows from it."""
    g = torch.Generator().manual_seed(d + n)
    rng = np.random.default_rng(d * n)
    for _ in range(20):
        x = rng.standard_normal((d, n)) * rng.uniform(0.2, 3.0, size=(d, 1))
        w = haar_orthogonal(d, generator=g).numpy()
        xp = w @ x
        r = (xp ** 2).sum(1)
        lhs = isometry(bn_rows(xp))
        rhs = isometry(x) * r.mean() / np.exp(np.log(r).mean())
        assert lhs == pytest.approx(rhs, rel=1e-10)
        s = np.sqrt(r)
        assert lhs >= (1 + s.var() / s.mean() ** 2) * isometry(x) * (1 - 1e-12)


def test_pathwise_monotonicity():
    """phi(Bn(W X)) <= phi(X) along every path (up to float rounding), not only on average."""
    x0 = torch.randn(16, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gaps = bn_chain_gaps(x0, 100, generator=torch.Generator().manual_seed(4))
    assert gaps.shape == (16, 101)
    assert np.allclose(gaps[:, 0], [isometry_gap(x.T) for x in x0])
    steps = np.diff(gaps, axis=1)
    assert np.all(steps <= 1e-12 * np.maximum(gaps[:, :-1], 1e-3))
    assert np.all(gaps[:, -1] < gaps[:, 0])


def test_local_rate_two_over_d_plus_two():
    """Our near-isometry rate: E[phi(Bn(WX)) | X] = (1 - 2/(d+2)) phi(X) + O(phi^{3/2}).
    X = Bn((1-f) I + f u v^T) with tiny f, so the bias is far below 4 standard errors."""
    d, N = 8, 20000
    g = torch.Generator().manual_seed(5)
    rng = np.random.default_rng(5)
    x = bn_rows(0.999 * np.eye(d) + 0.001 * np.outer(rng.uniform(size=d), rng.uniform(size=d)))
    phi0 = isometry_gap(x)
    assert 0 < phi0 < 1e-5
    W = haar_orthogonal(d, generator=g, batch=N).numpy()
    xp = W @ x
    ratios = isometry_gaps(xp / np.linalg.norm(xp, axis=2, keepdims=True)) / phi0
    mean, se = ratios.mean(), ratios.std(ddof=1) / np.sqrt(N)
    assert abs(mean - (1 - 2 / (d + 2))) < 4 * se
    # the paper's Theorem 3 bound is much weaker (contraction ~ 1/(2 d^2) at best)
    assert mean < 1 - 1 / (2 * d ** 2)
