"""The ``gne`` command line.

::

    gne list
    gne run EXPERIMENT [--profile P] [--device D] [--seed S] [--set key=value ...] [--force] [--key]
    gne probe package.module:factory --input-shape 1,3,32,32 [--blocks a,b] [--plot FILE]
    gne sweep EXPERIMENT [--grid key=v1,v2 ...] [--seeds N] [--set key=value ...]
              [--scheduler tcp://host:port | --workers N | --jobs N]

Results of ``run`` and ``sweep`` go through the results store (:mod:`gnelib.runs.store`), so a
configuration already done is read back. A bad argument prints one line naming the argument
(or the real cause: memory, the model, a worker) and exits with status 2; no traceback
reaches the user (``GNE_DEBUG=1`` shows it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """A bad command-line argument: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{self.prog}: error: {message}")


def _fail(command: str, argument: str | None, message: str) -> UsageError:
    where = f"argument {argument}: " if argument else ""
    return UsageError(f"gne {command}: error: {where}{message}")


def _key_values(items, what: str, command: str = "run") -> dict:
    out = {}
    for item in items or ():
        if "=" not in item or not item.split("=", 1)[0]:
            raise _fail(command, what, f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return f"[{len(v)} values]"
    return str(v)


#: The one rule for seeds, whatever the command: an integer in [0, 2**63).
def _check_seed(command: str, flag: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _fail(command, flag, f"must be an integer >= 0, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from gnelib.base.profiles import PROFILES
    from gnelib.base.device import DEVICES

    p = _Parser(prog="gne", description="gnelib: experiments, probes and sweeps on gradient norm equality.")
    sub = p.add_subparsers(dest="command", metavar="{list,run,probe,sweep}", parser_class=_Parser)
    sub.required = True

    sub.add_parser("list", help="list the registered experiments and their parameters")

    def common(q):
        q.add_argument("experiment", help="a registered experiment (see gne list)")
        q.add_argument("--profile", default="book", choices=PROFILES, help="size defaults (default: book)")
        q.add_argument("--device", default="cpu", choices=DEVICES, help="torch device (default: cpu)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a configuration field (repeatable)")
        q.add_argument("--store", default=None, metavar="DIR",
                       help="results store folder (default: data/results/store)")

    r = sub.add_parser("run", help="run one configuration of an experiment")
    common(r)
    r.add_argument("--seed", type=int, default=None,
                   help="the configuration's seed (default: --set seed=..., else 0)")
    r.add_argument("--force", action="store_true", help="recompute even if the store has it")
    r.add_argument("--json", action="store_true", help="print the record as JSON")
    r.add_argument("--key", action="store_true",
                   help="print the configuration's store key and exit (computes nothing)")

    s = sub.add_parser("sweep", help="run a grid of configurations x seeds")
    common(s)
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis (repeatable)")
    s.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per grid point (default: the --set seed, else seed 0)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="run on this Dask distributed scheduler")
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run on a Dask LocalCluster of N single-threaded worker processes")
    where.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="local process pool size (default: CPU count; 1 = in this process)")

    q = sub.add_parser("probe", help="probe a model for block dynamical isometry")
    q.add_argument("model", help="package.module:factory returning a torch.nn.Module "
                                 "(modules in the current directory are found)")
    q.add_argument("--input-shape", required=True, metavar="B,C,H,W",
                   help="input shape, batch first, e.g. 1,3,32,32")
    q.add_argument("--blocks", default=None, metavar="NAME1,NAME2",
                   help="dotted submodule names (default: the top-level children, containers opened)")
    q.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the factory: a Python literal or true/false/none "
                        "(a bare word for a string parameter) (repeatable)")
    q.add_argument("--probes", type=int, default=64, help="Hutchinson probes per block (default 64)")
    q.add_argument("--seed", type=int, default=0, help="seed of the input and probes (default 0)")
    q.add_argument("--mode", default="train", choices=("train", "eval"),
                   help="probe the model in train or eval mode (default train)")
    q.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    q.add_argument("--device", default="cpu", choices=DEVICES)
    q.add_argument("--tolerance", type=float, default=0.25, help="allowed |φ-1| per block (default 0.25)")
    q.add_argument("--rv-tolerance", type=float, default=0.25,
                   help="allowed relative spectral variance per block (default 0.25)")
    q.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="memory budget of the probes (default: half the available memory)")
    q.add_argument("--plot", default=None, metavar="FILE", help="save a plot of per-block φ")
    q.add_argument("--json", default=None, metavar="FILE", help="write the probe as JSON")
    return p


