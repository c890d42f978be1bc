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
        assert v["slope_from"] in v["depths"] and v["slope_from"] < max(v["depths"]), p
        assert 1.0 in v["rate_alphas"], p
        assert v["local_window"][1] <= v["local_depth"], p
        assert len(v["local_widths"]) >= 2 and len(v["train_depths"]) >= 2, p
        assert len(v["yang_widths"]) == len(v["yang_seeds"]) == 2, p
        assert v["yang_widths"][0] < v["yang_widths"][1], p


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
    S = SIZES["bn"][profile]
    depths = [2, 4, 6]
    g = log_grad_norm_vs_depth(depths, 6, 6, seeds=2, seed=0, init="gaussian")
    assert g.shape == (2, 3) and np.isfinite(g).all()
    for al in S["rate_alphas"][:2]:
        p = layer_gradient_profile(8, 6, 6, norm="torch", activation="sin", gain=al, seeds=2)
        assert p.shape == (2, 8) and np.isfinite(p).all()
    data, name = bx.load_bn_training_data(S["train_data"], gen(5))
    assert name in bx.TRAIN_DATA
    small = data.subset(64, 32)
    res = bx.train_bn_depths(small, [2, 4], 8, 3, S["train_lr"], gen(6), activation="tanh",
                             gain_exponent=S["gain_exponent"])
    assert [r.depth for r in res] == [2, 4]
    for r in res:
        assert len(r.loss) == 3 and not r.diverged
        assert len(r.weight_gaps) == r.depth - 1 and np.isfinite(r.middle_gap)
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
        assert [int(v) for v in c.depths.split(",")] == SIZES["bn"][p]["depths"]
        assert c.width == c.batch == SIZES["bn"][p]["width"] and c.seeds == SIZES["bn"][p]["seeds"]
    cfg = bx.BNDepthSweepConfig(depths="2,4", width=6, batch=6, init="gaussian", seeds=2, seed=3)
    res = exp(cfg)
    assert set(res) == {"depths", "log_grad_norm"} and res["depths"] == [2, 4]
    direct = log_grad_norm_vs_depth([2, 4], 6, 6, init="gaussian", seeds=2, seed=3)
    np.testing.assert_array_equal(res["log_grad_norm"], direct)
    stored = _store_roundtrip(tmp_path, "bn_depth_sweep", cfg)
    np.testing.assert_array_equal(np.asarray(stored["log_grad_norm"], dtype=float), direct)
    with pytest.raises(ValueError, match="depths"):
        bx.BNDepthSweepConfig(depths="2,x")


def test_registered_bn_rate_law(tmp_path):
    from gnelib.runs import registry as experiments
    assert experiments.make_config("bn_rate_law", "book").alphas == ",".join(
        f"{a:g}" for a in SIZES["bn"]["book"]["rate_alphas"])
    cfg = bx.BNRateLawConfig(alphas="0.5,1", activation="sin", depth=6, width=6, seeds=2, seed=7)
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
        bx.BNRateLawConfig(alphas="0.5,-1")


def test_registered_bn_train_depths(tmp_path):
    from gnelib.runs import registry as experiments
    S = SIZES["bn"]["book"]
    c = experiments.make_config("bn_train_depths", "book")
    assert (c.train_data, c.width, c.steps, c.lr) == (S["train_data"], S["train_width"],
                                                      S["train_steps"], S["train_lr"])
    cfg = bx.BNTrainDepthsConfig(depths="2,4", width=8, steps=3, seed=6, data_seed=5)
    res = experiments.get("bn_train_depths")(cfg)
    assert set(res) == {"data", "num_classes", "runs"} and res["data"] == "gaussian_mixture"
    assert [r["depth"] for r in res["runs"]] == [2, 4]
    stored = _store_roundtrip(tmp_path, "bn_train_depths", cfg)
    back = [bx.train_result_from_record(r) for r in stored["runs"]]
    for r, b in zip(res["runs"], back):
        assert set(r) == {"depth", "train_acc", "test_acc", "test_acc_eval_mode", "loss",
                          "weight_gaps", "diverged"}
        assert len(b.loss) == 3 and not b.diverged and len(b.weight_gaps) == b.depth - 1
        np.testing.assert_array_equal(b.weight_gaps, r["weight_gaps"])
        assert b.loss == r["loss"] and b.train_acc == r["train_acc"]
    with pytest.raises(ValueError, match="train_data"):
        bx.BNTrainDepthsConfig(train_data="mnist")
