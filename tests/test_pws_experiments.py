"""Tests of gnelib.runs.pws: the registered experiments of the PWS chapter at tiny sizes,
and their round trip through the results store."""
import math

import pytest
import torch

from gnelib.runs import registry as experiments
from gnelib.base.profiles import SIZES
from gnelib.runs.pws import BatchSizeConfig, CollapseConfig, pws_batch_size, pws_collapse
from gnelib.runs.store import Store


@pytest.fixture(autouse=True)
def _one_thread():
    """The networks here are tiny: one thread avoids the cost of thread start-up and contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_collapse_records_every_step_and_reads_back(tmp_path):
    config = CollapseConfig(norm="pws", lr=0.05, depth=3, width=16, steps=5, batch=32,
                            probe_size=32, seed=3)
    r = pws_collapse(config)
    assert {"loss", "diverged_step", "last_finite_loss", "step", "max_q", "mean_abs_S"} <= set(r)
    assert r["diverged_step"] is None and r["step"] == [1, 2, 3, 4, 5]
    assert len(r["loss"]) == len(r["max_q"]) == len(r["mean_abs_S"]) == 5
    # PWS kernels are centred: their filter sums are float32 round-off, far below the O(1)
    # sums of an unnormalised He-initialised layer of fan-in 16
    assert max(r["mean_abs_S"]) < 1e-4
    assert all(q > 0 and math.isfinite(q) for q in r["max_q"])
    plain = pws_collapse(CollapseConfig(norm="none", lr=0.05, depth=3, width=16, steps=5,
                                        batch=32, probe_size=32, seed=3))
    assert plain["mean_abs_S"][0] > 0.1
    store = Store(tmp_path)
    rec, cached = store.run("pws_collapse", config)
    assert cached is False and rec["result"]["loss"] == r["loss"]
    rec2, cached2 = store.run("pws_collapse", config)
    assert cached2 is True and rec2 == rec


def test_collapse_without_step_records_and_diverged_run_reads_back(tmp_path):
    # a very large learning rate makes the plain network's loss non-finite within a few steps;
    # the non-finite values must survive the store round trip identically
    config = CollapseConfig(norm="none", lr=50.0, depth=6, width=16, steps=20, batch=32,
                            probe_size=32, seed=0)
    store = Store(tmp_path)
    rec, cached = store.run("pws_collapse", config)
    assert not cached and rec["result"]["diverged_step"] is not None
    assert len(rec["result"]["loss"]) == rec["result"]["diverged_step"] - 1
    unrecorded = CollapseConfig(norm="none", lr=50.0, depth=6, width=16, steps=20, batch=32,
                                probe_size=32, record_steps=False, seed=0)
    r = pws_collapse(unrecorded)
    assert "max_q" not in r and r["diverged_step"] == rec["result"]["diverged_step"]
    rec2, cached2 = store.run("pws_collapse", config)
    assert cached2 is True and rec2 == rec


def test_batch_size_experiment_keys_and_read_back(tmp_path):
    config = BatchSizeConfig(norm="pws", batch=8, steps=3, lr=0.02, widths="4", blocks="1",
                             seed=1)
    store = Store(tmp_path)
    rec, cached = store.run("pws_batch_size", config)
    r = rec["result"]
    assert not cached
    assert {"accuracy", "diverged_step", "loss", "dataset", "num_classes", "sec_per_step"} <= set(r)
    assert r["dataset"] == "mnist1d" and r["num_classes"] == 10 and len(r["loss"]) == 3
    assert 0.0 <= r["accuracy"] <= 1.0 and r["diverged_step"] is None
    rec2, cached2 = store.run("pws_batch_size", config)
    assert cached2 is True and rec2 == rec
    # deterministic: recomputing gives the same losses (the wall clock aside)
    again = pws_batch_size(config)
    assert again["loss"] == r["loss"] and again["accuracy"] == r["accuracy"]


def test_profiles_come_from_sizes_and_bad_configs_are_rejected():
    for p in ("smoke", "book", "full"):
        z = SIZES["pws"][p]
        col = experiments.make_config("pws_collapse", profile=p)
        assert (col.depth, col.width, col.steps) == (z["collapse_depth"], z["collapse_width"],
                                                     z["collapse_steps"])
        bs = experiments.make_config("pws_batch_size", profile=p)
        assert (bs.steps, bs.lr, bs.dataset) == (z["bs_steps"], z["bs_lr"], z["bs_dataset"])
        assert bs.widths == ",".join(map(str, z["bs_widths"]))
    with pytest.raises(ValueError, match="norm"):
        CollapseConfig(norm="bn")
    with pytest.raises(ValueError, match="widths"):
        BatchSizeConfig(widths="16,x")
    with pytest.raises(ValueError, match="equal length"):
        BatchSizeConfig(widths="16,32", blocks="1")
