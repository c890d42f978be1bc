"""The chapter's experiment functions, at tiny sizes; includes the `full` profile's code path
(its data choice and settings), which cannot be run at scale on a CPU."""
import math

import numpy as np
import pytest
import torch

from gnelib.runs import bn as bx
from gnelib.base.device import torch_threads
from gnelib.probes.bn_chain import layer_gradient_profile, log_grad_norm_vs_depth
from gnelib.base.profiles import SIZES


def gen(s):
    return torch.Generator().manual_seed(s)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def test_profiles_share_keys():
    keys = {p: set(v) for p, v in SIZES["bn"].items()}
    assert keys["smoke"] == keys["book"] == keys["full"]
    for p, v in SIZES["bn"].items():
        assert v["local_window"][1] <= v["local_depth"], p
        assert len(v["local_widths"]) >= 2 and len(v["mc_widths"]) >= 2, p


def test_yang_rate_and_slope_stats():
    assert bx.yang_rate(100) == pytest.approx(0.5 * math.log(98 / 97))
    assert bx.yang_rate(32, centred=False) == pytest.approx(0.5 * math.log(31 / 30))
    with pytest.raises(ValueError, match="batch"):
        bx.yang_rate(3)
    xs = np.arange(10.0)
    vals = np.stack([2.0 * xs + 1, 2.0 * xs - 3, 2.0 * xs])
    s, se = bx.slope_stats(xs, vals, lo=2, hi=8)
    assert s == pytest.approx(2.0) and se == pytest.approx(0.0, abs=1e-12)
    assert bx.slope_stats(xs, vals, sign=-1.0)[0] == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="two points"):
        bx.slope_stats(xs, vals, lo=9.5)


def test_small_experiments_run():
    mono = bx.monotonicity_paths(6, 3, 10, gen(0))
    assert mono["gaps"].shape == (3, 11) and mono["identity_rel_err"] < 1e-8
    assert mono["max_rel_increase"] < 0
    rows = bx.weingarten_mc_table(5, 500, gen(1))
    assert len(rows) == len(bx.MOMENT_PATTERNS) and all(r["se"] > 0 for r in rows)
    t3 = bx.theorem3_one_step(6, 300, gen(2))
    assert t3["bound"] >= 1 and t3["ratio"] > t3["bound"] - 4 * t3["se"]
    loc = bx.local_decay(8, 3, 30, [5, 30], gen(3))
    assert loc["gaps"].shape == (3, 31) and 0 < loc["decay"] < 1
    one = bx.one_step_contraction(8, 300, gen(4))
    assert one["predicted"] == pytest.approx(0.8)


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_profile_code_path_tiny(profile):
    """Every call the chapter makes, with the profile's settings and tiny sizes: for `full`
    this exercises CIFAR-10 loading (or its MNIST-1D fallback) and the training path."""
    from gnelib.runs import registry
    law = registry.make_config("bn_rate_law", profile)
    train = registry.make_config("bn_train_depths", profile)
    depths = [2, 4, 6]
    g = log_grad_norm_vs_depth(depths, 6, 6, seeds=2, seed=0, init="gaussian")
    assert g.shape == (2, 3) and np.isfinite(g).all()
    for al in law.alphas[:2]:
        p = layer_gradient_profile(8, 6, 6, norm="torch", activation="sin", gain=al, seeds=2)
        assert p.shape == (2, 8) and np.isfinite(p).all()
    data, name = bx.load_bn_training_data(train.train_data, gen(5))
    assert name in bx.TRAIN_DATA
    small = data.subset(64, 32)
    res = bx.train_bn_depths(small, [2, 4], 8, 3, train.lr, gen(6), activation="tanh",
                             gain_exponent=train.gain_exponent)
    assert [r.depth for r in res] == [2, 4]
    for r in res:
        assert len(r.loss) == 3 and not r.diverged
        assert len(r.weight_gaps) == r.depth - 1 and np.isfinite(r.middle_gap)
        assert len(r.weight_change) == r.depth - 1 and np.all(r.weight_change > 0)
        assert 0 <= r.train_acc <= 1 and 0 <= r.test_acc <= 1
    with pytest.raises(ValueError, match="train_data"):
        bx.load_bn_training_data("mnist", gen(0))


