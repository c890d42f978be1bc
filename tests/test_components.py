"""gnelib.probes.components: every realised entry of the component library agrees with its
closed form (exact entries to rounding, random ones within K = 5 standard errors over draws),
and a wrong closed form is noticed (the probe is not fed its own prediction)."""
import dataclasses

import numpy as np
import pytest

import gnelib.theory.moments as M
from gnelib.probes.components import component_probes, gram_moments, measure

PROBES = component_probes(n=8, units=1024, batch=16, mats=16)


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_matches_closed_form(name):
    probe = PROBES[name]
    got, pred = measure(probe, 24, seed=1)
    if probe.exact:
        np.testing.assert_allclose(got, pred, rtol=1e-9)
        return
    se = got.std(0, ddof=1) / np.sqrt(len(got))
    fixed = se == 0
    np.testing.assert_allclose(got[:, fixed], pred[:, fixed], rtol=1e-9)
    z = (got.mean(0) - pred[0])[~fixed] / se[~fixed]
    assert np.all(np.abs(z) < 5), (name, z)


def test_every_component_row_is_realised():
    """The chapter's claim: every row is checked here, except the residual (a finite-width
    term the addition theorem drops) and the large-c orthogonal conv kernel, which the chapter
    checks in their own sections."""
    left = set(M.COMPONENTS) - {p.row for p in PROBES.values()}
    assert left == {"residual x + F(x)", "orthogonal conv kernel, K taps (large c)"}


def test_gram_moments_of_a_stack_is_the_mean():
    import torch
    j = torch.randn(5, 3, 4, dtype=torch.float64)
    each = np.array([gram_moments(x) for x in j])
    np.testing.assert_allclose(gram_moments(j), each.mean(0), rtol=1e-12)


def test_a_wrong_prediction_is_far_outside_the_noise():
    """Weight normalisation's finite-size term (m - 1)/n replaced by m/n: the probe's spread is
    well below that 1/n effect at n = 8."""
    probe = PROBES["weight norm"]
    got, _ = measure(probe, 24, seed=2)
    wrong = M.Moments(2.25, 2.25**2 * (1 + 8 / 8))
    se = got[:, 1].std(ddof=1) / np.sqrt(len(got))
    assert abs(got[:, 1].mean() - wrong.phi2) / se > 10
