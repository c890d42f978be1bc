"""Sweeps: grid expansion, the store (no configuration twice), a local process pool, and a
Dask LocalCluster that loses a worker in the middle of a sweep."""
import os
import signal
from collections import Counter

import pytest

from gnelib.runs import registry as experiments

from gnelib.runs import store as st

from gnelib.runs import sweep as sw

NAME = "gradient_norms_at_init"
TINY = {"width": "16", "depth": "3", "batch": "4", "probes": "4"}


def test_expand_grid_is_the_product_without_duplicates():
    cfgs = sw.expand_grid(NAME, {"init": ["he", "xavier", "he"], "depth": ["2", "3"]}, seeds=3,
                          profile="smoke", fixed={"width": "8"})
    assert len(cfgs) == 2 * 2 * 3
    assert Counter((c.init, c.depth) for c in cfgs) == {(i, d): 3 for i in ("he", "xavier") for d in (2, 3)}
    assert {c.seed for c in cfgs} == {0, 1, 2} and {c.width for c in cfgs} == {8}
    assert sw.expand_grid(NAME, {}, seeds=[5, 7], profile="smoke")[1].seed == 7
    with pytest.raises(ValueError, match="allowed values"):
        sw.expand_grid(NAME, {"init": ["lsuv"]}, profile="smoke")
    with pytest.raises(ValueError, match="--seeds"):
        sw.expand_grid(NAME, {"seed": ["1"]}, profile="smoke")


def test_sweep_reuses_the_store_and_never_duplicates(tmp_path):
    store = st.Store(tmp_path)
    cfgs = sw.expand_grid(NAME, {"init": ["he", "orthogonal"]}, seeds=2, profile="smoke", fixed=TINY)
    first = sw.sweep(NAME, cfgs[:3] + cfgs[:1], store, jobs=1, progress=False)
    assert (first.computed, first.reused, first.failures) == (3, 0, {})
    second = sw.sweep(NAME, cfgs + cfgs, store, jobs=1, progress=False)
    assert (second.computed, second.reused) == (1, 3)
    assert [r["key"] for r in second.records] == [store.key(NAME, c) for c in cfgs]
    assert second.records[:3] == first.records[:3]
    assert len(list((tmp_path / NAME).glob("*.json"))) == 4


def test_sweep_on_a_process_pool(tmp_path):
    store = st.Store(tmp_path)
    cfgs = sw.expand_grid(NAME, {"init": ["he", "xavier"]}, seeds=1, profile="smoke", fixed=TINY)
    res = sw.sweep(NAME, cfgs, store, jobs=2, progress=False)
    assert res.computed == 2 and not res.failures
    # a pool worker's record equals the one computed in this process (float64; a different
    # thread count may only reorder sums)
    for cfg, rec in zip(cfgs, res.records):
        here = st.compute(NAME, cfg)["result"]
        assert rec["result"]["layers"] == here["layers"]
        for k in ("grad_sq_norms", "phi", "phi2", "end_to_end_phi", "loss"):
            assert rec["result"][k] == pytest.approx(here[k], rel=1e-10, abs=0), k


def test_dask_sweep_survives_a_killed_worker(tmp_path):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        store = st.Store(tmp_path)
        cfgs = sw.expand_grid(NAME, {"init": ["he", "xavier", "orthogonal"]}, seeds=4,
                              profile="smoke", fixed={**TINY, "width": "64", "depth": "6"})
        killed = {}
        put = store.put

        def put_then_kill(record):  # after the first result, kill a busy worker process
            path = put(record)
            if not killed:
                busy = {a: ks for a, ks in client.processing().items() if ks}
                addr = sorted(busy)[0]
                killed["in_flight"] = [k.removeprefix(f"gne-{NAME}-") for k in busy[addr]]
                killed["pid"] = client.run(os.getpid)[addr]
                os.kill(killed["pid"], signal.SIGKILL)
            return path

        store.put = put_then_kill
        res = sw.sweep(NAME, cfgs, store, client=client, progress=False)
        assert killed["in_flight"]  # the killed worker was running part of the sweep
        client.wait_for_workers(2, timeout=60)
        assert killed["pid"] not in client.run(os.getpid).values()  # the worker really died
        assert not res.failures and res.computed == len(cfgs)
        keys = [r["key"] for r in res.records]
        assert Counter(keys) == Counter(store.key(NAME, c) for c in cfgs)  # each exactly once
        assert set(killed["in_flight"]) <= set(keys)  # lost tasks were rerun elsewhere
        assert sorted(p.stem for p in (tmp_path / NAME).glob("*.json")) == sorted(keys)
        for cfg in cfgs:  # every stored record verifies and belongs to its configuration
            assert store.get(NAME, cfg)["config"] == experiments.config_dict(cfg)
        # submitting the whole sweep again computes nothing
        again = sw.sweep(NAME, cfgs, store, client=client, progress=False)
        assert (again.computed, again.reused) == (0, len(cfgs))
    finally:
        client.close()
        cluster.close()


def test_a_fixed_seed_is_the_sweep_seed():
    """Issue 15, item 2: sweep --set seed=5 silently ran seed 0."""
    assert [c.seed for c in sw.expand_grid(NAME, {}, profile="smoke", fixed={"seed": "5"})] == [5]
    assert [c.seed for c in sw.expand_grid(NAME, {}, profile="smoke")] == [0]
    with pytest.raises(ValueError, match="seed is given twice"):
        sw.expand_grid(NAME, {}, seeds=2, profile="smoke", fixed={"seed": "5"})


def _pretend_other_code():  # runs on a worker: its library digest differs from ours
    from gnelib.runs import registry
    registry.library_version = lambda: "0.1.0+changedcode00"


def test_a_worker_running_other_code_is_refused_and_nothing_is_stored(tmp_path):
    """Issue 15, item 3: records got the head's library digest whatever code the workers ran."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        client.run(_pretend_other_code)
        store = st.Store(tmp_path)
        cfgs = sw.expand_grid(NAME, {}, seeds=2, profile="smoke", fixed=TINY)
        with pytest.raises(sw.WorkerVersionError, match="changedcode00"):
            sw.sweep(NAME, cfgs, store, client=client, progress=False)
        assert not list(tmp_path.rglob("*.json"))
        # a worker that does not check (older code) is caught by the process that stores
        rec = st.compute(NAME, cfgs[0], version="0.1.0+changedcode00")
        with pytest.raises(sw.WorkerVersionError):
            sw.sweep(NAME, cfgs[:1], store, progress=False, jobs=1,
                     client=_Replay(client, rec))
        assert not list(tmp_path.rglob("*.json"))
    finally:
        client.close()
        cluster.close()


class _Replay:
    """A client whose every task returns ``record`` (what an unchecked worker would send)."""

    def __init__(self, client, record):
        self.client, self.record = client, record

    def submit(self, fn, *args, key=None, pure=False):
        return self.client.submit(_identity, self.record, key=key, pure=False)

    def cancel(self, futures):
        self.client.cancel(futures)


def _identity(x):
    return x
