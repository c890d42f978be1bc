"""The results store: atomic writes, read-back instead of rerun, corrupt-record recovery,
and the built-in experiments checked against direct computations."""
import json
import math
import os
import stat
from dataclasses import dataclass

import pytest
import torch

import gnelib
from gnelib.runs import registry as experiments
from gnelib.runs import store as st
from gnelib.base.io import atomic_write_json

CALLS = []


@dataclass(frozen=True)
class CountConfig:
    n: int = 3
    seed: int = 0


@experiments.register("_test_count", CountConfig)
def _count(config):
    """Return the squares of 0..n-1 (and count calls)."""
    CALLS.append(config)
    return {"squares": [i * i for i in range(config.n)], "seed": config.seed}


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})

    class Boom:  # fails while the JSON is being written
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": 2, "y": Boom()})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_run_reads_back_instead_of_rerunning(tmp_path):
    store = st.Store(tmp_path)
    cfg = experiments.make_config("_test_count", overrides={"n": "4"})
    CALLS.clear()
    rec, cached = store.run("_test_count", cfg)
    assert not cached and CALLS == [cfg] and rec["result"]["squares"] == [0, 1, 4, 9]
    rec2, cached2 = store.run("_test_count", cfg)
    assert cached2 and CALLS == [cfg] and rec2 == rec
    assert store.path("_test_count", cfg).name == f"{experiments.config_key('_test_count', cfg)}.json"
    # a different configuration or library version has a different key
    other = experiments.make_config("_test_count", overrides={"n": 5})
    assert store.key("_test_count", other) != store.key("_test_count", cfg)
    assert st.Store(tmp_path, version="0.0.0").key("_test_count", cfg) != store.key("_test_count", cfg)


@pytest.mark.parametrize("damage", ["truncate", "tamper", "wrong_config", "not_a_record"])
def test_corrupt_record_is_reported_and_recomputed(tmp_path, damage):
    store = st.Store(tmp_path)
    cfg = CountConfig(n=3, seed=1)
    rec, _ = store.run("_test_count", cfg)
    path = store.path("_test_count", cfg)
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "tamper":
        path.write_text(text.replace('"squares": [\n   0,\n   1,\n   4', '"squares": [\n   0,\n   1,\n   5'))
        assert path.read_text() != text
    elif damage == "wrong_config":  # a valid record of another configuration under this key
        other, _ = store.run("_test_count", CountConfig(n=2, seed=1))
        path.write_text(json.dumps({**other, "key": rec["key"], "checksum": st.checksum(
            other["experiment"], rec["key"], other["version"], other["config"], other["result"])}))
    else:
        path.write_text("[1, 2, 3]")
    CALLS.clear()
    with pytest.warns(st.StoreWarning, match="corrupt record"):
        rec2, cached = store.run("_test_count", cfg)
    assert not cached and CALLS == [cfg]
    assert rec2["result"] == rec["result"] and store.read(path)["result"] == rec["result"]


def test_records_lists_each_configuration_once(tmp_path):
    store = st.Store(tmp_path)
    for n in (1, 2, 2, 3):
        store.run("_test_count", CountConfig(n=n))
    assert sorted(r["config"]["n"] for r in store.records("_test_count")) == [1, 2, 3]


def test_register_rejects_bad_configs():
    @dataclass(frozen=True)
    class NoSeed:
        a: int = 1

    with pytest.raises(TypeError, match="seed"):
        experiments.register("_bad", NoSeed)
    with pytest.raises(ValueError, match="allowed values"):
        experiments.make_config("_test_count", overrides={"m": 1})
    with pytest.raises(ValueError, match="n must be int"):
        experiments.make_config("_test_count", overrides={"n": "x"})


