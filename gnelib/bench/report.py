"""Reading benchmark records back for the book's Performance page: which run to show, the
tables as Markdown, and the scaling plots."""
from __future__ import annotations

import json

from gnelib.base.device import torch_threads

from . import SUITES, runner
from .harness import BOOK, SMOKE, format_table, loglog_slope, result_path
from .harness import median_ratio as _median_ratio


def load(name: str, prefer_smoke: bool = False, profiles=None) -> dict | None:
    """The stored record of suite ``name``: the first of ``profiles`` that exists and parses
    (default: the full run's, ``data/results/bench``, then the book-sized run's, then the
    smoke run's; smoke first with ``prefer_smoke``); ``None`` if none does."""
    if profiles is None:
        profiles = ("smoke", "full", "book") if prefer_smoke else ("full", "book", "smoke")
    for prof in profiles:
        path = result_path(name, prof == "smoke", prof)
        if path.exists():
            try:
                rec = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            rec = revive(rec)
            rec["path"] = str(path)
            return rec
    return None


def revive(obj):
    """Undo :func:`gnelib.base.io.atomic_write_json`'s spelling of non-finite floats as strings."""
    if isinstance(obj, dict):
        return {k: revive(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [revive(v) for v in obj]
    if obj in ("nan", "inf", "-inf"):
        return float(obj)
    return obj


def record_profile(rec: dict) -> str:
    """``"smoke"``, ``"book"`` or ``"full"``: the sizes a record was measured at."""
    return rec.get("profile") or ("smoke" if rec.get("smoke") else "full")


def load_or_run(profile: str, names=None, threads: int | None = None) -> tuple[dict, list[str]]:
    """Records of every suite for the page at ``profile``. At ``smoke`` only smoke records
    are shown (a missing one is run here at smoke size); otherwise the full record
    (``make bench``), else the book-sized one, and a suite with neither is run here at book
    size (a few minutes in all) and stored in ``data/results/bench/book/``; smoke records
    never appear outside the smoke build. Runs use ``threads`` torch threads (default: one
    at smoke, torch's otherwise) on the CPU. Returns ``(records, names run here)``."""
    records, ran = {}, []
    smoke = profile == "smoke"
    for name in names or SUITES:
        rec = load(name, profiles=("smoke",) if smoke else ("full", "book"))
        if rec is None:
            with torch_threads(1 if threads is None and smoke else threads):
                rec = runner(name)(SMOKE if smoke else BOOK, device="cpu", progress=False)
            ran.append(name)
        records[name] = rec
    return records, ran


def markdown_table(rec: dict) -> str:
    """The record's table in Markdown: the reference's median time (ms) and every other
    contender's time divided by it, per case, and the median ratio over cases."""
    return format_table(rec, fmt="github", compact=True, goals=False) + \
        f"\n\nRatios are times divided by the time of *{rec['reference']}*."


def goals_table(records: dict) -> str:
    """Every goal of every record as one Markdown table."""
    from tabulate import tabulate

    rows = []
    for name, rec in records.items():
        for g in rec.get("goals", []):
            rows.append([name, g["text"], f"{g['value']:.3g}", f"{g['op']} {g['threshold']:g}",
                         "met" if g["met"] else "**not met**", record_profile(rec)])
    return tabulate(rows, ["suite", "goal", "measured", "target", "", "run"], tablefmt="github",
                    disable_numparse=True)


def environment_table(records: dict) -> str:
    """Where and when each record was measured, as Markdown."""
    from tabulate import tabulate

    rows = []
    for name, rec in records.items():
        e = rec["env"]
        hw = e.get("gpu") or e.get("cpu", "?")
        rows.append([name, record_profile(rec), e.get("date", "?"),
                     e.get("device", "?"), hw, str(e.get("threads", "?")),
                     str(e.get("load_average_1min", "?")), e.get("torch", "?"),
                     f"{rec.get('wall_s', float('nan')):.0f} s"])
    return tabulate(rows, ["suite", "run", "date (UTC)", "device", "hardware", "threads",
                           "load avg.", "torch", "wall time"], tablefmt="github",
                    disable_numparse=True)


def plot_suite(rec: dict, axes, colors=None, goal_line: float | None = None):
    """Left: median time against size on log-log axes, one line per contender, with the
    interquartile range as error bars. Right: the ratio of each contender to the reference
    (or, for the depth suite, the time per layer)."""
    ax_t, ax_r = axes
    categorical = rec["name"] == "smn"  # batch scaled to a fixed budget: shapes, not sizes
    sizes = list(range(len(rec["cases"]))) if categorical else [c["size"] for c in rec["cases"]]
    ref = rec["reference"]
    per_layer = rec["name"] == "depth"
    for i, con in enumerate(rec["contenders"]):
        color = None if colors is None else colors[i % len(colors)]
        cases = [i for i, c in enumerate(rec["cases"]) if con in c["times"]]
        if not cases:
            continue
        stats = [rec["cases"][i]["times"][con] for i in cases]
        xs = [sizes[i] for i in cases]
        t = [s["median"] * 1e3 for s in stats]
        err = [[max(0.0, s["median"] - s.get("q1", s["median"])) * 1e3 for s in stats],
               [max(0.0, s.get("q3", s["median"]) - s["median"]) * 1e3 for s in stats]]
        ax_t.errorbar(xs, t, yerr=err, marker="o", label=con, color=color, capsize=2)
        if per_layer:
            ax_r.plot(xs, [tt / s for tt, s in zip(t, xs)], marker="o", color=color)
        elif con != ref:
            ax_r.plot(xs, [s["ratio"] for s in stats], marker="o", color=color, label=con)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("median time per call (ms)")
    if per_layer:
        ax_r.set_ylabel("time per layer (ms)")
    else:
        ax_r.axhline(1.0, color="0.5", lw=0.8)
        if goal_line is not None:
            ax_r.axhline(goal_line, color="0.3", lw=0.8, ls="--")
        ax_r.set_ylabel(f"time / {ref}")
    if rec["name"] == "jacobian":
        ax_r.set_yscale("log")
        _plain_ticks(ax_r.yaxis)
    else:
        ax_r.set_ylim(bottom=0)
    _plain_ticks(ax_t.yaxis)
    for ax in (ax_t, ax_r):
        if categorical:
            ax.set_xticks(sizes, [c["label"] for c in rec["cases"]], rotation=60, ha="right",
                          fontsize=7)
            ax.set_xlabel("feature-map shape N×C×H×W")
        else:
            ax.set_xscale("log")
            _plain_ticks(ax.xaxis)
            ax.set_xticks(sizes)
            ax.set_xlabel(_xlabel(rec))
    if categorical:
        handles, labels = ax_t.get_legend_handles_labels()
        ax_t.figure.legend(handles, labels, loc="outside upper center", ncol=4, fontsize=7)
    else:
        ax_t.legend(fontsize=7)
    return axes


def _plain_ticks(axis):
    """Logarithmic ticks at 1, 2, 5 x 10^k labelled as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _xlabel(rec: dict) -> str:
    return {"smn": "numbers per tensor (N·C·H·W)", "pws_train": "batch size (images)",
            "pws_eval": "batch size (images)", "jacobian": "layer width n",
            "depth": "depth L (layers)"}.get(rec["name"], rec["size_name"])


def median_ratio(rec: dict, num: str, den: str) -> float:
    """Median over the record's cases of time(num) / time(den)."""
    return _median_ratio(rec["cases"], num, den)


def slope(rec: dict, contender: str) -> float:
    """Exponent of the power law time ~ size^k fitted to a contender's medians."""
    return loglog_slope([c["size"] for c in rec["cases"]],
                        [c["times"][contender]["median"] for c in rec["cases"]])


def page_values(records: dict) -> dict[str, str]:
    """Every number the Performance page glues into its prose, by glue key, formatted:
    goals (value and met/not met), the measured bandwidth and cache, and the Jacobian and
    depth details (the page reads them from its records with this one call)."""
    out = {}

    def glue_goal(key, rec, i):
        g = rec["goals"][i]
        out[f"perf-{key}"] = f"{g['value']:.2f}"
        out[f"perf-{key}-met"] = "met" if g["met"] else "not met"

    smn, pt, pe, jac, dep = (records[k] for k in ("smn", "pws_train", "pws_eval", "jacobian", "depth"))
    glue_goal("smn-like", smn, 0)
    glue_goal("smn-bn2d", smn, 1)
    glue_goal("smn-bound", smn, 2)
    bw = smn["bandwidth"]
    out["perf-bw"] = f"{bw['bandwidth'] / 1e9:.1f} GB/s"
    out["perf-bw-copy"] = f"{bw['copy'] / 1e9:.1f}"
    out["perf-bw-triad"] = f"{bw['triad'] / 1e9:.1f}"
    out["perf-llc"] = f"{bw['llc_bytes'] / 2**20:.0f} MiB"
    out["perf-bw-threads"] = f"{bw['threads']}"
    beyond = [c for c in smn["cases"] if c["params"].get("beyond_cache")]
    out["perf-smn-beyond"] = ", ".join(c["label"].split(" ")[0] for c in beyond)
    bn2d = sorted(c["extra"]["of_bound"]["BatchNorm2d"] for c in beyond)
    out["perf-bn2d-bound"] = f"{bn2d[len(bn2d) // 2]:.2f}"
    # SMN <= 0.5 x BatchNorm2d means SMN <= 0.5 x (BatchNorm2d's multiple of the bound) x bound
    out["perf-smn-bn2d-need"] = f"{0.5 * bn2d[len(bn2d) // 2]:.2f}"

    def mid(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else float("nan")
    kbw = mid([c["extra"].get("bound_kernel_bandwidth", float("nan")) for c in beyond])
    out["perf-bw-kernel"] = f"{kbw / 1e9:.1f} GB/s"
    stream = mid([c["extra"]["bound_s"] / c["extra"].get("bound_stream_s", float("nan"))
                  for c in beyond])
    out["perf-bw-kernel-vs-stream"] = f"{stream:.2f}"
    fresh = [c for c in beyond if "memory-bound kernel, fresh outputs" in c["times"]]
    out["perf-bound-fresh"] = f"{mid([c['extra']['of_bound']['memory-bound kernel, fresh outputs'] for c in fresh]):.2f}"
    out["perf-smn-vs-fresh"] = f"{mid([c['times']['SMN compiled']['median'] / c['times']['memory-bound kernel, fresh outputs']['median'] for c in fresh]):.2f}"
    out["perf-bn2d-vs-fresh"] = f"{mid([c['times']['BatchNorm2d']['median'] / c['times']['memory-bound kernel, fresh outputs']['median'] for c in fresh]):.2f}"
    touch = smn.get("first_touch", {})
    out["perf-touch-default"] = f"{touch.get('default', {}).get('ratio', float('nan')):.1f}"
    out["perf-touch-reused"] = f"{touch.get('reused', {}).get('ratio', float('nan')):.1f}"
    out["perf-allocator"] = touch.get("allocator", {}).get("how", "not recorded")
    out["perf-smn-eager"] = f"{smn['median_ratio']['SMN eager']:.2f}"
    first = sorted(c["times"]["SMN compiled"]["first_call_s"] for c in smn["cases"])
    out["perf-smn-compile"] = f"{first[len(first) // 2]:.1f} s"
    like = median_ratio(smn, "SMN compiled, autograd bwd", "BN compiled, autograd bwd")
    out["perf-smn-like-ag"] = f"{like:.2f}"
    glue_goal("pws-bn", pt, 0)
    glue_goal("pws-gn", pt, 1)
    glue_goal("pws-eval", pe, 0)
    out["perf-pws-eval-diff"] = f"{max(c['extra']['max_abs_diff'] for c in pe['cases']):.1e}"
    glue_goal("jac-1", jac, 0)
    glue_goal("jac-acc", jac, 1)
    glue_goal("jac-2", jac, 2)
    glue_goal("jac-05", jac, 3)
    at = [c for c in jac["cases"] if c["size"] == 1024] or jac["cases"][-1:]
    x = at[0]["extra"]
    out["perf-jac-width"] = f"{at[0]['size']:.0f}"
    for key, name in (("2", "auto (2%)"), ("1", "auto (1%)"), ("05", "auto (0.5%)"),
                      ("g", "Gaussian probes (1%)")):
        e = x[name]
        out[f"perf-jac-p{key}"] = f"{e['mean_probes']:.0f}"
        err = 100 * max(e["rms_rel_err_phi1"], e["rms_rel_err_phi2"])
        out[f"perf-jac-err{key}"] = f"{err:.2f} %"
        out[f"perf-jac-cover{key}"] = f"{100 * e['within_2se']:.0f} %"
        out[f"perf-jac-method{key}"] = ", ".join(e["methods"])
    for key, name in (("f2", "forward (2%)"), ("f1", "forward (1%)"), ("f05", "forward (0.5%)"),
                      ("or", "Rademacher probes (1%, oracle)")):
        e = x.get(name)
        if e is None:  # smoke records time forward at one coarse target only
            for k in ("p", "err", "speed"):
                out[f"perf-jac-{k}{key}"] = "n/a"
            continue
        out[f"perf-jac-p{key}"] = f"{e['mean_probes']:.0f}"
        out[f"perf-jac-err{key}"] = f"{100 * max(e['rms_rel_err_phi1'], e['rms_rel_err_phi2']):.2f} %"
        out[f"perf-jac-speed{key}"] = f"{1 / at[0]['times'][name]['ratio']:.2f}"
    orc = x.get("Rademacher probes (1%, oracle)")
    out["perf-jac-ceiling"] = (f"{at[0]['size'] / orc['mean_probes']:.1f}" if orc else "n/a")
    out["perf-jac-gauss-speed"] = f"{1 / at[0]['times']['Gaussian probes (1%)']['ratio']:.1f}"
    out["perf-jac-slope-exact"] = f"{slope(jac, 'jacrev (exact)'):.2f}"
    out["perf-jac-slope-probes"] = f"{slope(jac, 'auto (1%)'):.2f}"
    glue_goal("depth-slope", dep, 0)
    glue_goal("depth-per-layer", dep, 1)
    out["perf-depth-max"] = f"{dep['cases'][-1]['size']:.0f}"
    out["perf-depth-time"] = f"{dep['cases'][-1]['times'][dep['reference']]['median']:.2f} s"
    return out
