"""The ``gne`` command line.

::

    gne list
    gne run EXPERIMENT [--profile P] [--device D] [--seed S] [--set key=value ...] [--force]
    gne probe package.module:factory --input-shape 1,3,32,32 [--blocks a,b] [--plot FILE]
    gne sweep EXPERIMENT [--grid key=v1,v2 ...] [--seeds N] [--set key=value ...]
              [--scheduler tcp://host:port | --workers N | --jobs N]

Results of ``run`` and ``sweep`` go through the results store (:mod:`gnelib.runs.store`), so a
configuration already done is read back. A bad argument prints one line naming the argument
and what is allowed, and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """A bad command-line argument: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{self.prog}: error: {message}")


def _key_values(items, what: str) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item or not item.split("=", 1)[0]:
            raise UsageError(f"gne: error: argument {what}: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return f"[{len(v)} values]"
    return str(v)


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
    r.add_argument("--seed", type=int, default=0, help="the configuration's seed (default 0)")
    r.add_argument("--force", action="store_true", help="recompute even if the store has it")
    r.add_argument("--json", action="store_true", help="print the record as JSON")

    s = sub.add_parser("sweep", help="run a grid of configurations x seeds")
    common(s)
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis (repeatable)")
    s.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per grid point (default 1)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="run on this Dask distributed scheduler")
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run on a Dask LocalCluster of N single-threaded worker processes")
    where.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="local process pool size (default: CPU count; 1 = in this process)")

    q = sub.add_parser("probe", help="probe a model for block dynamical isometry")
    q.add_argument("model", help="package.module:factory returning a torch.nn.Module")
    q.add_argument("--input-shape", required=True, metavar="B,C,H,W",
                   help="input shape, batch first, e.g. 1,3,32,32")
    q.add_argument("--blocks", default=None, metavar="NAME1,NAME2",
                   help="dotted submodule names (default: the top-level children)")
    q.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the factory, a Python literal (repeatable)")
    q.add_argument("--probes", type=int, default=64, help="Hutchinson probes per block (default 64)")
    q.add_argument("--seed", type=int, default=0, help="seed of the input and probes (default 0)")
    q.add_argument("--mode", default="train", choices=("train", "eval"),
                   help="probe the model in train or eval mode (default train)")
    q.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    q.add_argument("--device", default="cpu", choices=DEVICES)
    q.add_argument("--tolerance", type=float, default=0.25, help="allowed |φ-1| per block (default 0.25)")
    q.add_argument("--rv-tolerance", type=float, default=0.25,
                   help="allowed relative spectral variance per block (default 0.25)")
    q.add_argument("--plot", default=None, metavar="FILE", help="save a plot of per-block φ")
    q.add_argument("--json", default=None, metavar="FILE", help="write the probe as JSON")
    return p


def _cmd_list(args) -> int:
    from tabulate import tabulate

    from gnelib.runs import registry as experiments
    for name in experiments.names():
        exp = experiments.get(name)
        print(f"{name}: {exp.doc}")
        rows = [[f, t, repr(d), " ".join(f"{p}={exp.profiles[p][f]}" for p in exp.profiles
                                         if f in exp.profiles[p])]
                for f, t, d in exp.parameters()]
        print(tabulate(rows, headers=["parameter", "type", "default", "per profile"]))
        print()
    return 0


def _config(args, extra: dict):
    from gnelib.runs import registry as experiments
    from gnelib.base.device import get_device
    try:
        args.device = str(get_device(args.device))
        experiments.get(args.experiment)
        return experiments.make_config(args.experiment, args.profile, {**_key_values(args.set, "--set"), **extra})
    except ValueError as err:
        raise UsageError(f"gne {args.command}: error: {err}") from None


def _store(args):
    from gnelib.runs.store import Store
    return Store(args.store)


def _summary(name: str, record: dict) -> dict:
    from gnelib.runs import registry as experiments
    exp = experiments.get(name)
    if exp.summary is not None:
        return exp.summary(record["result"])
    return {k: v for k, v in record["result"].items() if not isinstance(v, (list, dict))}


def _cmd_run(args) -> int:
    from tabulate import tabulate

    from gnelib.runs import registry as experiments
    cfg = _config(args, {"seed": str(args.seed)})
    store = _store(args)
    rec, cached = store.run(args.experiment, cfg, device=args.device, progress=True, force=args.force)
    if args.json:
        print(json.dumps(rec, indent=1))
        return 0
    rows = [[k, _fmt(v)] for k, v in experiments.config_dict(cfg).items()]
    rows += [[k, _fmt(v)] for k, v in _summary(args.experiment, rec).items()]
    print(tabulate(rows, headers=["", args.experiment]))
    print(f"{'read back from' if cached else 'stored in'} {store.path(args.experiment, cfg)}")
    return 0