# --------------------------------------------------------------------------------------
# gne list
# --------------------------------------------------------------------------------------

_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "eta": "η", "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ",
    "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ", "phi": "φ", "varphi": "φ", "chi": "χ",
    "psi": "ψ", "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ",
    "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω", "nabla": "∇", "partial": "∂",
    "infty": "∞", "cdot": "·", "cdots": "⋯", "ldots": "…", "dots": "…", "times": "×",
    "to": "→", "rightarrow": "→", "mapsto": "↦", "leftarrow": "←", "le": "≤", "leq": "≤",
    "ge": "≥", "geq": "≥", "ne": "≠", "neq": "≠", "approx": "≈", "sim": "~", "propto": "∝",
    "in": "∈", "sum": "Σ", "prod": "Π", "sqrt": "√", "ell": "ℓ", "circ": "∘", "top": "ᵀ",
    "pm": "±", "mid": "|", "langle": "⟨", "rangle": "⟩", "lVert": "‖", "rVert": "‖",
    "Vert": "‖",
}
_SUP = str.maketrans("0123456789-+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺")
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _plain(text: str) -> str:
    """Docstring text without LaTeX: ``\\log\\|\\nabla_{W_1}\\mathcal L\\|_F`` ->
    ``log‖∇_W₁L‖_F``, ``R(\\alpha)`` -> ``R(α)``."""
    s = text.replace("$", "")
    s = re.sub(r"\\(left|right|big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[,;:! ]|\\q?quad(?![A-Za-z])", " ", s)
    s = s.replace("\\|", "‖").replace("\\{", "{").replace("\\}", "}")
    for _ in range(4):  # innermost first
        s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
        s = re.sub(r"\\(?:mathcal|mathbb|mathrm|mathbf|mathsf|boldsymbol|text|textrm|operatorname)"
                   r"\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mathcal|mathbb|mathrm|mathbf|boldsymbol)\s+(\w)", r"\1", s)
    s = re.sub(r"\^\{?\\top\}?", "ᵀ", s)
    s = re.sub(r"\\([A-Za-z]+)", lambda m: _SYMBOLS.get(m.group(1), m.group(1)), s)
    s = re.sub(r"\^\{([0-9+-]+)\}|\^([0-9])", lambda m: (m.group(1) or m.group(2)).translate(_SUP), s)
    s = re.sub(r"_\{([0-9]+)\}|_([0-9])", lambda m: (m.group(1) or m.group(2)).translate(_SUB), s)
    s = re.sub(r"_\{([^{}]*)\}", r"_\1", s)
    s = re.sub(r"\^\{([^{}]*)\}", r"^\1", s)
    s = re.sub(r"_([A-Za-z])_?([0-9])", lambda m: f"_{m.group(1)}{m.group(2).translate(_SUB)}", s)
    s = s.replace("{", "").replace("}", "").replace("\\", "")
    return re.sub(r"\s+", " ", s).strip()


def _choices(exp, name: str):
    """The allowed values of a string field, read from the configuration's own check
    (``check_choice``'s message for an impossible value), or ``None``."""
    sentinel = "\x00not-a-value"
    defaults = {f.name: f.default for f in dataclasses.fields(exp.config)}
    try:
        exp.config(**{**defaults, name: sentinel})
    except Exception as err:  # noqa: BLE001 - any check may fire
        m = re.search(r"allowed values are (.*)$", str(err))
        if m and repr(sentinel) in str(err):
            return re.findall(r"'([^']*)'", m.group(1))
    return None


