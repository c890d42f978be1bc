"""Tests of gnelib.runs.pws (the registered experiments of the PWS chapter) and of
gnelib.nn.kernelmlp (the arms of the collapse experiment): equivalence with NormMLP,
independence of replicas, the exact zero of the shift path, configuration validation, store
round trips and a dry run of every ``full`` configuration."""
import math

import numpy as np
import pytest
import torch

from gnelib.data import teacher_data
from gnelib.nn.kernelmlp import ARMS, KernelMLP, arm_gain
from gnelib.nn.normnets import NormMLP
from gnelib.probes.variance import backward_forward_gains, transmission_records
from gnelib.runs import pws as xp
from gnelib.runs import registry
from gnelib.runs.store import Store
from gnelib.theory.variance import holding_alpha, init_gains


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(s=0):
    return torch.Generator().manual_seed(s)


@pytest.mark.parametrize("arm", ["none", "centre", "pws", "wn"])
def test_kernel_mlp_equals_norm_mlp_with_the_same_weights(arm):
    km = KernelMLP(12, 8, 4, 5, arm=arm, gains="preserving", eps=1e-5, generator=_gen(1)).double()
    norm = {"none": "none", "centre": "centre", "pws": "pws", "wn": "wn"}[arm]
    nm = NormMLP(12, 8, 4, 5, norm=norm, pws_kw=dict(eps=1e-5), generator=_gen(2)).double()
    raws = [km.v0[0]] + list(km.vs[0])
    with torch.no_grad():
        for l, unit in enumerate(nm.units):
            layer = unit.linear if hasattr(unit, "linear") else unit[0]
            if arm == "wn":
                layer.parametrizations.weight.original1.copy_(raws[l])
                layer.parametrizations.weight.original0.copy_(km.g[0, l].view(-1, 1))
            else:
                layer.weight.copy_(raws[l].view(layer.weight.shape))
            if arm == "pws":
                layer.alpha.copy_(km.alpha[0, l])
            layer.bias.copy_(torch.randn(8, generator=_gen(3 + l), dtype=torch.float64))
            km.bias[0, l].copy_(layer.bias)
        nm.head.weight.copy_(km.head_weight[0])
        nm.head.bias.copy_(km.head_bias[0])
    x = torch.randn(7, 12, generator=_gen(9), dtype=torch.float64)
    assert torch.allclose(km(x), nm(x), rtol=1e-12, atol=1e-13)


def test_ws_alpha_is_frozen_and_pws_alpha_learns():
    ws = KernelMLP(6, 4, 3, 3, arm="ws", generator=_gen())
    pws = KernelMLP(6, 4, 3, 3, arm="pws", generator=_gen())
    assert "alpha" not in dict(ws.named_parameters()) and "alpha" in dict(ws.named_buffers())
    assert "alpha" in dict(pws.named_parameters())
    assert float(ws.alpha[0, 0, 0]) == pytest.approx(float(holding_alpha()))


def test_replicas_train_independently():
    data = teacher_data(256, 64, dim=10, classes=4, generator=_gen(5))
    data.x_train = data.x_train.double()
    lrs = (0.01, 0.3, 5.0)
    m = KernelMLP(10, 8, 5, 4, arm="pws", generator=_gen(6), replicas=3).double()
    h = xp.train_replicas(m, data, 30, 16, lrs, generator=_gen(7))
    for r, lr in enumerate(lrs):
        one = KernelMLP(10, 8, 5, 4, arm="pws", generator=_gen(6)).double()
        h1 = xp.train_replicas(one, data, 30, 16, (lr,), generator=_gen(7))
        assert h1["diverged_step"][0] == h["diverged_step"][r]
        a = np.array([row[r] for row in h["loss"]])[:len(h1["loss"])]
        b = np.array([row[0] for row in h1["loss"]])
        np.testing.assert_allclose(a, b, rtol=1e-9, equal_nan=True)


