"""jacobian_moments against linear maps with known singular values, the materialised
Jacobian, and bad input."""
import math

import numpy as np
import pytest
import torch

import gnelib


def linear_map(singular_values, n_in, seed):
    """f(x) = J x with J = U diag(s) V^T, U and V Haar orthogonal."""
    g = torch.Generator().manual_seed(seed)
    n_out = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(n_out, n_out, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=g, dtype=torch.float64))
    s = torch.zeros(n_out, n_in, dtype=torch.float64)
    s[range(n_out), range(n_out)] = torch.as_tensor(singular_values, dtype=torch.float64)
    jac = u @ s @ v.T
    return jac, (lambda x: jac @ x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_map_within_three_standard_errors(seed):
    rng = np.random.default_rng(seed)
    sv = rng.uniform(0.2, 2.0, size=60)
    jac, f = linear_map(sv, 80, seed)
    x = torch.randn(80, dtype=torch.float64)
    m = gnelib.jacobian_moments(f, x, probes=400, generator=torch.Generator().manual_seed(seed))
    phi1, phi2 = (sv**2).sum() / 60, (sv**4).sum() / 60
    assert m.n_in == 80 and m.n_out == 60 and m.probes == 400
    assert abs(m.phi1 - phi1) < 3 * m.phi1_se, (m.phi1, phi1, m.phi1_se)
    assert abs(m.phi2 - phi2) < 3 * m.phi2_se, (m.phi2, phi2, m.phi2_se)
    # the standard error is a real one: it matches the exact sd of Hutchinson's estimator,
    # Var(v^T A v) = 2 tr(A^2) for Gaussian v, to within its own sampling error (~ 1/sqrt(2P))
    exact_se1 = math.sqrt(2 * (sv**4).sum()) / 60 / math.sqrt(400)
    assert abs(m.phi1_se / exact_se1 - 1) < 4 / math.sqrt(2 * 400)


def test_exact_path_equals_known_traces_to_float64_precision():
    sv = np.linspace(0.1, 3.0, 12)
    jac, f = linear_map(sv, 15, 7)
    m = gnelib.jacobian_moments(f, torch.randn(15, dtype=torch.float64), exact=True)
    assert m.phi1 == pytest.approx((sv**2).sum() / 12, rel=1e-12)
    assert m.phi2 == pytest.approx((sv**4).sum() / 12, rel=1e-12)
    assert m.phi1_se == 0 and m.probes == 0


def test_exact_path_equals_materialised_jacobian_of_a_nonlinear_block():
    g = torch.Generator().manual_seed(3)
    block = gnelib.Block(10, 7, "tanh").double()
    x = torch.randn(4, 10, generator=g, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(block, x).reshape(28, 40)
    a = jac @ jac.T
    m = gnelib.jacobian_moments(block, x, exact=True)
    assert m.phi1 == pytest.approx(torch.trace(a).item() / 28, rel=1e-12)
    assert m.phi2 == pytest.approx(torch.trace(a @ a).item() / 28, rel=1e-12)
    assert m.relative_variance == pytest.approx(m.phi2 / m.phi1**2 - 1, rel=1e-12)


def test_probes_of_a_batched_block_average_the_per_sample_jacobians():
    g = torch.Generator().manual_seed(4)
    block = gnelib.Block(16, 16, "relu").double()
    x = torch.randn(8, 16, generator=g, dtype=torch.float64)
    exact = gnelib.jacobian_moments(block, x, exact=True)
    est = gnelib.jacobian_moments(block, x, probes=300, generator=g)
    assert abs(est.phi1 - exact.phi1) < 4 * est.phi1_se
    assert abs(est.phi2 - exact.phi2) < 4 * est.phi2_se


def test_same_generator_seed_gives_identical_estimates():
    block = gnelib.Block(8, 8, "relu").double()
    x = torch.randn(3, 8, dtype=torch.float64)
    a = gnelib.jacobian_moments(block, x, probes=5, generator=torch.Generator().manual_seed(1))
    b = gnelib.jacobian_moments(block, x, probes=5, generator=torch.Generator().manual_seed(1))
    assert a == b


def test_stateful_block_falls_back_from_vmap():
    bn = torch.nn.BatchNorm1d(6).double().train()
    x = torch.randn(10, 6, dtype=torch.float64)
    exact = gnelib.jacobian_moments(bn, x, exact=True)
    est = gnelib.jacobian_moments(bn, x, probes=60, generator=torch.Generator().manual_seed(0))
    assert abs(est.phi1 - exact.phi1) < 4 * est.phi1_se


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_rejected(bad):
    x = torch.zeros(4, dtype=torch.float64)
    x[1] = bad
    with pytest.raises(ValueError, match="x must be finite"):
        gnelib.jacobian_moments(lambda t: 2 * t, x)


def test_mismatched_shapes_are_reported_with_the_input_shape():
    block = gnelib.Block(5, 5, "relu")
    with pytest.raises(ValueError, match=r"x of shape \(2, 3\)"):
        gnelib.jacobian_moments(block, torch.zeros(2, 3))


@pytest.mark.parametrize("probes", [0, -3, 2.5])
def test_probes_must_be_a_positive_integer(probes):
    with pytest.raises(ValueError, match="probes"):
        gnelib.jacobian_moments(lambda t: t, torch.zeros(3), probes=probes)


def test_gradient_norms_are_per_weight_tensor_in_layer_order():
    model = gnelib.MLP(4, 6, 3, 2, init="he", generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 4)
    loss = model(x).pow(2).sum()
    norms = gnelib.gradient_norms(model, loss)
    assert list(norms) == ["blocks.0.linear.weight", "blocks.1.linear.weight", "blocks.2.linear.weight", "head.weight"]
    loss.backward()
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(p.grad.pow(2).sum().item(), rel=1e-6)


def test_activation_gradient_norms_match_autograd():
    model = gnelib.MLP(5, 5, 3, 3, init="he", generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    g = gnelib.activation_gradient_norms(model.blocks, model.head, x, y)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    (gx,) = torch.autograd.grad(loss, x)
    assert len(g) == 4
    assert g[0] == pytest.approx(gx.pow(2).sum().item(), rel=1e-12)