def test_gradient_norms_at_init_matches_direct_computation():
    cfg = experiments.make_config("gradient_norms_at_init", "smoke",
                                  {"width": 16, "depth": 3, "batch": 4, "probes": 64, "seed": 3})
    res = experiments.get("gradient_norms_at_init")(cfg)
    # rebuild the same model and batch from the seed, as the experiment documents
    gen = torch.Generator().manual_seed(cfg.seed)
    model = gnelib.MLP(cfg.in_dim, cfg.width, cfg.depth, cfg.classes, init=cfg.init,
                       generator=gen).double()
    x = torch.randn(cfg.batch, cfg.in_dim, generator=gen, dtype=torch.float64)
    y = torch.randint(cfg.classes, (cfg.batch,), generator=gen)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    direct = gnelib.gradient_norms(model, loss)
    assert res["layers"] == list(direct)
    assert res["grad_sq_norms"] == pytest.approx(list(direct.values()), rel=1e-12)
    h = x
    for i, block in enumerate(model.blocks):  # Hutchinson estimate vs exact trace, 4 s.e.
        exact = gnelib.jacobian_moments(block, h, exact=True)
        assert abs(res["phi"][i] - exact.phi1) <= 4 * res["phi_se"][i]
        assert abs(res["phi2"][i] - exact.phi2) <= 4 * res["phi2_se"][i]
        h = block(h).detach()


def test_train_mlp_learns_and_records_divergence():
    exp = experiments.get("train_mlp")
    base = {"dataset": "gaussian_mixture", "width": 32, "depth": 2, "steps": 80, "n_train": 500,
            "eval_every": 40, "lr": 0.05}
    res = exp(experiments.make_config("train_mlp", "smoke", base))
    assert res["diverged_step"] is None and len(res["loss"]) == 80
    assert res["eval_step"] == [40, 80]
    assert res["final_accuracy"] > 0.5  # 4 well-separated classes: chance is 0.25
    blown = exp(experiments.make_config("train_mlp", "smoke", {**base, "lr": 1e6, "gain": 5.0}))
    assert blown["diverged_step"] is not None and blown["diverged_step"] <= 80
    assert blown["last_finite_loss"] is None or math.isfinite(blown["last_finite_loss"])


def test_default_version_tracks_the_library_source(tmp_path):
    from gnelib import __version__
    from gnelib.runs import registry as experiments
    from gnelib.runs.store import Store

    v = experiments.library_version()
    prefix, digest = v.split("+")
    assert prefix == __version__ and len(digest) == 12
    assert Store(tmp_path).version == v


@dataclass(frozen=True)
class ScaleConfig:
    scale: float = 1.0
    seed: int = 0


@experiments.register("_test_scale", ScaleConfig)
def _scale(config):
    """Return the scale."""
    CALLS.append(config)
    return {"scale": config.scale}


@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan])
def test_non_finite_configuration_values_are_read_back(tmp_path, scale, recwarn):
    """Issue 15: NaN/inf configuration values were stored as strings and never matched, so
    every run warned "corrupt record" and recomputed."""
    store = st.Store(tmp_path)
    cfg = ScaleConfig(scale=scale)
    CALLS.clear()
    store.run("_test_scale", cfg)
    rec, cached = store.run("_test_scale", cfg)
    assert cached and len(CALLS) == 1
    assert not [w for w in recwarn if issubclass(w.category, st.StoreWarning)]


def test_stale_temporaries_are_removed_when_a_store_opens(tmp_path):
    """Issue 15: a write killed midway left a hidden .…tmp in the store forever."""
    store = st.Store(tmp_path)
    store.run("_test_count", CountConfig(n=2))
    folder = tmp_path / "_test_count"
    stale = folder / ".abc.json.x1y2.tmp"
    fresh = folder / ".def.json.z3w4.tmp"  # a write in progress in another process
    stale.write_text("{")
    fresh.write_text("{")
    old = stale.stat().st_mtime - 3600
    os.utime(stale, (old, old))
    st.Store(tmp_path)
    assert not stale.exists() and fresh.exists()


def test_a_folder_in_place_of_a_record_is_a_store_error(tmp_path):
    store = st.Store(tmp_path)
    cfg = CountConfig(n=4)
    store.path("_test_count", cfg).mkdir(parents=True)
    with pytest.raises(st.StoreError, match="folder"):
        store.run("_test_count", cfg)


def test_written_files_follow_the_umask(tmp_path):
    """Issue 15: records and --json files were 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
