"""Second moment normalisation compiled with ``torch.compile``, with an eager fallback.

The library's SMN (:func:`~gnelib.nn.norms.second_moment_norm`, :class:`~gnelib.nn.norms.SecondMomentNorm`) is
written in plain torch ops. Run eagerly, each op is its own pass over the tensor, and SMN is
no faster than ``nn.BatchNorm2d``'s fused kernel on a CPU. Here the forward
:math:`s_c=\\sqrt{\\tfrac1M\\sum x^2}`, :math:`y=\\gamma_c x/(s_c+\\epsilon)+\\beta_c`
(:func:`smn_forward`) and the closed-form backward of Chen et al. (2020)
(:func:`smn_backward`) are each compiled with ``torch.compile`` (inductor) into a reduction
loop and an elementwise loop, which is where SMN's saving over batch norm (one statistic,
the second moment, instead of the mean and the variance) can show. Whether it does on a
given machine is measured by ``gnelib/bench/bench_smn.py`` (the book's Performance page).

Compilation is lazy (at the first call for each input shape, seconds to tens of seconds on a
CPU; with ``dynamic=None``, torch's default, a second shape triggers one dynamic-shape graph
that serves all later shapes) and is skipped, with a fallback to the same code run eagerly,
when ``torch.compile`` is missing, when the environment variable ``GNE_COMPILE=0`` is set, or
when compiling fails (for instance no C compiler for inductor's CPU backend; one
``RuntimeWarning``); ``compiled`` says which path runs.
"""
from __future__ import annotations

import functools
import os
import warnings
from types import SimpleNamespace

import torch

from gnelib.base.errors import check_choice
from gnelib.nn.norms import SecondMomentNorm, second_moment_norm

__all__ = ["COMPILE_ENV", "BACKWARDS", "compile_enabled", "CompiledFunction", "smn_forward",
           "smn_backward", "compiled_second_moment_norm", "CompiledSecondMomentNorm",
           "reset_compiled", "reduce_dims"]

#: Set to ``0`` to disable compilation everywhere (every compiled function runs eagerly).
COMPILE_ENV = "GNE_COMPILE"
_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_enabled() -> tuple[bool, str]:
    """Whether ``torch.compile`` can be tried here, and why not if it cannot."""
    if os.environ.get(COMPILE_ENV, "1").strip() in ("0", "false", "no", "off"):
        return False, f"disabled by {COMPILE_ENV}={os.environ[COMPILE_ENV]}"
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile"
    return True, ""


class CompiledFunction:
    """``fn`` under ``torch.compile(backend, mode, dynamic)``, falling back to ``fn`` itself
    (with one warning) when compiling is unavailable or fails. ``compiled`` is ``True`` while
    the compiled path is in use; ``reason`` says why it is not."""

    def __init__(self, fn, backend: str = "inductor", mode: str | None = None,
                 dynamic: bool | None = None):
        check_choice("mode", mode, _MODES)
        if not isinstance(backend, str) or not backend:
            raise ValueError(f"backend must be a non-empty backend name, got {backend!r}")
        self.fn, self.backend, self.mode, self.dynamic = fn, backend, mode, dynamic
        functools.update_wrapper(self, fn)
        ok, self.reason = compile_enabled()
        self._compiled = None
        if ok:
            try:
                self._compiled = torch.compile(fn, backend=backend, mode=mode, dynamic=dynamic)
            except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
                self._fail(err)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _fail(self, err: BaseException) -> None:
        self._compiled = None
        self.reason = f"torch.compile failed ({type(err).__name__}: {str(err)[:200]})"
        warnings.warn(f"{self.fn.__name__}: {self.reason}; running eagerly", RuntimeWarning,
                      stacklevel=3)

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - compile errors surface at the first call
            if not _is_compile_error(err):
                raise
            self._fail(err)
            return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        how = f"compiled, backend={self.backend!r}" if self.compiled else f"eager: {self.reason}"
        return f"CompiledFunction({self.fn.__name__}, {how})"


