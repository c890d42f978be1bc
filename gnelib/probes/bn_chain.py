"""Gradient norms and isometry gaps of many random BN MLPs at once.

The networks are the BN MLPs of :class:`~gnelib.nn.batchnorm.BNMLP` written functionally and
batched over independent draws ("seeds"): weights are stacks ``(S, out, in)``, inputs
``(S, n, in_dim)``. One batched forward pass serves all seeds.

Depth sweeps reuse prefixes: the depth-``L'`` network is the first ``L'`` layers of the
deepest one plus the shared read-out, which has exactly the law of an independently drawn
depth-``L'`` network (weights are i.i.d. over layers), so one forward pass to
``max(depths)`` serves every depth. Each depth then needs its own backward pass from
layer ``L'`` down to the measured layer (the upstream gradients differ), so the cost of a
sweep is one forward of ``max(depths)`` layers plus backward passes of ``sum(depths)``
layers in total; memory is that of one forward pass (seeds are processed in chunks to
bound it). Curves at different depths of one seed are therefore correlated; the mean
over seeds at each depth is the same as with independent networks.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from gnelib.nn.batchnorm import (BN_ACTIVATIONS, BN_INITS, NORMS, ORDERS, bn_activation, layer_gains,
                     paper_batch_norm, torch_batch_norm)
from gnelib.base.device import torch_threads
from gnelib.base.errors import check_choice, check_positive_int
from gnelib.probes.isometry import haar_orthogonal, isometry_gaps, min_eigenvalue_ratios

__all__ = ["stack_weights", "bn_forward", "log_grad_norms_at_depths", "layer_log_grad_norms",
           "representation_gaps",
           "log_grad_norm_vs_depth", "layer_gradient_profile", "bn_chain_gaps", "bn_inputs",
           "torch_threads", "layer_output_moments"]

MEMORY_BUDGET = 1.5e9  # bytes of activations kept for the backward pass, per chunk




def _weight(S, n_out, n_in, init, generator, dtype):
    if init == "orthogonal":
        q = haar_orthogonal(max(n_out, n_in), generator=generator, dtype=dtype, batch=S)
        return q[:, :n_out, :n_in].contiguous()
    return torch.randn(S, n_out, n_in, generator=generator, dtype=dtype) / math.sqrt(n_in)


def stack_weights(seeds: int, in_dim: int, width: int, depth: int, out_dim: int,
                  init: str = "orthogonal", generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float64):
    """Weights of ``seeds`` independent BN MLPs as in :class:`~gnelib.nn.batchnorm.BNMLP`:
    ``(weights, head)`` with ``weights[0]`` of shape ``(S, width, in_dim)``, the others
    ``(S, width, width)``, and ``head`` ``(S, out_dim, width)``. Orthogonal: Haar
    (semi-orthogonal for non-square); Gaussian: :math:`\\mathcal N(0, 1/n_{in})`."""
    check_choice("init", init, BN_INITS)
    for name, v in (("seeds", seeds), ("in_dim", in_dim), ("width", width), ("depth", depth),
                    ("out_dim", out_dim)):
        check_positive_int(name, v)
    first = _weight(seeds, width, in_dim, init, generator, dtype)
    rest = []
    if depth > 1:  # all square layers in one batched draw
        w = _weight(seeds * (depth - 1), width, width, init, generator, dtype)
        rest = list(w.reshape(depth - 1, seeds, width, width).unbind(0))
    return [first, *rest], _weight(seeds, out_dim, width, init, generator, dtype)


def bn_inputs(seeds: int, batch: int, in_dim: int, out_dim: int, distinct: int | None = None,
              generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64):
    """Standard Gaussian inputs ``(S, n, in_dim)`` and uniformly random labels ``(S, n)``.
    With ``distinct = r`` only ``r`` distinct samples are drawn and tiled over the batch
    (sample ``i`` is sample ``i mod r``): a degenerate batch when ``r < n``."""
    check_positive_int("batch", batch)
    r = batch if distinct is None else check_positive_int("distinct", distinct)
    if r > batch:
        raise ValueError(f"distinct must be <= batch = {batch}, got {distinct!r}")
    x = torch.randn(seeds, r, in_dim, generator=generator, dtype=dtype)
    x = x[:, torch.arange(batch) % r]
    y = torch.randint(out_dim, (seeds, batch), generator=generator)
    return x, y


def _check_net(norm, activation, order):
    check_choice("norm", norm, NORMS)
    check_choice("activation", activation, BN_ACTIVATIONS)
    check_choice("order", order, ORDERS)


def bn_forward(x: torch.Tensor, weights, norm: str = "paper", activation: str = "identity",
               order: str = "norm_act", gains=None, mean_reduction: bool = False,
               factor=1.0, eps: float = 1e-5, return_pre: bool = False):
    """Hidden representations :math:`X_1..X_L` of the BN MLP, Meterez et al. (2024)
    eq. (11), for a stack of networks: ``x`` is ``(S, n, in_dim)``, ``weights`` a list of
    ``(S, out, in)`` tensors; returns ``L`` tensors ``(S, n, width)``. ``gains`` are the
    :math:`\\alpha_\\ell` (default all 1). ``norm="torch"`` is :func:`torch_batch_norm`,
    i.e. ``nn.BatchNorm1d`` in training mode at initialisation. With ``return_pre`` also
    the pre-normalisation outputs :math:`H_\\ell = W_{\\ell-1} X_{\\ell-1}` (same shapes)."""
    _check_net(norm, activation, order)
    act = bn_activation(activation)
    gains = [1.0] * len(weights) if gains is None else list(gains)
    if norm == "paper":
        def nrm(h):
            return paper_batch_norm(h, mean_reduction, factor)
    elif norm == "torch":
        def nrm(h):
            return torch_batch_norm(h, eps)
    else:
        def nrm(h):
            return h
    out, pre = [], []
    for w, a in zip(weights, gains):
        h = x @ w.transpose(-1, -2)
        x = act(a * nrm(h)) if order == "norm_act" else nrm(act(a * h))
        out.append(x)
        pre.append(h)
    return (out, pre) if return_pre else out


def _loss(xL, head, y):
    logits = xL @ head.transpose(-1, -2)
    S, n, C = logits.shape
    # sum over seeds of each seed's mean cross-entropy: seeds stay independent
    return torch.nn.functional.cross_entropy(logits.reshape(S * n, C), y.reshape(S * n),
                                             reduction="sum") / n


def log_grad_norms_at_depths(x, y, weights, head, depths, layer: int = 1,
                             **net) -> torch.Tensor:
    """:math:`\\log\\|\\nabla_{W_{\\text{layer}}}\\mathcal L\\|_F` of the cross-entropy
    :math:`\\mathcal L` of the depth-``L'`` prefix network with read-out ``head``, for each
    ``L'`` in ``depths`` (module docstring: one forward, one backward per depth). Returns
    ``(S, len(depths))``. ``net`` are the options of :func:`bn_forward`."""
    depths = [check_positive_int("depth", int(L)) for L in depths]
    if not 0 <= layer < min(depths):
        raise ValueError(f"layer must be in [0, min(depths)) = [0, {min(depths)}), got {layer!r}")
    if max(depths) > len(weights):
        raise ValueError(f"depths must be <= len(weights) = {len(weights)}, got {max(depths)}")
    w = weights[layer].detach().clone().requires_grad_(True)
    ws = list(weights[:max(depths)])
    ws[layer] = w
    with torch.enable_grad():
        hs = bn_forward(x, ws, **net)
        out = torch.empty(x.shape[0], len(depths), dtype=torch.float64)
        for j in sorted(range(len(depths)), key=lambda j: -depths[j]):
            (g,) = torch.autograd.grad(_loss(hs[depths[j] - 1], head, y), w, retain_graph=True)
            out[:, j] = g.flatten(1).norm(dim=1).log().to(torch.float64).cpu()
    return out


def layer_log_grad_norms(x, y, weights, head, **net) -> torch.Tensor:
    """:math:`\\log\\|\\nabla_{W_\\ell}\\mathcal L\\|_F` for every layer ``ℓ = 0..L-1`` of
    the stacked networks, in one forward and one backward pass; ``(S, L)``. The weight
    gradients are not formed: with :math:`G_\\ell=\\partial\\mathcal L/\\partial H_\\ell`,
    :math:`\\|G_\\ell^\\top X_{\\ell}\\|_F^2=\\langle G_\\ell G_\\ell^\\top, X_\\ell X_\\ell^\\top\\rangle`
    costs ``n x n`` Gram matrices only."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        hs, pre = bn_forward(x, [w.detach() for w in weights], return_pre=True, **net)
        grads = torch.autograd.grad(_loss(hs[-1], head, y), pre)
    out = []
    for g, inp in zip(grads, [x.detach()] + [h.detach() for h in hs[:-1]]):
        # grad W = G^T X, so ||grad W||_F^2 = <G G^T, X X^T>: n x n Grams, no d x d matrices
        sq = ((g @ g.transpose(-1, -2)) * (inp @ inp.transpose(-1, -2))).sum((-1, -2))
        out.append(0.5 * sq.clamp_min(0).log())
    return torch.stack(out, 1).to(torch.float64).cpu()


