"""Tests of gnelib.nn.convs (PWS and the comparable weight-space layers) and gnelib.nn.normnets."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gnelib.nn.convs import (CentredConv1d, PWSConv1d, PWSConv2d, WSConv2d, pws_epsilon, pws_kernel,
                        wn_conv, ws_kernel)
from gnelib.nn.normnets import NORMS, NormMLP, PlainConvNet, PWSResNet
from gnelib.data import teacher_data
from gnelib.theory.variance import pws_gain


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_output_invariant_to_affine_change_of_v_at_eps_zero():
    g = _gen()
    layer = PWSConv2d(3, 5, 3, padding=1, eps=0.0, generator=g).double()
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    y0 = layer(x)
    with torch.no_grad():
        shift = torch.randn(5, 1, 1, 1, generator=g, dtype=torch.float64)
        layer.weight.mul_(3.7).add_(shift)  # a V_k + c_k 1, a > 0, per filter shifts
    y1 = layer(x)
    assert torch.allclose(y0, y1, rtol=1e-12, atol=1e-12)


def test_gradient_wrt_v_is_orthogonal_to_ones_and_to_centred_v():
    g = _gen(1)
    layer = PWSConv1d(4, 6, 5, eps=0.0, generator=g).double()
    x = torch.randn(8, 4, 20, generator=g, dtype=torch.float64)
    target = torch.randn(8, 6, 16, generator=g, dtype=torch.float64)
    (layer(x) * target).sum().backward()
    gv = layer.weight.grad.reshape(6, -1)
    w = layer.weight.detach().reshape(6, -1)
    scale = gv.abs().max()
    assert (gv.sum(1).abs() / scale).max() < 1e-13
    wc = w - w.mean(1, keepdim=True)
    assert ((gv * wc).sum(1).abs() / (scale * wc.norm(dim=1))).max() < 1e-12


def test_gradient_along_centred_v_with_eps_matches_closed_form():
    g = _gen(2)
    eps = 0.05
    layer = PWSConv1d(3, 4, 3, eps=eps, generator=g).double()
    x = torch.randn(5, 3, 12, generator=g, dtype=torch.float64)
    target = torch.randn(5, 4, 10, generator=g, dtype=torch.float64)
    k = layer.kernel()
    k.retain_grad()
    F.conv1d(x, k, layer.bias).mul(target).sum().backward()
    gk = k.grad.reshape(4, -1)
    w = layer.weight.detach().reshape(4, -1)
    n = w.shape[1]
    v = w.var(1, unbiased=False)
    what = (w - w.mean(1, keepdim=True)) / torch.sqrt(v + eps)[:, None]
    c = math.sqrt(2.0 / n)
    expected = c * layer.alpha.detach() * (gk * what).sum(1) * eps / (v + eps)
    got = (layer.weight.grad.reshape(4, -1) * (w - w.mean(1, keepdim=True))).sum(1)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)
    # d L / d alpha = c <G, w_hat>
    assert torch.allclose(layer.alpha.grad, c * (gk * what).sum(1), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cls,shape", [(PWSConv2d, (2, 3, 9, 9)), (PWSConv1d, (2, 3, 17))])
def test_eval_fold_is_bit_identical_to_plain_conv(cls, shape):
    g = _gen(3)
    layer = cls(3, 7, 3, stride=2, padding=1, eps=1e-3, generator=g)
    with torch.no_grad():
        layer.alpha.uniform_(0.5, 2.0, generator=g)
        layer.bias.normal_(generator=g)
    x = torch.randn(*shape, generator=g)
    layer.eval()
    kernel = layer.folded_kernel().clone()
    fn = F.conv2d if cls is PWSConv2d else F.conv1d
    assert torch.equal(layer(x), fn(x, kernel, layer.bias, 2, 1))
    # the folded kernel equals the training-mode kernel
    assert torch.equal(kernel, layer.kernel().detach())


def test_fold_refreshes_on_load_state_dict_and_train():
    g = _gen(4)
    a = PWSConv2d(2, 3, 3, generator=g)
    b = PWSConv2d(2, 3, 3, generator=_gen(5))
    x = torch.randn(1, 2, 6, 6, generator=g)
    a.eval()
    before = a(x)
    a.load_state_dict(b.state_dict())
    b.eval()
    assert torch.equal(a(x), b(x))
    assert not torch.equal(before, a(x))
    with torch.no_grad():
        a.alpha.mul_(2.0)  # in-place update after eval: refreshed too
    assert torch.equal(a(x) - a.bias.view(1, -1, 1, 1), 2 * (b(x) - b.bias.view(1, -1, 1, 1)))
    a.train()
    assert a._folded is None


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 1e-2])
@pytest.mark.parametrize("fan_in", [27, 576])
def test_eps_gain_of_filter_norm(eps, fan_in):
    cin = fan_in // 9
    layer = PWSConv2d(cin, 16, 3, eps=eps, generator=_gen(6)).double()
    w = layer.weight.detach().reshape(16, -1)
    v = w.var(1, unbiased=False).numpy()
    norms = layer.kernel().detach().reshape(16, -1).norm(dim=1).numpy()
    np.testing.assert_allclose(norms, math.sqrt(2) * pws_gain(v, eps), rtol=1e-12)


def test_relative_eps_and_parameter_errors():
    assert pws_epsilon(0.1, "relative", 200) == pytest.approx(0.1 * 2 / 200)
    assert pws_epsilon(0.1, "absolute", 200) == 0.1
    with pytest.raises(ValueError, match="eps_mode"):
        PWSConv2d(2, 2, eps_mode="percent")
    with pytest.raises(ValueError, match="fan"):
        PWSConv2d(2, 2, fan="fan_avg")
    with pytest.raises(ValueError, match="eps"):
        PWSConv2d(2, 2, eps=-1.0)
    with pytest.raises(ValueError, match="norm"):
        PlainConvNet(1, 8, 2, 10, norm="layer")
    with pytest.raises(ValueError, match="norm"):
        PWSResNet(norm="wn")


def test_data_dependent_alpha_gives_output_variance_two():
    g = _gen(7)
    layer = PWSConv2d(3, 8, 3, padding=1, data_init=True, generator=g)
    x = torch.randn(16, 3, 10, 10, generator=g) * 3 + 1
    y = layer(x)
    assert float(y.detach().var()) == pytest.approx(2.0, rel=1e-4)
    assert bool(layer.initialised)
    y2 = layer(x)  # second call: no re-initialisation
    assert torch.allclose(y, y2)


def _average_gradient_ratio(conv, x, target):
    out = conv(x)
    (out * target).sum().backward()
    p = getattr(conv, "parametrizations", None)
    w = p.weight.original1 if p is not None else conv.weight
    gr = w.grad.reshape(w.shape[0], -1)
    return (gr.mean(1).abs().max() / gr.abs().max()).item()


def test_average_weight_gradient_is_zero_for_ws_pws_not_wn():
    g = _gen(8)
    x = torch.relu(torch.randn(8, 4, 10, 10, generator=g, dtype=torch.float64))
    target = torch.randn(8, 6, 8, 8, generator=g, dtype=torch.float64)
    pws = PWSConv2d(4, 6, 3, generator=_gen(9)).double()
    ws = WSConv2d(4, 6, 3, generator=_gen(9)).double()
    wn = wn_conv(2, 4, 6, 3, generator=_gen(9)).double()
    assert _average_gradient_ratio(pws, x, target) < 1e-14
    assert _average_gradient_ratio(ws, x, target) < 1e-14
    assert _average_gradient_ratio(wn, x, target) > 1e-3
    # float32: zero to float precision
    pws32 = PWSConv2d(4, 6, 3, generator=_gen(9))
    assert _average_gradient_ratio(pws32, x.float(), target.float()) < 1e-5


def test_ws_and_centred_kernels():
    v = torch.randn(5, 3, 3, 3, generator=_gen(10), dtype=torch.float64)
    k = ws_kernel(v, eps=0.0).reshape(5, -1)
    assert torch.allclose(k.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(k.std(1), torch.ones(5, dtype=torch.float64))
    c = CentredConv1d(3, 5, 3).kernel().detach().reshape(5, -1)
    assert c.sum(1).abs().max() < 1e-5


def test_pws_is_centred_weight_norm_with_gain_sqrt2_alpha():
    v = torch.randn(4, 2, 3, 3, generator=_gen(11), dtype=torch.float64)
    alpha = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    k = pws_kernel(v, alpha, 0.0, 18).reshape(4, -1)
    w = v.reshape(4, -1)
    wc = w - w.mean(1, keepdim=True)
    expected = math.sqrt(2) * alpha[:, None] * wc / wc.norm(dim=1, keepdim=True)
    assert torch.allclose(k, expected, rtol=1e-12)


@pytest.mark.parametrize("norm", ["pws", "gn"])
def test_per_sample_outputs_do_not_depend_on_batch(norm):
    g = _gen(12)
    net = PlainConvNet(1, 8, 3, 10, norm=norm, generator=g).double()
    x = torch.randn(16, 40, generator=g, dtype=torch.float64)
    full = net(x)
    assert torch.allclose(net(x[:1]), full[:1], rtol=1e-12, atol=1e-14)
    assert torch.allclose(net(x[:2]), full[:2], rtol=1e-12, atol=1e-14)


def test_bn_outputs_depend_on_batch():
    g = _gen(13)
    net = PlainConvNet(1, 8, 3, 10, norm="bn", head_std=1.0, generator=g).double()
    x = torch.randn(16, 40, generator=g, dtype=torch.float64)
    assert not torch.allclose(net(x[:2]), net(x)[:2], atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_models_build_and_run(norm):
    g = _gen(14)
    x = torch.randn(3, 40, generator=g)
    assert PlainConvNet(1, 8, 2, 10, norm=norm, generator=g)(x).shape == (3, 10)
    assert NormMLP(40, 8, 2, 10, norm=norm, generator=g)(x).shape == (3, 10)


@pytest.mark.parametrize("norm", ["pws", "bn", "gn"])
def test_resnet_builds(norm):
    net = PWSResNet(3, 10, widths=(8, 16), blocks=(1, 1), norm=norm, generator=_gen(15))
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    names = net.no_weight_decay()
    assert bool(names) == (norm == "pws")
    if norm == "pws":  # the only activation normalizations: stem and neck GroupNorm(1)
        gns = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert len(gns) == 2 and all(m.num_groups == 1 for m in gns)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_teacher_data_is_deterministic():
    a, b = teacher_data(100, 20, generator=_gen(1)), teacher_data(100, 20, generator=_gen(1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert len(torch.unique(a.y_train)) > 2
