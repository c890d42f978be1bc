"""The chapter's explicit Jacobian builders against jacobian_moments(exact=True) on the same net."""
import math

import pytest
import torch

import gnelib
from gnelib.runs import bdi as X


def _same_draw(width, batch, seed):
    gen = torch.Generator().manual_seed(seed * 1000)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    return gen, x


@pytest.mark.parametrize("init,act,slope", [("gaussian", "relu", 0.0),
                                            ("orthogonal", "leaky_relu", 0.3),
                                            ("gaussian", "selu", 0.0)])
def test_mlp_moments_exact(init, act, slope):
    width, depth, batch = 12, 3, 1
    got = X.mlp_moments(width, depth, init, act, slope=slope, gain=1.3, seeds=1, batch=batch)[0]
    gen, x = _same_draw(width, batch, 0)
    ws = [X._weight(width, init, 1.3, gen) for _ in range(depth)]
    act_fn = (torch.nn.SELU() if act == "selu"
              else (lambda h: torch.nn.functional.leaky_relu(h, slope)))

    def f(t):
        for w in ws:
            t = act_fn(t @ w.T)
        return t
    ref = gnelib.jacobian_moments(f, x, exact=True)
    assert got[0] == pytest.approx(ref.phi1, rel=1e-10)
    assert got[1] == pytest.approx(ref.phi2, rel=1e-10)


def test_residual_moments_exact():
    width, blocks, s = 10, 4, 0.7
    got = X.residual_moments(width, blocks, s, seeds=1, batch=1)[0]
    gen, x = _same_draw(width, 1, 0)
    ws = [(X._weight(width, "gaussian", math.sqrt(2), gen) * s,
           X._weight(width, "gaussian", math.sqrt(2), gen) * s) for _ in range(blocks)]

    def f(t):
        for w1, w2 in ws:
            t = t + torch.relu(t @ w1.T) @ w2.T
        return t
    ref = gnelib.jacobian_moments(f, x, exact=True)
    assert got[0] == pytest.approx(ref.phi1, rel=1e-10)
    assert got[1] == pytest.approx(ref.phi2, rel=1e-10)


def test_normalized_stack_phi_matches_frozen_statistics_jacobian():
    """normalized_stack_phi's closed form against jacobian_moments on one block with frozen stats."""
    width, batch = 16, 32
    phis = X.normalized_stack_phi(width, batch, 1, "bn", seed=3)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    w = X._weight(width, "gaussian", math.sqrt(2), gen)
    h = x @ w.T
    mu, sd = h.mean(0), h.var(0, unbiased=False).sqrt()
    ref = gnelib.jacobian_moments(lambda t: torch.relu((t @ w.T - mu) / sd), x, exact=True)
    assert phis[0] == pytest.approx(ref.phi1, rel=1e-10)


@pytest.mark.parametrize("name,config,direct", [
    ("bdi_mlp_moments",
     X.MLPMomentsConfig(width=8, depth=3, init="orthogonal", activation="leaky_relu", slope=0.3,
                        gain=1.2, seeds=3, batch=2, seed=1),
     lambda: X.mlp_moments(8, 3, "orthogonal", "leaky_relu", slope=0.3, gain=1.2, seeds=3,
                           batch=2, seed=1)),
    ("bdi_residual_moments",
     X.ResidualMomentsConfig(width=8, blocks=3, scale=0.6, seeds=3, batch=2, seed=1),
     lambda: X.residual_moments(8, 3, 0.6, seeds=3, batch=2, seed=1)),
])
def test_registered_moments_experiment_and_store(tmp_path, name, config, direct):
    """The registered experiment returns the per-seed moments of the direct function, and a
    Store run is written once and read back identically."""
    from gnelib.runs import registry as experiments
    from gnelib.runs.store import Store
    assert name in experiments.names()
    result = experiments.get(name)(config)
    assert set(result) == {"phi", "phi2", "relative_variance"}
    a = direct()
    assert result["phi"] == a[:, 0].tolist() and result["phi2"] == a[:, 1].tolist()
    assert result["relative_variance"] == pytest.approx(a[:, 1] / a[:, 0] ** 2 - 1, rel=1e-12)
    store = Store(tmp_path)
    first, cached = store.run(name, config)
    assert cached is False and first["result"] == result
    second, cached = store.run(name, config)
    assert cached is True and second == first


