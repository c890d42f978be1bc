"""Sweeps: a grid of configurations × seeds of one experiment, run on a local process pool
or on a Dask distributed cluster, through the results store.

The process that calls :func:`sweep` owns the store: it reads back every configuration
already done, sends only the missing ones out, and writes each record as it arrives. Workers
compute and return records; they need gnelib (and the module registering the experiment)
importable, not a shared file system. Each worker reports the library version it ran
(:func:`~gnelib.runs.registry.library_version` of its own code) with the result, and the
sweep refuses, with a :class:`WorkerVersionError` and nothing stored, a result computed by a
version other than its own. On Dask, scheduling, retries after a lost worker and
result collection are Dask's own (``client.submit`` with one key per configuration, and
``distributed.as_completed``), so a configuration submitted twice is computed once.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed as pool_as_completed
from dataclasses import dataclass, field

from gnelib.runs import registry as experiments
from gnelib.base.device import set_threads
from gnelib.base.errors import check_positive_int
from gnelib.runs.store import Store, compute
from gnelib.training import progress_bar

__all__ = ["expand_grid", "run_config", "sweep", "SweepResult", "WorkerVersionError",
           "SchedulerError"]

#: Seconds to wait for a Dask scheduler to answer before giving up.
CONNECT_TIMEOUT = 10


class WorkerVersionError(ValueError):
    """A worker runs a different gnelib (source digest) than the process that owns the store."""


class SchedulerError(ValueError):
    """The Dask scheduler cannot be reached (or Dask is not installed)."""


def expand_grid(name: str, grid: dict | None = None, seeds: int | list | None = None,
                profile: str = "book", fixed: dict | None = None) -> list:
    """The configurations of experiment ``name``: the Cartesian product of ``grid``
    (``{field: [values]}``, values as strings or typed) and the seeds (``seeds`` an int
    ``N`` for ``0..N-1``, or a list; by default the ``seed`` of ``fixed``, else 0), on top of
    ``fixed`` overrides and the ``profile`` defaults. Duplicates are removed, order kept.
    A ``seed`` in ``fixed`` together with ``seeds`` is an error (which one would win?)."""
    grid = dict(grid or {})
    fixed = dict(fixed or {})
    if "seed" in fixed and seeds is not None:
        raise ValueError("seed is given twice, as a fixed value (--set seed=...) and as --seeds: "
                         "give one")
    if seeds is None:
        seed_list = [fixed.pop("seed")] if "seed" in fixed else [0]
    elif isinstance(seeds, int):
        seed_list = list(range(check_positive_int("seeds", seeds)))
    else:
        seed_list = list(seeds)
    if "seed" in grid:
        raise ValueError("seed cannot be a grid parameter: use --seeds")
    for key, values in grid.items():
        if not values:
            raise ValueError(f"grid parameter {key} has no values")
    keys = list(grid)
    configs, seen = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        for s in seed_list:
            over = {**fixed, **dict(zip(keys, combo)), "seed": s}
            cfg = experiments.make_config(name, profile, over)
            if cfg not in seen:
                seen.add(cfg)
                configs.append(cfg)
    return configs


def run_config(name: str, module: str, config: dict, device: str = "cpu",
               version: str | None = None, threads: int | None = 1) -> dict:
    """Worker side of a sweep: import ``module`` (which registers ``name``), rebuild the
    configuration from the dict, run it and return its record (not written), stamped with
    this worker's own library version. ``version`` is the version the caller expects: a
    worker whose code differs raises :class:`WorkerVersionError` instead of computing."""
    mine = experiments.library_version()
    if version is not None and mine != version:
        raise WorkerVersionError(_version_message(mine, version))
    if threads:
        set_threads(threads)
    exp = experiments.get(name, module=module)
    return compute(name, exp.config(**config), device=device, version=mine)


def _version_message(worker: str, head: str) -> str:
    return (f"a worker runs gnelib {worker} but this process has {head}: the workers must run "
            "the same code (reinstall gnelib there, restart them); nothing was stored")


@dataclass
class SweepResult:
    """Records in configuration order, how many were read back from the store, and the
    configurations that failed (key -> error text)."""

    records: list
    reused: int = 0
    computed: int = 0
    failures: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Configurations in the sweep (read back, computed or failed)."""
        return self.reused + self.computed + len(self.failures)


def _init_pool_worker():
    os.environ.setdefault("TQDM_DISABLE", "1")