def test_gaussian_gap_growth_identity_and_bartlett():
    """Our Proposition: phi' - phi = -log det(W W^T)/d + mean_j log r_j pathwise, and
    E[-log det(W W^T)/d] = Delta_d (Bartlett); the log r term is <= 0 on average (Jensen)."""
    d = 12
    r = bx.gaussian_gap_growth(d, 400, 1, gen(7))
    assert r["identity_abs_err"] < 1e-9
    ld = r["logdet_term"].ravel()
    assert abs(ld.mean() - bx.gaussian_gap_rate(d)) < 4 * ld.std(ddof=1) / math.sqrt(ld.size)
    lr = r["logr_term"].ravel()
    assert lr.mean() < 0
    from scipy.special import digamma
    assert bx.gaussian_gap_rate(1) == pytest.approx(-math.log(2) - digamma(0.5))  # E log chi2_1


# ----------------------------------------------------------- registered experiments

def _store_roundtrip(tmp_path, name, config):
    from gnelib.runs.store import Store
    store = Store(tmp_path)
    rec, cached = store.run(name, config)
    assert cached is False
    again, cached = Store(tmp_path).run(name, config)
    assert cached is True and again == rec
    return rec["result"]


def test_registered_bn_depth_sweep(tmp_path):
    from gnelib.runs import registry as experiments
    exp = experiments.get("bn_depth_sweep")
    for p in ("smoke", "book", "full"):
        c = experiments.make_config("bn_depth_sweep", p)
        assert c.width == c.batch and isinstance(c.depths, tuple)
    cfg = bx.BNDepthSweepConfig(depths=(2, 4), width=6, batch=6, init="gaussian", seeds=2, seed=3)
    res = exp(cfg)
    assert set(res) == {"depths", "log_grad_norm"} and res["depths"] == [2, 4]
    direct = log_grad_norm_vs_depth([2, 4], 6, 6, init="gaussian", seeds=2, seed=3)
    np.testing.assert_array_equal(res["log_grad_norm"], direct)
    stored = _store_roundtrip(tmp_path, "bn_depth_sweep", cfg)
    np.testing.assert_array_equal(np.asarray(stored["log_grad_norm"], dtype=float), direct)
    with pytest.raises(ValueError, match="depths"):
        bx.BNDepthSweepConfig(depths=(2, -1))
    assert experiments.make_config("bn_depth_sweep", "smoke", {"depths": "2,4"}).depths == (2, 4)


def test_registered_bn_rate_law(tmp_path):
    from gnelib.runs import registry as experiments
    assert 1.0 in experiments.make_config("bn_rate_law", "book").alphas
    cfg = bx.BNRateLawConfig(alphas=(0.5, 1.0), activation="sin", depth=6, width=6, seeds=2, seed=7)
    res = experiments.get("bn_rate_law")(cfg)
    assert set(res) == {"alphas", "profiles"} and res["alphas"] == [0.5, 1.0]
    assert res["profiles"].shape == (2, 2, 6)
    for j, al in enumerate([0.5, 1.0]):  # gain j is seeded by seed + j
        direct = layer_gradient_profile(6, 6, 6, norm="torch", activation="sin", gain=al,
                                        seeds=2, seed=7 + j)
        np.testing.assert_array_equal(res["profiles"][j], direct)
    stored = _store_roundtrip(tmp_path, "bn_rate_law", cfg)
    np.testing.assert_array_equal(np.asarray(stored["profiles"], dtype=float), res["profiles"])
    with pytest.raises(ValueError, match="alphas"):
        bx.BNRateLawConfig(alphas=(0.5, -1.0))


