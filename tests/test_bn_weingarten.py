"""Orthogonal Weingarten function: closed forms, exact identities, Monte Carlo of Haar O(d)."""
from fractions import Fraction as F
from math import prod

import numpy as np
import pytest
import torch

from gnelib.probes.isometry import haar_orthogonal
from gnelib.theory.weingarten import (coset_type, haar_moment, integer_partitions, pair_partitions,
                               weingarten_orthogonal)


def double_factorial(n):
    return prod(range(n, 0, -2)) if n > 0 else 1


def test_pair_partitions_count_and_types():
    for m in range(1, 6):
        pp = pair_partitions(2 * m)
        assert len(pp) == double_factorial(2 * m - 1)
        assert len(set(pp)) == len(pp)
        eps = pp[0]
        types = {coset_type(p, eps) for p in pp}
        assert types == set(integer_partitions(m))  # every coset type occurs
        assert all(sum(coset_type(p, q)) == m for p in pp[:5] for q in pp[-5:])


@pytest.mark.parametrize("d", [2, 3, 5, 8, 17])
def test_closed_forms_m1_m2(d):
    """Collins & Matsumoto (2009): the values Meterez et al. use for their Theorem 3."""
    assert weingarten_orthogonal((1,), d, exact=True) == F(1, d)
    assert weingarten_orthogonal((1, 1), d, exact=True) == F(d + 1, d * (d - 1) * (d + 2))
    assert weingarten_orthogonal((2,), d, exact=True) == F(-1, d * (d - 1) * (d + 2))
    assert weingarten_orthogonal([1, 1], d) == pytest.approx(float(F(d + 1, d * (d - 1) * (d + 2))))


@pytest.mark.parametrize("d", [3, 4, 7, 12])
def test_closed_forms_m3(d):
    """Collins & Matsumoto (2009), m = 3."""
    den = d * (d - 1) * (d - 2) * (d + 2) * (d + 4)
    assert weingarten_orthogonal((1, 1, 1), d, exact=True) == F(d * d + 3 * d - 2, den)
    assert weingarten_orthogonal((2, 1), d, exact=True) == F(-1, d * (d - 1) * (d - 2) * (d + 4))
    assert weingarten_orthogonal((3,), d, exact=True) == F(2, den)


@pytest.mark.parametrize("m,d", [(1, 3), (2, 4), (3, 5), (4, 4), (4, 9), (5, 6)])
def test_sphere_moments_exact(m, d):
    """The first column of a Haar matrix is uniform on the sphere: E W_11^{2m} =
    (2m-1)!! / (d (d+2) ... (d+2m-2)); a sum over all (2m-1)!!^2 pairs of pairings."""
    want = F(double_factorial(2 * m - 1), prod(d + 2 * i for i in range(m)))
    assert haar_moment([0] * (2 * m), [0] * (2 * m), d, exact=True) == want


def test_row_sums_of_gram_inverse():
    """Sum over tau of Wg(id, tau) = 1 / (d (d+2) ... (d+2m-2)): the rows of the Gram matrix
    all sum to d (d+2) ... (d+2m-2), hence so do those of its inverse, reciprocally."""
    for m, d in [(2, 5), (3, 6), (4, 7)]:
        pp = pair_partitions(2 * m)
        total = sum(weingarten_orthogonal(coset_type(pp[0], t), d, exact=True) for t in pp)
        assert total == F(1, prod(d + 2 * i for i in range(m)))


def test_paper_moments_E1_E2():
    """The two moments in the proof of Theorem 3 (Meterez et al. 2024, App. A)."""
    for d in [4, 8, 20]:
        e1 = haar_moment([0, 0, 1, 1], [0, 0, 1, 1], d, exact=True)  # i != j, k != q
        e2 = haar_moment([0, 0, 1, 1], [0, 0, 0, 0], d, exact=True)  # i != j, same column
        assert e1 == F(d + 1, d * (d + 2) * (d - 1))
        assert e2 == F(1, d * (d + 2))
        assert haar_moment([0, 1, 2], [0, 1, 2], d) == 0.0  # odd degree