def test_registered_profiles_follow_sizes():
    """Profile defaults of the registered experiments are SIZES["bdi"] (one source of truth)."""
    from gnelib.runs import registry as experiments
    from gnelib.base.profiles import SIZES
    for profile, z in SIZES["bdi"].items():
        c = experiments.make_config("bdi_mlp_moments", profile)
        assert (c.width, c.depth, c.seeds, c.batch) == (z["mlp_width"], z["depths"][-1],
                                                        z["seeds"], z["batch"])
        r = experiments.make_config("bdi_residual_moments", profile)
        assert (r.width, r.seeds, r.batch) == (z["res_width"], z["res_seeds"], z["batch"])
    with pytest.raises(ValueError, match="activation"):
        X.MLPMomentsConfig(activation="tanh")
    with pytest.raises(ValueError, match="scale"):
        X.ResidualMomentsConfig(scale=0.0)


def test_registered_normalized_stack_and_store(tmp_path):
    """bdi_normalized_stack returns normalized_stack_phi per draw (seeds 100·seed + d); a
    Store run is written once and read back identically; its profile follows SIZES."""
    from gnelib.runs import registry as experiments
    from gnelib.base.profiles import SIZES
    from gnelib.runs.store import Store
    config = X.NormalizedStackConfig(width=8, batch=16, depth=3, norm="smn", centred=True,
                                     draws=2, seed=1)
    result = experiments.get("bdi_normalized_stack")(config)
    assert set(result) == {"phi"}
    assert result["phi"] == [X.normalized_stack_phi(8, 16, 3, "smn", True, seed=100 + d).tolist()
                             for d in range(2)]
    store = Store(tmp_path)
    first, cached = store.run("bdi_normalized_stack", config)
    assert cached is False and first["result"] == result
    second, cached = store.run("bdi_normalized_stack", config)
    assert cached is True and second == first
    for profile, z in SIZES["bdi"].items():
        c = experiments.make_config("bdi_normalized_stack", profile)
        assert (c.width, c.batch, c.depth, c.draws) == (z["stack_widths"][-1], z["stack_batch"],
                                                        z["stack_depth"], z["stack_seeds"])
    with pytest.raises(ValueError, match="norm"):
        X.NormalizedStackConfig(norm="ln")


def test_registered_serial_gradients_and_store(tmp_path):
    """bdi_serial_gradients returns init_gradient_norms of the configured SerialNet (32 weight
    layers, one row per draw); a Store run is written once and read back identically."""
    from gnelib.runs import registry as experiments
    from gnelib.base.profiles import SIZES
    from gnelib.runs.store import Store
    config = X.SerialGradientsConfig(width=2, norm="smn", init="orthogonal",
                                     activation="leaky_relu", slope=0.3, image=4, batch=2,
                                     draws=2, seed=1)
    result = experiments.get("bdi_serial_gradients")(config)
    assert set(result) == {"grad_sq_norms"}
    a = X.init_gradient_norms(
        lambda g: gnelib.SerialNet(width=2, norm="smn", init="orthogonal",
                                   activation="leaky_relu", slope=0.3, generator=g),
        2, (3, 4, 4), batch=2, seed=1)
    assert a.shape == (2, 32) and result["grad_sq_norms"] == a.tolist()
    store = Store(tmp_path)
    first, cached = store.run("bdi_serial_gradients", config)
    assert cached is False and first["result"] == result
    second, cached = store.run("bdi_serial_gradients", config)
    assert cached is True and second == first
    for profile, z in SIZES["bdi"].items():
        c = experiments.make_config("bdi_serial_gradients", profile)
        assert (c.width, c.image, c.batch, c.draws) == (z["net_width"], z["net_image"],
                                                        z["net_batch"], z["net_draws"])
    with pytest.raises(ValueError, match="norm"):
        X.SerialGradientsConfig(norm="ln")
