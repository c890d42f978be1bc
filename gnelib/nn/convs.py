"""Parametric Weights Standardization (PWS, Liu et al. 2021) and the weight-space layers it
is compared with: weight standardisation (WS, Qiao et al. 2019), weight normalisation (WN,
Salimans & Kingma 2016, torch's parametrization) and centring only.

Every layer here is a convolution (1-d or 2-d) whose kernel is a function of a raw weight
``V`` of shape ``(C_out, C_in, *k)``; "per filter" means over the ``n = C_in * prod(k)``
entries of one output channel. A linear layer is the 1-d form with ``kernel_size=1`` applied
to inputs of length 1 (see :mod:`gnelib.nn.normnets`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gnelib.base.errors import check_choice, check_positive, check_positive_int

__all__ = ["pws_kernel", "ws_kernel", "centred_kernel", "pws_epsilon", "PWSConv1d", "PWSConv2d",
           "WSConv1d", "WSConv2d", "CentredConv1d", "CentredConv2d", "wn_conv", "wn_linear",
           "EPS_MODES", "FAN_MODES", "ReparamConv", "WEIGHT_LAYERS", "standardized_weight", "SWSConv1d", "SWSConv2d",
           "SWSLinear"]

#: How ``eps`` is read: as an absolute variance, or relative to the He variance 2/n_f.
EPS_MODES = ("absolute", "relative")
#: Which fan sets the He constant sqrt(2/n_f).
FAN_MODES = ("fan_in", "fan_out")


def _filter_view(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1)


def pws_epsilon(eps: float, eps_mode: str, n_f: int) -> float:
    """The absolute epsilon of the PWS kernel: ``eps`` itself (``absolute``) or
    ``eps * 2/n_f``, a fraction of the He variance (``relative``; the authors' ``equiv``)."""
    check_choice("eps_mode", eps_mode, EPS_MODES)
    return float(eps) if eps_mode == "absolute" else float(eps) * 2.0 / n_f


def pws_kernel(v: torch.Tensor, alpha: torch.Tensor, eps: float, n_f: int) -> torch.Tensor:
    """The PWS kernel, per output filter k:
    :math:`K_k = \\sqrt{2/n_f}\\,\\alpha_k\\,(V_k - \\bar V_k)/\\sqrt{\\mathrm{Var}(V_k)+\\epsilon}`
    with the biased variance over the filter's fan-in entries (the chapter's eq. ``pws-kernel``).
    ``alpha`` has one entry per output channel (any shape with ``C_out`` elements)."""
    w = _filter_view(v)
    mean = w.mean(dim=1, keepdim=True)
    var = w.var(dim=1, unbiased=False, keepdim=True)
    k = math.sqrt(2.0 / n_f) * alpha.reshape(-1, 1) * (w - mean) / torch.sqrt(var + eps)
    return k.reshape(v.shape)


def ws_kernel(v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weight standardisation (Qiao et al. 2019): :math:`(V_k - \\bar V_k)/(\\mathrm{std}(V_k) + \\epsilon)`
    per output filter, unbiased std, no affine (as in the official snippet)."""
    w = _filter_view(v)
    mean = w.mean(dim=1, keepdim=True)
    std = w.std(dim=1, unbiased=True, keepdim=True)
    return ((w - mean) / (std + eps)).reshape(v.shape)


def centred_kernel(v: torch.Tensor) -> torch.Tensor:
    """Centring only: :math:`V_k - \\bar V_k\\mathbf 1` per output filter (no rescaling)."""
    w = _filter_view(v)
    return (w - w.mean(dim=1, keepdim=True)).reshape(v.shape)


def _pair(dim: int, value) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dim
    value = tuple(value)
    if len(value) != dim:
        raise ValueError(f"kernel_size must be an int or a {dim}-tuple, got {value!r}")
    return value


class ReparamConv(nn.Module):
    """The one base of the standardised-convolution family (centred, WS, sWS, PWS): a
    convolution whose kernel is ``self.kernel()``, a function of the raw weight ``V``
    (He-initialised). One signature: ``(in_channels, out_channels, kernel_size=3, stride=1,
    padding=0, bias=True, generator=None, padding_mode="zeros")``; a 1×1 kernel on a
    ``(B, C)`` input is the dense layer."""

    dim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride: int = 1,
                 padding: int = 0, bias: bool = True, generator: torch.Generator | None = None,
                 padding_mode: str = "zeros"):
        super().__init__()
        check_choice("padding_mode", padding_mode, ("zeros", "circular", "reflect", "replicate"))
        self.padding_mode = padding_mode
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(self.dim, kernel_size)
        for k in self.kernel_size:
            check_positive_int("kernel_size", k)
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu", generator=generator)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    @property
    def fan_out(self) -> int:
        return self.out_channels * math.prod(self.kernel_size)

    def kernel(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def conv(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """The convolution with ``kernel``; a 1x1 kernel applied to a (B, C_in) input is the
        dense layer ``F.linear`` (the MLP case)."""
        if x.dim() == 2 and math.prod(self.kernel_size) == 1:
            return F.linear(x, kernel.flatten(1), self.bias)
        fn = F.conv1d if self.dim == 1 else F.conv2d
        if self.padding_mode != "zeros" and self.padding:
            pad = _pair(self.dim, self.padding)
            x = F.pad(x, [p for p in reversed(pad) for _ in (0, 1)], mode=self.padding_mode)
            return fn(x, kernel, self.bias, self.stride, 0)
        return fn(x, kernel, self.bias, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.kernel())

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class _PWSConv(ReparamConv):
    """Parametric Weights Standardization (Liu et al. 2021), eq. ``pws-kernel`` of the chapter.

    Parameters: ``eps`` (>= 0) absolute, or relative to the He variance 2/n_f
    (``eps_mode="relative"``); ``fan`` picks n_f for the He constant (the standardisation is
    always over the fan-in); ``alpha_init`` the initial alpha; ``data_init=True`` sets every
    alpha on the first training forward so that the output variance is 2 (the authors'
    ``initalpha``). In eval mode the kernel is folded once and the layer is a plain conv with
    that kernel; the fold is refreshed by ``train()``/``eval()`` and whenever the weight or
    alpha changes (``load_state_dict``, in-place updates).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride: int = 1,
                 padding: int = 0, bias: bool = True, eps: float = 1e-5,
                 eps_mode: str = "absolute", fan: str = "fan_in", alpha_init: float = 1.0,
                 data_init: bool = False, generator: torch.Generator | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, generator)
        check_choice("eps_mode", eps_mode, EPS_MODES)
        check_choice("fan", fan, FAN_MODES)
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        check_positive("alpha_init", alpha_init)
        self.eps_mode, self.fan = eps_mode, fan
        self.eps = pws_epsilon(eps, eps_mode, self.n_f)
        self.alpha = nn.Parameter(torch.full((out_channels,), float(alpha_init)))
        self.data_init = bool(data_init)
        self.register_buffer("initialised", torch.tensor(not data_init))
        self._folded: torch.Tensor | None = None
        self._fold_key = None

    @property
    def n_f(self) -> int:
        return self.fan_in if self.fan == "fan_in" else self.fan_out

    def no_weight_decay(self) -> list[str]:
        """Parameter names that get no weight decay (alpha, as in the authors' optimizer)."""
        return ["alpha"]

    def kernel(self) -> torch.Tensor:
        """The PWS kernel of eq. ``pws-kernel`` from the current V and alpha."""
        return pws_kernel(self.weight, self.alpha, self.eps, self.n_f)

    def _key(self):
        return (id(self.weight), self.weight._version, id(self.alpha), self.alpha._version,
                self.weight.device, self.weight.dtype)

    def folded_kernel(self) -> torch.Tensor:
        """The kernel as a constant tensor, recomputed only when V or alpha changed."""
        key = self._key()
        if self._folded is None or self._fold_key != key:
            with torch.no_grad():
                self._folded = self.kernel().detach().clone()
            self._fold_key = key
        return self._folded

    def train(self, mode: bool = True):
        super().train(mode)
        self._folded, self._fold_key = None, None
        if not mode:
            self.folded_kernel()
        return self

    @torch.no_grad()
    def _initialise_alpha(self, x: torch.Tensor) -> None:
        y = self.conv(x, self.kernel())
        if self.bias is not None:
            y = y - self.bias.view(1, -1, *([1] * self.dim))
        self.alpha.mul_(math.sqrt(2.0) / y.var().sqrt())
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.conv(x, self.folded_kernel())
        if not bool(self.initialised):
            self._initialise_alpha(x)
        return self.conv(x, self.kernel())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps:g}, fan={self.fan}, data_init={self.data_init}"


