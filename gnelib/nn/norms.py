"""Normalisation layers and weight re-parameterisations of Chen et al. (2020).

- :class:`SecondMomentNorm` (SMN): :math:`y=\\gamma x/(s+\\epsilon)+\\beta`,
  :math:`s=\\sqrt{\\tfrac1M\\sum x^2}` per channel over batch and space (no mean subtraction),
  with a closed-form backward (:class:`SecondMomentNormFunction`) used by default, and a plain
  eager path (:func:`second_moment_norm`) that ``torch.compile`` can trace;
- :class:`L1MomentNorm`: :math:`y=\\gamma x/(\\tfrac1M\\sum|x|+\\epsilon)+\\beta`;
- centred convolutions (each filter minus its mean) and scaled weight standardisation (sWS,
  :math:`\\hat w=\\sqrt{\\gamma_0}(w-\\bar w)/\\|w-\\bar w\\|` per filter).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gnelib.base.errors import check_positive, check_positive_int

__all__ = ["second_moment_norm", "SecondMomentNormFunction", "SecondMomentNormFunctionJvp",
           "SecondMomentNorm", "L1MomentNorm"]


def _reduce_dims(x: torch.Tensor) -> list[int]:
    if x.ndim < 2:
        raise ValueError(f"input must have shape (N, C, ...), got {tuple(x.shape)}")
    return [0] + list(range(2, x.ndim))


def _under_transform(x: torch.Tensor) -> bool:
    """True inside torch.func transforms (vmap/grad/jvp), where buffers must not be mutated."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def second_moment_norm(x: torch.Tensor, weight: torch.Tensor | None = None,
                       bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """SMN forward in plain torch ops (autograd backward): :math:`s_c=\\sqrt{\\tfrac1M\\sum x^2}`
    over all dims but the channel dim 1, :math:`y=\\gamma_c x/(s_c+\\epsilon)+\\beta_c`
    (Chen et al. 2020, SMN as in the official code: ε added to s, not under the root)."""
    s = x.pow(2).mean(_reduce_dims(x), keepdim=True).sqrt()
    y = x / (s + eps)
    if weight is not None:
        y = y * _channel_view(weight, x.ndim)
    if bias is not None:
        y = y + _channel_view(bias, x.ndim)
    return y


class SecondMomentNormFunction(torch.autograd.Function):
    """SMN with the closed-form backward (Chen et al. 2020, written out in the official fused
    kernel). Per channel, with :math:`a=\\gamma/(s+\\epsilon)`, :math:`S=\\sum dy\\,x`:

    .. math::
        \\partial\\beta=\\textstyle\\sum dy,\\quad \\partial\\gamma=\\frac{S}{s+\\epsilon},\\quad
        dx=a\\,dy-\\frac{a\\,S}{M(s+\\epsilon)s}\\,x .

    Inputs ``(x, s, weight, bias, eps)``: ``s`` is the per-channel root mean square of ``x``,
    computed by the caller without gradient (it is also the running statistic); the backward
    accounts for its dependence on ``x``. This class has no forward-mode rule, so
    ``torch.compile`` can trace it; :class:`SecondMomentNormFunctionJvp` adds one for
    ``torch.func`` transforms.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, s, weight, bias, eps):
        shape = _channel_view(weight, x.ndim).shape
        return x * (weight.reshape(shape) / (s + eps)) + bias.reshape(shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, s, weight, bias, eps = inputs
        ctx.save_for_backward(x, s, weight)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, dy):
        x, s, weight = ctx.saved_tensors
        dims = _reduce_dims(x)
        m = x.numel() // x.shape[1]
        inv = 1.0 / (s + ctx.eps)
        big_s = (dy * x).sum(dims, keepdim=True)
        a = _channel_view(weight, x.ndim) * inv
        dx = a * dy - (a * big_s * inv / (m * s)) * x
        dgamma = (big_s * inv).reshape(-1)
        dbeta = dy.sum(dims)
        return dx, None, dgamma, dbeta, None


class SecondMomentNormFunctionJvp(SecondMomentNormFunction):
    """:class:`SecondMomentNormFunction` plus the forward-mode rule, for ``torch.func``
    (``jvp``, ``jacfwd``):
    :math:`\\dot y=a\\dot x-\\frac{a x}{s+\\epsilon}\\frac{\\sum x\\dot x}{Ms}
    +\\frac{x}{s+\\epsilon}\\dot\\gamma+\\dot\\beta`."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, s, weight, bias, eps = inputs
        ctx.save_for_backward(x, s, weight)
        ctx.save_for_forward(x, s, weight)
        ctx.eps = eps

    @staticmethod
    def jvp(ctx, dx, ds, dweight, dbias, deps):
        x, s, weight = ctx.saved_tensors
        dims = _reduce_dims(x)
        m = x.numel() // x.shape[1]
        inv = 1.0 / (s + ctx.eps)
        a = _channel_view(weight, x.ndim) * inv
        dsx = (x * dx).sum(dims, keepdim=True) / (m * s)
        out = a * dx - a * inv * dsx * x
        if dweight is not None:
            out = out + x * inv * _channel_view(dweight, x.ndim)
        if dbias is not None:
            out = out + _channel_view(dbias, x.ndim)
        return out