def test_seed_ensemble_trains_every_replica_as_a_run_of_its_own():
    """Seeds joined by KernelMLP.concat, each with its own mini-batches, and replicas dropped as
    they diverge: every replica's losses and divergence step are those of a run alone."""
    data = teacher_data(256, 64, dim=10, classes=4, generator=_gen(5))
    data.x_train = data.x_train.double()
    lrs, seeds = (0.01, 0.3, 3.0), (11, 12)
    models = [KernelMLP(10, 8, 5, 4, arm="centre", generator=_gen(s), replicas=3).double() for s in seeds]
    gens = [_gen(100 + s) for s in seeds]
    h = xp.train_replicas(KernelMLP.concat(models), data, 30, 16, lrs * 2, generator=gens)
    assert any(d is not None for d in h["diverged_step"]) and any(d is None for d in h["diverged_step"])
    for j, s in enumerate(seeds):
        for i, lr in enumerate(lrs):
            one = KernelMLP(10, 8, 5, 4, arm="centre", generator=_gen(s)).double()
            h1 = xp.train_replicas(one, data, 30, 16, (lr,), generator=_gen(100 + s))
            r = 3 * j + i
            assert h1["diverged_step"][0] == h["diverged_step"][r]
            a = np.array([row[r] for row in h["loss"]])[:len(h1["loss"])]
            np.testing.assert_allclose(a, [row[0] for row in h1["loss"]], rtol=1e-10, equal_nan=True)


def test_stability_record_holds_each_seed_as_a_run_of_its_own():
    cfg = registry.make_config("pws_stability", "smoke", dict(
        arm="pws", steps=25, depth=4, width=8, seeds=3, seed=1, lrs=(0.05, 0.8, 20.0)))
    r = xp.pws_stability(cfg)
    data = xp._teacher(cfg)
    assert r["seeds"] == xp.block_seeds(1, 3) == [3, 4, 5]
    for j, s in enumerate(r["seeds"]):
        for i, lr in enumerate(cfg.lrs):
            g = _gen(s)
            m = KernelMLP(cfg.in_dim, 8, 4, cfg.classes, arm="pws", eps=cfg.eps, head_std=0.01, generator=g)
            h = xp.train_replicas(m, data, 25, cfg.batch, (lr,), cfg.momentum, generator=g)
            assert h["diverged_step"][0] == r["diverged_step"][j][i]
            np.testing.assert_allclose(h["loss"][0][0], r["first_loss"][j][i], rtol=1e-5)
        assert r["largest_stable_lr"][j] == xp.largest_stable_lr(cfg.lrs, r["diverged_step"][j])


def test_ws_kernel_of_the_mlp_is_pws_kernel():
    from gnelib.nn.convs import pws_kernel

    m = KernelMLP(6, 5, 3, 3, arm="pws", eps=1e-3, generator=_gen(4)).double()
    with torch.no_grad():
        m.alpha.uniform_(0.5, 2.0, generator=_gen(5))
        m.vs.add_(0.3)
    ks = m.kernels()
    raws = [m.v0[0]] + list(m.vs[0])
    for l, (k, v) in enumerate(zip(ks, raws)):
        torch.testing.assert_close(k[0], pws_kernel(v, m.alpha[0, l], 1e-3, v.shape[1]),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("arm", ["centre", "ws", "pws"])
def test_shift_path_is_zero_by_construction(arm):
    m = KernelMLP(10, 16, 4, 3, arm=arm, generator=_gen(8)).double()
    with torch.no_grad():
        m.vs.add_(torch.randn(m.vs.shape[:-1] + (1,), generator=_gen(9), dtype=torch.float64))
    recs = transmission_records(m, torch.randn(32, 10, generator=_gen(10), dtype=torch.float64))
    assert max(r["mean_S2"] for r in recs) < 1e-26
    plain = KernelMLP(10, 16, 4, 3, arm="none", generator=_gen(8)).double()
    recs = transmission_records(plain, torch.randn(32, 10, generator=_gen(10), dtype=torch.float64))
    assert min(r["shift"] for r in recs) > 0


def test_transmission_terms_add_up_for_uncorrelated_inputs():
    """Theorem pws-transmission (a) on the first layer fed i.i.d. inputs: the three paths add
    up to the measured second moment within sampling error (4 standard errors)."""
    m = KernelMLP(64, 32, 1, 3, arm="none", generator=_gen(11)).double()
    with torch.no_grad():
        m.v0.add_(0.05)
        m.bias.normal_(generator=_gen(12))
    x = torch.relu(torch.randn(100_000, 64, generator=_gen(13), dtype=torch.float64))
    r = transmission_records(m, x)[0]
    _, pre, _ = m.trace(x)
    per = pre[0][0].pow(2).mean(1)
    se = per.std().item() / math.sqrt(per.numel())
    assert abs(r["centred"] + r["shift"] + r["bias"] - r["q"]) < 4 * se


@pytest.mark.parametrize("gains", ["preserving", "decaying"])
def test_initial_gains_of_arms_match_proposition(gains):
    """Forward gains at initialisation, pooled over seeds, against init_gains (4 SE)."""
    for arm in ("centre", "pws"):
        vals = []
        for s in range(6):
            m = KernelMLP(64, 64, 8, 10, arm=arm, gains=gains, eps=0.0, generator=_gen(20 + s))
            r = backward_forward_gains(m, torch.randn(256, 64, generator=_gen(40 + s)), _gen(60 + s))
            vals.append(r["forward"][0, 1:].mean())
        vals = np.array(vals)
        pred = init_gains(arm, arm_gain(arm, gains), 64)[0]
        assert abs(vals.mean() - pred) < 4 * vals.std(ddof=1) / math.sqrt(vals.size) + 1e-12


def test_init_gains_table():
    for arm in ARMS:
        fwd, bwd = init_gains(arm, arm_gain(arm, "preserving"), math.inf)
        assert fwd == pytest.approx(1.0)
        fwd, _ = init_gains(arm, arm_gain(arm, "decaying"), math.inf)
        assert fwd == pytest.approx(1 - 1 / math.pi)
    assert init_gains("pws", arm_gain("pws", "preserving"), math.inf)[1] == pytest.approx(1 / (1 - 1 / math.pi))
    with pytest.raises(ValueError, match="arm"):
        init_gains("bn", 1.0, 8)


def test_largest_stable_lr():
    lrs = (0.1, 0.2, 0.4)
    assert xp.largest_stable_lr(lrs, [None, None, None]) == 0.4
    assert xp.largest_stable_lr(lrs, [None, 5, None]) == 0.1
    assert xp.largest_stable_lr(lrs, [3, None, None]) == 0.0


def test_stability_reads_back_from_the_store(tmp_path):
    cfg = registry.make_config("pws_stability", "smoke",
                               dict(arm="pws", steps=5, depth=3, lrs=(0.01, 50.0), seed=3, seeds=2))
    store = Store(tmp_path)
    rec, cached = store.run("pws_stability", cfg)
    r = rec["result"]
    assert not cached and r["diverged_step"][0][0] is None and r["diverged_step"][0][1] is not None
    assert r["largest_stable_lr"] == [0.01, 0.01]
    rec2, cached2 = store.run("pws_stability", cfg)
    assert cached2 and rec2 == rec


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="arm"):
        xp.StabilityConfig(arm="bn")
    with pytest.raises(ValueError, match="increasing"):
        xp.StabilityConfig(lrs=(0.2, 0.1))
    with pytest.raises(ValueError, match="norm"):
        xp.BatchSizeConfig(norm="none")
    with pytest.raises(ValueError, match="arm"):
        xp.ConvNetConfig(arm="bn")


