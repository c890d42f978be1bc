"""The orthogonal Weingarten function and exact Haar moments of O(d).

Collins & Sniady (2006); Collins & Matsumoto (2009). For a Haar matrix :math:`W\\in O(d)`

.. math:: \\int W_{i_1j_1}\\cdots W_{i_{2m}j_{2m}}\\,dW
          =\\sum_{\\sigma,\\tau\\in M_{2m}}\\Delta_\\sigma(\\mathbf i)\\Delta_\\tau(\\mathbf j)\\,
          \\mathrm{Wg}^O(\\sigma,\\tau;d),

where :math:`M_{2m}` are the pair partitions of :math:`\\{1..2m\\}`,
:math:`\\Delta_\\sigma(\\mathbf i)=1` iff ``i`` is constant on every pair of
:math:`\\sigma`, and the Weingarten matrix is the inverse of the Gram matrix
:math:`G_{\\sigma\\tau}=d^{\\,\\mathrm{loops}(\\sigma,\\tau)}` (a loop is a connected
component of the graph whose edges are the pairs of both). :math:`\\mathrm{Wg}^O(\\sigma,\\tau)`
depends only on the **coset type** of :math:`(\\sigma,\\tau)`: the partition of ``m`` given
by the half-lengths of those loops. ``G`` is invertible iff ``d >= m``.

Everything here is exact rational arithmetic (:class:`fractions.Fraction`).
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from itertools import product

from gnelib.base.errors import check_positive_int

__all__ = ["pair_partitions", "coset_type", "weingarten_orthogonal", "haar_moment",
           "integer_partitions"]


def pair_partitions(n: int) -> list[tuple[int, ...]]:
    """All pair partitions of ``{0..n-1}`` (``n`` even), each as the tuple ``p`` with
    ``p[i]`` the partner of ``i``; there are ``(n-1)!!`` of them."""
    if n % 2:
        raise ValueError(f"n must be even, got {n!r}")
    return list(_pairings(n))


@lru_cache(maxsize=None)
def _pairings(n: int) -> tuple[tuple[int, ...], ...]:
    out = []

    def rec(partner, free):
        if not free:
            out.append(tuple(partner))
            return
        a = free[0]
        for k in range(1, len(free)):
            b = free[k]
            partner[a], partner[b] = b, a
            rec(partner, free[1:k] + free[k + 1:])

    rec([0] * n, tuple(range(n)))
    return tuple(out)


def coset_type(sigma, tau) -> tuple[int, ...]:
    """The coset type of two pair partitions: the half-sizes of the loops of
    :math:`\\sigma\\cup\\tau`, in decreasing order (a partition of ``m = len/2``)."""
    n = len(sigma)
    seen = [False] * n
    parts = []
    for start in range(n):
        if seen[start]:
            continue
        size, i = 0, start
        while not seen[i]:  # alternate: a sigma-edge i -> j, then the tau-edge from j
            j = sigma[i]
            seen[i] = seen[j] = True
            size += 2
            i = tau[j]
        parts.append(size // 2)
    return tuple(sorted(parts, reverse=True))


def integer_partitions(m: int) -> list[tuple[int, ...]]:
    """All partitions of ``m`` as decreasing tuples."""
    check_positive_int("m", m)

    def rec(rest, largest):
        if rest == 0:
            yield ()
            return
        for k in range(min(rest, largest), 0, -1):
            for tail in rec(rest - k, k):
                yield (k,) + tail

    return list(rec(m, m))


def _identity_pairing(m: int) -> tuple[int, ...]:
    return tuple(i + 1 if i % 2 == 0 else i - 1 for i in range(2 * m))


def _representative(mu: tuple[int, ...]) -> tuple[int, ...]:
    """A pair partition whose coset type against the identity pairing is ``mu``."""
    m = sum(mu)
    p = [0] * (2 * m)
    b = 0
    for k in mu:  # blocks b..b+k-1 joined in one loop of length 2k
        for t in range(k):
            a = 2 * (b + t) + 1
            c = 2 * (b + (t + 1) % k)
            p[a], p[c] = c, a
        b += k
    return tuple(p)


def _check_partition(partition) -> tuple[int, ...]:
    try:
        mu = tuple(int(k) for k in partition)
    except TypeError:
        raise ValueError(f"partition must be a sequence of positive integers, got {partition!r}") from None
    if not mu or any(k < 1 for k in mu) or any(int(k) != k for k in partition):
        raise ValueError(f"partition must be a non-empty sequence of positive integers, got {partition!r}")
    return tuple(sorted(mu, reverse=True))


@lru_cache(maxsize=None)
def _weingarten_table(m: int, d: int) -> dict[tuple[int, ...], Fraction]:
    """Solve :math:`\\sum_\\tau G_{\\rho\\tau}\\,\\mathrm{Wg}(\\tau,\\epsilon)=\\delta_{\\rho\\epsilon}`
    for one representative :math:`\\rho` of each coset type: a ``p(m) x p(m)`` exact system."""
    types = integer_partitions(m)
    index = {mu: i for i, mu in enumerate(types)}
    eps = _identity_pairing(m)
    tau_type = [index[coset_type(t, eps)] for t in _pairings(2 * m)]
    k = len(types)
    A = [[Fraction(0)] * k for _ in range(k)]
    for r, rho in enumerate(types):
        sigma = _representative(rho)
        for t, ti in zip(_pairings(2 * m), tau_type):
            A[r][ti] += Fraction(d) ** len(coset_type(sigma, t))
    b = [Fraction(1 if rho == (1,) * m else 0) for rho in types]
    x = _solve_exact(A, b)
    return {mu: x[i] for i, mu in enumerate(types)}


def _solve_exact(A, b):
    n = len(b)
    M = [row[:] + [b[i]] for i, row in enumerate(A)]
    for col in range(n):
        piv = next((r for r in range(col, n) if M[r][col] != 0), None)
        if piv is None:
            raise ZeroDivisionError("singular Weingarten system")
        M[col], M[piv] = M[piv], M[col]
        for r in range(n):
            if r != col and M[r][col] != 0:
                f = M[r][col] / M[col][col]
                M[r] = [a - f * c for a, c in zip(M[r], M[col])]
    return [M[i][n] / M[i][i] for i in range(n)]


def weingarten_orthogonal(partition, d: int, exact: bool = False):
    """The orthogonal Weingarten function :math:`\\mathrm{Wg}^O(\\mu;d)` of coset type
    ``partition`` (a partition :math:`\\mu` of ``m``, e.g. ``(1, 1)``, ``(2,)``, ``(2, 1)``),
    Collins & Matsumoto (2009), computed exactly from the pair-partition Gram matrix.

    For ``m = 2``: :math:`\\mathrm{Wg}^O([1,1])=\\frac{d+1}{d(d-1)(d+2)}` and
    :math:`\\mathrm{Wg}^O([2])=\\frac{-1}{d(d-1)(d+2)}` (the values Meterez et al. 2024 use
    in the proof of their Theorem 3). Defined for ``d >= m`` only: for ``d < m`` the Gram
    matrix is singular and a ``ValueError`` is raised. Returns a float, or a
    :class:`~fractions.Fraction` with ``exact=True``. Cost grows like ``(2m-1)!!``; ``m <= 6``
    takes well under a second.
    """
    mu = _check_partition(partition)
    m = sum(mu)
    d = check_positive_int("d", d)
    if d < m:
        raise ValueError(f"d must be >= m = {m} for the orthogonal Weingarten function of "
                         f"partition {mu} (the Gram matrix is singular for d < m), got d={d}")
    if m > 7:
        raise ValueError(f"partition must have size m <= 7 (cost grows like (2m-1)!!), got m={m}")
    w = _weingarten_table(m, d)[mu]
    return w if exact else float(w)


def haar_moment(rows, cols, d: int, exact: bool = False):
    """The exact Haar moment :math:`\\mathbb E\\,W_{i_1j_1}\\cdots W_{i_kj_k}` over ``O(d)``
    by the Weingarten formula of Collins & Sniady (2006) (module docstring). ``rows`` and
    ``cols`` are the index sequences ``(i_1..i_k)``, ``(j_1..j_k)`` (0-based, < d). Odd ``k``
    gives 0."""
    rows, cols = tuple(int(i) for i in rows), tuple(int(j) for j in cols)
    if len(rows) != len(cols):
        raise ValueError(f"rows and cols must have the same length, got {len(rows)} and {len(cols)}")
    d = check_positive_int("d", d)
    if any(not 0 <= i < d for i in rows + cols):
        raise ValueError(f"indices must lie in [0, d) = [0, {d}), got rows={rows}, cols={cols}")
    k = len(rows)
    if k % 2:
        return Fraction(0) if exact else 0.0
    m = k // 2
    if d < m:
        raise ValueError(f"d must be >= m = {m} for moments of degree {k}, got d={d}")
    table = _weingarten_table(m, d)
    pairs = _pairings(k)
    srow = [s for s in pairs if all(rows[a] == rows[s[a]] for a in range(k))]
    scol = [t for t in pairs if all(cols[a] == cols[t[a]] for a in range(k))]
    total = sum((table[coset_type(s, t)] for s, t in product(srow, scol)), Fraction(0))
    return total if exact else float(total)
