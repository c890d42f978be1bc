"""Second moment normalisation compiled with ``torch.compile``, with an eager fallback.

The library's SMN (:func:`gnelib.second_moment_norm`, :class:`gnelib.SecondMomentNorm`) is
written in plain torch ops. Run eagerly, each op is its own pass over the tensor, and SMN is
no faster than ``nn.BatchNorm2d``'s fused kernel on a CPU. Compiled with ``torch.compile``
(inductor), the forward :math:`s_c=\\sqrt{\\tfrac1M\\sum x^2}`,
:math:`y=\\gamma_c x/(s_c+\\epsilon)+\\beta_c` and the backward that autograd derives from it
are fused into a few loops, which is where SMN's saving over batch norm (one statistic, the
second moment, instead of the mean and the variance; Chen et al. 2020) can show. Whether it
does on a given machine is measured by ``benchmarks/bench_smn.py`` (the book's Performance
page).

Compilation is lazy (at the first call for each input shape, seconds to tens of seconds on a
CPU; with ``dynamic=None``, torch's default, a second shape triggers one dynamic-shape graph
that serves all later shapes) and is skipped, with a fallback to the eager code, when ``torch.compile`` is missing, when the
environment variable ``GNE_COMPILE=0`` is set, or when compiling fails (for instance no C
compiler for inductor's CPU backend); :attr:`CompiledFunction.compiled` says which ran.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

from .errors import check_choice
from .layers import SecondMomentNorm, second_moment_norm

__all__ = ["COMPILE_ENV", "compile_enabled", "CompiledFunction", "compiled_second_moment_norm",
           "CompiledSecondMomentNorm", "reset_compiled", "reduce_dims"]

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


def _smn_train(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float):
    """SMN training forward, :func:`gnelib.second_moment_norm`, plus the per-channel root
    mean square ``s`` (no gradient) for the running statistic; compiled, the two share one
    reduction."""
    y = second_moment_norm(x, weight, bias, eps)
    s = x.detach().pow(2).mean(reduce_dims(x)).sqrt()
    return y, s


@functools.lru_cache(maxsize=None)
def _compiled(backend: str, mode: str | None, dynamic: bool | None) -> CompiledFunction:
    return CompiledFunction(_smn_train, backend=backend, mode=mode, dynamic=dynamic)


def reset_compiled() -> None:
    """Forget every compiled graph (``torch._dynamo.reset``) and the cached wrappers, so the
    next call compiles afresh for its shape (benchmarks do this between shapes to stay
    under dynamo's recompilation limit and get one static kernel per shape)."""
    _compiled.cache_clear()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()


def compiled_second_moment_norm(backend: str = "inductor", mode: str | None = None,
                                dynamic: bool | None = None):
    """The SMN forward of Chen et al. (2020), :math:`y=\\gamma_c x/(s_c+\\epsilon)+\\beta_c`
    with :math:`s_c=\\sqrt{\\tfrac1M\\sum x^2}` (:func:`gnelib.second_moment_norm`), compiled
    with ``torch.compile`` (eager fallback, module docstring). Returns a function
    ``f(x, weight=None, bias=None, eps=1e-5) -> y``; ``f.compiled`` says which path runs."""
    inner = _compiled(backend, mode, dynamic)

    def smn(x, weight=None, bias=None, eps: float = 1e-5):
        return inner(x, weight, bias, float(eps))[0]

    smn.inner = inner
    return smn


class CompiledSecondMomentNorm(SecondMomentNorm):
    """:class:`gnelib.SecondMomentNorm` whose training forward runs through
    :func:`compiled_second_moment_norm` (autograd backward, fused by the compiler); eval mode
    and the running statistic are as in the parent. Same parameters plus ``backend``,
    ``mode`` and ``dynamic`` of ``torch.compile``; ``compiled`` tells whether the compiled
    path is in use (``False`` after a fallback to eager)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, backend: str = "inductor", mode: str | None = None,
                 dynamic: bool | None = None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         closed_form=False)
        check_choice("mode", mode, _MODES)
        self.backend, self.mode, self.dynamic = backend, mode, dynamic

    @property
    def compiled(self) -> bool:
        return _compiled(self.backend, self.mode, self.dynamic).compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check(x)
        y, s = _compiled(self.backend, self.mode, self.dynamic)(x, self.weight, self.bias,
                                                              self.eps)
        if self.momentum > 0 and not torch._C._functorch.is_functorch_wrapped_tensor(x):
            with torch.no_grad():
                self.running_rms.lerp_(s.to(self.running_rms.dtype), self.momentum)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, " \
               f"backend={self.backend!r}, compiled={self.compiled}"

