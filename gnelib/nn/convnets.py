"""Convolutional nets of Chen et al. (2020)'s experiments, configurable by initialisation,
activation and normalisation, in 1-d (MNIST-1D) or 2-d (CIFAR-10):

- :class:`SerialNet`: the 32-weight-layer serial net (a ResNet-32 layout without shortcuts:
  stem conv, 3 stages × ``blocks`` × 2 convs, global average pool, linear);
- :class:`ResNet`: the CIFAR ResNet-6n+2 (ResNet-56 for ``blocks=9``) with post-activation
  basic blocks and option-A shortcuts, normalised by BN or SMN, or un-normalised with
  Fixup-style branch scaling (:func:`~gnelib.nn.init.fixup_scale`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gnelib.nn.init import CONV_INITS, fixup_scale, init_model_
from gnelib.base.errors import check_choice, check_positive_int
from gnelib.nn.convs import WEIGHT_LAYERS, CentredConv1d, CentredConv2d, SWSConv1d, SWSConv2d
from gnelib.nn.norms import L1MomentNorm, SecondMomentNorm
from gnelib.nn.activations import SeLU, SPReLU, activation_gain, make_activation

__all__ = ["CONV_ACTIVATIONS", "NORMS", "SPReLU", "SeLU", "make_conv_activation",
           "activation_gain", "SerialNet", "ResNet", "resnet56"]

CONV_ACTIVATIONS = ("relu", "tanh", "leaky_relu", "prelu", "sprelu", "selu")
NORMS = ("bn", "smn", "sws", "l1", "none")


def make_conv_activation(name: str, slope: float = 0.18, selu_eps: float | None = None,
                         selu_gain2: float = 1.0) -> nn.Module:
    """:func:`~gnelib.nn.activations.make_activation` restricted to :data:`CONV_ACTIVATIONS`."""
    check_choice("activation", name, CONV_ACTIVATIONS)
    return make_activation(name, slope, selu_eps, selu_gain2)


def _conv_classes(dims: int):
    if dims == 1:
        return nn.Conv1d, CentredConv1d, SWSConv1d, nn.BatchNorm1d
    return nn.Conv2d, CentredConv2d, SWSConv2d, nn.BatchNorm2d


def _conv_norm(c_in, c_out, stride, norm, dims, gain2):
    """3-wide conv followed by the normalisation ``norm`` (a list of modules)."""
    conv, cconv, sws, bn = _conv_classes(dims)
    kw = dict(kernel_size=3, stride=stride, padding=1)
    if norm == "bn":
        return [conv(c_in, c_out, bias=False, **kw), bn(c_out)]
    if norm == "smn":
        return [cconv(c_in, c_out, bias=False, **kw), SecondMomentNorm(c_out)]
    if norm == "l1":
        return [cconv(c_in, c_out, bias=False, **kw), L1MomentNorm(c_out)]
    if norm == "sws":
        return [sws(c_in, c_out, bias=True, gain2=gain2, **kw)]
    return [conv(c_in, c_out, bias=True, **kw)]


class SerialNet(nn.Module):
    """Chen et al.'s serial net: stem conv (``width`` channels), 3 stages of ``blocks`` × 2 convs
    with ``width``·(1, 2, 4) channels (stride 2 entering stages 2 and 3), global average pool,
    linear read-out; each conv is followed by ``norm`` and the activation. ``blocks=5`` gives 32
    weight layers. ``model.weight_layers()`` lists the weight tensors in depth order.

    ``init`` ∈ :data:`~gnelib.nn.init.CONV_INITS` with the gain of :func:`activation_gain`
    (``gain`` overrides); for ``norm='sws'`` the weights are re-parameterised with
    γ₀ = gain² so the raw init only sets directions.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 blocks: int = 5, activation: str = "relu", norm: str = "bn",
                 init: str = "kaiming", slope: float = 0.18, selu_eps: float | None = None,
                 selu_gain2: float = 1.0, gain: float | None = None, dims: int = 2,
                 generator: torch.Generator | None = None):
        super().__init__()
        check_choice("norm", norm, NORMS)
        check_choice("init", init, CONV_INITS)
        check_choice("activation", activation, CONV_ACTIVATIONS)
        check_choice("dims", dims, (1, 2))
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes),
                        ("width", width), ("blocks", blocks)):
            check_positive_int(name, v)
        g = activation_gain(activation, slope, selu_gain2) if gain is None else float(gain)
        layers = []

        def add(c_in, c_out, stride):
            layers.extend(_conv_norm(c_in, c_out, stride, norm, dims, g * g))
            layers.append(make_conv_activation(activation, slope, selu_eps, selu_gain2))

        add(in_channels, width, 1)
        c = width
        for stage in range(3):
            for b in range(blocks):
                for k in range(2):
                    stride = 2 if (stage > 0 and b == 0 and k == 0) else 1
                    add(c, width * 2**stage, stride)
                    c = width * 2**stage
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)
        init_model_(self, init, gain=g, generator=generator)
        with torch.no_grad():  # read-out at unit gain
            self.head.weight.mul_(1.0 / g)

    def weight_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, WEIGHT_LAYERS)]

    def no_weight_decay(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.ndim < 2]

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


