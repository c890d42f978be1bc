"""Probes of how gradients travel: Jacobian spectral moments and per-layer gradient norms.

:func:`jacobian_moments` estimates the first two normalised spectral moments of
:math:`JJ^\\top` for the Jacobian :math:`J` of a block, the quantities block dynamical
isometry is stated in (Chen et al. 2020, Definition 1):

.. math::
    \\phi(JJ^\\top) = \\tfrac{1}{n_\\text{out}}\\operatorname{tr}(JJ^\\top), \\qquad
    \\phi\\big((JJ^\\top)^2\\big) = \\tfrac{1}{n_\\text{out}}\\operatorname{tr}\\big((JJ^\\top)^2\\big).

With a Gaussian probe :math:`v\\sim\\mathcal N(0, I)`, :math:`u = J^\\top v` and
:math:`w = J u`, one has :math:`\\mathbb E\\|u\\|^2 = \\operatorname{tr}(JJ^\\top)` and
:math:`\\mathbb E\\|w\\|^2 = \\operatorname{tr}((JJ^\\top)^2)` (Hutchinson's estimator), so
both moments come from one vector-Jacobian and one Jacobian-vector product per probe,
without materialising :math:`J`.

The probe average's relative standard error falls like :math:`1/\\sqrt{P}`, so a sharper
estimate costs quadratically more probes. Two variance reductions are available
(``method``/``distribution``): Rademacher probes (:math:`\\pm1` entries), whose variance
:math:`2(\\|A\\|_F^2-\\sum_i A_{ii}^2)` drops the diagonal's share of Gaussian probes'
:math:`2\\|A\\|_F^2`; and Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a sketch
:math:`Q=\\operatorname{orth}(AS)` from ``k`` products, the exact traces
:math:`\\operatorname{tr}(Q^\\top AQ)=\\|J^\\top Q\\|_F^2` and
:math:`\\operatorname{tr}(Q^\\top A^2Q)=\\|AQ\\|_F^2` from ``k`` more (the same products
serve both moments), and Hutchinson on the deflated remainder
:math:`(I-QQ^\\top)A(I-QQ^\\top)`. Hutch++ needs :math:`O(1/\\varepsilon)` products when the
spectrum is dominated by a few eigenvalues (decaying or heavy-tailed) and gains nothing on a
flat spectrum, where its sketch only costs products. ``rel_error`` asks for a relative
standard error: a pilot of 16 Rademacher probes estimates the variance of both estimators
(for Hutch++, the pilot's sample variance deflated by the Nystrom approximation
:math:`AV(V^\\top AV)^+(AV)^\\top` of the top of the spectrum, the pilot's products serving
as the sketch), the cheaper one continues, and probes are added until the standard errors
reach the target.

A third estimator, ``method="forward"``, uses Jacobian-vector products only: with
input-space probes :math:`V=[v_1..v_P]` (independent, :math:`\\mathbb E\\,vv^\\top=I`:
Rademacher or Gaussian), :math:`Y=JV` (one batched forward-mode pass) and the Gram matrix
:math:`G=Y^\\top Y=V^\\top BV`, :math:`B=J^\\top J`,

.. math::
    \\hat\\phi_1=\\frac{1}{n_\\text{out}P}\\sum_i G_{ii},\\qquad
    \\hat\\phi_2=\\frac{1}{n_\\text{out}P(P-1)}\\sum_{i\\ne j} G_{ij}^2,

both unbiased: :math:`\\mathbb E G_{ii}=\\operatorname{tr}B=\\operatorname{tr}JJ^\\top` and, for
:math:`i\\ne j`, :math:`\\mathbb E[G_{ij}^2]=\\mathbb E[v_i^\\top B\\,\\mathbb E(v_jv_j^\\top)\\,Bv_i]
=\\operatorname{tr}B^2=\\operatorname{tr}(JJ^\\top)^2` for any isotropic probes (Rademacher
included). Each probe costs one product with :math:`J` instead of two, but the U-statistic's
variance is :math:`\\tfrac{4(P-2)}{P(P-1)}\\zeta_1+\\tfrac{2}{P(P-1)}\\zeta_2` with
:math:`\\zeta_1=\\operatorname{Var}(v^\\top B^2v)` (the variance of one Hutchinson sample of
:math:`\\operatorname{tr}A^2`) and :math:`\\zeta_2=\\operatorname{Var}(G_{12}^2)\\approx
2(\\operatorname{tr}B^2)^2`: at equal passes through the block (P products with
:math:`J` against P/2 with :math:`JJ^\\top`) and Gaussian probes its first term is twice
Hutchinson's variance for :math:`\\phi_2`, and the second adds a relative variance of about
:math:`4/P^2` whatever the spectrum (Rademacher probes lower each estimator's :math:`\\zeta_1`
by a diagonal's share, in different bases). It can win only where :math:`\\phi_1` is the
binding moment or a pass of :math:`J` alone is much cheaper than half a product with
:math:`JJ^\\top`. Its standard error for :math:`\\phi_1` is the sample one; for
:math:`\\phi_2` the square root of the unbiased estimate of the U-statistic's variance
(:math:`U^2` less the mean of :math:`h_{ij}h_{kl}` over disjoint pairs, :math:`h_{ij}=G_{ij}^2`),
which the jackknife would overstate by up to :math:`\\sqrt2` where the pair term dominates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch._decomp.decompositions_for_jvp  # noqa: F401
from torch import nn

from gnelib.theory.moments import Moments
from gnelib.base.errors import check_choice, check_positive, check_positive_int

# torch.func.jvp imports the module above on first use, and that import compiles TorchScript
# from Python source. Doing it at import time keeps it out of worker threads: CPython 3.11
# can fail ("AST constructor recursion depth mismatch") when two threads parse at once, as
# in a Dask worker whose event loop unpickles a task while another task runs.

__all__ = ["JacobianMoments", "jacobian_moments", "gradient_norms", "block_moments",
           "activation_gradient_norms"]


#: The measured moments are the library's one moments record, :class:`gnelib.theory.moments.Moments`
#: (``phi1``, ``phi2``, ``aspect``, standard errors, ``n_in``/``n_out``, ``probes``, ``method``,
#: ``sketch``), so a measurement feeds the moment calculus directly.
JacobianMoments = Moments


def _check_input(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite: it contains NaN or inf")
    return x.detach()


def _materialise(f, x: torch.Tensor) -> torch.Tensor:
    try:
        return torch.func.jacrev(f)(x)
    except RuntimeError:  # stateful blocks (running statistics) cannot be transformed
        return torch.autograd.functional.jacobian(f, x)


def _exact(f, x: torch.Tensor) -> JacobianMoments:
    jac = _materialise(f, x)
    n_in = x.numel()
    n_out = jac.numel() // n_in
    jac = jac.reshape(n_out, n_in).to(torch.float64)
    a = jac @ jac.T
    phi1 = torch.trace(a).item() / n_out
    phi2 = (a * a).sum().item() / n_out  # tr(A^2) = sum_ij A_ij^2 for symmetric A
    return JacobianMoments(phi1, phi2, n_out / n_in, 0.0, 0.0, n_in, n_out, 0, "exact")


#: Estimators of :func:`jacobian_moments` (``method``); ``"auto"`` picks one of the first three.
METHODS = ("hutchinson", "hutch++", "forward", "auto")
#: Probe distributions of the Hutchinson estimator (``distribution``).
DISTRIBUTIONS = ("gaussian", "rademacher")
#: Most probes ``"forward"`` adds for a target error: its P x P Gram matrix (and the
#: temporaries of its variance) stay under about 200 MB.
MAX_FORWARD_PROBES = 2048
#: Default memory budget (bytes) for one batch of probes.
DEFAULT_MEMORY_BUDGET = 256 * 2**20


class _Operator:
    """Products of :math:`A=JJ^\\top` with batches of output-space vectors: ``apply(V)``
    returns ``(J^T V, J J^T V)`` for ``V`` of shape ``(p, *y.shape)``, in chunks of at most
    ``chunk`` vectors. torch.func (one vjp and one jvp per vector, batched with ``vmap``) is
    tried first; blocks that torch.func cannot transform (in-place updates of running
    statistics) fall back to plain autograd with one forward pass, where ``J u`` is the
    gradient of :math:`(J^\\top r)\\cdot u` with respect to a dummy ``r`` (double backward)."""

    def __init__(self, f, x: torch.Tensor, memory_budget: int | None):
        self.f, self.x = f, x
        self.products = 0
        self.passes = 0  # passes through the block: 2 per product with JJ^T, 1 per J v
        self._graph = None
        try:
            self.y, self._vjp = torch.func.vjp(f, x)
            self.y = self.y.detach()
        except RuntimeError:
            self._vjp = None
            self._build_graph()
        self.n_out = self.y.numel()
        budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        # a probe holds v, J^T v and J J^T v plus the block's intermediates (about as large
        # again); an estimate, so the budget is approximate
        per_probe = 4 * (x.numel() + 2 * self.n_out) * x.element_size()
        self.chunk = max(1, int(budget // per_probe))

    def _build_graph(self):
        xr = self.x.clone().requires_grad_(True)
        y = self.f(xr)
        r = torch.zeros_like(y, requires_grad=True)
        (jt_r,) = torch.autograd.grad(y, xr, r, create_graph=True)
        self._graph = (xr, y, r, jt_r)
        self.y = y.detach()

    def _func(self, v):
        u = torch.func.vmap(self._vjp)(v)[0]
        w = torch.func.vmap(lambda t: torch.func.jvp(self.f, (self.x,), (t,))[1])(u)
        return u, w

    def _autograd(self, v):
        xr, y, r, jt_r = self._graph
        us, ws = [], []
        for vi in v:
            (u,) = torch.autograd.grad(y, xr, vi, retain_graph=True)
            (w,) = torch.autograd.grad(jt_r, r, u, retain_graph=True)
            us.append(u)
            ws.append(w)
        return torch.stack(us), torch.stack(ws)

    def _apply_chunk(self, v):
        if self._graph is None:
            try:
                return self._func(v)
            except RuntimeError:
                self._build_graph()
        return self._autograd(v)

    def _forward_chunk(self, v):
        if self._graph is None:
            try:
                return torch.func.vmap(
                    lambda t: torch.func.jvp(self.f, (self.x,), (t,))[1])(v)
            except RuntimeError:
                self._build_graph()
        xr, y, r, jt_r = self._graph
        return torch.stack([torch.autograd.grad(jt_r, r, vi, retain_graph=True)[0]
                            for vi in v])

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for input-space vectors ``v`` of shape ``(p, *x.shape)`` (one pass each)."""
        self.passes += v.shape[0]
        if v.shape[0] <= self.chunk:
            return self._forward_chunk(v)
        return torch.cat([self._forward_chunk(c) for c in v.split(self.chunk)])

    def input_probes(self, p: int, generator, distribution: str) -> torch.Tensor:
        """``p`` input-space probes (for ``forward``)."""
        return _draw(p, self.x, generator, distribution)

    def apply(self, v: torch.Tensor):
        self.products += v.shape[0]
        self.passes += 2 * v.shape[0]
        if v.shape[0] <= self.chunk:
            return self._apply_chunk(v)
        parts = [self._apply_chunk(c) for c in v.split(self.chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def probes(self, p: int, generator, distribution: str) -> torch.Tensor:
        """``p`` output-space probes (for ``apply``)."""
        return _draw(p, self.y, generator, distribution)


def _draw(p: int, like: torch.Tensor, generator, distribution: str) -> torch.Tensor:
    """``p`` Gaussian or Rademacher vectors shaped, typed and placed like ``like``, drawn on the
    CPU generator (so estimates reproduce on any device)."""
    shape = (p, *like.shape)
    if distribution == "gaussian":
        v = torch.randn(shape, generator=generator, dtype=like.dtype)
    else:
        v = torch.randint(0, 2, shape, generator=generator).to(like.dtype).mul_(2).sub_(1)
    return v.to(like.device)


def _sq_norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).to(torch.float64).pow(2).sum(1)


class _Samples:
    """Running per-probe samples of the two traces (residual part for Hutch++) plus the
    exact sketch part; estimates and standard errors of :math:`\\phi_1, \\phi_2`."""

    def __init__(self, n_out: int, base1: float = 0.0, base2: float = 0.0):
        self.n_out, self.base = n_out, (base1, base2)
        self.a: list[torch.Tensor] = []
        self.b: list[torch.Tensor] = []

    def add(self, u, w):
        self.a.append(_sq_norms(u) / self.n_out)
        self.b.append(_sq_norms(w) / self.n_out)

    @property
    def count(self) -> int:
        return sum(len(t) for t in self.a)

    def stats(self):
        out = []
        for base, xs in zip(self.base, (self.a, self.b)):
            s = torch.cat(xs) if xs else torch.zeros(0, dtype=torch.float64)
            mean = base / self.n_out + (s.mean().item() if len(s) else 0.0)
            se = s.std().item() / math.sqrt(len(s)) if len(s) > 1 else math.inf
            out.append((mean, se))
        return out  # [(phi1, se1), (phi2, se2)]

    def needed(self, rel_error: float) -> int:
        """Residual samples in all for both relative standard errors <= rel_error
        (from the sample variances so far)."""
        need = 0
        for base, xs in zip(self.base, (self.a, self.b)):
            s = torch.cat(xs)
            total = base / self.n_out + s.mean().item()
            if total <= 0 or len(s) < 2:
                continue
            need = max(need, math.ceil(s.var().item() / (rel_error * total) ** 2))
        return need


def _orthonormal(w: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (rows) of the span of the rows of ``w`` (p, *shape)."""
    m = w.reshape(w.shape[0], -1).to(torch.float64)
    q = torch.linalg.qr(m.T).Q  # (n_out, p)
    return q.T


def _deflate(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(I - Q Q^T) v`` for rows of ``v``, with ``q`` (k, n_out) orthonormal rows."""
    m = v.reshape(v.shape[0], -1).to(torch.float64)
    m = m - (m @ q.T) @ q
    return m.to(v.dtype).reshape(v.shape)


def _sketch(op: _Operator, q: torch.Tensor) -> tuple[float, float]:
    """Exact traces of :math:`Q^\\top A Q=\\|J^\\top Q\\|^2` and :math:`Q^\\top A^2 Q=\\|AQ\\|^2`."""
    qs = q.to(op.y.dtype).reshape(q.shape[0], *op.y.shape)
    u, w = op.apply(qs)
    return _sq_norms(u).sum().item(), _sq_norms(w).sum().item()


def _result(s: _Samples, n_in: int, products: int, method: str, sketch: int):
    (p1, s1), (p2, s2) = s.stats()
    return JacobianMoments(p1, p2, s.n_out / n_in, s1, s2, n_in, s.n_out, products, method, sketch)


def _run_residual(op, s, generator, q, distribution, count, rel_error, max_probes):
    """Draw residual probes (deflated by ``q`` if given) in batches until ``count`` are in,
    or, with ``rel_error``, until both relative standard errors reach it (sequentially, at
    most ``max_probes`` products in all)."""
    target = count
    while True:
        todo = target - s.count
        if rel_error is not None:
            todo = min(todo, max_probes - op.products)
        if todo <= 0:
            return
        v = op.probes(todo, generator, distribution)
        if q is not None:
            v = _deflate(v, q)
        s.add(*op.apply(v))
        if rel_error is None:
            return
        need = s.needed(rel_error)
        if need <= s.count:
            return
        # ask for 10 % more than predicted: the sample variance itself is noisy
        target = max(s.count + 1, math.ceil(1.1 * need))


def _hutch_pp(op, n_in, generator, probes, rel_error, max_probes, sketch):
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021) on A and on A^2 from the same
    products: sketch Q = orth(A S) (k products), exact traces on range(Q) (k products),
    Hutchinson with Rademacher probes on the deflated remainder (m products)."""
    if sketch is None:
        sketch = max(1, probes // 3)
    check_positive_int("sketch", sketch)
    k = min(sketch, op.n_out)
    s_probes = op.probes(k, generator, "rademacher")
    _, w = op.apply(s_probes)
    q = _orthonormal(w)
    t1, t2 = _sketch(op, q)
    s = _Samples(op.n_out, t1, t2)
    m = max(2, probes - 2 * k)
    if k >= op.n_out:  # the sketch spans the whole space: the traces are exact
        return JacobianMoments(t1 / op.n_out, t2 / op.n_out, op.n_out / n_in, 0.0, 0.0, n_in,
                               op.n_out, op.products, "hutch++", 2 * k)
    _run_residual(op, s, generator, q, "rademacher", m if rel_error is None else 16,
                  rel_error, max_probes)
    return _result(s, n_in, op.products, "hutch++", 2 * k)


class _Gram:
    """Running Gram matrix :math:`G=Y^\top Y` of forward products :math:`Y=JV` (the rows of
    ``y`` stacked as they come), its two statistics, their jackknife standard errors and the
    probe count a target relative error needs (module docstring)."""

    def __init__(self, n_out: int):
        self.n_out = n_out
        self.rows = torch.zeros(0, 0, dtype=torch.float64)
        self.g = torch.zeros(0, 0, dtype=torch.float64)

    @property
    def count(self) -> int:
        return self.g.shape[0]

    def add(self, y: torch.Tensor):
        m = y.reshape(y.shape[0], -1).to(torch.float64)
        if self.count == 0:
            self.rows, self.g = m, m @ m.T
            return
        cross = m @ self.rows.T
        self.g = torch.cat([torch.cat([self.g, cross.T], 1),
                            torch.cat([cross, m @ m.T], 1)], 0)
        self.rows = torch.cat([self.rows, m])

    def _parts(self):
        p, n = self.count, self.n_out
        d = self.g.diagonal() / n  # G_ii / n: Hutchinson samples of phi1
        sq = (self.g / n).pow(2)
        sq.fill_diagonal_(0.0)
        r = sq.sum(1)  # sum_{j != k} G_kj^2 / n^2
        return p, d, sq, r

    def stats(self):
        """``[(phi1, se1), (phi2, se2)]``: the sample standard error of the mean of the
        ``G_ii``; for phi2 the square root of the unbiased estimate of the U-statistic's
        variance (its square minus the mean of ``h_ij h_kl`` over disjoint pairs), the
        jackknife for fewer than four probes or when that estimate is not positive."""
        p, d, sq, r = self._parts()
        n = self.n_out
        phi1 = d.mean().item()
        se1 = d.std().item() / math.sqrt(p) if p > 1 else math.inf
        if p < 2:
            return [(phi1, se1), (0.0, math.inf)]
        total = r.sum()
        phi2 = (total / (p * (p - 1))).item() * n
        if p < 3:
            return [(phi1, se1), (phi2, math.inf)]
        if p < 4:
            loo = (total - 2 * r) / ((p - 1) * (p - 2)) * n  # phi2 without probe k
            return [(phi1, se1),
                    (phi2, math.sqrt((p - 1) / p * (loo - loo.mean()).pow(2).sum().item()))]
        # unbiased: Var(U) = E[U^2] - theta^2, theta^2 by the mean of h_ij h_kl over
        # disjoint pairs (a degree-4 U-statistic); sums over unordered pairs
        h = sq * n  # h_ij = G_ij^2 / n, mean phi2
        t = h.sum().item() / 2
        f2 = h.pow(2).sum().item() / 2
        rs = h.sum(1)
        disjoint = t * t + f2 - rs.pow(2).sum().item()
        n_pairs = p * (p - 1) / 2
        theta2 = disjoint / (n_pairs * (p - 2) * (p - 3) / 2)
        var2 = (t / n_pairs) ** 2 - theta2
        if var2 <= 0:  # a rare draw: fall back to the (conservative) jackknife
            loo = (total - 2 * r) / ((p - 1) * (p - 2)) * n
            var2 = (p - 1) / p * (loo - loo.mean()).pow(2).sum().item()
        return [(phi1, se1), (phi2, math.sqrt(var2))]

    def needed(self, rel_error: float) -> int:
        """Probes in all for both relative standard errors <= rel_error, from the variance
        components estimated so far: ``Var(d)`` for phi1; for phi2 the U-statistic's
        ``4(P-2)/(P(P-1)) zeta1 + 2/(P(P-1)) zeta2``, ``zeta2`` the variance of the pairs'
        ``G_ij^2`` and ``zeta1`` that of the probes' row means less its pair noise."""
        p, d, sq, r = self._parts()
        if p < 3:
            return 3
        (phi1, _), (phi2, _) = self.stats()
        n = self.n_out
        need = 0
        if phi1 > 0:
            need = math.ceil(d.var().item() / (rel_error * phi1) ** 2)
        iu = torch.triu_indices(p, p, 1)
        pairs = sq[iu[0], iu[1]] * n  # G_ij^2 / n, mean phi2
        zeta2 = pairs.var().item()
        zeta1 = max((r * n / (p - 1)).var().item() - zeta2 / (p - 1), 0.0)
        if phi2 > 0:
            t = (rel_error * phi2) ** 2
            need = max(need, math.ceil((4 * zeta1 + math.sqrt(16 * zeta1 ** 2 + 8 * zeta2 * t))
                                       / (2 * t)))
        return max(need, 3)


def _forward(op, n_in, generator, probes, rel_error, max_probes, distribution):
    """The forward-only estimator (module docstring): ``probes`` products ``J v``, or with
    ``rel_error`` a pilot of 16 and batches until both relative standard errors reach it
    (at most ``max_probes`` passes and :data:`MAX_FORWARD_PROBES` probes)."""
    g = _Gram(op.n_out)
    target = max(3, probes) if rel_error is None else 16
    while True:
        todo = target - g.count
        if rel_error is not None:
            todo = min(todo, max_probes - op.passes, MAX_FORWARD_PROBES - g.count)
        if todo <= 0:
            break
        g.add(op.forward(op.input_probes(todo, generator, distribution)))
        if rel_error is None:
            break
        need = g.needed(rel_error)
        if need <= g.count:
            break
        target = max(g.count + 1, math.ceil(1.1 * need))
    (p1, s1), (p2, s2) = g.stats()
    return JacobianMoments(p1, max(p2, 0.0), op.n_out / n_in, s1, s2, n_in, op.n_out,
                           op.passes, "forward", 0)


def _forward_passes(a: torch.Tensor, b: torch.Tensor, rel_error: float) -> int:
    """Passes the forward estimator would need, predicted from Hutchinson pilot samples
    ``a`` (of phi1) and ``b`` (of phi2, each ``v^T A^2 v / n``): ``Var(G_ii/n) ~ Var(a)``,
    ``zeta1/n^2 ~ Var(b)`` and ``zeta2/n^2 ~ 2 phi2^2 + 3 Var(b)`` (Gaussian moments)."""
    m1, m2 = a.mean().item(), b.mean().item()
    need = math.ceil(a.var().item() / (rel_error * m1) ** 2) if m1 > 0 else 0
    if m2 > 0:
        z1, z2, t = b.var().item(), 2 * m2 ** 2 + 3 * b.var().item(), (rel_error * m2) ** 2
        need = max(need, math.ceil((4 * z1 + math.sqrt(16 * z1 ** 2 + 8 * z2 * t)) / (2 * t)))
    return max(need, 3)


def _auto(op, n_in, generator, rel_error, max_probes, pilot):
    """Pilot of ``pilot`` Rademacher probes; predict the products each method still needs
    for ``rel_error`` and continue with the cheaper one. Hutch++ reuses the pilot's products
    A V as its sketch; its residual variance is predicted by deflating the pilot's sample
    variance by the Nystrom approximation of the top of the spectrum (module docstring)."""
    v = op.probes(pilot, generator, "rademacher")
    u, w = op.apply(v)
    s = _Samples(op.n_out)
    s.add(u, w)
    need_h = s.needed(rel_error)
    # Nystrom: A_nys = W (V^T W)^+ W^T; its eigenvalues estimate the top of the spectrum
    vm = v.reshape(pilot, -1).to(torch.float64)
    wm = w.reshape(pilot, -1).to(torch.float64)
    core = vm @ wm.T
    core = (core + core.T) / 2
    evals, evecs = torch.linalg.eigh(core)
    keep = evals > evals.abs().max() * 1e-10
    if keep.any():
        z = wm.T @ (evecs[:, keep] / evals[keep].sqrt())  # A_nys = Z Z^T
        mu = torch.linalg.eigvalsh(z.T @ z).clamp(min=0)
    else:
        mu = torch.zeros(1, dtype=torch.float64)
    a, b = torch.cat(s.a), torch.cat(s.b)  # per-probe samples, divided by n_out
    # residual variances: Var(g'^T B g') ~ 2 ||B||_F^2, deflated by the captured eigenvalues
    n2 = op.n_out ** 2
    var1 = max(a.var().item() - 2 * mu.pow(2).sum().item() / n2, 0.05 * a.var().item())
    var2 = max(b.var().item() - 2 * mu.pow(4).sum().item() / n2, 0.05 * b.var().item())
    tot1, tot2 = a.mean().item(), b.mean().item()
    need_pp = max(math.ceil(var1 / (rel_error * tot1) ** 2) if tot1 > 0 else 0,
                  math.ceil(var2 / (rel_error * tot2) ** 2) if tot2 > 0 else 0)
    # remaining passes through the block (2 per product with JJ^T, 1 per J v)
    cost_h = 2 * max(0, need_h - pilot)
    cost_pp = 2 * (pilot + max(need_pp, 2))  # sketch traces (A Q) + residual
    cost_f = _forward_passes(a, b, rel_error)  # the pilot's products cannot be reused
    if cost_f < 0.8 * min(cost_h, cost_pp):
        return _forward(op, n_in, generator, 0, rel_error, 2 * max_probes, "rademacher")
    if cost_pp < 0.8 * cost_h and pilot < op.n_out:
        q = _orthonormal(w)
        t1, t2 = _sketch(op, q)
        r = _Samples(op.n_out, t1, t2)
        _run_residual(op, r, generator, q, "rademacher", max(2, min(need_pp, 16)), rel_error,
                      max_probes)
        return _result(r, n_in, op.products, "hutch++", 2 * pilot)
    _run_residual(op, s, generator, None, "rademacher", math.ceil(1.1 * need_h), rel_error,
                  max_probes)
    return _result(s, n_in, op.products, "hutchinson", 0)


def jacobian_moments(f, x: torch.Tensor, probes: int = 64,
                     generator: torch.Generator | None = None,
                     exact: bool = False, *, method: str | None = None,
                     rel_error: float | None = None, distribution: str | None = None,
                     sketch: int | None = None, max_probes: int | None = None,
                     memory_budget: int | None = None) -> JacobianMoments:
    """Estimate :math:`\\phi(JJ^\\top)` and :math:`\\phi((JJ^\\top)^2)` for the Jacobian of
    ``f`` at ``x``.

    ``J`` is the Jacobian of ``f(x).flatten()`` with respect to ``x.flatten()``: for a batch
    of inputs and a per-sample block it is block diagonal, so the moments are averages over
    the samples; a block that mixes samples (batch norm in training mode) is handled as is.

    Parameters
    ----------
    f : callable
        The block, a function or ``nn.Module`` of one tensor.
    x : torch.Tensor
        The input, finite and floating point (use float64 for tight checks).
    probes : int
        Number of products with :math:`JJ^\\top` (each one vector-Jacobian and one
        Jacobian-vector product; >= 2 for a standard error; for ``"forward"`` the products
        with :math:`J`, >= 3). Ignored with ``rel_error``.
    generator : torch.Generator, optional
        A CPU generator for the probes, for reproducible estimates on any device.
    exact : bool
        Materialise ``J`` with ``torch.func.jacrev`` and return exact traces (small blocks).
    method : {"hutchinson", "hutch++", "forward", "auto"}, optional
        ``"hutchinson"``: the probe average (Gaussian probes unless ``distribution`` says
        otherwise: the estimates of earlier versions). ``"hutch++"``: Hutch++ (Meyer et al.
        2021) with a sketch of ``sketch`` vectors (default ``probes // 3``), exact traces on
        the sketch and Rademacher probes on the rest; it gains on spectra dominated by a few
        large eigenvalues and loses up to a third of the products on flat ones. ``"auto"``
        (the default when ``rel_error`` is given): a pilot of Rademacher probes, then the
        method predicted to reach ``rel_error`` with fewer passes through the block.
        ``"forward"``: Jacobian-vector products only, one pass per probe, all probes in one
        batched forward-mode pass; :math:`\\phi_2` from the off-diagonal of the probes' Gram
        matrix (module docstring), Rademacher probes unless ``distribution`` says otherwise.
        Default ``"hutchinson"``.
    rel_error : float, optional
        Target relative standard error of both moments: probes are added in batches until
        the estimated standard errors reach it (at most ``max_probes`` products, default
        ``max(4096, 4 * n_out)``).
    distribution : {"gaussian", "rademacher"}, optional
        Probe distribution of ``"hutchinson"`` (default Gaussian) and ``"forward"``
        (default Rademacher; ``"auto"`` and
        ``"hutch++"`` always use Rademacher probes, whose variance is lower by the
        diagonal's share, :math:`2(\\|A\\|_F^2-\\sum_i A_{ii}^2)` instead of
        :math:`2\\|A\\|_F^2`).
    memory_budget : int, optional
        Bytes one batch of probes may take (about; default 256 MiB): the probes run in
        chunks of ``memory_budget // (4 (n_in + 2 n_out) itemsize)`` vectors.

    The standard errors are those of the probe average, for Hutch++ of its residual part
    (the sketch part is exact given the sketch), for ``"forward"`` the jackknife over probes,
    zero for ``exact=True``. ``probes`` of the result counts the products with
    :math:`JJ^\\top` actually made (two passes through the block each; 0 for the exact path),
    for ``"forward"`` the passes (products with :math:`J`, plus two per product of an
    ``"auto"`` pilot).
    """
    x = _check_input(x)
    check_positive_int("probes", probes)
    if method is None:
        method = "hutchinson" if rel_error is None else "auto"
    check_choice("method", method, METHODS)
    check_choice("distribution", distribution, (None, *DISTRIBUTIONS))
    if rel_error is not None:
        check_positive("rel_error", rel_error)
    elif method == "auto":
        raise ValueError("method='auto' needs rel_error (a target relative standard error)")
    if memory_budget is not None:
        check_positive("memory_budget", memory_budget)
    if exact:
        try:
            return _exact(f, x)
        except RuntimeError as err:
            raise ValueError(f"f cannot be applied to x of shape {tuple(x.shape)}: {err}") from err
    try:
        op = _Operator(f, x, memory_budget)
        if max_probes is None:
            max_probes = max(4096, 4 * op.n_out)
        check_positive_int("max_probes", max_probes, minimum=2)
        if method == "hutch++":
            return _hutch_pp(op, x.numel(), generator, probes, rel_error, max_probes, sketch)
        if method == "forward":
            return _forward(op, x.numel(), generator, probes, rel_error, 2 * max_probes,
                            distribution or "rademacher")
        if method == "auto":
            return _auto(op, x.numel(), generator, rel_error, max_probes,
                         pilot=min(16, max_probes))
        dist = distribution or "gaussian"
        s = _Samples(op.n_out)
        if rel_error is None:
            s.add(*op.apply(op.probes(probes, generator, dist)))
        else:
            _run_residual(op, s, generator, None, dist, 16, rel_error, max_probes)
    except RuntimeError as err:
        raise ValueError(f"f cannot be applied to x of shape {tuple(x.shape)}: {err}") from err
    return _result(s, x.numel(), op.products, "hutchinson", 0)


def gradient_norms(model: nn.Module, loss: torch.Tensor) -> dict[str, float]:
    """Squared gradient norm :math:`\\|\\partial\\ell/\\partial W\\|_F^2` of ``loss`` for every
    weight tensor (parameters with two or more dimensions) of ``model``, in layer
    (registration) order. Does not touch ``.grad``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    if not named:
        raise ValueError("model has no trainable weight tensors (parameters with ndim >= 2)")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss must be a scalar tensor")
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {n: (0.0 if g is None else g.detach().pow(2).sum().item())
            for (n, _), g in zip(named, grads)}


def block_moments(blocks, x: torch.Tensor, probes: int = 32,
                  generator: torch.Generator | None = None) -> list[JacobianMoments]:
    """:func:`jacobian_moments` of every block of a serial network, each at the input it
    actually receives (``x`` propagated through the blocks before it)."""
    out, h = [], _check_input(x)
    for block in blocks:
        out.append(jacobian_moments(block, h, probes=probes, generator=generator))
        with torch.no_grad():
            h = block(h)
    return out


def activation_gradient_norms(blocks, head, x: torch.Tensor, y: torch.Tensor,
                              loss_fn=nn.functional.cross_entropy) -> list[float]:
    """Squared norms :math:`\\|\\partial\\ell/\\partial x_l\\|^2` of the loss gradient with
    respect to the input ``x_0`` and every block output ``x_1 .. x_L`` of a serial network
    ``head(blocks[L-1](...blocks[0](x)))``. Back-propagation multiplies these by
    :math:`J_l^\\top`, so in expectation :math:`\\|\\partial\\ell/\\partial x_{l-1}\\|^2 \\approx
    \\phi(J_lJ_l^\\top)\\,\\tfrac{n_l}{n_{l-1}}\\|\\partial\\ell/\\partial x_l\\|^2`
    (Chen et al., notes §1)."""
    h = _check_input(x).requires_grad_(True)
    outs = [h]
    for block in blocks:
        h = block(h)
        outs.append(h)
    loss = loss_fn(head(h), y)
    grads = torch.autograd.grad(loss, outs)
    return [g.detach().pow(2).sum().item() for g in grads]
