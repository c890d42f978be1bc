"""The training loop: it learns, and divergence is recorded rather than raised."""
import math

import pytest
import torch

import gnelib


def small_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    data = gnelib.gaussian_mixture(512, 256, dim=8, classes=3, separation=3.0, generator=g)
    model = gnelib.MLP(8, 32, 2, 3, init="he", generator=g)
    return data, model, g


def test_training_learns_a_separable_mixture():
    data, model, g = small_problem()
    _, acc0 = gnelib.evaluate(model, data.x_test, data.y_test)
    hist = gnelib.train(model, data, steps=150, batch_size=64, lr=0.05, generator=g, progress=False)
    assert not hist.diverged
    assert hist.final_accuracy > max(0.8, acc0 + 0.2)
    assert sum(hist.loss[-20:]) / 20 < sum(hist.loss[:20]) / 20


def test_divergence_is_recorded_not_raised():
    data, model, g = small_problem()
    hist = gnelib.train(model, data, steps=200, batch_size=64, lr=1e6, momentum=0.9,
                        generator=g, progress=False)
    assert hist.diverged
    assert 1 <= hist.diverged_step <= 200
    assert len(hist.loss) == hist.diverged_step - 1
    if hist.loss:
        assert hist.last_finite_loss == hist.loss[-1] and math.isfinite(hist.last_finite_loss)


def test_no_weight_decay_parameters_are_left_alone():
    data, model, g = small_problem()
    model.no_weight_decay = lambda: {"head.weight"}
    groups = gnelib.training._param_groups(model, 0.1)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"][0] is model.head.weight


@pytest.mark.parametrize("kw,match", [({"steps": 0}, "steps"), ({"lr": -1}, "lr"),
                                      ({"momentum": 1.0}, "momentum"), ({"batch_size": 0}, "batch_size")])
def test_bad_training_parameters(kw, match):
    data, model, g = small_problem()
    args = dict(steps=1, batch_size=8, lr=0.1, progress=False) | kw
    with pytest.raises(ValueError, match=match):
        gnelib.train(model, data, **args)
