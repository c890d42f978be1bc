"""A deep ReLU MLP whose dense kernels are a function of raw weights, one *arm* per kernel
map, with every arm started at the same forward gain: a controlled family for comparing
no normalisation, centring, weight standardisation (WS, a fixed gain), PWS (a learnable gain)
and weight normalisation (WN).

The kernel maps are those of :mod:`gnelib.nn.convs` (:func:`~gnelib.nn.convs.pws_kernel`,
:func:`~gnelib.nn.convs.centred_kernel`, WN's :math:`g\\,V/\\|V\\|`), applied to all hidden layers
at once (the raw weights of the hidden layers are stacked in one tensor), which keeps the
per-step cost of a deep narrow network low; the standardisation of ``ws``/``pws`` is computed
with torch's fused ``layer_norm`` over the fan-in (the same map: biased variance, epsilon
inside the square root; tested equal to :func:`~gnelib.nn.convs.pws_kernel`). The network equals
:class:`~gnelib.nn.normnets.NormMLP` with the same raw weights (tested), but it exposes the
initial gain of every arm:

- ``none``: the kernel is the He-initialised weight times the gain ``a`` (fixed);
- ``centre``: :math:`V_k - m_k\\mathbf 1`, with the He raw weight times ``a`` (fixed);
- ``ws``: :math:`\\sqrt{2/n}\\,a\\,(V_k-m_k\\mathbf 1)/\\sqrt{v_k+\\epsilon}` with ``a`` fixed (a buffer):
  standardisation with a fixed gain, PWS with alpha frozen;
- ``pws``: the same with a learnable :math:`\\alpha_k` starting at ``a``;
- ``wn``: :math:`g_k V_k/\\|V_k\\|` with a learnable :math:`g_k` starting at ``a``.

``gains="preserving"`` picks ``a`` so that the second moment of the pre-activations is kept
from layer to layer at initialisation (He's fixed point; centring and standardisation remove
the mean path, a share :math:`1/\\pi` of it, so they get :math:`(1-1/\\pi)^{-1/2}`);
``gains="decaying"`` picks ``a`` so that every arm loses the factor :math:`1-1/\\pi` per layer,
as PWS does with :math:`\\alpha=1` (:func:`arm_gain`).
"""
from __future__ import annotations

import math

import copy

import torch
from torch import nn
from torch.nn import functional as F

from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.nn.convs import centred_kernel

__all__ = ["ARMS", "GAIN_FAMILIES", "arm_gain", "KernelMLP"]

#: The kernel maps compared (see the module docstring).
ARMS = ("none", "centre", "ws", "pws", "wn")
#: The two initial-gain families.
GAIN_FAMILIES = ("preserving", "decaying")


def arm_gain(arm: str, gains: str = "preserving") -> float:
    """The initial gain parameter of ``arm`` in the family ``gains``.

    With :math:`r=\\sqrt{1-1/\\pi}`: ``none`` 1 (He) or r; ``centre``, ``ws``, ``pws`` 1/r or 1;
    ``wn`` :math:`\\sqrt2` or :math:`\\sqrt2\\,r`. In the ``preserving`` family the second moment
    of the pre-activations is kept per layer at initialisation; in ``decaying`` it is
    multiplied by :math:`r^2=1-1/\\pi` per layer (PWS at :math:`\\alpha=1`)."""
    check_choice("arm", arm, ARMS)
    check_choice("gains", gains, GAIN_FAMILIES)
    r = math.sqrt(1 - 1 / math.pi)
    keep = gains == "preserving"
    if arm == "none":
        return 1.0 if keep else r
    if arm == "wn":
        return math.sqrt(2.0) if keep else math.sqrt(2.0) * r
    return 1 / r if keep else 1.0