def test_small_d_pseudo_inverse():
    """For d < m the Gram matrix is singular; with its pseudo-inverse the moments stay exact."""
    assert haar_moment([0] * 6, [0] * 6, 2, exact=True) == F(5, 16)  # E cos^6 on O(2)
    assert haar_moment([0] * 4, [0] * 4, 1, exact=True) == 1  # O(1) = {+1, -1}
    assert haar_moment([0, 0, 1, 1], [0, 1, 0, 1], 2, exact=True) == F(-1, 8)
    assert haar_moment([0] * 8, [0, 0, 1, 1, 0, 0, 1, 1], 2, exact=True) == F(3, 128)  # E c^4 s^4
    assert haar_moment([0] * 8, [0] * 8, 3, exact=True) == F(105, 3 * 5 * 7 * 9)
    W = haar_orthogonal(3, generator=torch.Generator().manual_seed(4), batch=40000).numpy()
    for rows, cols in [([0, 0, 1, 1, 2, 2, 0, 1], [0, 1, 1, 2, 2, 0, 0, 1]),
                       ([0, 0, 1, 1, 2, 2, 0, 0], [0, 1, 0, 1, 2, 2, 2, 2])]:
        s = np.prod(W[:, rows, cols], axis=1)
        exact = haar_moment(rows, cols, 3)
        assert abs(s.mean() - exact) < 4.5 * s.std(ddof=1) / np.sqrt(len(s)), (rows, cols, exact)


def test_caps_and_larger_m():
    with pytest.raises(ValueError, match="m <= 8"):
        weingarten_orthogonal((9,), 12)
    with pytest.raises(ValueError, match="degree <= 16"):
        haar_moment([0] * 18, [0] * 18, 20)
    # sphere moments at m = 6 through the all-equal shortcut, exact
    assert haar_moment([0] * 12, [0] * 12, 9, exact=True) == F(double_factorial(11),
                                                                 prod(9 + 2 * i for i in range(6)))


def test_errors():
    with pytest.raises(ValueError, match="partition"):
        weingarten_orthogonal((0, 2), 5)
    with pytest.raises(ValueError, match="partition"):
        weingarten_orthogonal((), 5)
    with pytest.raises(ValueError, match="d must be"):
        weingarten_orthogonal((1,), 0)
    with pytest.raises(ValueError, match="indices"):
        haar_moment([0, 5], [0, 0], 3)
    assert haar_moment([0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1], 2) == 0.0  # odd column counts


# Monte Carlo: each index pattern (rows, cols) is compared with its exact moment.
MC_PATTERNS = [
    ([0, 0, 1, 1], [0, 0, 1, 1]),          # E1 of the paper
    ([0, 0, 1, 1], [0, 0, 0, 0]),          # E2 of the paper
    ([0, 0, 0, 0], [0, 0, 0, 0]),          # E W^4
    ([0, 0, 1, 1], [0, 1, 0, 1]),          # W11 W12 W21 W22: a signed moment, -Wg([2])-type
    ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
    ([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]),
    ([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 2]),
    ([0] * 6, [0] * 6),
]


def test_monte_carlo_moments():
    d, N = 6, 40000
    W = haar_orthogonal(d, generator=torch.Generator().manual_seed(1), batch=N).numpy()
    for rows, cols in MC_PATTERNS:
        samples = np.prod(W[:, rows, cols], axis=1)
        mean, se = samples.mean(), samples.std(ddof=1) / np.sqrt(N)
        exact = haar_moment(rows, cols, d)
        assert abs(mean - exact) < 4 * se, (rows, cols, mean, exact, se)


def test_haar_sign_fix_and_orthogonality():
    """Without the sign fix, Householder QR makes W_11 = -|g_11|/||g_1|| < 0 always."""
    N, d = 20000, 5
    W = haar_orthogonal(d, generator=torch.Generator().manual_seed(2), batch=N)
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.allclose(W @ W.transpose(-1, -2), eye.expand(N, d, d), atol=1e-12)
    x = W[:, 0, 0].numpy()
    assert abs(x.mean()) < 4 * x.std() / np.sqrt(N)
    assert abs((x > 0).mean() - 0.5) < 4 * 0.5 / np.sqrt(N)
    assert haar_orthogonal(3, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="d must be"):
        haar_orthogonal(0)
