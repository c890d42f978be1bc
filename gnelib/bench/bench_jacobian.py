"""Benchmark 3: Jacobian moments by probes (:func:`gnelib.probes.jacobian.jacobian_moments`) against
materialising the Jacobian with ``torch.func.jacrev`` (``jacobian_moments(..., exact=True)``).

The block is one wide layer :math:`f(x)=\\tanh(Wx)`, :math:`W_{ij}\\sim\\mathcal N(0,1/n)`,
at one input :math:`x\\sim\\mathcal N(0,I_n)`, in float64, for widths ``n`` from 256 to 2048.
Every contender returns :math:`\\phi(JJ^\\top)` and :math:`\\phi((JJ^\\top)^2)`. The exact
path costs :math:`O(n^3)` (n vector-Jacobian products, batched with ``vmap``, then
:math:`JJ^\\top`); a probe :math:`O(n^2)`. Contenders, all in the same run, same threads:

- ``jacrev (exact)``, the reference;
- ``auto (2%)``, ``auto (1%)``, ``auto (0.5%)``: ``jacobian_moments(f, x, rel_error=r)``,
  the library's automatic estimator (a pilot of Rademacher probes, then Hutchinson or
  Hutch++, whichever it predicts cheaper, probes added until both moments' estimated relative
  standard errors reach ``r``); the timed call includes the pilot and the choice;
- ``forward (2%)``, ``forward (1%)``, ``forward (0.5%)``: ``jacobian_moments(f, x,
  method="forward", rel_error=r)``, the forward-only estimator (Jacobian-vector products
  only, all probes of a batch in one forward-mode pass, :math:`\\phi_2` from the off-diagonal
  of the probes' Gram matrix); adaptive like ``auto``, from a pilot of 16 probes;
- ``Rademacher probes (1%, oracle)``: Hutchinson with Rademacher probes and the probe count
  that gives a 1 % relative standard error computed from the exact matrix (with
  :math:`A=JJ^\\top`, :math:`\\mathrm{Var}(v^\\top Av)=2(\\operatorname{tr}A^2-\\sum_iA_{ii}^2)`,
  likewise for :math:`A^2`): the cost of the best non-adaptive Hutchinson run, without
  ``auto``'s pilot and rounds;
- ``Gaussian probes (1%)``: the estimator of earlier versions (Gaussian Hutchinson), with the
  probe count that gives a 1 % relative standard error computed from the exact spectrum
  (an oracle the library does not have): with :math:`A=JJ^\\top`,
  :math:`\\mathrm{Var}(v^\\top Av)=2\\operatorname{tr}A^2` and
  :math:`\\mathrm{Var}(\\|Av\\|^2)=2\\operatorname{tr}A^4` (Isserlis' theorem), so the
  relative standard errors are :math:`\\sqrt{2m_2/(nP)}/m_1` and :math:`\\sqrt{2m_4/(nP)}/m_2`
  with :math:`m_k=\\tfrac1n\\operatorname{tr}A^k`.

*Accuracy, verified in the same run.* For every width and target, ``repeats`` estimates with
different seeds are compared with the exact moments: the root mean square of the relative
errors of both moments, the share of estimates within two reported standard errors, the
products used and the method chosen are stored in each case's ``extra``.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from gnelib.probes.jacobian import jacobian_moments

from gnelib.base.errors import check_positive_int

from .harness import FULL, Case, Settings, goal, run_suite

TARGETS = (0.02, 0.01, 0.005)
REFERENCE = "jacrev (exact)"
GAUSSIAN = "Gaussian probes (1%)"
ORACLE = "Rademacher probes (1%, oracle)"
GOAL_WIDTH = 1024


def _name(rse: float, method: str = "auto") -> str:
    return f"{method} ({rse * 100:g}%)"


def tanh_layer(n: int, generator: torch.Generator, device):
    """:math:`f(x)=\\tanh(Wx)` with Gaussian :math:`W` of variance :math:`1/n`, and an input."""
    w = (torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)).to(device)
    x = torch.randn(1, n, generator=generator, dtype=torch.float64).to(device)

    def f(z):
        return torch.tanh(z @ w.T)
    return f, x


def spectral_moments(f, x, diagonals: bool = False) -> tuple:
    """:math:`m_k=\\tfrac1n\\operatorname{tr}(JJ^\\top)^k` for k = 1, 2, 4 (exact), and n;
    with ``diagonals`` also :math:`d_1=\\tfrac1n\\sum_i A_{ii}^2` and
    :math:`d_2=\\tfrac1n\\sum_i (A^2)_{ii}^2` (the diagonal shares Rademacher probes remove)."""
    jac = torch.func.jacrev(f)(x).reshape(x.numel(), x.numel())
    a = jac @ jac.T
    n = a.shape[0]
    a2 = a @ a
    out = (torch.trace(a).item() / n, torch.trace(a2).item() / n,
           (a2 * a2).sum().item() / n, n)
    if diagonals:
        out += (a.diagonal().pow(2).sum().item() / n, a2.diagonal().pow(2).sum().item() / n)
    return out


def rademacher_probes_for(rse: float, m1, m2, m4, n, d1, d2) -> int:
    """Probe count of Rademacher Hutchinson for relative standard errors <= ``rse``:
    per-probe variances :math:`2n(m_2-d_1)` and :math:`2n(m_4-d_2)` of the two traces."""
    need = max(2 * (m2 - d1) / (n * m1 ** 2), 2 * (m4 - d2) / (n * m2 ** 2)) / rse ** 2
    return max(2, math.ceil(need))


def probes_for(rse: float, m1: float, m2: float, m4: float, n: int) -> int:
    """Smallest probe count whose predicted relative standard errors of both moment
    estimates are at most ``rse`` (module docstring)."""
    need = max(2 * m2 / (n * m1 ** 2), 2 * m4 / (n * m2 ** 2)) / rse ** 2
    return max(2, math.ceil(need))


def _accuracy(f, x, m1, m2, repeats, **kw) -> dict:
    """Relative errors of ``repeats`` estimates against the exact moments."""
    errs, cover, probes, methods = [], 0, [], {}
    for seed in range(repeats):
        est = jacobian_moments(f, x, generator=torch.Generator().manual_seed(100 + seed), **kw)
        e1, e2 = est.phi1 / m1 - 1, est.phi2 / m2 - 1
        errs.append((e1, e2))
        cover += (abs(est.phi1 - m1) <= 2 * est.phi1_se) + (abs(est.phi2 - m2) <= 2 * est.phi2_se)
        probes.append(est.probes)
        methods[est.method] = methods.get(est.method, 0) + 1
    return {"repeats": repeats,
            "rms_rel_err_phi1": math.sqrt(sum(e[0] ** 2 for e in errs) / repeats),
            "rms_rel_err_phi2": math.sqrt(sum(e[1] ** 2 for e in errs) / repeats),
            "max_rel_err": max(max(abs(e[0]), abs(e[1])) for e in errs),
            "within_2se": cover / (2 * repeats),
            "mean_probes": sum(probes) / repeats, "methods": methods}


def run(settings: Settings = FULL, device="cpu", out=None, progress=True,
        widths: list[int] | None = None, repeats: int | None = None) -> dict:
    """Run the suite; ``widths``/``repeats`` override the profile's (e.g. the goal width
    alone: ``run(FULL, widths=[1024])``)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    # forward needs about 2/r probes at any width plus a 1/sqrt(P) term that grows as n
    # shrinks: it is timed at the goal width only (the largest width at smoke), at the three
    # targets (a coarse 5 % at smoke), its accuracy over fewer seeds in the book-sized run
    ftargets = TARGETS
    frepeats = None
    pick_w, pick_r = widths, repeats
    if settings.smoke:
        widths, repeats = [32, 64], 3
        ftargets = (0.05,)
    elif settings.profile == "book":
        widths, repeats = [256, 1024], 10
        frepeats = 4  # a forward estimate at 0.5 % takes about as long as jacrev
        settings = dataclasses.replace(settings, warmup=1, rounds=2)
    else:
        widths, repeats = [256, 512, 1024, 2048], 20
        settings = dataclasses.replace(settings, warmup=1, rounds=3)  # n^3 at 2048: a second
    if pick_w is not None:
        widths = list(pick_w)
    if pick_r is not None:
        check_positive_int("repeats", pick_r)
        repeats = pick_r

    fwidth = GOAL_WIDTH if GOAL_WIDTH in widths else max(widths)

    def case(n):
        held = {}
        targets_f = ftargets if n == fwidth else ()

        def build():
            f, x = tanh_layer(n, gen, device)
            m1, m2, m4, _, d1, d2 = spectral_moments(f, x, diagonals=True)
            p = probes_for(0.01, m1, m2, m4, n)
            pr = rademacher_probes_for(0.01, m1, m2, m4, n, d1, d2)
            held.update(f=f, x=x, m=(m1, m2, m4), gaussian=p, oracle=pr)
            fns = {REFERENCE: lambda: jacobian_moments(f, x, exact=True)}
            for method, targets in (("auto", TARGETS), ("forward", targets_f)):
                for rse in targets:
                    fns[_name(rse, method)] = (lambda rse=rse, method=method: jacobian_moments(
                        f, x, rel_error=rse, method=method,
                        generator=torch.Generator().manual_seed(1)))
            fns[ORACLE] = lambda: jacobian_moments(f, x, probes=pr, distribution="rademacher",
                                                   generator=torch.Generator().manual_seed(1))
            fns[GAUSSIAN] = lambda: jacobian_moments(f, x, probes=p,
                                                     generator=torch.Generator().manual_seed(1))
            return fns

        def extra(fns):  # accuracy against the exact moments m1, m2, in the same run
            f, x = held["f"], held["x"]
            m1, m2, _ = held["m"]
            exact = fns[REFERENCE]()
            out = {"phi1": m1, "phi2": m2, "exact_path_phi1": exact.phi1,
                   "exact_path_phi2": exact.phi2}
            for method, targets in (("auto", TARGETS), ("forward", targets_f)):
                for rse in targets:
                    reps = frepeats if method == "forward" and frepeats else repeats
                    out[_name(rse, method)] = {"target_rse": rse, **_accuracy(
                        f, x, m1, m2, reps, rel_error=rse, method=method)}
            out[ORACLE] = {"target_rse": 0.01, "probes": held["oracle"],
                           **_accuracy(f, x, m1, m2, repeats, probes=held["oracle"],
                                       distribution="rademacher")}
            out[GAUSSIAN] = {"target_rse": 0.01, "probes": held["gaussian"],
                             **_accuracy(f, x, m1, m2, repeats, probes=held["gaussian"])}
            held.clear()
            return out
        return Case(label=str(n), size=float(n), build=build, extra=extra, params={"width": n})

    def goals(rec):
        widths = [c["params"]["width"] for c in rec["cases"]]
        at = rec["cases"][widths.index(GOAL_WIDTH if GOAL_WIDTH in widths else max(widths))]
        w = at["params"]["width"]
        acc = at["extra"][_name(0.01)]
        gs = [goal(f"speed-up of {_name(0.01)} over jacrev at width {w}",
                   1.0 / at["times"][_name(0.01)]["ratio"], ">=", 20.0),
              goal(f"RMS relative error of {_name(0.01)} against the exact moments at width {w}"
                   f" (worse of the two moments, {acc['repeats']} seeds)",
                   max(acc["rms_rel_err_phi1"], acc["rms_rel_err_phi2"]), "<=", 0.0125)]
        for rse in (0.02, 0.005):  # reported alongside, with the same bar
            gs.append(goal(f"speed-up of {_name(rse)} over jacrev at width {w}",
                           1.0 / at["times"][_name(rse)]["ratio"], ">=", 20.0))
        for rse in (ftargets if w == fwidth else ()):
            gs.append(goal(f"speed-up of {_name(rse, 'forward')} over jacrev at width {w}",
                           1.0 / at["times"][_name(rse, "forward")]["ratio"], ">=", 20.0))
        facc = at["extra"].get(_name(0.01, "forward"))
        if facc is not None:
            gs.append(goal(f"RMS relative error of {_name(0.01, 'forward')} against the exact "
                           f"moments at width {w} (worse of the two, {facc['repeats']} seeds)",
                           max(facc["rms_rel_err_phi1"], facc["rms_rel_err_phi2"]), "<=",
                           0.0125))
        gs.append(goal(f"speed-up of {ORACLE} over jacrev at width {w} (the ceiling of "
                       "Hutchinson at 1 % on this block)",
                       1.0 / at["times"][ORACLE]["ratio"], ">=", 20.0))
        return gs

    notes = ["block: tanh(Wx), W Gaussian with variance 1/n, one input, float64; exact = "
             "jacobian_moments(exact=True), which materialises J with torch.func.jacrev "
             "(batched) and forms J J^T",
             "auto (r): jacobian_moments(rel_error=r), adaptive; the timed call includes its "
             "pilot; accuracy over seeds against the exact moments is in each case's 'extra'",
             f"{GAUSSIAN}: Gaussian Hutchinson with the probe count for a 1 % relative "
             "standard error predicted from the exact spectrum (the estimator of earlier "
             "versions, given an oracle)",
             "forward (r): jacobian_moments(method='forward', rel_error=r), Jacobian-vector "
             "products only; 'mean_probes' in its accuracy record counts passes (one per "
             "J v), the others' count products with J J^T (two passes each)",
             f"{ORACLE}: Rademacher Hutchinson with the probe count for 1 % predicted from the "
             "exact matrix: what the best non-adaptive Hutchinson run costs",
             "this block's spectrum is flat (Marchenko-Pastur-like: no few dominant "
             "eigenvalues), where Hutch++'s sketch gains nothing; the gain over earlier "
             "versions comes from Rademacher probes"]
    return run_suite("jacobian", "Jacobian moments: probes vs materialised Jacobian",
                     [case(n) for n in widths], REFERENCE, settings=settings, device=device,
                     size_name="width", what="seconds per moment estimate", goals=goals,
                     notes=notes, out=out, progress=progress)
