"""Probes of how gradients travel: Jacobian spectral moments and per-layer gradient norms.

:func:`jacobian_moments` estimates the first two normalised spectral moments of
:math:`JJ^\\top` for the Jacobian :math:`J` of a block, the quantities block dynamical
isometry is stated in (Chen et al. 2020, Definition 1):

.. math::
    \\phi(JJ^\\top) = \\tfrac{1}{n_\\text{out}}\\operatorname{tr}(JJ^\\top), \\qquad
    \\phi\\big((JJ^\\top)^2\\big) = \\tfrac{1}{n_\\text{out}}\\operatorname{tr}\\big((JJ^\\top)^2\\big).

With a Gaussian probe :math:`v\\sim\\mathcal N(0, I)`, :math:`u = J^\\top v` and
:math:`w = J u`, one has :math:`\\mathbb E\\|u\\|^2 = \\operatorname{tr}(JJ^\\top)` and
:math:`\\mathbb E\\|w\\|^2 = \\operatorname{tr}((JJ^\\top)^2)` (Hutchinson's estimator), so
both moments come from one vector-Jacobian and one Jacobian-vector product per probe,
without materialising :math:`J`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch._decomp.decompositions_for_jvp  # noqa: F401
from torch import nn

from gnelib.base.errors import check_positive_int

# torch.func.jvp imports the module above on first use, and that import compiles TorchScript
# from Python source. Doing it at import time keeps it out of worker threads: CPython 3.11
# can fail ("AST constructor recursion depth mismatch") when two threads parse at once, as
# in a Dask worker whose event loop unpickles a task while another task runs.

__all__ = ["JacobianMoments", "jacobian_moments", "gradient_norms", "block_moments",
           "activation_gradient_norms"]


@dataclass(frozen=True)
class JacobianMoments:
    """Normalised spectral moments of :math:`JJ^\\top` and their standard errors.

    ``phi1`` is :math:`\\phi(JJ^\\top)`, ``phi2`` is :math:`\\phi((JJ^\\top)^2)`; the
    standard errors are those of the probe average (zero for ``exact=True``). ``probes`` is
    0 for the exact path.
    """

    phi1: float
    phi2: float
    phi1_se: float
    phi2_se: float
    n_in: int
    n_out: int
    probes: int

    @property
    def variance(self) -> float:
        """Spectral variance :math:`\\phi((JJ^\\top)^2) - \\phi(JJ^\\top)^2`."""
        return self.phi2 - self.phi1**2

    @property
    def relative_variance(self) -> float:
        """:math:`\\phi((JJ^\\top)^2)/\\phi(JJ^\\top)^2 - 1`, which adds under serial
        composition (Chen et al., multiplication theorem)."""
        return self.phi2 / self.phi1**2 - 1.0


def _check_input(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite: it contains NaN or inf")
    return x.detach()


def _materialise(f, x: torch.Tensor) -> torch.Tensor:
    try:
        return torch.func.jacrev(f)(x)
    except RuntimeError:  # stateful blocks (running statistics) cannot be transformed
        return torch.autograd.functional.jacobian(f, x)


def _exact(f, x: torch.Tensor) -> JacobianMoments:
    jac = _materialise(f, x)
    n_in = x.numel()
    n_out = jac.numel() // n_in
    jac = jac.reshape(n_out, n_in).to(torch.float64)
    a = jac @ jac.T
    phi1 = torch.trace(a).item() / n_out
    phi2 = (a * a).sum().item() / n_out  # tr(A^2) = sum_ij A_ij^2 for symmetric A
    return JacobianMoments(phi1, phi2, 0.0, 0.0, n_in, n_out, 0)


def _func_products(f, x, probes, generator):
    """J^T v and J J^T v for Gaussian probes v, batched with torch.func.vmap."""
    y, vjp_fn = torch.func.vjp(f, x)
    v = torch.randn((probes, *y.shape), generator=generator, dtype=y.dtype).to(y.device)
    u = torch.func.vmap(vjp_fn)(v)[0]
    w = torch.func.vmap(lambda t: torch.func.jvp(f, (x,), (t,))[1])(u)
    return y.numel(), u, w


def _autograd_products(f, x, probes, generator):
    """The same products with plain autograd and one forward pass, for blocks that
    torch.func cannot transform (in-place updates of running statistics): J u is obtained
    as the gradient of (J^T r) . u with respect to a dummy r (the double-backward trick)."""
    xr = x.clone().requires_grad_(True)
    y = f(xr)
    r = torch.zeros_like(y, requires_grad=True)
    (jt_r,) = torch.autograd.grad(y, xr, r, create_graph=True)
    v = torch.randn((probes, *y.shape), generator=generator, dtype=y.dtype).to(y.device)
    us, ws = [], []
    for vi in v:
        (u,) = torch.autograd.grad(y, xr, vi, retain_graph=True)
        (w,) = torch.autograd.grad(jt_r, r, u, retain_graph=True)
        us.append(u)
        ws.append(w)
    return y.numel(), torch.stack(us), torch.stack(ws)


def jacobian_moments(f, x: torch.Tensor, probes: int = 64,
                     generator: torch.Generator | None = None,
                     exact: bool = False) -> JacobianMoments:
    """Estimate :math:`\\phi(JJ^\\top)` and :math:`\\phi((JJ^\\top)^2)` for the Jacobian of
    ``f`` at ``x``.

    ``J`` is the Jacobian of ``f(x).flatten()`` with respect to ``x.flatten()``: for a batch
    of inputs and a per-sample block it is block diagonal, so the moments are averages over
    the samples; a block that mixes samples (batch norm in training mode) is handled as is.

    Parameters
    ----------
    f : callable
        The block, a function or ``nn.Module`` of one tensor.
    x : torch.Tensor
        The input, finite and floating point (use float64 for tight checks).
    probes : int
        Number of Gaussian probes (>= 1; >= 2 for a standard error).
    generator : torch.Generator, optional
        A CPU generator for the probes, for reproducible estimates on any device.
    exact : bool
        Materialise ``J`` with ``torch.func.jacrev`` and return exact traces (small blocks).
    """
    x = _check_input(x)
    check_positive_int("probes", probes)
    if exact:
        try:
            return _exact(f, x)
        except RuntimeError as err:
            raise ValueError(f"f cannot be applied to x of shape {tuple(x.shape)}: {err}") from err
    state = generator.get_state() if generator is not None else None
    try:
        n_out, u, w = _func_products(f, x, probes, generator)
    except RuntimeError:
        if generator is not None:  # draw the same probes on the fallback path
            generator.set_state(state)
        try:
            n_out, u, w = _autograd_products(f, x, probes, generator)
        except RuntimeError as err:
            raise ValueError(f"f cannot be applied to x of shape {tuple(x.shape)}: {err}") from err
    a = u.reshape(probes, -1).to(torch.float64).pow(2).sum(1) / n_out
    b = w.reshape(probes, -1).to(torch.float64).pow(2).sum(1) / n_out
    if probes > 1:
        a_se = a.std().item() / math.sqrt(probes)
        b_se = b.std().item() / math.sqrt(probes)
    else:
        a_se = b_se = math.inf
    return JacobianMoments(a.mean().item(), b.mean().item(), a_se, b_se, x.numel(), n_out, probes)


def gradient_norms(model: nn.Module, loss: torch.Tensor) -> dict[str, float]:
    """Squared gradient norm :math:`\\|\\partial\\ell/\\partial W\\|_F^2` of ``loss`` for every
    weight tensor (parameters with two or more dimensions) of ``model``, in layer
    (registration) order. Does not touch ``.grad``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    if not named:
        raise ValueError("model has no trainable weight tensors (parameters with ndim >= 2)")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss must be a scalar tensor")
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {n: (0.0 if g is None else g.detach().pow(2).sum().item())
            for (n, _), g in zip(named, grads)}


