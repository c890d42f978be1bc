"""The serial net and the CIFAR ResNet: layout, configuration checks, Fixup scaling, sPReLU."""
import math

import pytest
import torch
from torch import nn

import gnelib
from gnelib.nn.convnets import SPReLU, SeLU


def test_serial_net_layout_and_shapes():
    g = torch.Generator().manual_seed(0)
    net = gnelib.SerialNet(width=4, norm="smn", init="delta_orthogonal", generator=g)
    assert len(net.weight_layers()) == 32
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    net1 = gnelib.SerialNet(in_channels=1, dims=1, width=4, norm="sws", generator=g)
    assert net1(torch.randn(2, 1, 40)).shape == (2, 10)
    with pytest.raises(ValueError, match="norm"):
        gnelib.SerialNet(norm="group")
    with pytest.raises(ValueError, match="activation"):
        gnelib.SerialNet(activation="gelu")


def test_resnet56_layout_and_fixup_scale():
    ref = gnelib.resnet56(width=4, norm="bn", generator=torch.Generator().manual_seed(0))
    fix = gnelib.resnet56(width=4, norm="fixup", fixup_p=2.0, generator=torch.Generator().manual_seed(0))
    convs = [m for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 56
    # same draws, branch convs scaled by L^(-p/4) = 27^(-1/2)
    s = gnelib.fixup_scale(27, 2.0, 2)
    w_ref = ref.blocks[3].branch1[0].weight
    w_fix = fix.blocks[3].branch1[0].weight
    assert torch.allclose(w_fix, s * w_ref, atol=1e-7)
    assert fix(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="norm"):
        gnelib.resnet56(norm="sws")


def test_sprelu_and_selu_modules():
    a = 0.4
    m = SPReLU(init=a)
    x = torch.tensor([-2.0, 3.0])
    assert torch.allclose(m(x), torch.tensor([-2.0 * a, 3.0]) / math.sqrt(1 + a * a))
    lam, alpha = gnelib.selu_coefficients(0.03)
    s = SeLU(0.03)
    assert torch.allclose(s(x), torch.tensor([lam * alpha * math.expm1(-2.0), lam * 3.0]))
    assert torch.allclose(SeLU()(x), nn.SELU()(x), atol=1e-6)


def test_activation_gain():
    assert gnelib.activation_gain("leaky_relu", 0.3) == pytest.approx(math.sqrt(2 / 1.09))
    assert gnelib.activation_gain("relu") == pytest.approx(math.sqrt(2))
    assert gnelib.activation_gain("selu", selu_gain2=2.0) == pytest.approx(math.sqrt(2))