def _chunks(seeds, batch, width, depth, dtype):
    per_seed = (10 * batch * width + width * width) * depth * torch.finfo(dtype).bits // 8
    size = max(1, min(seeds, int(MEMORY_BUDGET // max(per_seed, 1))))
    return [min(size, seeds - s) for s in range(0, seeds, size)]


def _sweep(kind, depth, depths, width, batch, in_dim, out_dim, init, norm, activation, order,
           gain_exponent, gain, mean_reduction, factor, layer, seeds, seed, distinct, dtype,
           device, progress, desc, threads):
    check_positive_int("width", width)
    check_positive_int("seeds", seeds)
    in_dim = width if in_dim is None else check_positive_int("in_dim", in_dim)
    _check_net(norm, activation, order)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed))
    net = dict(norm=norm, activation=activation, order=order,
               gains=layer_gains(depth, gain_exponent, gain), mean_reduction=mean_reduction,
               factor=factor)
    rows = []
    with torch_threads(threads if device.type == "cpu" else None):
        for S in tqdm(_chunks(seeds, batch, width, depth, dtype), desc=desc,
                      disable=not progress, leave=False):
            rows.append(_one_chunk(kind, S, depth, depths, batch, in_dim, width, out_dim, init,
                                   layer, distinct, gen, dtype, device, net))
    return torch.cat(rows).numpy()


def _one_chunk(kind, S, depth, depths, batch, in_dim, width, out_dim, init, layer, distinct,
               gen, dtype, device, net):
    x, y = bn_inputs(S, batch, in_dim, out_dim, distinct, gen, dtype)
    weights, head = stack_weights(S, in_dim, width, depth, out_dim, init, gen, dtype)
    x, y, head = x.to(device), y.to(device), head.to(device)
    weights = [w.to(device) for w in weights]
    if kind == "depths":
        return log_grad_norms_at_depths(x, y, weights, head, depths, layer, **net)
    return layer_log_grad_norms(x, y, weights, head, **net)


def log_grad_norm_vs_depth(depths, width: int = 100, batch: int = 100, *,
                           in_dim: int | None = None, out_dim: int = 10,
                           init: str = "orthogonal", norm: str = "paper",
                           activation: str = "identity", order: str = "norm_act",
                           gain_exponent: float = 0.0, gain: float = 1.0,
                           mean_reduction: bool = False, factor=1.0, layer: int = 1,
                           seeds: int = 1, seed: int = 0, distinct: int | None = None,
                           dtype: torch.dtype = torch.float64, device="cpu",
                           progress: bool = False, threads: int | None = 1) -> np.ndarray:
    """The depth sweep of Meterez et al. (2024), Fig. 3 / Theorem 5:
    :math:`\\log\\|\\nabla_{W_{\\text{layer}}}\\mathcal L\\|_F` at initialisation of BN MLPs
    of every depth in ``depths``, width ``width``, batch ``batch`` (Gaussian inputs of
    dimension ``in_dim``, default ``width``; random labels in ``out_dim`` classes; softmax
    cross-entropy), for ``seeds`` independent draws. Returns an array
    ``(seeds, len(depths))``.

    Cost: per seed one forward pass of ``max(depths)`` layers and backward passes of
    ``sum(depths)`` layers (module docstring), all seeds of a chunk batched together.
    Deterministic given ``seed`` (one CPU generator for all draws). On the CPU the work
    runs on ``threads`` torch threads (:func:`torch_threads`)."""
    depths = [check_positive_int("depth", int(L)) for L in depths]
    return _sweep("depths", max(depths), depths, width, batch, in_dim, out_dim, init, norm,
                  activation, order, gain_exponent, gain, mean_reduction, factor, layer, seeds,
                  seed, distinct, dtype, device, progress, "depth sweep", threads)


def layer_gradient_profile(depth: int, width: int = 32, batch: int = 32, *,
                           in_dim: int | None = None, out_dim: int = 10,
                           init: str = "orthogonal", norm: str = "paper",
                           activation: str = "identity", order: str = "norm_act",
                           gain_exponent: float = 0.0, gain: float = 1.0,
                           mean_reduction: bool = False, factor=1.0, seeds: int = 1,
                           seed: int = 0, distinct: int | None = None,
                           dtype: torch.dtype = torch.float64, device="cpu",
                           progress: bool = False, threads: int | None = 1) -> np.ndarray:
    """:math:`\\log\\|\\nabla_{W_\\ell}\\mathcal L\\|_F` for every layer ``ℓ = 0..depth-1``
    of one depth-``depth`` BN MLP per seed (one forward and one backward pass); array
    ``(seeds, depth)``. Its slope in ``ℓ`` is the explosion rate of Meterez et al. (2024),
    App. E, eq. (165), read backwards from the output."""
    check_positive_int("depth", depth)
    return _sweep("layers", depth, None, width, batch, in_dim, out_dim, init, norm,
                  activation, order, gain_exponent, gain, mean_reduction, factor, 0, seeds,
                  seed, distinct, dtype, device, progress, "layer profile", threads)


@torch.no_grad()
def bn_chain_gaps(x0: torch.Tensor, depth: int, init: str = "orthogonal", norm: str = "paper",
                  mean_reduction: bool = False, generator: torch.Generator | None = None,
                  every: int = 1, threads: int | None = 1, statistic: str = "gap") -> np.ndarray:
    """The isometry gaps :math:`\\phi(X_\\ell)` along the linear BN chain
    :math:`X_{\\ell+1}=\\mathrm{Bn}(W_\\ell X_\\ell)` of Meterez et al. (2024), Theorem 1,
    with fresh ``d x d`` weights at every layer (Haar or Gaussian). ``x0`` is a stack
    ``(S, n, d)`` (batch-major); returns ``(S, K)`` gaps at layers ``0, every, 2 every, ..``
    up to ``depth`` (:math:`\\phi(X_0)` first, ``+inf`` where degenerate). With
    ``statistic="min_eig"`` the ratio :math:`\\lambda_{\\min}/\\bar\\lambda` of
    :func:`~gnelib.probes.isometry.min_eigenvalue_ratios` instead, which shows how far below the
    float64 rank threshold a collapsing batch falls."""
    check_positive_int("depth", depth)
    check_positive_int("every", every)
    check_choice("init", init, BN_INITS)
    check_choice("norm", norm, NORMS)
    check_choice("statistic", statistic, ("gap", "min_eig"))
    stat = isometry_gaps if statistic == "gap" else min_eigenvalue_ratios
    x = x0.to(torch.float64).cpu()
    S, n, d = x.shape
    out = [stat(x.transpose(-1, -2))]
    with torch_threads(threads):
        for ell in range(1, depth + 1):
            w = _weight(S, d, d, init, generator, torch.float64)
            x = bn_forward(x, [w], norm=norm, mean_reduction=mean_reduction)[0]
            if ell % every == 0:
                out.append(stat(x.transpose(-1, -2)))
    return np.stack(out, 1)


@torch.no_grad()
def representation_gaps(depths, width: int = 32, batch: int = 32, *, init: str = "orthogonal",
                        norm: str = "torch", activation: str = "identity",
                        gain_exponent: float = 0.0, seeds: int = 4, seed: int = 0,
                        threads: int | None = 1) -> np.ndarray:
    """The isometry gap :math:`\\phi(X_L)` of the last hidden representation of BN MLPs (the
    networks of :func:`log_grad_norm_vs_depth`, Gaussian inputs of dimension ``width``) at
    every depth ``L`` of ``depths``: one forward pass of ``max(depths)`` layers per seed, the
    depth-``L`` network being its first ``L`` layers. Returns ``(seeds, len(depths))``
    (``+inf`` for a numerically degenerate batch). Meterez et al. (2024), Fig. G5-right.
    Used in: bn, § Non-linear activations."""
    depths = [check_positive_int("depth", int(L)) for L in depths]
    check_positive_int("width", width)
    gen = torch.Generator().manual_seed(int(seed))
    with torch_threads(threads):
        x, _ = bn_inputs(seeds, batch, width, 10, None, gen, torch.float64)
        weights, _ = stack_weights(seeds, width, width, max(depths), 10, init, gen, torch.float64)
        hs = bn_forward(x, weights, norm=norm, activation=activation,
                        gains=layer_gains(max(depths), gain_exponent))
    return np.stack([isometry_gaps(hs[L - 1].transpose(-1, -2)) for L in depths], 1)


def layer_output_moments(width: int, batch: int, depth: int, activation: str = "tanh",
                         gain_exponent: float = 0.0, norm: str = "torch", draws: int = 64,
                         seed: int = 0, init: str = "orthogonal", dtype=torch.float64) -> np.ndarray:
    """Every layer ℓ = 1..``depth`` of the BN MLP of eq. (11) (square layers of ``width``,
    gains :func:`~gnelib.nn.batchnorm.layer_gains`), each fed its own batch of ``batch``
    i.i.d. standard Gaussian vectors: the mean square of :math:`\sigma(\alpha_\ell
    \mathrm{Bn}(W_\ell X))` over the batch and the units, per draw; ``(draws, depth)``.
    A feature of :math:`W_\ell X` is then ``batch`` i.i.d. Gaussians, so the prediction is
    :func:`~gnelib.theory.bn_rates.bn_output_second_moment` at :math:`\alpha_\ell`.

    Used in: BN chapter, section "Non-linear activations and activation shaping"."""
    for name, v in (("width", width), ("batch", batch), ("depth", depth), ("draws", draws)):
        check_positive_int(name, v)
    _check_net(norm, activation, "norm_act")
    gen = torch.Generator().manual_seed(int(seed))
    weights, _ = stack_weights(draws, width, width, depth, 1, init, gen, dtype)
    gains = layer_gains(depth, gain_exponent)
    out = []
    for w, a in zip(weights, gains):
        x = torch.randn(draws, batch, width, generator=gen, dtype=dtype)
        (h,) = bn_forward(x, [w], norm=norm, activation=activation, gains=[a])
        out.append(h.pow(2).mean((1, 2)))
    return torch.stack(out, 1).cpu().numpy()
