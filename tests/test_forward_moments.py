"""The forward-only estimator of jacobian_moments (method="forward": Jacobian-vector products
only, phi2 from the off-diagonal of the probes' Gram matrix), against exact moments of linear
blocks with known spectra (flat, decaying, heavy-tailed), with the coverage of its standard
error; and what "auto" predicts for it."""
from __future__ import annotations

import math

import pytest
import torch

import gnelib
from gnelib.base.device import torch_threads
from gnelib.probes import jacobian as jac

from test_hutchpp import KINDS, N, _block


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _runs(kind, reps, **kw):
    f, x, (e1, e2) = _block(kind)
    rows = []
    for s in range(reps):
        r = gnelib.jacobian_moments(f, x, method="forward",
                                    generator=torch.Generator().manual_seed(1000 + s), **kw)
        rows.append((r.phi1 - e1, r.phi2 - e2, r.phi1_se, r.phi2_se, e1, e2, r))
    return rows


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_estimates_are_unbiased(kind, distribution):
    # mean error over 80 independent estimates within 4 standard errors of zero
    rows = _runs(kind, 80, probes=16, distribution=distribution)
    for k in (0, 1):
        d = torch.tensor([row[k] for row in rows], dtype=torch.float64)
        z = d.mean() / (d.std() / math.sqrt(len(d)))
        assert abs(z.item()) < 4, (kind, distribution, k, z.item())


@pytest.mark.parametrize("kind", KINDS)
def test_forward_error_estimate_covers_the_exact_moments(kind):
    rows = _runs(kind, 80, probes=32)
    for *_, r in rows:
        assert r.method == "forward" and r.probes == 32 and r.sketch == 0
        assert math.isfinite(r.phi1_se) and math.isfinite(r.phi2_se)
    for k in (0, 1):
        hits = sum(abs(row[k]) <= 2 * row[k + 2] for row in rows) / len(rows)
        assert 0.8 <= hits <= 1.0, (kind, k, hits)


def test_forward_standard_error_matches_the_spread_on_a_flat_spectrum():
    # the reported SE (unbiased variance estimate of the U-statistic) against the spread of
    # the estimates: on a flat spectrum the pair term 2 zeta2 / P^2 dominates, the term the
    # jackknife would overstate by about sqrt(2)
    rows = _runs("flat", 150, probes=32)
    for k in (0, 1):
        spread = torch.tensor([row[k] for row in rows]).std().item()
        mean_se = math.sqrt(sum(row[k + 2] ** 2 for row in rows) / len(rows))
        assert 0.85 < mean_se / spread < 1.18, (k, mean_se / spread)


def test_forward_phi2_standard_error_is_the_u_statistic_variance():
    # Gaussian probes: Var = 4(P-2)/(P(P-1)) zeta1 + 2/(P(P-1)) zeta2 with zeta1 = 2 tr B^4,
    # zeta2 = 2 (tr B^2)^2 + 6 tr B^4 (Isserlis); the pair term makes the relative SE fall
    # like 2/P, not 1/sqrt(P)
    f, x, (e1, e2) = _block("flat")
    lam = torch.linspace(0.5, 1.5, N, dtype=torch.float64)
    t2, t4 = lam.pow(2).sum().item(), lam.pow(4).sum().item()
    for p in (20, 80):
        ses = [gnelib.jacobian_moments(f, x, method="forward", probes=p, distribution="gaussian",
                                       generator=torch.Generator().manual_seed(s)).phi2_se
               for s in range(25)]
        var = (4 * (p - 2) / (p * (p - 1)) * 2 * t4 + 2 / (p * (p - 1)) * (2 * t2 ** 2 + 6 * t4))
        want = math.sqrt(var) / N
        got = math.sqrt(sum(se ** 2 for se in ses) / len(ses))
        assert 0.8 < got / want < 1.2, (p, got, want)


