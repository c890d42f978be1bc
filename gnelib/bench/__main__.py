"""Command line: ``python -m gnelib.bench [--all | NAME ...] [--smoke] [--device D] [--threads T]``."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from gnelib.base.device import get_device, set_threads

from . import SUITES, runner
from .harness import BOOK, FULL, SMOKE, environment, format_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gnelib.bench", description=__doc__)
    p.add_argument("names", nargs="*", help=f"suites to run: {', '.join(SUITES)}")
    p.add_argument("--all", action="store_true", help="run every suite")
    p.add_argument("--smoke", action="store_true",
                   help="toy sizes, seconds in all; results go to data/results/bench/smoke/")
    p.add_argument("--book", action="store_true",
                   help="the book-sized suite (a few minutes; data/results/bench/book/), what the "
                        "book's Performance page runs when no full record exists")
    p.add_argument("--missing", action="store_true",
                   help="run only the suites with no full or book-sized record yet (what the "
                        "Performance page would otherwise run itself, beside other chapters)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    a = p.parse_args(argv)
    if a.list:
        for name, (_, text) in SUITES.items():
            print(f"{name:10s} {text}")
        return 0
    names = list(SUITES) if a.all or not a.names else a.names
    for name in names:
        if name not in SUITES:
            p.error(f"unknown benchmark {name!r}: allowed values are {', '.join(SUITES)}")
    if a.missing:
        from .report import load
        names = [n for n in names if load(n, profiles=("full", "book")) is None]
        if not names:
            print("every suite has a full or book-sized record: nothing to run")
            return 0
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {a.threads}")
    if a.threads is None and a.smoke:
        a.threads = 1  # toy sizes: one thread avoids thread-pool stalls on a busy machine
    if a.threads is not None:
        set_threads(a.threads)
    device = get_device(a.device)
    if a.smoke and a.book:
        p.error("--smoke and --book exclude each other")
    settings = SMOKE if a.smoke else BOOK if a.book else FULL
    env = environment(device)
    print(f"benchmarks ({settings.profile}) on {env['device']}: {env['cpu']}, "
          f"{env['logical_cpus']} logical CPUs, {env['threads']} torch threads"
          + (f", GPU {env['gpu']}" if "gpu" in env else "")
          + f"; torch {env['torch']}; load average {env.get('load_average_1min', '?')}",
          flush=True)
    load, cpus = env.get("load_average_1min"), env["logical_cpus"] or 1
    if load is not None and load > cpus:
        print(f"warning: the machine is busy (load average {load} on {cpus} CPUs): other "
              "processes compete for the cores and the timings will be noisy"
              + ("" if a.threads == 1 else "; --threads 1 is less sensitive to this"),
              flush=True)
    t0 = time.perf_counter()
    for name in names:
        t1 = time.perf_counter()
        rec = runner(name)(settings, device=device)
        print(f"\n## {name}: {rec['title']} ({rec['what']}; {time.perf_counter() - t1:.0f} s)")
        print(format_table(rec))
        for note in rec["notes"]:
            print(f"note: {note}")
        print(f"-> {rec['path']}", flush=True)
    print(f"\nall done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