def _cmd_list(args) -> int:
    from tabulate import tabulate

    from gnelib.runs import registry as experiments
    for name in experiments.names():
        exp = experiments.get(name)
        print(f"{name}: {_plain(exp.doc)}")
        rows = []
        for f, t, d in exp.parameters():
            allowed = _choices(exp, f) if t == "str" else None
            rows.append([f, t, repr(d), " ".join(f"{p}={exp.profiles[p][f]}" for p in exp.profiles
                                                 if f in exp.profiles[p]),
                         ", ".join(allowed) if allowed else ""])
        print(tabulate(rows, headers=["parameter", "type", "default", "per profile", "allowed"]))
        print()
    return 0


# --------------------------------------------------------------------------------------
# gne run / gne sweep
# --------------------------------------------------------------------------------------

def _experiment(args):
    from gnelib.runs import registry as experiments
    from gnelib.base.device import get_device
    try:
        experiments.get(args.experiment)
    except ValueError as err:
        raise _fail(args.command, "experiment", str(err)) from None
    if getattr(args, "scheduler", None) is None:  # a remote cluster's devices are its own business
        try:
            args.device = str(get_device(args.device))
        except ValueError as err:
            raise _fail(args.command, "--device", str(err)) from None


def _config(args, overrides: dict):
    from gnelib.runs import registry as experiments
    try:
        return experiments.make_config(args.experiment, args.profile, overrides)
    except ValueError as err:
        raise _fail(args.command, "--set", str(err)) from None


def _check_memory(args, cfg, device: str):
    from gnelib.base.memory import available_memory, format_bytes
    from gnelib.runs import registry as experiments
    need = experiments.estimate_memory(args.experiment, cfg)
    if need is None:
        return
    room = available_memory(device)
    if need > room:
        raise _fail(args.command, "--set", f"{args.experiment} at this configuration needs about "
                    f"{format_bytes(need)} of memory (estimate); {format_bytes(room)} is "
                    "available: choose smaller sizes")


def _store(args):
    from gnelib.runs.store import Store
    try:
        return Store(args.store)
    except OSError as err:
        raise _fail(args.command, "--store", _first_line(err)) from None


def _summary(name: str, record: dict) -> dict:
    from gnelib.runs import registry as experiments
    exp = experiments.get(name)
    if exp.summary is not None:
        return exp.summary(record["result"])
    return {k: v for k, v in record["result"].items() if not isinstance(v, (list, dict))}


def _failed(command: str, name: str, err: BaseException) -> UsageError:
    """One line for an experiment that failed: out of memory, a store problem, or the
    experiment's own error."""
    from gnelib.base.memory import is_memory_error
    from gnelib.runs.store import StoreError
    if isinstance(err, StoreError):
        return _fail(command, "--store", str(err))
    if is_memory_error(err):
        return _fail(command, None, f"{name} ran out of memory: {_first_line(err)}")
    return _fail(command, None, f"{name} failed: {type(err).__name__}: {_first_line(err)}")


def _cmd_run(args) -> int:
    from tabulate import tabulate

    from gnelib.runs import registry as experiments
    _experiment(args)
    overrides = _key_values(args.set, "--set")
    if args.seed is not None:
        _check_seed("run", "--seed", args.seed)
        if "seed" in overrides:
            given = _config(args, {"seed": overrides["seed"]}).seed
            if given != args.seed:
                raise _fail("run", "--seed", f"--seed {args.seed} and --set seed={overrides['seed']} "
                                             "disagree: give one")
        overrides["seed"] = args.seed
    cfg = _config(args, overrides)
    if args.key:
        print(experiments.config_key(args.experiment, cfg, experiments.library_version()))
        return 0
    store = _store(args)
    try:
        rec = None if args.force else store.get(args.experiment, cfg)
        cached = rec is not None
        if not cached:
            _check_memory(args, cfg, args.device)
            rec, _ = store.run(args.experiment, cfg, device=args.device, progress=True, force=True)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - reported in one line
        raise _failed("run", args.experiment, err) from err
    if args.json:
        print(json.dumps(rec, indent=1))
        return 0
    rows = [[k, _fmt(v)] for k, v in experiments.config_dict(cfg).items()]
    rows += [[k, _fmt(v)] for k, v in _summary(args.experiment, rec).items()]
    print(tabulate(rows, headers=["", args.experiment]))
    print(f"{'read back from' if cached else 'stored in'} {store.path(args.experiment, cfg)}")
    return 0