def reduce_dims(x: torch.Tensor) -> list[int]:
    """The dimensions a per-channel statistic of an ``(N, C, ...)`` tensor reduces over."""
    if x.ndim < 2:
        raise ValueError(f"input must have shape (N, C, ...), got {tuple(x.shape)}")
    return [0, *range(2, x.ndim)]


def _is_compile_error(err: BaseException) -> bool:
    """Errors raised by dynamo/inductor themselves (not by the user's code)."""
    mod = type(err).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor", "torch._functorch")) or \
        "CppCompileError" in type(err).__name__ or "BackendCompilerFailed" in type(err).__name__


def _view(x: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.ndim - 2)


def smn_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """SMN training forward (Chen et al. 2020) in plain ops, for the compiler:
    :math:`s_c=\\sqrt{\\tfrac1M\\sum x^2}`, :math:`y=\\gamma_c x/(s_c+\\epsilon)+\\beta_c`.
    Returns ``(y, s, 1/(s+eps))`` with ``s`` of shape ``(1, C, 1, ...)``."""
    s = x.pow(2).mean(reduce_dims(x), keepdim=True).sqrt()
    inv = 1.0 / (s + eps)
    return x * (weight.reshape(_view(x)) * inv) + bias.reshape(_view(x)), s, inv


def smn_backward(dy: torch.Tensor, x: torch.Tensor, s: torch.Tensor, inv: torch.Tensor,
                 weight: torch.Tensor):
    """The closed-form SMN backward of Chen et al. (2020) (as in
    :class:`gnelib.nn.norms.SecondMomentNormFunction`): with :math:`a=\\gamma\\,\\mathrm{inv}`,
    :math:`S=\\sum dy\\,x` per channel, :math:`dx=a\\,dy-\\frac{a\\,S\\,\\mathrm{inv}}{Ms}x`,
    :math:`\\partial\\gamma=S\\,\\mathrm{inv}`, :math:`\\partial\\beta=\\sum dy`. One reduction
    pass (both sums) and one elementwise pass once compiled."""
    dims = reduce_dims(x)
    m = x.numel() // x.shape[1]
    big_s = (dy * x).sum(dims, keepdim=True)
    a = weight.reshape(_view(x)) * inv
    dx = a * dy - (a * big_s * inv / (m * s)) * x
    return dx, (big_s * inv).reshape(-1), dy.sum(dims)


def _smn_train_autograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """:func:`~gnelib.nn.norms.second_moment_norm` and the per-channel root mean square ``s`` (no
    gradient), for compiling with the backward that autograd derives."""
    y = second_moment_norm(x, weight, bias, eps)
    return y, x.detach().pow(2).mean(reduce_dims(x)).sqrt()