def sweep(name: str, configs: list, store: Store | None = None, *, scheduler: str | None = None,
          workers: int | None = None, jobs: int | None = None, device: str = "cpu",
          progress: bool = True, client=None) -> SweepResult:
    """Run every configuration of ``configs`` not yet in ``store``.

    Backend: ``client`` (a ``distributed.Client``) or ``scheduler`` (``tcp://host:port``) or
    ``workers`` (a ``LocalCluster`` of that many single-threaded worker processes) use Dask;
    otherwise a local process pool of ``jobs`` processes (default: CPU count; ``jobs=1``
    runs in this process).
    """
    store = store if store is not None else Store()
    exp = experiments.get(name)
    records: dict[str, dict] = {}
    order, todo = [], {}
    for cfg in configs:
        key = store.key(name, cfg)
        if key in records or key in todo:
            continue
        order.append(key)
        rec = store.get(name, cfg)
        if rec is not None:
            records[key] = rec
        else:
            todo[key] = cfg
    result = SweepResult(records=[], reused=len(records))
    bars = []

    def open_bar():  # once the workers are reachable, so a refused connection prints one line
        bars.append(progress_bar(total=len(order), initial=len(records), desc=f"sweep {name}",
                                 disable=not progress))

    def done(key, rec=None, err=None):
        if isinstance(err, WorkerVersionError):
            raise err
        if err is not None:
            result.failures[key] = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else err
        elif rec.get("version") != store.version:
            raise WorkerVersionError(_version_message(rec.get("version"), store.version))
        else:
            store.put(rec)
            records[key] = rec
            result.computed += 1
        bars[0].update(1)

    args = {k: (name, exp.module, experiments.config_dict(c), device, store.version) for k, c in todo.items()}
    try:
        _run(args, todo, done, open_bar, exp.module, client, scheduler, workers, jobs)
    finally:
        if bars:
            bars[0].close()
    result.records = [records[k] for k in order if k in records]
    return result


def _run(args, todo, done, open_bar, module, client, scheduler, workers, jobs) -> None:
    if todo and (client is not None or scheduler is not None or workers is not None):
        _run_dask(args, done, client=client, scheduler=scheduler, workers=workers, ready=open_bar)
        return
    open_bar()
    if todo:
        jobs = jobs or os.cpu_count() or 1
        check_positive_int("jobs", jobs)
        if jobs == 1 or len(todo) == 1:
            for key, a in args.items():
                try:
                    done(key, run_config(*a, threads=None))
                except Exception as err:  # noqa: BLE001 - reported per configuration
                    done(key, err=err)
        else:
            # forkserver: one server imports torch and gnelib once, workers fork from it
            # before any OpenMP pool exists (fork from this process could deadlock)
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["gnelib.runs.sweep", module])
            with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=ctx,
                                     initializer=_init_pool_worker) as pool:
                futures = {pool.submit(run_config, *a): k for k, a in args.items()}
                try:
                    for fut in pool_as_completed(futures):
                        try:
                            rec = fut.result()
                        except Exception as err:  # noqa: BLE001
                            done(futures[fut], err=err)
                        else:
                            done(futures[fut], rec)
                except WorkerVersionError:
                    pool.shutdown(cancel_futures=True)
                    raise


def _run_dask(args: dict, done, client=None, scheduler=None, workers=None, ready=None) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SchedulerError("Dask is not installed: pip install -c constraints.txt -e '.[cluster]'") from None

    own_cluster = own_client = None
    if client is None:
        if scheduler is not None:
            try:
                client = own_client = Client(scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as err:
                raise SchedulerError(f"cannot reach a Dask scheduler at {scheduler} within "
                                     f"{CONNECT_TIMEOUT} s ({type(err).__name__}: "
                                     f"{str(err).splitlines()[0] if str(err) else ''})") from None
        else:
            check_positive_int("workers", workers)
            own_cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
            client = own_client = Client(own_cluster)
    try:
        if ready is not None:
            ready()
        futures = {client.submit(run_config, *a, key=f"gne-{a[0]}-{k}", pure=False): k
                   for k, a in args.items()}
        try:
            for fut in as_completed(list(futures)):
                key = futures[fut]
                try:
                    rec = fut.result()
                except Exception as err:  # noqa: BLE001 - includes KilledWorker after retries
                    done(key, err=err)
                else:
                    done(key, rec)
        except WorkerVersionError:
            client.cancel(list(futures))
            raise
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
