"""The common benchmark harness: side-by-side timing of contenders with torch's own tools.

A *suite* is a list of :class:`Case` (one problem size each) and, for every case, a dict of
contenders (zero-argument callables doing the same work). For each case the harness

1. builds the contenders, runs each ``warmup`` times (this is where ``torch.compile``
   compiles; the time of the first call is kept as ``first_call_s``);
2. times them with ``torch.utils.benchmark.Timer.blocked_autorange`` in ``rounds`` rounds,
   alternating the order of the contenders from round to round (rotated by one place each
   round), so slow drifts of the machine (other processes, clocks) hit every
   contender alike; each block of runs gives one per-run time;
3. reports for each contender the median of all its per-run times, the interquartile range,
   the number of runs, and the ratio of its median to the reference contender's median.

On CUDA every timed call ends with ``torch.cuda.synchronize()``. The suite's record
(hardware, thread count, load average, date, all of the above, goals) is written as JSON with
:func:`gnelib.base.io.atomic_write_json` to ``data/results/bench/<name>.json``
(``data/results/bench/smoke/<name>.json`` for smoke runs, so a smoke run never replaces a
real one). Nothing here asserts anything about time.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.benchmark import Timer

from gnelib.base.errors import check_positive, check_positive_int
from gnelib.base.io import atomic_write_json, data_dir

__all__ = ["Case", "Settings", "SMOKE", "FULL", "environment", "measure", "run_suite", "goal",
           "BOOK", "llc_bytes", "stream_bandwidth", "first_touch_cost", "reuse_freed_memory", "results_dir", "result_path", "format_table", "median_ratio", "loglog_slope"]

SCHEMA = 1


@dataclass
class Settings:
    """How hard to time: ``min_run_time`` seconds per ``blocked_autorange`` call, ``rounds``
    alternating rounds, ``warmup`` untimed calls per contender and case."""

    min_run_time: float = 0.2
    rounds: int = 3
    warmup: int = 2
    smoke: bool = False
    #: problem sizes: ``"smoke"`` (toy), ``"book"`` (what the book's page runs itself, a few
    #: minutes in all) or ``"full"`` (``make bench``); defaults to smoke or full
    profile: str = ""

    def __post_init__(self):
        if not self.profile:
            self.profile = "smoke" if self.smoke else "full"
        if self.profile not in ("smoke", "book", "full"):
            raise ValueError(f"unknown profile {self.profile!r}: allowed values are 'smoke', "
                             "'book', 'full'")
        check_positive("min_run_time", self.min_run_time)
        check_positive_int("rounds", self.rounds)
        check_positive_int("warmup", self.warmup, minimum=0)


SMOKE = Settings(min_run_time=0.01, rounds=2, warmup=1, smoke=True)
BOOK = Settings(min_run_time=0.05, rounds=3, warmup=1, smoke=False, profile="book")
FULL = Settings(min_run_time=0.1, rounds=6, warmup=2, smoke=False)


@dataclass
class Case:
    """One problem size of a suite: a ``label`` for tables, the numeric ``size`` for the
    x-axis of the scaling plot, JSON-able ``params``, and ``build()`` returning the dict of
    contenders (name -> zero-argument callable); ``extra(fns)`` may return JSON-able facts
    measured once per case (e.g. an accuracy)."""

    label: str
    size: float
    build: Callable[[], dict]
    params: dict = field(default_factory=dict)
    extra: Callable[[dict], dict] | None = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Hardware and software the numbers were measured on."""
    env = {
        "device": str(device), "cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "host": platform.node(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    try:
        env["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)
    return run


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def measure(fns: dict, reference: str, settings: Settings = FULL,
            device: torch.device | str = "cpu") -> dict:
    """Time the contenders ``fns`` (name -> callable) side by side (module docstring) and
    return name -> ``{median, q1, q3, iqr, runs, first_call_s, ratio}`` (seconds per call,
    quartiles of the per-run times; ratio is
    the median over the ``reference`` contender's median)."""
    if reference not in fns:
        raise ValueError(f"reference must be one of the contenders {', '.join(fns)}, "
                         f"got {reference!r}")
    device = torch.device(device)
    names = list(fns)
    first = {}
    for name in names:
        fn = fns[name]
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first[name] = time.perf_counter() - t0
        for _ in range(settings.warmup - 1):
            fn()
        _sync(device)
    threads = torch.get_num_threads()
    timers = {n: Timer(stmt="fn()", globals={"fn": _timed(fns[n], device)}, label=n,
                       num_threads=threads) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(settings.rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        for name in order:
            m = timers[name].blocked_autorange(min_run_time=settings.min_run_time)
            samples[name].extend(m.times)
    out = {}
    for name in names:
        ts = samples[name]
        out[name] = {"median": statistics.median(ts), "q1": _quantile(ts, 0.25),
                     "q3": _quantile(ts, 0.75), "iqr": _quantile(ts, 0.75) - _quantile(ts, 0.25),
                     "runs": len(ts), "first_call_s": first[name]}
    ref = out[reference]["median"]
    for name in names:
        out[name]["ratio"] = out[name]["median"] / ref
    return out


def median_ratio(cases: list[dict], num: str, den: str) -> float:
    """Median over cases of ``time(num) / time(den)`` (cases missing either are skipped)."""
    rs = [c["times"][num]["median"] / c["times"][den]["median"] for c in cases
          if num in c["times"] and den in c["times"]]
    return statistics.median(rs) if rs else float("nan")


def loglog_slope(sizes, times) -> float:
    """Least-squares slope of log(time) against log(size): the exponent of the scaling."""
    lx = [math.log(s) for s in sizes]
    ly = [math.log(t) for t in times]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        return float("nan")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def goal(text: str, value: float, op: str, threshold: float) -> dict:
    """A stated goal ``value op threshold`` (``op`` is ``"<="`` or ``">="``) and whether the
    measurement met it. Reported, never asserted."""
    if op not in ("<=", ">="):
        raise ValueError(f"unknown op {op!r}: allowed values are '<=', '>='")
    met = bool(value <= threshold) if op == "<=" else bool(value >= threshold)  # NaN: False
    return {"text": text, "value": value, "op": op, "threshold": threshold, "met": met}


def llc_bytes() -> int | None:
    """Size of the last-level cache in bytes, as the OS reports it (``None`` if unknown)."""
    best = (0, 0)
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((idx / "level").read_text())
            kind = (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        num = int(size.rstrip("KMG")) * mult
        best = max(best, (level, num))
    if best[1]:
        return best[1]
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            v = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if v and v > 0:
            return int(v)
    return None


def stream_bandwidth(numel: int, device: torch.device | str = "cpu", repeats: int = 10) -> dict:
    """This machine's memory bandwidth at the current torch thread count, measured like
    STREAM (McCalpin) with torch kernels on float32 arrays of ``numel`` numbers (make them
    several times the last-level cache): *copy* ``b = a`` moves 2 arrays, *triad*
    ``a = b + s c`` moves 3 (write-allocate traffic not counted, as in STREAM). The best of
    ``repeats`` runs of each, in bytes per second; ``bandwidth`` is the larger of the two."""
    device = torch.device(device)
    a = torch.rand(numel, device=device)
    b = torch.rand(numel, device=device)
    c = torch.rand(numel, device=device)
    out = {}
    kernels = {"copy": (lambda: b.copy_(a), 2),
               "triad": (lambda: torch.add(b, c, alpha=3.0, out=a), 3)}
    for name, (fn, arrays) in kernels.items():
        fn()
        best = math.inf
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = arrays * numel * a.element_size() / best
    out["bandwidth"] = max(out["copy"], out["triad"])
    out.update(numel=numel, bytes_per_array=numel * a.element_size(),
               threads=torch.get_num_threads())
    return out


_REUSE: dict | None = None


def first_touch_cost(numel: int, repeats: int = 5) -> dict:
    """What a fresh tensor costs beyond the bytes written: the median time of
    ``torch.empty(numel).fill_(1)`` against ``fill_`` into a tensor allocated once. Beyond
    glibc's mmap threshold every fresh allocation is a new mapping whose pages the kernel
    faults in and zeroes on first touch, and a freed one is unmapped at once."""
    o = torch.empty(numel)

    def med(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    fresh = med(lambda: torch.empty(numel).fill_(1.0))
    held = med(lambda: o.fill_(1.0))
    return {"numel": numel, "fresh_s": fresh, "reused_s": held, "ratio": fresh / held}


def reuse_freed_memory() -> dict:
    """Make glibc keep freed memory for reuse (``mallopt(M_MMAP_MAX, 0)``: large blocks come
    from the heap, not from fresh mappings; ``M_TRIM_THRESHOLD`` 1 GiB: freed memory is not
    handed back), so a step that allocates its outputs reuses the pages of the previous
    step instead of faulting in new ones, as a caching allocator does on a GPU. Process-wide
    and not undone; returns what was done (``{"applied": False, ...}`` off glibc)."""
    global _REUSE
    if _REUSE is not None:
        return _REUSE
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2**30))  # M_MMAP_MAX, M_TRIM_THRESHOLD
        _REUSE = {"applied": ok, "how": "glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)"}
    except (OSError, AttributeError) as err:
        _REUSE = {"applied": False, "how": f"not glibc ({err})"}
    return _REUSE


def results_dir(smoke: bool, profile: str | None = None) -> Path:
    """``data/results/bench`` (``.../bench/smoke`` for smoke runs, ``.../bench/book`` for
    the book-sized runs)."""
    base = data_dir() / "results" / "bench"
    profile = profile or ("smoke" if smoke else "full")
    return base if profile == "full" else base / profile


def result_path(name: str, smoke: bool, profile: str | None = None) -> Path:
    return results_dir(smoke, profile) / f"{name}.json"


def run_suite(name: str, title: str, cases: list[Case], reference: str, *,
              settings: Settings = FULL, device: torch.device | str = "cpu",
              size_name: str = "size", what: str = "", goals: Callable[[dict], list] | None = None,
              notes: list[str] | None = None, out: Path | None | bool = None,
              progress: bool = True) -> dict:
    """Time every case of a suite, evaluate its ``goals`` (a function of the record returning
    a list of :func:`goal` dicts), print the table and write the JSON record (to
    ``out``, default :func:`result_path`; ``out=False`` writes nothing). Returns the record."""
    device = torch.device(device)
    t0 = time.perf_counter()
    rows = []
    for case in cases:
        fns = case.build()
        times = measure(fns, reference, settings, device)
        row = {"label": case.label, "size": case.size, "params": case.params, "times": times}
        if case.extra is not None:
            row["extra"] = case.extra(fns)
        rows.append(row)
        del fns
        if progress:
            cells = "  ".join(f"{n}={t['median'] * 1e3:.3g} ms" for n, t in times.items())
            print(f"  [{name}] {case.label}: {cells}", flush=True)
    contenders = []  # in order of first appearance: a contender may time some cases only
    for row in rows:
        contenders += [c for c in row["times"] if c not in contenders]
    record = {
        "schema": SCHEMA, "name": name, "title": title, "what": what, "reference": reference,
        "size_name": size_name, "smoke": settings.smoke, "profile": settings.profile,
        "settings": {"min_run_time": settings.min_run_time, "rounds": settings.rounds,
                     "warmup": settings.warmup, "timer": "torch.utils.benchmark.Timer."
                     "blocked_autorange, contenders alternated, median of per-run times"},
        "env": environment(device), "contenders": contenders, "cases": rows,
        "median_ratio": {c: median_ratio(rows, c, reference) for c in contenders},
        "notes": list(notes or []),
    }
    record["goals"] = goals(record) if goals is not None else []
    record["wall_s"] = time.perf_counter() - t0
    if out is not False:
        path = Path(out) if out else result_path(name, settings.smoke, settings.profile)
        atomic_write_json(path, record)
        record["path"] = str(path)
    return record


def format_table(record: dict, fmt: str = "github", compact: bool = False,
                 goals: bool = True) -> str:
    """The record as a table: one row per case, the median time of every contender (ms) and
    its ratio to the reference; then the median ratios and (``goals``) the goals.
    ``compact`` shows the reference's time and the other contenders' ratios only."""
    from tabulate import tabulate

    ref = record["reference"]
    cons = record["contenders"]
    timed = [ref] if compact else cons
    head = [record["size_name"]] + [f"{c} (ms)" for c in timed] + \
        [(c if compact else f"{c} / {ref}") for c in cons if c != ref]
    body = []
    for row in record["cases"]:
        t = row["times"]
        body.append([row["label"]] + [f"{t[c]['median'] * 1e3:.4g}" if c in t else ""
                                      for c in timed] +
                    [f"{t[c]['ratio']:.3f}" if c in t else "" for c in cons if c != ref])
    body.append(["median ratio"] + [""] * len(timed) +
                [f"{record['median_ratio'][c]:.3f}" for c in cons if c != ref])
    lines = [tabulate(body, head, tablefmt=fmt, disable_numparse=True)]
    for g in (record.get("goals", []) if goals else []):
        lines.append(f"goal: {g['text']}: {g['value']:.3g} {g['op']} {g['threshold']:g} -> "
                     f"{'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)
