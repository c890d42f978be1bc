"""Models for the PWS chapter, with the normalization as a parameter:

- :class:`PlainConvNet`: ``depth`` conv + [activation norm] + ReLU layers, global average
  pooling and a linear head (1-d for MNIST-1D, 2-d for images);
- :class:`NormMLP`: the same on vectors (an MLP is a 1x1 conv on length-1 inputs);
- :class:`PWSResNet`: a CIFAR ResNet with the block ordering of Liu et al.'s code, where
  with ``norm="pws"`` the only activation normalisations are GroupNorm(1) after the stem and
  before the classifier;
- :func:`teacher_data`: Gaussian inputs labelled by a random two-layer ReLU teacher.
"""
from __future__ import annotations

import torch
from torch import nn

from gnelib.base.errors import check_choice, check_positive_int
from gnelib.nn.convs import (CentredConv1d, CentredConv2d, PWSConv1d, PWSConv2d, WSConv1d, WSConv2d,
                  wn_conv, wn_linear)

__all__ = ["NORMS", "RESNET_NORMS", "conv_unit", "PlainConvNet", "NormMLP", "linear_unit",
           "PWSResNet", "alpha_names"]

#: Normalizations a plain net can use.
NORMS = ("none", "bn", "gn", "ws_bn", "wn", "centre", "pws")
#: Normalizations of :class:`PWSResNet`.
RESNET_NORMS = ("pws", "bn", "gn")


def alpha_names(model: nn.Module) -> list[str]:
    """Names of every PWS ``alpha`` in ``model`` (no weight decay on them)."""
    return [n for n, _ in model.named_parameters() if n.split(".")[-1] == "alpha"]


def _act_norm(kind: str, dim: int, channels: int, gn_groups: int) -> nn.Module:
    if kind in ("bn", "ws_bn"):
        return (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(channels)
    if kind == "gn":
        g = min(gn_groups, channels)
        if channels % g:
            raise ValueError(f"gn_groups={gn_groups} must divide the channel count {channels}")
        return nn.GroupNorm(g, channels)
    return nn.Identity()


def conv_unit(norm: str, dim: int, cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
              padding: int | None = None, gn_groups: int = 8, pws_kw: dict | None = None,
              generator: torch.Generator | None = None) -> tuple[nn.Module, nn.Module]:
    """A convolution and the activation normalization that follows it, for ``norm`` in
    :data:`NORMS`. Every raw weight is He-initialised; biases start at 0 (no bias before BN/GN)."""
    check_choice("norm", norm, NORMS)
    check_choice("dim", dim, (1, 2))
    pad = kernel_size // 2 if padding is None else padding
    bias = norm not in ("bn", "gn", "ws_bn")
    args = (cin, cout, kernel_size)
    kw = dict(stride=stride, padding=pad, bias=bias, generator=generator)
    if norm == "pws":
        conv = (PWSConv1d if dim == 1 else PWSConv2d)(*args, **kw, **(pws_kw or {}))
    elif norm == "ws_bn":
        conv = (WSConv1d if dim == 1 else WSConv2d)(*args, **kw)
    elif norm == "centre":
        conv = (CentredConv1d if dim == 1 else CentredConv2d)(*args, **kw)
    elif norm == "wn":
        conv = wn_conv(dim, *args, **kw)
    else:
        conv = (nn.Conv1d if dim == 1 else nn.Conv2d)(*args, stride=stride, padding=pad, bias=bias)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=generator)
        if bias:
            nn.init.zeros_(conv.bias)
    return conv, _act_norm(norm, dim, cout, gn_groups)


def _head(width: int, num_classes: int, std: float, generator) -> nn.Linear:
    head = nn.Linear(width, num_classes)
    nn.init.normal_(head.weight, 0.0, std, generator=generator)
    nn.init.zeros_(head.bias)
    return head