def test_forward_reaches_the_requested_relative_error():
    f, x, (e1, e2) = _block("flat")
    r = gnelib.jacobian_moments(f, x, method="forward", rel_error=0.03,
                                generator=torch.Generator().manual_seed(2))
    assert r.method == "forward"
    assert r.phi1_se <= 0.03 * r.phi1 and r.phi2_se <= 0.03 * r.phi2
    assert abs(r.phi2 / e2 - 1) < 0.15
    # the pair term alone needs P ~ 2/0.03 = 67 probes; not many more are used
    assert 60 <= r.probes <= 200


def test_forward_stops_at_max_probes_passes():
    f, x, _ = _block("heavy")
    r = gnelib.jacobian_moments(f, x, method="forward", rel_error=1e-4, max_probes=30,
                                generator=torch.Generator().manual_seed(0))
    assert r.probes <= 60  # 2 * max_probes passes


def test_forward_products_are_the_jvps_of_the_block():
    # the estimate is the U-statistic of the Gram matrix of J v, written out
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)

    def f(t):
        return torch.tanh(t @ w.T)
    x = torch.randn(2, 5, generator=g, dtype=torch.float64)
    r = gnelib.jacobian_moments(f, x, method="forward", probes=6,
                                generator=torch.Generator().manual_seed(3))
    j = torch.func.jacrev(f)(x).reshape(14, 10)
    gen = torch.Generator().manual_seed(3)
    v = torch.randint(0, 2, (6, 2, 5), generator=gen).double().mul(2).sub(1).reshape(6, 10)
    y = v @ j.T
    gram = y @ y.T
    off = gram.pow(2).sum() - gram.diagonal().pow(2).sum()
    assert r.phi1 == pytest.approx(gram.diagonal().mean().item() / 14, rel=1e-12)
    assert r.phi2 == pytest.approx(off.item() / (6 * 5) / 14, rel=1e-12)
    assert r.n_out == 14 and r.n_in == 10 and r.probes == 6


def test_forward_works_on_a_stateful_block_and_in_chunks():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(6).double().train()
    x = torch.randn(10, 6, dtype=torch.float64)
    exact = gnelib.jacobian_moments(bn, x, exact=True)
    est = gnelib.jacobian_moments(bn, x, method="forward", probes=200,
                                  generator=torch.Generator().manual_seed(0))
    assert abs(est.phi1 - exact.phi1) <= 4 * est.phi1_se
    assert abs(est.phi2 - exact.phi2) <= 4 * est.phi2_se
    f, x, _ = _block("flat")
    full = gnelib.jacobian_moments(f, x, method="forward", probes=30,
                                   generator=torch.Generator().manual_seed(1))
    small = gnelib.jacobian_moments(f, x, method="forward", probes=30, memory_budget=5000,
                                    generator=torch.Generator().manual_seed(1))
    assert small.phi2 == pytest.approx(full.phi2, rel=1e-10)


def test_predicted_forward_passes_match_what_forward_uses():
    # auto's prediction from a Hutchinson pilot against the forward estimator's own count
    f, x, _ = _block("flat")
    op = jac._Operator(f, x, None)
    v = op.probes(64, torch.Generator().manual_seed(0), "rademacher")
    s = jac._Samples(op.n_out)
    s.add(*op.apply(v))
    pred = jac._forward_passes(torch.cat(s.a), torch.cat(s.b), 0.03)
    used = [gnelib.jacobian_moments(f, x, method="forward", rel_error=0.03,
                                    generator=torch.Generator().manual_seed(k)).probes
            for k in range(5)]
    assert 0.6 < pred / (sum(used) / len(used)) < 1.6, (pred, used)


@pytest.mark.parametrize("kind", KINDS)
def test_auto_does_not_pick_forward_where_hutchinson_needs_fewer_passes(kind):
    f, x, _ = _block(kind)
    r = gnelib.jacobian_moments(f, x, rel_error=0.02, generator=torch.Generator().manual_seed(3))
    assert r.method != "forward"