class KernelMLP(nn.Module):
    """``depth`` dense ReLU layers of ``width`` units (the first from ``in_dim``), each with a
    bias (init 0) and the kernel map of ``arm``, then a linear read-out with
    :math:`\\mathcal N(0, \\texttt{head\\_std}^2)` weights and zero bias.

    ``replicas`` independent copies are held in one module (a leading dimension R on every
    parameter), all starting from the *same* weights; a batch ``(B, in_dim)`` is fed to every
    copy (or a batch ``(R, B, in_dim)``, one slice per copy) and the output is
    ``(R, B, out_dim)`` (``(B, out_dim)`` when ``replicas == 1``). This is how one seed is
    trained at several learning rates at once (paired: same initial weights, same
    mini-batches); :meth:`concat` joins the replicas of several seeds into one model. ``gain`` overrides the initial gain parameter of
    :func:`arm_gain`; ``eps`` is the absolute epsilon of the ``ws``/``pws`` kernel. Raw
    weights are He-initialised (:math:`\\mathcal N(0, 2/\\text{fan-in})`) from ``generator``.
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, arm: str = "none",
                 gains: str = "preserving", gain: float | None = None, eps: float = 1e-5,
                 head_std: float = 0.01, replicas: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("in_dim", in_dim), ("width", width), ("depth", depth),
                        ("out_dim", out_dim), ("replicas", replicas)):
            check_positive_int(name, v)
        check_choice("arm", arm, ARMS)
        check_positive("head_std", head_std)
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        a = arm_gain(arm, gains) if gain is None else check_positive("gain", gain)
        self.arm, self.gains, self.gain, self.eps = arm, gains, float(a), float(eps)
        self.in_dim, self.width, self.depth, self.replicas = in_dim, width, depth, replicas
        self._single = replicas == 1
        g, R = generator, replicas

        def he(*shape):
            return torch.randn(*shape, generator=g) * math.sqrt(2.0 / shape[-1])

        def rep(t):
            return t.unsqueeze(0).repeat(R, *([1] * t.dim()))

        v0, vs = he(width, in_dim), he(max(depth - 1, 0), width, width)
        if arm in ("none", "centre"):  # the gain scales the (raw) weights once, at init
            v0, vs = v0 * a, vs * a
        head = torch.randn(out_dim, width, generator=g) * head_std
        self.v0 = nn.Parameter(rep(v0))
        self.vs = nn.Parameter(rep(vs))
        self.bias = nn.Parameter(torch.zeros(R, depth, width))
        if arm == "pws":
            self.alpha = nn.Parameter(torch.full((R, depth, width), a))
        elif arm == "ws":
            self.register_buffer("alpha", torch.full((R, depth, width), a))
        elif arm == "wn":  # g_k = a is the kernel norm (||V_k|| ~ sqrt(2) for He raw weights)
            self.g = nn.Parameter(torch.full((R, depth, width), a))
        self.head_weight = nn.Parameter(rep(head))
        self.head_bias = nn.Parameter(torch.zeros(R, out_dim))

    def no_weight_decay(self) -> list[str]:
        """PWS's alpha and WN's g get no weight decay (the authors' optimiser for alpha)."""
        return [n for n in ("alpha", "g") if n in dict(self.named_parameters())]

    def _map(self, v: torch.Tensor, layers: slice, index) -> torch.Tensor:
        n = v.shape[-1]
        flat = v.reshape(-1, n)
        if self.arm == "none":
            k = flat
        elif self.arm == "centre":
            k = centred_kernel(flat)
        elif self.arm in ("ws", "pws"):  # pws_kernel, fused: sqrt(2/n) alpha (V - m)/sqrt(v + eps)
            scale = math.sqrt(2.0 / n) * self._take(self.alpha, index)[:, layers].reshape(-1, 1)
            k = F.layer_norm(flat, (n,), eps=self.eps) * scale
        else:  # wn
            k = self._take(self.g, index)[:, layers].reshape(-1, 1) * flat / flat.norm(dim=1, keepdim=True)
        return k.reshape(v.shape)

    @staticmethod
    def _take(t: torch.Tensor, index):
        return t if index is None else t.index_select(0, index)

    def kernels(self, index: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The effective kernel of every layer, ``(R, width, fan-in)`` each, first layer first
        (only the replicas in ``index``, if given)."""
        out = [self._map(self._take(self.v0, index), slice(0, 1), index)]
        if self.depth > 1:
            out += list(self._map(self._take(self.vs, index), slice(1, self.depth), index).unbind(1))
        return out

    def _inputs(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """The first layer's input with the replica dimension: ``(B, ...)`` is fed to every
        replica, ``(R, B, in_dim)`` gives every replica its own batch."""
        if x.dim() == 3 and x.shape[0] == r and x.shape[-1] == self.in_dim:
            return x
        return x.flatten(1).unsqueeze(0).expand(r, -1, -1)

    def trace(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """``(inputs, pre_activations, logits)``, each with the leading replica dimension:
        the input ``(R, B, fan-in)`` of every layer, its output before the ReLU
        ``(R, B, width)``, and the read-out ``(R, B, out_dim)``."""
        h = self._inputs(x, self.replicas)
        inputs, pre = [], []
        for l, k in enumerate(self.kernels()):
            inputs.append(h)
            y = torch.baddbmm(self.bias[:, l].unsqueeze(1), h, k.transpose(1, 2))
            pre.append(y)
            h = torch.relu(y)
        out = torch.baddbmm(self.head_bias.unsqueeze(1), h, self.head_weight.transpose(1, 2))
        return inputs, pre, out

    def logits(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(R, B, out_dim)`` of every replica (of those in ``index``, a long tensor of
        replica numbers, if given) for a batch ``(B, in_dim)`` fed to all of them or a batch
        ``(R, B, in_dim)`` with one slice per replica."""
        r = self.replicas if index is None else len(index)
        bias = self._take(self.bias, index)
        h = self._inputs(x, r)
        for l, k in enumerate(self.kernels(index)):
            h = torch.relu(torch.baddbmm(bias[:, l].unsqueeze(1), h, k.transpose(1, 2)))
        return torch.baddbmm(self._take(self.head_bias, index).unsqueeze(1), h,
                             self._take(self.head_weight, index).transpose(1, 2))

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(R, B, out_dim)`` (``(B, out_dim)`` for a model built with one replica);
        see :meth:`logits`."""
        out = self.logits(x, index)
        return out[0] if self._single and index is None else out

    @torch.no_grad()
    def keep(self, index: torch.Tensor) -> None:
        """Keep only the replicas in ``index`` (a long tensor), in that order: every parameter
        and buffer is replaced by its cut-down copy (new parameter objects: an optimiser must
        fetch them again)."""
        for name, p in list(self.named_parameters()):
            setattr(self, name, nn.Parameter(p.detach().index_select(0, index),
                                             requires_grad=p.requires_grad))
        for name, b in list(self.named_buffers()):
            setattr(self, name, b.index_select(0, index))
        self.replicas = len(index)

    @classmethod
    def concat(cls, models: list["KernelMLP"]) -> "KernelMLP":
        """One model holding the replicas of ``models`` (same architecture and arm) one after
        the other: how several seeds, each with its own initial weights, are trained as one
        batched ensemble."""
        if not models:
            raise ValueError("concat needs at least one model")
        first = models[0]
        for m in models[1:]:
            if (m.arm, m.in_dim, m.width, m.depth, m.eps) != (first.arm, first.in_dim, first.width,
                                                             first.depth, first.eps):
                raise ValueError("concat needs models of the same architecture and arm")
        out = copy.deepcopy(first)
        with torch.no_grad():
            for name, p in list(out.named_parameters()):
                setattr(out, name, nn.Parameter(torch.cat([getattr(m, name).detach() for m in models]),
                                                requires_grad=p.requires_grad))
            for name, _ in list(out.named_buffers()):
                setattr(out, name, torch.cat([getattr(m, name) for m in models]))
        out.replicas = sum(m.replicas for m in models)
        out._single = False
        return out

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, width={self.width}, depth={self.depth}, arm={self.arm}, "
                f"gains={self.gains}, gain={self.gain:.4f}, eps={self.eps:g}, "
                f"replicas={self.replicas}")