class PlainConvNet(nn.Module):
    """``depth`` units conv -> norm -> ReLU (no residual path), global average pooling and a
    linear head with N(0, head_std^2) weights. ``dim=1`` takes (B, L) or (B, C, L) inputs."""

    def __init__(self, in_channels: int, width: int, depth: int, num_classes: int,
                 norm: str = "none", dim: int = 1, kernel_size: int = 3, gn_groups: int = 8,
                 pws_kw: dict | None = None, head_std: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("width", width), ("depth", depth),
                        ("num_classes", num_classes)):
            check_positive_int(name, v)
        check_choice("norm", norm, NORMS)
        self.dim, self.norm = dim, norm
        units = []
        for i in range(depth):
            conv, act_norm = conv_unit(norm, dim, in_channels if i == 0 else width, width,
                                       kernel_size, gn_groups=gn_groups, pws_kw=pws_kw,
                                       generator=generator)
            units.append(nn.Sequential(conv, act_norm, nn.ReLU()))
        self.units = nn.ModuleList(units)
        self.head = _head(width, num_classes, head_std, generator)

    def no_weight_decay(self) -> list[str]:
        return alpha_names(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.dim + 1:
            x = x.unsqueeze(1)
        for unit in self.units:
            x = unit(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(2).mean(2))


def linear_unit(norm: str, cin: int, cout: int, gn_groups: int = 8, pws_kw: dict | None = None,
                generator: torch.Generator | None = None) -> tuple[nn.Module, nn.Module]:
    """A dense layer (acting on (B, C) inputs) and the activation normalization after it, for
    ``norm`` in :data:`NORMS`; the weight-space layers are their 1x1 convolutions, which act
    as ``F.linear`` on (B, C) inputs."""
    check_choice("norm", norm, NORMS)
    if norm in ("pws", "ws_bn", "centre"):
        return conv_unit(norm, 1, cin, cout, 1, 1, 0, gn_groups, pws_kw, generator)
    bias = norm not in ("bn", "gn")
    if norm == "wn":
        lin = wn_linear(cin, cout, bias=bias, generator=generator)
    else:
        lin = nn.Linear(cin, cout, bias=bias)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu", generator=generator)
        if bias:
            nn.init.zeros_(lin.bias)
    return lin, _act_norm(norm, 1, cout, gn_groups)


def NormMLP(in_dim: int, width: int, depth: int, out_dim: int, norm: str = "none",
            gn_groups: int = 8, pws_kw: dict | None = None, head_std: float = 0.01,
            generator: torch.Generator | None = None):
    """An MLP (``depth`` hidden layers of ``width``, ReLU, no residual path) with the
    normalization as a parameter (:func:`linear_unit`, He-initialised) and a linear head
    N(0, head_std^2): a :class:`~gnelib.nn.mlp.MLP` (``units`` its blocks)."""
    from gnelib.nn.mlp import MLP

    check_choice("norm", norm, NORMS)
    return MLP(in_dim, width, depth, out_dim, activation="relu", init="he",
               bias=norm not in ("bn", "gn"), norm=norm, head_std=head_std, gn_groups=gn_groups,
               pws_kw=pws_kw, generator=generator)


class _Block(nn.Module):
    """Basic residual block in the authors' order: out = conv2(relu(norm(conv1(relu(x)))))
    [+ norm] + shortcut, with the shortcut (identity, or a 1x1 conv on relu(x)) and no ReLU
    after the addition, so the residual stream stays roughly zero-mean."""

    def __init__(self, norm, dim, cin, cout, stride, gn_groups, pws_kw, generator):
        super().__init__()
        first = dict(pws_kw or {})
        second = {**first, "data_init": False} if norm == "pws" else first
        block_norm = "none" if norm == "pws" else norm
        self.conv1, self.norm1 = conv_unit(norm, dim, cin, cout, 3, stride, 1, gn_groups,
                                           first if norm == "pws" else None, generator)
        self.conv2, self.norm2 = conv_unit(norm, dim, cout, cout, 3, 1, 1, gn_groups,
                                           second if norm == "pws" else None, generator)
        if block_norm == "none":
            self.norm1, self.norm2 = nn.Identity(), nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            conv, sn = conv_unit(norm, dim, cin, cout, 1, stride, 0, gn_groups,
                                 first if norm == "pws" else None, generator)
            self.shortcut = nn.Sequential(conv, sn if block_norm != "none" else nn.Identity())

    def forward(self, x):
        a = torch.relu(x)
        out = self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(a)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class PWSResNet(nn.Module):
    """A CIFAR-style ResNet: stem conv3x3 -> norm -> ReLU, stages of basic blocks (widths
    ``widths``, ``blocks`` per stage, stride 2 at the start of every stage but the first),
    then norm -> ReLU -> global average pool -> linear head N(0, 0.01^2).

    With ``norm="pws"`` every conv is a PWS conv and the only activation normalizations are
    the GroupNorm(1) after the stem and before the classifier (Liu et al.'s configuration);
    with ``"bn"``/``"gn"`` plain convs are followed by BatchNorm / GroupNorm everywhere.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths=(16, 32, 64),
                 blocks=(3, 3, 3), norm: str = "pws", dim: int = 2, gn_groups: int = 8,
                 pws_kw: dict | None = None, generator: torch.Generator | None = None):
        super().__init__()
        check_choice("norm", norm, RESNET_NORMS)
        check_choice("dim", dim, (1, 2))
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks must be non-empty and of equal length, got "
                             f"{widths!r} and {blocks!r}")
        self.dim = dim
        pws_kw = {"eps": 1e-3, **(pws_kw or {})} if norm == "pws" else None
        self.stem, sn = conv_unit(norm, dim, in_channels, widths[0], 3, 1, 1, gn_groups, pws_kw,
                                  generator)
        self.stem_norm = nn.GroupNorm(1, widths[0]) if norm == "pws" else sn
        layers, cin = [], widths[0]
        for s, (w, nb) in enumerate(zip(widths, blocks)):
            check_positive_int("blocks", nb)
            for b in range(nb):
                stride = 2 if (s > 0 and b == 0) else 1
                layers.append(_Block(norm, dim, cin, w, stride, gn_groups, pws_kw, generator))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.neck_norm = (nn.GroupNorm(1, cin) if norm == "pws"
                          else _act_norm(norm, dim, cin, gn_groups))
        self.head = _head(cin, num_classes, 0.01, generator)

    def no_weight_decay(self) -> list[str]:
        return alpha_names(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.dim + 1:
            x = x.unsqueeze(1)
        x = torch.relu(self.stem_norm(self.stem(x)))
        x = torch.relu(self.neck_norm(self.layers(x)))
        return self.head(x.flatten(2).mean(2))