class SecondMomentNorm(nn.Module):
    """Second moment normalisation layer (SMN, Chen et al. 2020) for inputs (N, C, ...).

    Training mode normalises by the batch root mean square :math:`s_c` and updates
    ``running_rms`` by an exponential moving average (``momentum``); eval mode uses
    ``running_rms``. ``closed_form=True`` (default) uses :class:`SecondMomentNormFunction`;
    ``False`` the plain autograd path :func:`second_moment_norm`. Meant to follow a centred
    convolution (:class:`~gnelib.nn.convs.CentredConv2d`), which makes :math:`s_c^2` the channel variance so
    that SMN matches batch norm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, closed_form: bool = True):
        super().__init__()
        self.num_features = check_positive_int("num_features", num_features)
        self.eps = check_positive("eps", eps)
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.closed_form = bool(closed_form)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_buffer("weight", torch.ones(num_features))
            self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_rms", torch.ones(num_features))

    def _check(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"input must have shape (N, {self.num_features}, ...), "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if not self.training:
            shape = _channel_view(self.weight, x.ndim).shape
            return (x * (self.weight.reshape(shape) / (self.running_rms.reshape(shape) + self.eps))
                    + self.bias.reshape(shape))
        if self.closed_form:
            with torch.no_grad():
                s = x.pow(2).mean(_reduce_dims(x), keepdim=True).sqrt()
            fn = SecondMomentNormFunctionJvp if _under_transform(x) else SecondMomentNormFunction
            y = fn.apply(x, s, self.weight, self.bias, self.eps)
        else:
            y = second_moment_norm(x, self.weight, self.bias, self.eps)
            s = None
        if self.momentum > 0 and not _under_transform(x):
            with torch.no_grad():
                if s is None:
                    s = x.pow(2).mean(_reduce_dims(x), keepdim=True).sqrt()
                self.running_rms.lerp_(s.reshape(-1).to(self.running_rms.dtype), self.momentum)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, " \
               f"closed_form={self.closed_form}"


class L1MomentNorm(nn.Module):
    """L1 moment normalisation (Chen et al. 2020's L1-MN): :math:`y=\\gamma x/(\\mu_c+\\epsilon)+\\beta`
    with :math:`\\mu_c=\\tfrac1M\\sum|x|` per channel; no :math:`\\sqrt{\\pi/2}` correction, so a
    zero-mean Gaussian input leaves with second moment π/2. Running ``running_l1`` as for SMN."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__()
        self.num_features = check_positive_int("num_features", num_features)
        self.eps = check_positive("eps", eps)
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_l1", torch.full((num_features,), math.sqrt(2 / math.pi)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"input must have shape (N, {self.num_features}, ...), "
                             f"got {tuple(x.shape)}")
        if self.training:
            mu = x.abs().mean(_reduce_dims(x), keepdim=True)
            if self.momentum > 0 and not _under_transform(x):
                with torch.no_grad():
                    self.running_l1.lerp_(mu.reshape(-1).to(self.running_l1.dtype), self.momentum)
        else:
            mu = _channel_view(self.running_l1, x.ndim)
        y = x / (mu + self.eps)
        if self.weight is not None:
            y = y * _channel_view(self.weight, x.ndim) + _channel_view(self.bias, x.ndim)
        return y