@pytest.mark.parametrize("name,over", [
    ("pws_stability", dict(steps=2, lrs=(0.01, 0.1))),
    ("pws_collapse", dict(steps=2)),
    ("pws_batch_size", dict(dry_run=True)),
    ("pws_convnet", dict(dry_run=True)),
])
def test_full_profile_dry_run(name, over):
    """Every ``full`` configuration builds and runs a step or two on the CPU (random tensors
    of CIFAR-10's shape where the data set is not on disk)."""
    cfg = registry.make_config(name, "full", over)
    r = registry.get(name)(cfg)
    assert isinstance(r, dict) and r


def test_centred_forward_gain_carries_its_finite_width_factor():
    """At width 8 centring keeps (n-1)/n = 7/8 of the centred path (proposition pws-init-gains):
    the measured forward gain of the centred arm, pooled over seeds, matches the finite-n value
    within 4 standard errors and is more than 4 standard errors from the n → ∞ value."""
    n, vals = 8, []
    for s in range(40):
        m = KernelMLP(n, n, 12, 4, arm="centre", gains="decaying", eps=0.0, generator=_gen(300 + s))
        r = backward_forward_gains(m, torch.randn(512, n, generator=_gen(400 + s)), _gen(500 + s))
        vals.append(r["forward"][0, 1:].mean())
    vals = np.array(vals)
    se = vals.std(ddof=1) / math.sqrt(vals.size)
    pred = init_gains("centre", arm_gain("centre", "decaying"), n)[0]
    assert abs(vals.mean() - pred) < 4 * se
    assert abs(vals.mean() - init_gains("centre", arm_gain("centre", "decaying"), math.inf)[0]) > 4 * se