_SCHEDULER = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})/?$")


def _check_scheduler(url: str) -> str:
    m = _SCHEDULER.match(url)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise _fail("sweep", "--scheduler", f"expected a Dask scheduler address such as "
                                            f"tcp://HOST:PORT, got {url!r}")
    return url


def _cmd_sweep(args) -> int:
    from tabulate import tabulate

    from gnelib.runs.store import StoreError
    from gnelib.runs.sweep import SchedulerError, WorkerVersionError, expand_grid, sweep
    if args.seeds is not None and args.seeds < 1:
        raise _fail("sweep", "--seeds", f"must be an integer >= 1, got {args.seeds}")
    for flag, v in (("--workers", args.workers), ("--jobs", args.jobs)):
        if v is not None and v < 1:
            raise _fail("sweep", flag, f"must be an integer >= 1, got {v}")
    if args.scheduler is not None:
        _check_scheduler(args.scheduler)
    _experiment(args)
    grid = {k: v.split(",") for k, v in _key_values(args.grid, "--grid", "sweep").items()}
    fixed = _key_values(args.set, "--set", "sweep")
    if "seed" in fixed and args.seeds is not None:
        raise _fail("sweep", "--seeds", "seed is given twice, as --set seed=... and as --seeds: give one")
    try:
        configs = expand_grid(args.experiment, grid, args.seeds, args.profile, fixed)
    except ValueError as err:
        flag = "--grid" if any(k in str(err) for k in grid) or "grid" in str(err) else "--set"
        raise _fail("sweep", flag, str(err)) from None
    if args.scheduler is None:
        for cfg in configs:
            _check_memory(args, cfg, args.device)
    store = _store(args)
    try:
        res = sweep(args.experiment, configs, store, scheduler=args.scheduler, workers=args.workers,
                    jobs=args.jobs, device=args.device, progress=True)
    except SchedulerError as err:
        raise _fail("sweep", "--scheduler" if args.scheduler else "--workers", str(err)) from None
    except WorkerVersionError as err:
        raise _fail("sweep", None, str(err)) from None
    except StoreError as err:
        raise _fail("sweep", "--store", str(err)) from None
    keys = list(grid) + ["seed"]
    rows = []
    for rec in res.records:
        summ = _summary(args.experiment, rec)
        rows.append([rec["config"][k] for k in keys] + [_fmt(v) for v in summ.values()])
    heads = keys + list(_summary(args.experiment, res.records[0])) if res.records else keys
    print(tabulate(rows, headers=heads))
    n = res.total
    print(f"{n} configuration{'s' * (n != 1)}: {res.reused} read back, {res.computed} computed, "
          f"{len(res.failures)} failed; store {store.root}")
    for key, err in res.failures.items():
        print(f"failed {key}: {err}", file=sys.stderr)
    return 1 if res.failures else 0


# --------------------------------------------------------------------------------------
# gne probe
# --------------------------------------------------------------------------------------