def _cmd_sweep(args) -> int:
    from tabulate import tabulate

    from gnelib.runs import registry as experiments
    from gnelib.base.device import get_device
    from gnelib.runs.sweep import expand_grid, sweep
    if args.seeds < 1:
        raise UsageError(f"gne sweep: error: argument --seeds: must be an integer >= 1, got {args.seeds}")
    for flag, v in (("--workers", args.workers), ("--jobs", args.jobs)):
        if v is not None and v < 1:
            raise UsageError(f"gne sweep: error: argument {flag}: must be an integer >= 1, got {v}")
    grid = {k: v.split(",") for k, v in _key_values(args.grid, "--grid").items()}
    try:
        if args.scheduler is None:  # a remote cluster's devices are its own business
            args.device = str(get_device(args.device))
        experiments.get(args.experiment)
        configs = expand_grid(args.experiment, grid, args.seeds, args.profile,
                              _key_values(args.set, "--set"))
    except ValueError as err:
        raise UsageError(f"gne sweep: error: {err}") from None
    store = _store(args)
    res = sweep(args.experiment, configs, store, scheduler=args.scheduler, workers=args.workers,
                jobs=args.jobs, device=args.device, progress=True)
    keys = list(grid) + ["seed"]
    rows = []
    for rec in res.records:
        summ = _summary(args.experiment, rec)
        rows.append([rec["config"][k] for k in keys] + [_fmt(v) for v in summ.values()])
    heads = keys + list(_summary(args.experiment, res.records[0])) if res.records else keys
    print(tabulate(rows, headers=heads))
    print(f"{len(res.records)} configurations: {res.reused} read back, {res.computed} computed, "
          f"{len(res.failures)} failed; store {store.root}")
    for key, err in res.failures.items():
        print(f"failed {key}: {err}", file=sys.stderr)
    return 1 if res.failures else 0


def _cmd_probe(args) -> int:
    import torch

    from gnelib.probes import model as pm
    from gnelib.base.device import get_device
    try:
        shape = pm.parse_shape(args.input_shape)
        kwargs = pm.parse_kwargs(args.arg)
        if args.probes < 2:
            raise ValueError(f"probes must be an integer >= 2, got {args.probes}")
        if not args.tolerance > 0 or not args.rv_tolerance > 0:
            raise ValueError("tolerance and rv-tolerance must be positive")
        model = pm.load_factory(args.model, kwargs)
        blocks = [b for b in args.blocks.split(",") if b] if args.blocks else None
        pm.named_blocks(model, blocks)  # validates the names
        device = get_device(args.device)
    except ValueError as err:
        msg = str(err)
        where = "" if msg.startswith("model") else f"{_probe_arg(msg)}: "
        raise UsageError(f"gne probe: error: argument {where}{msg}") from None
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    model = model.to(device=device, dtype=dtype)
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    try:
        report = pm.probe_model(model, x, blocks=blocks, probes=args.probes, generator=gen,
                                tolerance=args.tolerance, rv_tolerance=args.rv_tolerance,
                                mode=args.mode)
    except RuntimeError as err:  # typically a shape mismatch between input and model
        raise UsageError(f"gne probe: error: argument --input-shape: the model does not accept "
                         f"input of shape {shape}: {str(err).splitlines()[0]}") from None
    except ValueError as err:  # a block that is not called once, or not tensor to tensor
        raise UsageError(f"gne probe: error: argument --blocks: {err}") from None
    print(pm.format_table(report))
    if args.json:
        from gnelib.base.io import atomic_write_json
        atomic_write_json(args.json, report.as_dict())
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        pm.plot_probe(report, path=args.plot, label=args.model)
    return 0


def _probe_arg(message: str) -> str:
    for word, arg in (("input-shape", "--input-shape"), ("block", "--blocks"), ("arg", "--arg"),
                      ("probes", "--probes"), ("tolerance", "--tolerance"), ("device", "--device")):
        if message.startswith(word) or f"unknown {word}" in message:
            return arg
    return "model"


def main(argv=None) -> int:
    """Entry point of the ``gne`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        cmd = {"list": _cmd_list, "run": _cmd_run, "sweep": _cmd_sweep, "probe": _cmd_probe}[args.command]
        return cmd(args)
    except UsageError as err:
        print(str(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