def block_moments(blocks, x: torch.Tensor, probes: int = 32,
                  generator: torch.Generator | None = None) -> list[JacobianMoments]:
    """:func:`jacobian_moments` of every block of a serial network, each at the input it
    actually receives (``x`` propagated through the blocks before it)."""
    out, h = [], _check_input(x)
    for block in blocks:
        out.append(jacobian_moments(block, h, probes=probes, generator=generator))
        with torch.no_grad():
            h = block(h)
    return out


def activation_gradient_norms(blocks, head, x: torch.Tensor, y: torch.Tensor,
                              loss_fn=nn.functional.cross_entropy) -> list[float]:
    """Squared norms :math:`\\|\\partial\\ell/\\partial x_l\\|^2` of the loss gradient with
    respect to the input ``x_0`` and every block output ``x_1 .. x_L`` of a serial network
    ``head(blocks[L-1](...blocks[0](x)))``. Back-propagation multiplies these by
    :math:`J_l^\\top`, so in expectation :math:`\\|\\partial\\ell/\\partial x_{l-1}\\|^2 \\approx
    \\phi(J_lJ_l^\\top)\\,\\tfrac{n_l}{n_{l-1}}\\|\\partial\\ell/\\partial x_l\\|^2`
    (Chen et al., notes §1)."""
    h = _check_input(x).requires_grad_(True)
    outs = [h]
    for block in blocks:
        h = block(h)
        outs.append(h)
    loss = loss_fn(head(h), y)
    grads = torch.autograd.grad(loss, outs)
    return [g.detach().pow(2).sum().item() for g in grads]
