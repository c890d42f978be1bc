"""gnebook's benchmark suite: ``python -m gnelib.bench --all`` (or ``make bench``).

Each benchmark module times its contenders with :mod:`gnelib.bench.harness` and writes
``data/results/bench/<name>.json``; ``--smoke`` runs every suite at toy sizes in seconds
(``data/results/bench/smoke/``), so the code is exercised in CI without any claim about
speed. The book's Performance page reads these files.
"""
from __future__ import annotations

import importlib

#: suite name -> (module, one-line description)
SUITES = {
    "smn": ("bench_smn", "SMN vs BatchNorm2d and a like-for-like BN, forward+backward"),
    "pws_train": ("bench_pws", "PWS vs BN vs GN conv stack, one training step at 32x32"),
    "pws_eval": ("bench_pws", "PWS in eval mode vs a plain conv stack, forward"),
    "jacobian": ("bench_jacobian", "jacobian_moments (probes) vs materialised jacrev Jacobian"),
    "depth": ("bench_depth", "BN MLP gradient log-norm sweep, time against depth"),
}


def runner(name: str):
    """The ``run(settings, device, out, progress)`` function of suite ``name``."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark {name!r}: allowed values are "
                         f"{', '.join(map(repr, SUITES))}")
    module = importlib.import_module(f".{SUITES[name][0]}", __name__)
    fn = getattr(module, f"run_{name}", None) or module.run
    return fn
