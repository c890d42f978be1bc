"""The one MLP of the book: ``depth`` blocks and a linear read-out, with the initialisation,
activation, normalisation (activation norms, the paper's BN, or weight-space layers) and
per-layer gains as parameters.

A block computes ``act(α·norm(linear(x)))`` (``order="norm_act"``) or
``norm(act(α·linear(x)))`` (``"act_norm"``); its Jacobian is the unit the book's per-block
moments are measured on (``model.blocks[i]``). The chapters' presets are functions that
return an :class:`MLP`: :func:`~gnelib.nn.batchnorm.BNMLP` (Meterez et al.'s BN MLP) and
:func:`~gnelib.nn.normnets.NormMLP` (the PWS chapter's normalisation arms).
"""
from __future__ import annotations

import torch
from torch import nn

from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.nn.activations import ACTIVATIONS, make_activation
from gnelib.nn.init import init_weight_

__all__ = ["ACTIVATIONS", "MLP_NORMS", "ORDERS", "make_activation", "Block", "MLP"]

#: Normalisations an :class:`MLP` block can use: activation norms (``bn`` = ``torch``:
#: ``nn.BatchNorm1d``; ``gn``; ``paper``: the paper's BN), weight-space layers (``pws``,
#: ``ws_bn``, ``centre``, ``wn``) or none.
MLP_NORMS = ("none", "paper", "torch", "bn", "gn", "ws_bn", "wn", "centre", "pws")
#: Where the normalisation sits relative to the activation.
ORDERS = ("norm_act", "act_norm")


class Block(nn.Module):
    """One MLP block: ``linear`` then ``norm``, the gain ``alpha`` and ``act`` in ``order``.

    ``Block(n_in, n_out, activation="relu", bias=False)`` builds the plain ``Linear →
    activation`` block (default torch initialisation; :class:`MLP` re-initialises)."""

    def __init__(self, n_in: int | nn.Module, n_out: int | None = None, activation: str = "relu",
                 bias: bool = False, *, norm: nn.Module | None = None, act: nn.Module | None = None,
                 alpha: float = 1.0, order: str = "norm_act"):
        super().__init__()
        if isinstance(n_in, nn.Module):
            self.linear = n_in
        else:
            check_positive_int("n_in", n_in)
            check_positive_int("n_out", n_out)
            self.linear = nn.Linear(n_in, n_out, bias=bias)
        self.norm = norm if norm is not None else nn.Identity()
        self.act = act if act is not None else make_activation(activation)
        self.alpha = float(alpha)
        self.order = check_choice("order", order, ORDERS) or order

    def forward(self, x):
        h = self.linear(x)
        if self.order == "norm_act":
            h = self.norm(h)
            return self.act(h if self.alpha == 1.0 else self.alpha * h)
        return self.norm(self.act(h if self.alpha == 1.0 else self.alpha * h))


class MLP(nn.Module):
    """``depth`` blocks of width ``width`` and a linear read-out to ``out_dim``.

    - ``activation`` (:data:`~gnelib.nn.activations.ACTIVATIONS`), ``slope`` for leaky ReLU;
    - ``init``/``gain``: :func:`~gnelib.nn.init.init_weight_` with the full gain (``None``: the
      scheme's default) for every dense weight, the read-out included unless ``head_std`` is
      given (then the read-out is :math:`\\mathcal N(0,\\text{head\\_std}^2)`);
    - ``norm`` (:data:`MLP_NORMS`) and ``order``; ``mean_reduction``/``factor`` for
      ``paper``, ``gn_groups`` for ``gn``, ``pws_kw`` for ``pws``; weight-space layers keep
      their own (He) initialisation;
    - ``gains``: per-block factors α_ℓ (activation shaping; default 1);
    - ``bias``: zero-initialised biases in the dense layers and the read-out.

    ``blocks[i]`` is block i (for probes); ``layers``, ``norms``, ``gains`` and ``units`` are
    views of the blocks; :meth:`hidden` returns every block's output.
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int,
                 activation: str = "relu", init: str = "he", gain: float | None = None,
                 bias: bool = False, *, norm: str = "none", order: str = "norm_act",
                 gains=None, head_std: float | None = None, slope: float = 0.18,
                 mean_reduction: bool = False, factor=1.0, gn_groups: int = 8,
                 pws_kw: dict | None = None, generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("depth", depth), ("width", width), ("in_dim", in_dim), ("out_dim", out_dim)):
            check_positive_int(name, v)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("norm", norm, MLP_NORMS)
        check_choice("order", order, ORDERS)
        gains = [1.0] * depth if gains is None else [float(a) for a in gains]
        if len(gains) != depth:
            raise ValueError(f"gains must have one entry per block ({depth}), got {len(gains)}")
        self.norm_type, self.order = norm, order
        dims = [in_dim] + [width] * depth
        blocks = []
        for a, b, alpha in zip(dims, dims[1:], gains):
            linear, act_norm = self._unit(norm, a, b, bias, init, gain, mean_reduction, factor,
                                          gn_groups, pws_kw, generator)
            blocks.append(Block(linear, norm=act_norm, act=make_activation(activation, slope),
                                alpha=alpha, order=order))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, out_dim, bias=bias)
        if head_std is None:
            init_weight_(self.head.weight, init, gain, generator)
        else:
            with torch.no_grad():
                self.head.weight.normal_(0.0, check_positive("head_std", head_std), generator=generator)
        if bias:
            nn.init.zeros_(self.head.bias)

    @staticmethod
    def _unit(norm, n_in, n_out, bias, init, gain, mean_reduction, factor, gn_groups, pws_kw, generator):
        if norm in ("pws", "ws_bn", "centre", "wn", "gn"):
            from gnelib.nn.normnets import linear_unit
            return linear_unit(norm, n_in, n_out, gn_groups, pws_kw, generator)
        linear = nn.Linear(n_in, n_out, bias=bias)
        init_weight_(linear.weight, init, gain, generator)
        if bias:
            nn.init.zeros_(linear.bias)
        if norm == "paper":
            from gnelib.nn.batchnorm import PaperBatchNorm
            return linear, PaperBatchNorm(mean_reduction, factor)
        if norm in ("bn", "torch"):
            return linear, nn.BatchNorm1d(n_out)
        return linear, nn.Identity()

    @property
    def layers(self) -> list[nn.Module]:
        """The dense (or weight-space) layer of every block."""
        return [b.linear for b in self.blocks]

    @property
    def norms(self) -> list[nn.Module]:
        return [b.norm for b in self.blocks]

    @property
    def gains(self) -> list[float]:
        return [b.alpha for b in self.blocks]

    @property
    def units(self) -> nn.ModuleList:
        return self.blocks

    def no_weight_decay(self) -> list[str]:
        """Parameters without weight decay: biases, normalisation parameters and PWS gains."""
        return [n for n, p in self.named_parameters()
                if p.ndim < 2 or n.split(".")[-1] == "alpha"]

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of every block, :math:`X_1..X_L` (each ``(n, width)``)."""
        x = x.flatten(1)
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x):
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)