def test_registered_bn_train_depths(tmp_path):
    from gnelib.runs import registry as experiments
    c = experiments.make_config("bn_train_depths", "full")
    assert (c.train_data, c.width) == ("cifar10", 100)
    cfg = bx.BNTrainDepthsConfig(depths=(2, 4), width=8, steps=3, seed=6, data_seed=5)
    res = experiments.get("bn_train_depths")(cfg)
    assert set(res) == {"data", "num_classes", "runs"} and res["data"] == "gaussian_mixture"
    assert [r["depth"] for r in res["runs"]] == [2, 4]
    stored = _store_roundtrip(tmp_path, "bn_train_depths", cfg)
    back = [bx.train_result_from_record(r) for r in stored["runs"]]
    for r, b in zip(res["runs"], back):
        assert set(r) == {"depth", "train_acc", "test_acc", "test_acc_eval_mode", "loss",
                          "weight_gaps", "diverged", "weight_change"}
        assert len(b.loss) == 3 and not b.diverged and len(b.weight_gaps) == b.depth - 1
        np.testing.assert_array_equal(b.weight_gaps, r["weight_gaps"])
        assert b.loss == r["loss"] and b.train_acc == r["train_acc"]
    with pytest.raises(ValueError, match="train_data"):
        bx.BNTrainDepthsConfig(train_data="mnist")


def test_full_profile_dry_run():
    """Every registered experiment of the chapter at its `full` configuration, shrunk to a
    step: the paper-scale code paths (widths, depth lists, data) run on a CPU in seconds."""
    import dataclasses
    from gnelib.runs import registry
    shrink = {"bn_depth_sweep": dict(depths=(2, 3), width=8, batch=8, seeds=2),
              "bn_conditions": dict(depths=(2, 3), width=6, batches=(4, 6, 8), distinct=(3, 6),
                                    mr_width=4, seeds=2, mr_seeds=2),
              "bn_shaping": dict(depths=(2, 3), width=6, seeds=2),
              "bn_rate_law": dict(depth=5, width=6, seeds=2),
              "bn_exponent_rate": dict(depths=(12,), width=6, seeds=2),
              "bn_yang_rates": dict(widths=(16, 24, 32), seeds=(2, 2, 2), depth=4),
              "bn_train_depths": dict(depths=(2, 3), width=8, steps=2),
              "bn_train_activations": dict(depth=3, width=8, epochs=1, n_train=64, seeds=2,
                                           max_steps=2)}
    for name, small in shrink.items():
        full = registry.make_config(name, "full")
        keep = {k: v for k, v in dataclasses.asdict(full).items() if k not in small}
        cfg = type(full)(**keep, **small)
        res = registry.get(name)(cfg)
        assert isinstance(res, dict) and res, name


def test_extrapolate_inverse_width_and_moment_draws():
    from gnelib.book import extrapolate_inverse_width
    r, se, a, a_se = extrapolate_inverse_width([100, 200], [0.9, 0.95], [0.01, 0.01])
    assert r == pytest.approx(1.0) and a == pytest.approx(-10.0)
    assert se == pytest.approx(math.hypot(2 * 0.01, 0.01))
    assert a_se == pytest.approx(math.hypot(0.01, 0.01) / (1 / 100 - 1 / 200))
    assert extrapolate_inverse_width([100, 200], [0.9, 0.95], [0, 0])[:3] == pytest.approx((1.0, 0.0, -10.0))
    r3 = extrapolate_inverse_width([100, 200, 400], [0.9, 0.95, 0.975], [0.01] * 3)
    assert r3[0] == pytest.approx(1.0) and r3[1] < se
    m = bx.haar_moment_draws(5, 400, gen(9))
    assert m["values"].shape == (400, len(bx.MOMENT_PATTERNS)) and m["exact"][0] == 0.0
    with pytest.raises(ValueError, match="too small"):
        bx.haar_moment_draws(3, 10, gen(9))
