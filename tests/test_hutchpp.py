"""Variance-reduced trace estimation in jacobian_moments (Hutch++, Rademacher probes, the
automatic choice for a target relative error, chunking under a memory budget), against exact
moments of linear blocks with known spectra: flat, decaying and heavy-tailed."""
from __future__ import annotations

import math

import pytest
import torch

import gnelib
from gnelib.base.device import torch_threads
from gnelib.probes import jacobian as jac

N = 100


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matrices: one thread avoids thread-pool stalls on a busy machine
    with torch_threads(1):
        yield


def _spectrum(kind: str, n: int = N) -> torch.Tensor:
    """Eigenvalues of A = J J^T."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    if kind == "flat":
        return torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    if kind == "decaying":
        return i.pow(-2.0)
    if kind == "heavy":  # Pareto(alpha = 1) quantiles: a few eigenvalues dominate
        return 1.0 / (1.0 - (i - 0.5) / n)
    raise ValueError(kind)


def _block(kind: str, seed: int = 0, n: int = N):
    """A linear block x -> x M^T whose J J^T has the given spectrum, and exact moments."""
    g = torch.Generator().manual_seed(seed)
    lam = _spectrum(kind, n)
    u = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    m = u @ torch.diag(lam.sqrt()) @ v.T
    return (lambda t: t @ m.T), torch.randn(1, n, generator=g, dtype=torch.float64), \
        (lam.mean().item(), lam.pow(2).mean().item())


KINDS = ["flat", "decaying", "heavy"]


def _errors(kind, reps, **kw):
    f, x, (e1, e2) = _block(kind)
    out = []
    for s in range(reps):
        r = gnelib.jacobian_moments(f, x, generator=torch.Generator().manual_seed(100 + s), **kw)
        out.append((r.phi1 - e1, r.phi2 - e2, r.phi1_se, r.phi2_se, e1, e2, r))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_hutchpp_error_estimate_covers_the_exact_moments(kind):
    # the residual part's standard error: |error| <= 2 SE in about 95 % of runs
    rows = _errors(kind, 60, probes=60, method="hutch++")
    for d1, d2, s1, s2, *_ , r in rows:
        assert r.method == "hutch++" and r.probes == 60 and r.sketch == 40
        assert math.isfinite(s1) and math.isfinite(s2)
    for k in (0, 1):
        hits = sum(abs(row[k]) <= 2 * row[k + 2] + 1e-12 for row in rows) / len(rows)
        assert 0.85 <= hits <= 1.0, (kind, k, hits)
        worst = max(abs(row[k]) / max(row[k + 2], 1e-300) for row in rows)
        assert worst < 5.0


def _rms_rel(rows, k):
    return math.sqrt(sum((row[k] / row[4 + k]) ** 2 for row in rows) / len(rows))


def test_hutchpp_gains_on_decaying_spectra_and_not_on_flat_ones():
    # equal products (60); Hutchinson with Rademacher probes as the baseline
    gain = {}
    for kind in KINDS:
        pp = _errors(kind, 40, probes=60, method="hutch++")
        h = _errors(kind, 40, probes=60, method="hutchinson", distribution="rademacher")
        gain[kind] = [_rms_rel(h, k) / max(_rms_rel(pp, k), 1e-15) for k in (0, 1)]
    assert min(gain["decaying"]) > 10  # the sketch holds almost all of the trace
    assert min(gain["heavy"]) > 1.5
    assert max(gain["flat"]) < 1.3  # a third of the products buys nothing on a flat spectrum


def test_rademacher_probes_beat_gaussian_ones_on_a_diagonal_heavy_matrix():
    w = torch.diag(torch.linspace(0.2, 2.0, N, dtype=torch.float64))
    f, x = (lambda t: t @ w.T), torch.randn(1, N, dtype=torch.float64)
    r = gnelib.jacobian_moments(f, x, probes=8, distribution="rademacher",
                                generator=torch.Generator().manual_seed(0))
    lam = torch.diag(w).pow(2)
    assert r.phi1 == pytest.approx(lam.mean().item(), rel=1e-12)  # diagonal: no variance
    assert r.phi2 == pytest.approx(lam.pow(2).mean().item(), rel=1e-12)
    assert r.phi1_se == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind,expected", [("flat", "hutchinson"), ("decaying", "hutch++"),
                                           ("heavy", "hutch++")])
def test_auto_reaches_the_requested_relative_error_with_the_right_method(kind, expected):
    f, x, (e1, e2) = _block(kind)
    r = gnelib.jacobian_moments(f, x, rel_error=0.02, generator=torch.Generator().manual_seed(3))
    assert r.method == expected
    assert r.phi1_se <= 0.02 * r.phi1 + 1e-15 and r.phi2_se <= 0.02 * r.phi2 + 1e-15
    assert abs(r.phi1 / e1 - 1) < 0.08 and abs(r.phi2 / e2 - 1) < 0.08


def test_auto_stops_at_max_probes():
    f, x, _ = _block("flat")
    r = gnelib.jacobian_moments(f, x, rel_error=1e-4, max_probes=40,
                                generator=torch.Generator().manual_seed(0))
    assert r.probes <= 40 and r.phi2_se > 1e-4 * r.phi2


def test_default_estimate_is_the_gaussian_probe_average_of_earlier_versions():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 9, generator=g, dtype=torch.float64)

    def f(t):
        return torch.tanh(t @ w.T)
    x = torch.randn(3, 9, generator=g, dtype=torch.float64)
    r = gnelib.jacobian_moments(f, x, probes=7, generator=torch.Generator().manual_seed(5))
    # the estimator as it was written before Hutch++ came in
    gen = torch.Generator().manual_seed(5)
    y, vjp_fn = torch.func.vjp(f, x)
    v = torch.randn((7, *y.shape), generator=gen, dtype=y.dtype)
    u = torch.func.vmap(vjp_fn)(v)[0]
    ww = torch.func.vmap(lambda t: torch.func.jvp(f, (x,), (t,))[1])(u)
    a = u.reshape(7, -1).pow(2).sum(1) / y.numel()
    b = ww.reshape(7, -1).pow(2).sum(1) / y.numel()
    assert (r.phi1, r.phi2) == (a.mean().item(), b.mean().item())
    assert r.phi1_se == a.std().item() / math.sqrt(7) and r.probes == 7
    assert r.method == "hutchinson" and r.sketch == 0


def test_memory_budget_chunks_the_probes_without_changing_the_estimate():
    f, x, _ = _block("heavy")
    kw = dict(probes=30, method="hutch++")
    full = gnelib.jacobian_moments(f, x, generator=torch.Generator().manual_seed(1), **kw)
    op = jac._Operator(f, x.detach(), memory_budget=1)
    assert op.chunk == 1
    calls = []
    orig = jac._Operator._apply_chunk

    def spy(self, v):
        calls.append(v.shape[0])
        return orig(self, v)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jac._Operator, "_apply_chunk", spy)
        small = gnelib.jacobian_moments(f, x, generator=torch.Generator().manual_seed(1),
                                        memory_budget=8 * 4 * 3 * N * 4 + 1, **kw)
    assert max(calls) <= 4 and sum(calls) == 30
    assert small.phi1 == pytest.approx(full.phi1, rel=1e-10)
    assert small.phi2 == pytest.approx(full.phi2, rel=1e-10)


def test_stateful_block_works_with_hutchpp_and_auto():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(6).double().train()
    x = torch.randn(10, 6, dtype=torch.float64)
    exact = gnelib.jacobian_moments(bn, x, exact=True)
    for kw in (dict(method="hutch++", probes=45), dict(rel_error=0.05)):
        est = gnelib.jacobian_moments(bn, x, generator=torch.Generator().manual_seed(0), **kw)
        assert abs(est.phi1 - exact.phi1) <= 4 * est.phi1_se + 1e-9
        assert abs(est.phi2 - exact.phi2) <= 4 * est.phi2_se + 1e-9


def test_sketch_as_large_as_the_output_is_exact():
    f, x, (e1, e2) = _block("flat", n=20)
    r = gnelib.jacobian_moments(f, x, method="hutch++", probes=60, sketch=20,
                                generator=torch.Generator().manual_seed(0))
    assert r.phi1 == pytest.approx(e1, rel=1e-10) and r.phi2 == pytest.approx(e2, rel=1e-10)
    assert r.phi1_se == 0.0


@pytest.mark.parametrize("kw,match", [(dict(method="hutch+"), "method"),
                                      (dict(method="auto"), "rel_error"),
                                      (dict(rel_error=0.0), "rel_error"),
                                      (dict(distribution="uniform"), "distribution"),
                                      (dict(method="hutch++", sketch=0), "sketch"),
                                      (dict(memory_budget=-1), "memory_budget"),
                                      (dict(rel_error=0.1, max_probes=1), "max_probes")])
def test_bad_arguments_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        gnelib.jacobian_moments(lambda t: 2 * t, torch.zeros(4, dtype=torch.float64), **kw)