def test_standardised_forward_gain_is_exact_at_small_width():
    """At width 4 the WS/PWS forward gain E q_(l+1) / E q_l is ws_relu_forward_gain(4) =
    0.917 (1 - 1/pi), not 1 - 1/pi (pre-activations are coordinates of a sphere, not
    Gaussians): the ratio of means over seeds (jackknife), within 4 SE of the finite-n value and
    more than 4 SE from the n -> inf value."""
    from gnelib.book import jackknife
    from gnelib.theory.variance import ws_relu_forward_gain
    n, qs = 4, []
    for s in range(512):
        m = KernelMLP(64, n, 10, 10, arm="pws", gains="preserving", eps=0.0, generator=_gen(9000 + s))
        qs.append(backward_forward_gains(m, torch.randn(128, 64, generator=_gen(9500 + s)), _gen(9900 + s))["q"][0])
    a2 = arm_gain("pws", "preserving") ** 2
    est, se = jackknife(np.array(qs), lambda q: np.mean(q[:, 2:].mean(0) / q[:, 1:-1].mean(0)) / a2)
    assert abs(est - ws_relu_forward_gain(n)) < 4 * se
    assert abs(est - (1 - 1 / math.pi)) > 4 * se


def test_ws_forward_gain_limits():
    from gnelib.theory.variance import ws_relu_forward_gain
    assert ws_relu_forward_gain(2) == pytest.approx(0.5)  # rows ±(1, -1): |x| is the whole scale
    assert ws_relu_forward_gain(math.inf) == pytest.approx(1 - 1 / math.pi)
    m = 10_000
    assert ws_relu_forward_gain(m + 1) == pytest.approx(1 - (1 + 1 / (2 * m)) / math.pi, rel=1e-7)
    with pytest.raises(ValueError, match="n must be"):
        ws_relu_forward_gain(1)


@pytest.mark.parametrize("arm", ["wn", "none"])
def test_backward_gains_of_arms_match_proposition(arm):
    """Backward gains at initialisation, pooled over seeds, against init_gains (4 SE) at
    width 64: only the squared kernel entries count for a zero-mean gradient, n/2 · mean K²
    (a²/2 for WN, whose filters have norm a; a² for He kernels). The standardised arms (WS,
    PWS) are left out: at width 64 they measure about 1 % below the table's a², an O(1/n) term
    the table does not carry (open)."""
    n, vals = 64, []
    for s in range(16):
        m = KernelMLP(n, n, 8, 4, arm=arm, gains="preserving", eps=0.0, generator=_gen(600 + s))
        r = backward_forward_gains(m, torch.randn(256, n, generator=_gen(700 + s)), _gen(800 + s))
        vals.append(r["backward"][0, 1:-1].mean())
    vals = np.array(vals)
    se = vals.std(ddof=1) / math.sqrt(vals.size)
    assert abs(vals.mean() - init_gains(arm, arm_gain(arm, "preserving"), n)[1]) < 4 * se


def test_transmission_records_measure_the_two_parts_literally():
    """y = S x̄ + (y - S x̄): the records' measured paths are the mean squares of the two parts
    (exact), and at fan-in 8 with i.i.d. inputs they match the predicted paths over seeds."""
    m = KernelMLP(8, 16, 2, 4, arm="none", gains="preserving", eps=0.0, generator=_gen(77)).double()
    x = torch.relu(torch.randn(512, 8, generator=_gen(78), dtype=torch.float64))
    rec = transmission_records(m, x)[0]
    k = m.kernels()[0][0].double()
    shift_part = x.mean(1, keepdim=True) * k.sum(1)
    centred_part = x @ k.T - shift_part
    assert rec["shift_measured"] == pytest.approx(shift_part.pow(2).mean().item(), rel=1e-12)
    assert rec["centred_measured"] == pytest.approx(centred_part.pow(2).mean().item(), rel=1e-12)
    from gnelib.runs.pws import transmission_split_draws
    d = transmission_split_draws(8, 512, 12)
    for path in ("centred", "shift"):
        r = d[f"{path}_measured"] / d[path]
        assert abs(r.mean() - 1) < 4 * r.std(ddof=1) / math.sqrt(r.size)


def test_gain_families_are_the_same_draws_rescaled():
    """The chapter tests one family: the other's measured gains are the same draws times the
    ratio of the arms' squared gains, exactly."""
    from gnelib.runs.pws import init_gain_draws
    d = init_gain_draws(8, 4, 16, 2, arms=("centre", "wn"))
    for arm in ("centre", "wn"):
        c = (arm_gain(arm, "decaying") / arm_gain(arm, "preserving")) ** 2
        np.testing.assert_allclose(d["decaying", arm]["q"][:, 1:] / d["decaying", arm]["q"][:, :-1],
                                   c * d["preserving", arm]["q"][:, 1:] / d["preserving", arm]["q"][:, :-1],
                                   rtol=1e-5)