def _check_output(flag: str, path: str, formats=None) -> None:
    """An output file must be writable where it is asked for: an existing folder (never
    created), not a folder itself, and for a plot a format matplotlib writes."""
    from pathlib import Path

    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise _fail("probe", flag, f"{path!r} is a folder, not a file")
    if not parent.is_dir():
        raise _fail("probe", flag, f"folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise _fail("probe", flag, f"folder {str(parent)!r} is not writable")
    if formats is not None:
        ext = p.suffix.lstrip(".").lower()
        if ext not in formats:
            raise _fail("probe", flag, f"unknown image format {ext or '(none)'!r}: use one of "
                                       f"{', '.join(sorted(formats))}")


def _probe_error(err) -> UsageError:
    arg = getattr(err, "argument", "model")
    if arg == "memory":
        return _fail("probe", None, f"out of memory: {err}")
    if arg == "model" and str(err).startswith("model"):
        return _fail("probe", "model", str(err)[len("model"):].lstrip(": ") or str(err))
    return _fail("probe", arg, str(err))


def _cmd_probe(args) -> int:
    import torch

    from gnelib.base.device import get_device
    from gnelib.base.errors import check_positive
    from gnelib.probes import model as pm
    _check_seed("probe", "--seed", args.seed)
    if args.probes < 2:
        raise _fail("probe", "--probes", f"must be an integer >= 2, got {args.probes}")
    for flag, value in (("--tolerance", args.tolerance), ("--rv-tolerance", args.rv_tolerance),
                        ("--max-memory", args.max_memory)):
        if value is not None:
            try:
                check_positive(flag.lstrip("-"), value)
            except ValueError:
                raise _fail("probe", flag, f"must be a positive finite number, got {value!r}") from None
    if args.json:
        _check_output("--json", args.json)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.backend_bases import FigureCanvasBase
        _check_output("--plot", args.plot, set(FigureCanvasBase.get_supported_filetypes()))
    try:
        device = get_device(args.device)
    except ValueError as err:
        raise _fail("probe", "--device", str(err)) from None
    # `gne` (a console script) does not put the working directory on the import path the
    # way `python -m` does; a model module next to the user should be found either way
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    dtype = getattr(torch, args.dtype)
    try:
        shape = pm.parse_shape(args.input_shape)
        factory = pm.resolve_factory(args.model)
        kwargs = pm.parse_kwargs(args.arg, factory)
        pm.check_input_memory(shape, dtype, None, device)
        model = pm.load_factory(args.model, kwargs)
        pm.check_input_memory(shape, dtype, model, device)
        blocks = [b for b in args.blocks.split(",") if b] if args.blocks else None
        pm.named_blocks(model, blocks)  # validates the names
        gen = torch.Generator().manual_seed(args.seed)
        model = model.to(device=device, dtype=dtype)
        x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
        budget = int(args.max_memory * 1e9) if args.max_memory is not None else None
        report = pm.probe_model(model, x, blocks=blocks, probes=args.probes, generator=gen,
                                tolerance=args.tolerance, rv_tolerance=args.rv_tolerance,
                                mode=args.mode, max_memory=budget)
    except pm.ProbeError as err:
        raise _probe_error(err) from None
    except Exception as err:  # noqa: BLE001 - memory or the model; named in one line
        from gnelib.base.memory import is_memory_error
        if is_memory_error(err):
            raise _fail("probe", None, f"out of memory: {_first_line(err)}") from None
        raise _fail("probe", "model", f"{type(err).__name__}: {_first_line(err)}") from None
    print(pm.format_table(report))
    if args.json:
        from gnelib.base.io import atomic_write_json
        atomic_write_json(args.json, report.as_dict())
    if args.plot:
        pm.plot_probe(report, path=args.plot, label=args.model)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``gne`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        cmd = {"list": _cmd_list, "run": _cmd_run, "sweep": _cmd_sweep, "probe": _cmd_probe}[args.command]
        return cmd(args)
    except UsageError as err:
        print(str(err), file=sys.stderr)
        if os.environ.get("GNE_DEBUG") and err.__cause__ is not None:
            raise
        return 2
    except KeyboardInterrupt:
        print("gne: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - no traceback for the user; GNE_DEBUG=1 shows it
        if os.environ.get("GNE_DEBUG"):
            raise
        print(f"gne: error: {type(err).__name__}: {_first_line(err)} (GNE_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