class _Shortcut(nn.Module):
    """Option-A shortcut: stride-2 average pooling and zero channel padding."""

    def __init__(self, c_in, c_out, stride, dims):
        super().__init__()
        self.pad, self.stride, self.dims = c_out - c_in, stride, dims

    def forward(self, x):
        if self.stride > 1:
            x = (F.avg_pool1d if self.dims == 1 else F.avg_pool2d)(x, self.stride)
        if self.pad:
            x = F.pad(x, (0, 0) * self.dims + (0, self.pad))
        return x


class BasicBlock(nn.Module):
    """Post-activation basic block :math:`\\mathrm{relu}(x'+F(x))` with
    :math:`F=\\text{conv-norm-relu-conv-norm}`; for ``norm='fixup'`` the norms are replaced by
    scalar biases and a scalar multiplier (Fixup's ``bns`` option)."""

    def __init__(self, c_in, c_out, stride, norm, dims):
        super().__init__()
        self.fixup = norm == "fixup"
        inner = "none" if self.fixup else norm
        self.branch1 = nn.Sequential(*_conv_norm(c_in, c_out, stride, inner, dims, 2.0))
        self.branch2 = nn.Sequential(*_conv_norm(c_out, c_out, 1, inner, dims, 2.0))
        if self.fixup:
            for seq in (self.branch1, self.branch2):
                seq[0].bias = None
            self.bias = nn.Parameter(torch.zeros(4))
            self.scale = nn.Parameter(torch.ones(1))
        self.shortcut = _Shortcut(c_in, c_out, stride, dims)

    def forward(self, x):
        if self.fixup:
            out = F.relu(self.branch1(x + self.bias[0]) + self.bias[1])
            out = self.branch2(out + self.bias[2]) * self.scale + self.bias[3]
        else:
            out = self.branch2(F.relu(self.branch1(x)))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6·``blocks``+2) (He et al. 2016; ResNet-56 for ``blocks=9``): stem conv,
    3 stages of ``blocks`` basic blocks with ``width``·(1, 2, 4) channels, average pool, linear.
    ``norm`` ∈ {'bn', 'smn', 'fixup'}; for 'fixup' both branch convs get He init times
    :math:`L^{-p/4}` (:func:`~gnelib.nn.init.fixup_scale` with m = 2, L = 3·blocks) and the
    last conv is not zeroed (Chen et al.'s variant)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 blocks: int = 9, norm: str = "bn", fixup_p: float = 2.0, dims: int = 2,
                 generator: torch.Generator | None = None):
        super().__init__()
        check_choice("norm", norm, ("bn", "smn", "fixup"))
        check_choice("dims", dims, (1, 2))
        check_positive_int("width", width)
        check_positive_int("blocks", blocks)
        stem_norm = "none" if norm == "fixup" else norm
        self.stem = nn.Sequential(*_conv_norm(in_channels, width, 1, stem_norm, dims, 2.0),
                                  nn.ReLU())
        blocks_list, c = [], width
        for stage in range(3):
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks_list.append(BasicBlock(c, width * 2**stage, stride, norm, dims))
                c = width * 2**stage
        self.blocks = nn.Sequential(*blocks_list)
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)
        init_model_(self, "kaiming", gain=math.sqrt(2.0), generator=generator)
        with torch.no_grad():
            self.head.weight.mul_(1 / math.sqrt(2.0))
            if norm == "fixup":
                s = fixup_scale(len(blocks_list), fixup_p, 2)
                for blk in blocks_list:
                    blk.branch1[0].weight.mul_(s)
                    blk.branch2[0].weight.mul_(s)

    def no_weight_decay(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.ndim < 2]

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def resnet56(**kw) -> ResNet:
    """:class:`ResNet` with 9 blocks per stage (56 weight layers)."""
    return ResNet(blocks=9, **kw)