class _CompiledSMNFunction(torch.autograd.Function):
    """SMN with a compiled forward (:func:`smn_forward`) and a compiled closed-form backward
    (:func:`smn_backward`); returns ``(y, s)``, ``s`` not differentiable. First-order only."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, kernels):
        y, s, inv = kernels.forward(x, weight, bias, eps)
        ctx.save_for_backward(x, s, inv, weight)
        ctx.kernels = kernels
        ctx.mark_non_differentiable(s)
        return y, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _ds):
        x, s, inv, weight = ctx.saved_tensors
        dx, dweight, dbias = ctx.kernels.backward(dy.contiguous(), x, s, inv, weight)
        return dx, dweight, dbias, None, None


#: How the compiled SMN gets its backward: the closed form compiled on its own, or the one
#: autograd derives from the forward, compiled jointly (AOTAutograd).
BACKWARDS = ("closed_form", "autograd")


@functools.lru_cache(maxsize=None)
def _kernels(backend: str, mode: str | None, dynamic: bool | None) -> SimpleNamespace:
    kw = dict(backend=backend, mode=mode, dynamic=dynamic)
    return SimpleNamespace(forward=CompiledFunction(smn_forward, **kw),
                           backward=CompiledFunction(smn_backward, **kw),
                           autograd=CompiledFunction(_smn_train_autograd, **kw))


def _compiled_status(backward: str, backend: str, mode, dynamic) -> bool:
    k = _kernels(backend, mode, dynamic)
    if backward == "closed_form":
        return k.forward.compiled and k.backward.compiled
    return k.autograd.compiled


def _smn_apply(x, weight, bias, eps, backward, backend, mode, dynamic):
    """``(y, s)`` of the compiled SMN; ``s`` flattened to ``(C,)``."""
    k = _kernels(backend, mode, dynamic)
    if weight is None:
        weight = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
    if bias is None:
        bias = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    if backward == "closed_form":
        y, s = _CompiledSMNFunction.apply(x, weight, bias, float(eps), k)
    else:
        y, s = k.autograd(x, weight, bias, float(eps))
    return y, s.reshape(-1)


def reset_compiled() -> None:
    """Forget every compiled graph (``torch._dynamo.reset``) and the cached wrappers, so the
    next call compiles afresh for its shape (benchmarks do this between shapes to stay
    under dynamo's recompilation limit and get one static kernel per shape)."""
    _kernels.cache_clear()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()


def compiled_second_moment_norm(backend: str = "inductor", mode: str | None = None,
                                dynamic: bool | None = None, backward: str = "closed_form"):
    """The SMN of Chen et al. (2020), :math:`y=\\gamma_c x/(s_c+\\epsilon)+\\beta_c` with
    :math:`s_c=\\sqrt{\\tfrac1M\\sum x^2}` (as :func:`~gnelib.nn.norms.second_moment_norm`), compiled
    with ``torch.compile`` (eager fallback, module docstring). ``backward="closed_form"``
    compiles :func:`smn_forward` and the closed-form :func:`smn_backward` separately (first
    order only); ``"autograd"`` compiles the forward with the backward autograd derives.
    Returns ``f(x, weight=None, bias=None, eps=1e-5) -> y``; ``f.compiled()`` says whether
    the compiled path is in use."""
    check_choice("backward", backward, BACKWARDS)
    check_choice("mode", mode, _MODES)

    def smn(x, weight=None, bias=None, eps: float = 1e-5):
        return _smn_apply(x, weight, bias, eps, backward, backend, mode, dynamic)[0]

    smn.compiled = lambda: _compiled_status(backward, backend, mode, dynamic)
    return smn


class CompiledSecondMomentNorm(SecondMomentNorm):
    """:class:`~gnelib.nn.norms.SecondMomentNorm` whose training forward and backward run compiled
    (:func:`compiled_second_moment_norm`; ``backward`` picks the closed form, the default, or
    the autograd-derived one); eval mode, the running statistic and inputs under
    ``torch.func`` transforms (which need the parent's ``jvp``/``vmap`` rules) take the
    parent's eager path. Same parameters as the parent plus ``backward``, and ``backend``,
    ``mode``, ``dynamic`` of ``torch.compile``; ``compiled`` tells whether the compiled path
    is in use (``False`` after a fallback to eager)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, backward: str = "closed_form", backend: str = "inductor",
                 mode: str | None = None, dynamic: bool | None = None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         closed_form=True)
        check_choice("backward", backward, BACKWARDS)
        check_choice("mode", mode, _MODES)
        self.backward_kind, self.backend, self.mode, self.dynamic = backward, backend, mode, dynamic

    @property
    def compiled(self) -> bool:
        return _compiled_status(self.backward_kind, self.backend, self.mode, self.dynamic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or torch._C._functorch.is_functorch_wrapped_tensor(x):
            return super().forward(x)
        self._check(x)
        y, s = _smn_apply(x, self.weight, self.bias, self.eps, self.backward_kind,
                          self.backend, self.mode, self.dynamic)
        if self.momentum > 0:
            with torch.no_grad():
                self.running_rms.lerp_(s.to(self.running_rms.dtype), self.momentum)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, " \
               f"backward={self.backward_kind!r}, backend={self.backend!r}, " \
               f"compiled={self.compiled}"
