"""Benchmark 3: Hutchinson probes (:func:`gnelib.jacobian_moments`) against materialising the
Jacobian with ``torch.func.jacrev`` (``jacobian_moments(..., exact=True)``).

The block is one wide layer :math:`f(x)=\\tanh(Wx)`, :math:`W_{ij}\\sim\\mathcal N(0,1/n)`,
at one input :math:`x\\sim\\mathcal N(0,I_n)`, in float64, for widths ``n`` from 256 to 4096.
Both contenders return :math:`\\phi(JJ^\\top)` and :math:`\\phi((JJ^\\top)^2)`. The exact path
costs :math:`O(n^3)` (n vector-Jacobian products, then :math:`JJ^\\top`); the probe path
:math:`O(Pn^2)` for ``P`` probes.

*Equal accuracy.* The probe estimates are random, so the number of probes is chosen per
width for a stated accuracy: with :math:`A=JJ^\\top` and Gaussian probes,
:math:`\\mathrm{Var}(v^\\top Av)=2\\operatorname{tr}A^2` and
:math:`\\mathrm{Var}(\\|Av\\|^2)=2\\operatorname{tr}A^4` (our derivation, Isserlis' theorem), so
the relative standard errors of the two moment estimates are
:math:`\\sqrt{2m_2/(nP)}/m_1` and :math:`\\sqrt{2m_4/(nP)}/m_2` with :math:`m_k=\\tfrac1n
\\operatorname{tr}A^k` (exact values from the materialised Jacobian). ``P`` is the smallest
count that brings both to the target ``rse`` (2 % and 1 %). The measured relative errors of
one estimate against the exact values are reported with each width.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from gnelib import jacobian_moments

from .harness import FULL, Case, Settings, goal, run_suite

TARGETS = (0.02, 0.01)
REFERENCE = "jacrev (exact)"


def _name(rse: float) -> str:
    return f"probes ({rse:.0%} SE)"


def tanh_layer(n: int, generator: torch.Generator, device):
    """:math:`f(x)=\\tanh(Wx)` with Gaussian :math:`W` of variance :math:`1/n`, and an input."""
    w = (torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)).to(device)
    x = torch.randn(1, n, generator=generator, dtype=torch.float64).to(device)

    def f(z):
        return torch.tanh(z @ w.T)
    return f, x


def spectral_moments(f, x) -> tuple[float, float, float, float]:
    """:math:`m_k=\\tfrac1n\\operatorname{tr}(JJ^\\top)^k` for k = 1, 2, 4 (exact), and n."""
    jac = torch.func.jacrev(f)(x).reshape(x.numel(), x.numel())
    a = jac @ jac.T
    n = a.shape[0]
    a2 = a @ a
    return (torch.trace(a).item() / n, torch.trace(a2).item() / n,
            (a2 * a2).sum().item() / n, n)


def probes_for(rse: float, m1: float, m2: float, m4: float, n: int) -> int:
    """Smallest probe count whose predicted relative standard errors of both moment
    estimates are at most ``rse`` (module docstring)."""
    need = max(2 * m2 / (n * m1 ** 2), 2 * m4 / (n * m2 ** 2)) / rse ** 2
    return max(2, math.ceil(need))


def run(settings: Settings = FULL, device="cpu", out=None, progress=True) -> dict:
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    if settings.smoke:
        widths = [32, 64]
    else:
        widths = [256, 512, 1024, 2048, 4096]
        settings = dataclasses.replace(settings, warmup=1, rounds=2)  # n^3 at 4096: seconds

    def case(n):
        held = {}

        def build():
            f, x = tanh_layer(n, gen, device)
            m1, m2, m4, _ = spectral_moments(f, x)
            held.update(f=f, x=x, m=(m1, m2, m4))
            fns = {REFERENCE: lambda: jacobian_moments(f, x, exact=True)}
            for rse in TARGETS:
                p = probes_for(rse, m1, m2, m4, n)
                held[rse] = p
                fns[_name(rse)] = (lambda p=p: jacobian_moments(
                    f, x, probes=p, generator=torch.Generator().manual_seed(1)))
            return fns

        def extra(fns):  # accuracy of one estimate against the exact moments m1, m2
            m1, m2, _ = held["m"]
            out = {"phi1": m1, "phi2": m2}
            for rse in TARGETS:
                est = fns[_name(rse)]()
                out[_name(rse)] = {
                    "probes": held[rse], "target_rse": rse,
                    "rel_err_phi1": abs(est.phi1 / m1 - 1),
                    "rel_err_phi2": abs(est.phi2 / m2 - 1),
                    "reported_rse_phi1": est.phi1_se / est.phi1,
                    "reported_rse_phi2": est.phi2_se / est.phi2}
            held.clear()
            return out
        return Case(label=str(n), size=float(n), build=build, extra=extra, params={"width": n})

    def goals(rec):
        widths = [c["params"]["width"] for c in rec["cases"]]
        at = rec["cases"][widths.index(1024 if 1024 in widths else max(widths))]
        gs = []
        for rse in TARGETS:
            name = _name(rse)
            gs.append(goal(f"speed-up of {name} over jacrev at width {at['params']['width']}",
                           1.0 / at["times"][name]["ratio"], ">=", 20.0))
        return gs

    notes = ["block: tanh(Wx), W Gaussian with variance 1/n, one input, float64; exact = "
             "jacobian_moments(exact=True), which materialises J with torch.func.jacrev",
             "probe counts are chosen per width for a 2 % and a 1 % relative standard error of "
             "both moments (predicted from the exact spectrum); the relative errors of one "
             "estimate against the exact values are in each case's 'extra'"]
    return run_suite("jacobian", "Jacobian moments: Hutchinson probes vs materialised Jacobian",
                     [case(n) for n in widths], REFERENCE, settings=settings, device=device,
                     size_name="width", what="seconds per moment estimate", goals=goals,
                     notes=notes, out=out, progress=progress)
