"""The finite-batch law of a standardised Gaussian feature (bn_output_second_moment) and the
per-layer probe that the BN chapter tests against it."""
import math

import numpy as np
import pytest

from gnelib.probes.bn_chain import layer_output_moments
from gnelib.theory.bn_rates import bn_output_second_moment


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("n", [3, 5, 8])
def test_second_moment_matches_monte_carlo_of_standardised_samples(n, centred):
    rng = np.random.default_rng(n)
    h = rng.normal(size=(400_000, n))
    if centred:
        h = h - h.mean(1, keepdims=True)
    z = h / np.sqrt((h**2).mean(1, keepdims=True))
    for act, f, alpha in (("tanh", np.tanh, 1.0), ("sin", np.sin, 0.7), ("relu", lambda x: np.maximum(x, 0), 1.3)):
        v = f(alpha * z) ** 2
        se = v.std() / math.sqrt(v.size / n)  # entries of one sample are dependent: count samples
        assert abs(v.mean() - bn_output_second_moment(act, alpha, n, centred)) < 4 * se


def test_limits_and_errors():
    assert bn_output_second_moment("identity", 1.7, 6) == pytest.approx(1.7**2)
    assert bn_output_second_moment("tanh", 1.0, 2) == pytest.approx(math.tanh(1.0) ** 2)
    gauss = np.mean(np.tanh(np.random.default_rng(0).normal(size=2_000_000)) ** 2)
    assert bn_output_second_moment("tanh", 1.0, 5000) == pytest.approx(gauss, abs=2e-3)
    with pytest.raises(ValueError, match="activation"):
        bn_output_second_moment("gelu", 1.0, 8)
    with pytest.raises(ValueError, match="batch"):
        bn_output_second_moment("tanh", 1.0, 1)


def test_layer_output_moments_shape_and_first_layer():
    m2 = layer_output_moments(16, 8, 3, "tanh", 0.4, draws=200, seed=1)
    assert m2.shape == (200, 3)
    se = m2[:, 0].std(ddof=1) / math.sqrt(200)
    assert abs(m2[:, 0].mean() - bn_output_second_moment("tanh", 1.0, 8)) < 4 * se
    with pytest.raises(ValueError, match="draws"):
        layer_output_moments(16, 8, 3, draws=0)
