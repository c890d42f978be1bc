"""circular_conv_moments (FFT) against the materialised Jacobian of a circular conv, and the
orthogonal-conv library entry against it."""
import math

import numpy as np
import pytest
import torch

import gnelib.theory.moments as M
from gnelib.nn.init import haar_orthogonal_
from gnelib.probes.conv_spectrum import circular_conv_moments
from gnelib.probes.jacobian import jacobian_moments


@pytest.mark.parametrize("dims", [1, 2])
def test_fft_moments_match_exact_jacobian(dims):
    g = torch.Generator().manual_seed(0)
    shape = (3, 2) + (3,) * dims
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    grid = 5
    conv = (torch.nn.functional.conv1d if dims == 1 else torch.nn.functional.conv2d)

    def f(x):
        pad = (1, 1) * dims
        return conv(torch.nn.functional.pad(x, pad, mode="circular"), w)
    x = torch.zeros((1, 2) + (grid,) * dims, dtype=torch.float64)
    ref = jacobian_moments(f, x, exact=True)
    p1, p2 = circular_conv_moments(w, grid)
    assert p1 == pytest.approx(ref.phi1, rel=1e-10)
    assert p2 == pytest.approx(ref.phi2, rel=1e-10)


def test_orthogonal_conv_entry_monte_carlo():
    c, rv = 16, []
    for d in range(60):
        w = torch.empty(c, c, 3, 3, dtype=torch.float64)
        haar_orthogonal_(w.view(c, -1), 1.0, torch.Generator().manual_seed(d))
        p1, p2 = circular_conv_moments(w, 8)
        assert p1 == pytest.approx(1.0, rel=1e-10)
        rv.append(p2 / p1**2 - 1)
    rv = np.array(rv)
    pred = M.orthogonal_conv(c, 3).relative_variance
    assert pred == pytest.approx(8 / 9, rel=1e-12)
    assert abs(rv.mean() - pred) < 4.5 * rv.std(ddof=1) / math.sqrt(len(rv))
