"""Benchmark 4: depth scaling of the BN MLP gradient sweep (Meterez et al. 2024).

Time of :func:`gnelib.probes.bn_chain.log_grad_norm_vs_depth` for one network of depth ``L``
(:math:`\\log\\|\\nabla_{W_1}\\mathcal L\\|` at initialisation, width d = batch n = 100,
orthogonal weights, the paper's BN, float64), for ``L`` up to 1000. The sweep draws ``L`` Haar
weights, runs ``L`` layers forward and ``L`` backward, so its cost should be linear in ``L``:
the time per layer should be flat. Reported: the time per layer at every depth, and the
slope of log(time) against log(depth) over the three deepest networks (1 means linear).
"""
from __future__ import annotations

from gnelib.probes.bn_chain import layer_gradient_profile, log_grad_norm_vs_depth

from .harness import FULL, Case, Settings, goal, loglog_slope, run_suite

REFERENCE = "sweep, paper BN"


def run(settings: Settings = FULL, device="cpu", out=None, progress=True) -> dict:
    if settings.smoke:
        depths, width = [4, 16], 16
    elif settings.profile == "book":  # the page's fallback: depth 1000 alone took minutes
        depths, width = [10, 30, 100, 300], 100
    else:
        depths, width = [10, 30, 100, 300, 1000], 100

    def case(depth):
        def build():
            kw = dict(width=width, batch=width, seeds=1, seed=0, device=device)
            return {REFERENCE: lambda: log_grad_norm_vs_depth([depth], **kw),
                    "all-layer profile, paper BN": lambda: layer_gradient_profile(depth, **kw),
                    "sweep, torch BN": lambda: log_grad_norm_vs_depth([depth], norm="torch", **kw)}

        def extra(fns):
            g = fns[REFERENCE]()
            return {"log_grad_norm": float(g[0, 0])}
        return Case(label=str(depth), size=float(depth), build=build, extra=extra,
                    params={"depth": depth, "width": width, "batch": width})

    def goals(rec):
        deep = rec["cases"][-3:] if len(rec["cases"]) >= 3 else rec["cases"]
        slope = loglog_slope([c["size"] for c in deep], [c["times"][REFERENCE]["median"]
                                                         for c in deep])
        last = rec["cases"][-1]
        per = [c["times"][REFERENCE]["median"] / c["size"] for c in (deep[0], last)]
        return [goal(f"log-log slope of time against depth, depths "
                     f"{int(deep[0]['size'])}..{int(last['size'])} (1 = flat cost per layer)",
                     slope, "<=", 1.1),
                goal(f"time per layer at depth {int(last['size'])} / at depth "
                     f"{int(deep[0]['size'])}", per[1] / per[0], "<=", 1.25)]

    notes = [f"width d = batch n = {width}, one network, orthogonal (Haar) weights, float64; "
             "'all-layer profile' measures every layer's gradient in one backward pass"]
    return run_suite("depth", "BN MLP gradient log-norm sweep: time against depth",
                     [case(L) for L in depths], REFERENCE, settings=settings, device=device,
                     size_name="depth", what="seconds per network", goals=goals, notes=notes,
                     out=out, progress=progress)