class PWSConv1d(_PWSConv):
    """PWS on a 1-d convolution (see :class:`PWSConv2d`); ``kernel_size=1`` on length-1
    inputs is a PWS linear layer."""

    dim = 1


class PWSConv2d(_PWSConv):
    """PWS on a 2-d convolution: kernel of eq. ``pws-kernel``, learnable alpha per output
    channel (no weight decay), bias, eval-mode folding."""

    dim = 2


class _WSConv(ReparamConv):
    """Weight standardisation (Qiao et al. 2019); to be followed by BN or GN."""

    def __init__(self, *args, eps: float = 1e-5, **kw):
        super().__init__(*args, **kw)
        self.eps = float(eps)

    def kernel(self) -> torch.Tensor:
        return ws_kernel(self.weight, self.eps)


class WSConv1d(_WSConv):
    """1-d weight-standardised convolution."""

    dim = 1


class WSConv2d(_WSConv):
    """2-d weight-standardised convolution."""

    dim = 2


class _CentredConv(ReparamConv):
    """Centring only: the kernel is :math:`V_k - \\bar V_k\\mathbf 1` (PWS without the scale)."""

    def kernel(self) -> torch.Tensor:
        return centred_kernel(self.weight)


class CentredConv1d(_CentredConv):
    """1-d centred convolution."""

    dim = 1


