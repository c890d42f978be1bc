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


def test_registered_mlp_moments_and_store(tmp_path):
    """bdi_mlp_moments records, at each width and depth, the moments of mlp_moments' networks
    (same seeds); a Store run is written once and read back identically."""
    from gnelib.runs import registry as experiments
    from gnelib.runs.store import Store
    config = X.MLPMomentsConfig(widths=(6, 8), depths=(1, 3), init="orthogonal",
                                activation="leaky_relu", slope=0.3, gain=1.2, seeds=3, batch=2,
                                seed=1)
    result = experiments.get("bdi_mlp_moments")(config)
    for wi, w in enumerate((6, 8)):
        for di, d in enumerate((1, 3)):
            a = X.mlp_moments(w, d, "orthogonal", "leaky_relu", slope=0.3, gain=1.2, seeds=3,
                              batch=2, seed=1)
            assert result["phi"][wi][di] == pytest.approx(a[:, 0].tolist(), rel=1e-12)
            assert result["phi2"][wi][di] == pytest.approx(a[:, 1].tolist(), rel=1e-12)
    store = Store(tmp_path)
    first, cached = store.run("bdi_mlp_moments", config)
    assert cached is False and first["result"] == result
    second, cached = store.run("bdi_mlp_moments", config)
    assert cached is True and second == first
    assert X.rule_gain("leaky_relu", 0.3) == pytest.approx(math.sqrt(2 / 1.09))
    with pytest.raises(ValueError, match="activation"):
        X.MLPMomentsConfig(activation="tanh")


def test_registered_residual_and_selu():
    from gnelib.runs import registry as experiments
    config = X.ResidualMomentsConfig(width=8, blocks=3, p=2.0, seeds=3, batch=2, seed=1)
    result = experiments.get("bdi_residual_moments")(config)
    s = 3.0 ** -0.5
    a = X.residual_moments(8, 3, s, seeds=3, batch=2, seed=1)
    assert result["scale"] == pytest.approx(s) and result["phi"] == a[:, 0].tolist()
    sel = experiments.get("bdi_selu_moments")(X.SeluMomentsConfig(widths=(8, 10), depth=4, seeds=2,
                                                                   batch=2))
    assert len(sel["q"]) == 2 and len(sel["q"][0]) == 2 and len(sel["q"][0][0]) == 4
    assert len(sel["phi"][1]) == 2 and len(sel["pred_phi"][1][0]) == 2
    assert len(sel["act_phi"][0][0]) == 4 and len(sel["q_cond"][0][0][0]) == 2
    with pytest.raises(ValueError, match="p"):
        X.ResidualMomentsConfig(p=-1.0)


def test_registered_normalized_stack():
    """bdi_normalized_stack returns the block mean (blocks 2..depth) of normalized_stack_phi per
    (width, batch, draw), draws seeded 100·seed + d."""
    from gnelib.runs import registry as experiments
    config = X.NormalizedStackConfig(widths=(8,), batches=(16, 32), depth=3, norm="smn",
                                     centred=True, draws=2, seed=1)
    result = experiments.get("bdi_normalized_stack")(config)
    for bi, b in enumerate((16, 32)):
        assert result["phi"][0][bi] == pytest.approx(
            [X.normalized_stack_phi(8, b, 3, "smn", True, seed=100 + d)[1:].mean() for d in range(2)])
    with pytest.raises(ValueError, match="norm"):
        X.NormalizedStackConfig(norm="ln")


def test_registered_serial_gradients_and_store(tmp_path):
    """bdi_serial_gradients returns init_gradient_norms of the configured SerialNet (32 weight
    layers, one row per draw); a Store run is written once and read back identically."""
    from gnelib.runs import registry as experiments
    from gnelib.runs.store import Store
    config = X.SerialGradientsConfig(width=2, norm="smn", init="orthogonal",
                                     activation="leaky_relu", slope=0.3, image=4, batch=2,
                                     draws=2, seed=1)
    result = experiments.get("bdi_serial_gradients")(config)
    a = X.init_gradient_norms(
        lambda g: gnelib.SerialNet(width=2, norm="smn", init="orthogonal",
                                   activation="leaky_relu", slope=0.3, generator=g),
        2, (3, 4, 4), batch=2, seed=1)
    assert a.shape == (2, 32) and result["grad_sq_norms"] == a.tolist()
    store = Store(tmp_path)
    first, cached = store.run("bdi_serial_gradients", config)
    assert cached is False and first["result"] == result
    with pytest.raises(ValueError, match="norm"):
        X.SerialGradientsConfig(norm="ln")
    with pytest.raises(ValueError, match="norm"):
        X.ResNetGradientsConfig(norm="sws")


def test_sws_block_phi_scale_invariant():
    """sWS removes the raw weight scale exactly (same draw, same probes)."""
    a, pa = X.sws_block_phi(4, 0.1, True, size=6, probes=4)
    b, pb = X.sws_block_phi(4, 10.0, True, size=6, probes=4)
    assert a.phi1 == pytest.approx(b.phi1, rel=1e-10) and pa == pb