class CentredConv2d(_CentredConv):
    """2-d centred convolution."""

    dim = 2


#: Every module type whose ``weight`` is a dense or convolution weight (raw weight for the
#: re-parametrised family): what :func:`~gnelib.nn.init.init_model_` initialises.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, ReparamConv)


def wn_linear(in_features: int, out_features: int, bias: bool = True,
              generator: torch.Generator | None = None) -> nn.Module:
    """A He-initialised linear layer under torch's weight-norm parametrization (see :func:`wn_conv`)."""
    lin = nn.Linear(in_features, out_features, bias=bias)
    nn.init.kaiming_normal_(lin.weight, nonlinearity="relu", generator=generator)
    if bias:
        nn.init.zeros_(lin.bias)
    return nn.utils.parametrizations.weight_norm(lin, name="weight", dim=0)


def wn_conv(dim: int, in_channels: int, out_channels: int, kernel_size=3, stride: int = 1,
            padding: int = 0, bias: bool = True, generator: torch.Generator | None = None) -> nn.Module:
    """A He-initialised convolution under torch's weight-norm parametrization
    :math:`W_k = g_k V_k/\\|V_k\\|` (Salimans & Kingma 2016). torch starts g at ``||V_k||``
    (about sqrt(2) for He init), so the initial kernel equals the He kernel."""
    check_choice("dim", dim, (1, 2))
    cls = nn.Conv1d if dim == 1 else nn.Conv2d
    conv = cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=generator)
    if bias:
        nn.init.zeros_(conv.bias)
    return nn.utils.parametrizations.weight_norm(conv, name="weight", dim=0)


# ----------------------------------------------------- scaled weight standardisation

def standardized_weight(w: torch.Tensor, gain2: float = 2.0, eps: float = 0.0) -> torch.Tensor:
    """Scaled weight standardisation (sWS, the weight-normalisation configuration of Chen et al.
    2020): :math:`\\hat w_i=\\sqrt{\\gamma_0}(w_i-\\bar w_i)/\\|w_i-\\bar w_i\\|` per filter, so every
    filter has squared norm :math:`\\gamma_0` (= 2 for ReLU) and φ = γ₀ whatever the raw scale."""
    c = centred_kernel(w)
    norm = c.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (w.ndim - 1))
    return math.sqrt(gain2) * c / (norm + eps)


class _SWSConv(ReparamConv):
    """sWS: the kernel is :func:`standardized_weight` of the raw weight (gain ``gain2``)."""

    def __init__(self, *args, gain2: float = 2.0, **kw):
        super().__init__(*args, **kw)
        self.gain2 = check_positive("gain2", gain2)

    def kernel(self) -> torch.Tensor:
        return standardized_weight(self.weight, self.gain2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gain2={self.gain2}"


class SWSConv1d(_SWSConv):
    """1-d convolution with scaled weight standardisation."""

    dim = 1


class SWSConv2d(_SWSConv):
    """2-d convolution with scaled weight standardisation."""

    dim = 2


class SWSLinear(SWSConv1d):
    """A dense layer with scaled weight standardisation: the 1×1 :class:`SWSConv1d` acting on
    ``(B, in_features)`` inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain2: float = 2.0,
                 generator: torch.Generator | None = None):
        super().__init__(in_features, out_features, 1, bias=bias, gain2=gain2, generator=generator)
