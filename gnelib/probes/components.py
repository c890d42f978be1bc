"""The component library, realised: one torch draw of each entry of
:data:`gnelib.theory.moments.COMPONENTS` at a small size, with its exact Jacobian moments.

Each probe ``draw(generator) -> (measured, predicted)`` builds the layer from the library's
torch modules (activations from :mod:`gnelib.nn.activations`, norms from
:mod:`gnelib.nn.norms`, weight reparametrisations from :mod:`gnelib.nn.convs`), computes
:math:`\\phi(JJ^\\top)` and :math:`\\phi((JJ^\\top)^2)` of that draw exactly (diagonal
Jacobians in closed form from autograd, small dense Jacobians materialised, circular convs by
FFT), and returns them with the library's closed form at the same parameters. Sizes are small
on purpose: finite-size terms (the +1 of the Wishart moment, m − 1 in weight normalisation,
M − 2 in batch norm) are largest there, so a wrong finite-size term shows.

Entries whose closed form holds for every draw (orthogonal, delta-orthogonal, average pooling,
BN/SMN/L1 at the draw's own batch statistics) are ``exact``; the others are expectations over
draws. Two entries are left out, and the chapter checks each in its own section: the residual
(at finite width it carries a term the addition theorem drops) and the orthogonal conv kernel
(a large-c entry, checked exactly by FFT at two channel counts).
Used in: bdi, §"The component library".
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

import gnelib.theory.moments as M
from gnelib.nn.activations import make_activation
from gnelib.nn.convs import standardized_weight
from gnelib.nn.init import delta_orthogonal_, haar_orthogonal_
from gnelib.nn.norms import L1MomentNorm, SecondMomentNorm
from gnelib.probes.conv_spectrum import circular_conv_moments

__all__ = ["ComponentProbe", "component_probes", "gram_moments", "measure"]

_F64 = torch.float64


class ComponentProbe(NamedTuple):
    """One realised entry: ``draw(generator) -> (measured (φ₁, φ₂), predicted Moments)``;
    ``exact`` when the prediction holds draw by draw; ``setting`` in words; ``row`` the key of
    :data:`~gnelib.theory.moments.COMPONENTS` it realises."""

    draw: Callable[[torch.Generator], tuple[tuple[float, float], M.Moments]]
    exact: bool
    setting: str
    row: str


def gram_moments(j: torch.Tensor) -> tuple[float, float]:
    """:math:`(\\tfrac1m\\operatorname{tr}JJ^\\top,\\ \\tfrac1m\\operatorname{tr}(JJ^\\top)^2)`
    of an m×n Jacobian, in float64; for a stack (..., m, n) their means over the stack."""
    j = j.detach().to(_F64)
    a = j @ j.transpose(-1, -2)
    m = j.shape[-2]
    return (float(a.diagonal(dim1=-2, dim2=-1).sum(-1).mean()) / m,
            float(a.pow(2).sum((-2, -1)).mean()) / m)


def _diag_moments(act: nn.Module, h: torch.Tensor) -> tuple[float, float]:
    """An elementwise activation's Jacobian is diag(f'(h)): φ_k = mean f'(h)^{2k}."""
    h = h.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(act(h).sum(), h)
    d2 = d.pow(2)
    return float(d2.mean()), float(d2.pow(2).mean())


def _activation(name: str, predicted: M.Moments, units: int, q: float = 1.0, **kw) -> Callable:
    act = make_activation(name, **kw).double()

    def draw(g):
        h = math.sqrt(q) * torch.randn(units, generator=g, dtype=_F64)
        return _diag_moments(act, h), predicted
    return draw


def _standardise(x: torch.Tensor, centre: bool) -> torch.Tensor:
    """Rows of x with (mean 0 and) mean square exactly 1."""
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt()


def _norm_jacobian(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Jacobian of a one-channel normalisation applied to M values (as a (M, 1) batch)."""
    f = lambda t: module(t.reshape(-1, 1)).reshape(-1)  # noqa: E731
    return torch.autograd.functional.jacobian(f, x)


def component_probes(n: int = 16, units: int = 4096, batch: int = 32, channels: int = 4,
                     grid: int = 8, mats: int = 64) -> dict[str, ComponentProbe]:
    """Realisations of the component library: weight layers are n×n (tall ones 2n×n), the
    activations act on ``units`` Gaussian pre-activations, normalisations on ``batch`` values,
    convolutions have ``channels`` channels on a ``grid``-sided circular grid. One draw of a
    random weight layer averages its moments over ``mats`` independent matrices (so that the
    finite-size terms, of relative size 1/n, are resolved with few draws)."""
    m = n
    probes: dict[str, ComponentProbe] = {}

    def add(name, draw, exact, setting, row=None):
        """``row``: the start of the COMPONENTS key realised (default: ``name``)."""
        key = next(k for k in M.COMPONENTS if k.startswith(row or name))
        probes[name] = ComponentProbe(draw, exact, setting, key)

    for name, pred, kw, setting in (
            ("ReLU", M.relu(), {}, "h ~ N(0, 1)"),
            ("leaky ReLU", M.leaky_relu(0.3), dict(slope=0.3), "γ = 0.3"),
            ("PReLU", M.prelu(0.25), dict(slope=0.25), "a = 0.25"),
            ("sPReLU", M.sprelu(0.25), dict(slope=0.25), "a = 0.25"),
            ("tanh", M.tanh(1.0), {}, "q = 1"),
            ("sigmoid", M.sigmoid(1.0), {}, "q = 1"),
            ("SeLU", M.selu(), {}, "standard λ, α; q = 1")):
        add(name, _activation(name.lower().replace(" ", "_"), pred, units, **kw), False,
            f"{units} units, {setting}")

    def dense(g):
        w = torch.randn(mats, m, n, generator=g, dtype=_F64) / math.sqrt(n)
        return gram_moments(w), M.dense(m, n, 1 / n)
    add("dense", dense, False, f"{m}×{n}, σ² = 1/n")

    def conv(g):
        c = channels
        ws = torch.randn(max(1, mats // 8), c, c, 3, 3, generator=g, dtype=_F64) / math.sqrt(9 * c)
        got = np.mean([circular_conv_moments(w, grid) for w in ws], axis=0)
        return tuple(got), M.conv(c, c, 3, 1 / (9 * c))
    add("conv, i.i.d. kernel", conv, False, f"c = {channels}, 3×3, {grid}×{grid} grid", "conv, i.i.d.")

    def orthogonal(g):
        w = haar_orthogonal_(torch.empty(n, n, dtype=_F64), gain=1.3, generator=g)
        return gram_moments(w), M.orthogonal(n, n, 1.3)
    add("orthogonal", orthogonal, True, f"{n}×{n}, g = 1.3", "orthogonal, gain")

    def orthogonal_tall(g):
        w = haar_orthogonal_(torch.empty(2 * n, n, dtype=_F64), gain=1.0, generator=g)
        return gram_moments(w), M.orthogonal(2 * n, n)
    add("orthogonal (tall)", orthogonal_tall, True, f"{2 * n}×{n}, columns orthonormal",
        "orthogonal m×n")

    def delta(g):
        w = delta_orthogonal_(torch.empty(channels, channels, 3, 3, dtype=_F64), gain=1.3, generator=g)
        return circular_conv_moments(w, grid), M.delta_orthogonal(channels, channels, 1.3)
    add("delta-orthogonal conv", delta, True, f"c = {channels}, g = 1.3")

    def weight_norm(g):
        v = torch.randn(mats, m, n, generator=g, dtype=_F64)
        return gram_moments(1.5 * v / v.norm(dim=-1, keepdim=True)), M.weight_norm(m, n, 1.5)
    add("weight norm", weight_norm, False, f"{m}×{n}, g = 1.5")

    def sws(g):
        v = 0.3 + torch.randn(mats, m, n, generator=g, dtype=_F64)
        w = standardized_weight(v.reshape(-1, n), gain2=2.0).reshape(mats, m, n)  # row by row
        return gram_moments(w), M.scaled_weight_standardization(m, n, 2.0)
    add("sWS", sws, False, f"{m}×{n}, γ₀ = 2")

    def batch_norm(g):
        x = _standardise(0.5 + torch.randn(batch, generator=g, dtype=_F64), centre=True)
        bn = nn.BatchNorm1d(1, eps=1e-300, affine=False, track_running_stats=False).double()
        return gram_moments(_norm_jacobian(bn, x)), M.batch_norm(batch)
    add("BN (train)", batch_norm, True, f"M = {batch}, unit batch variance")

    def smn(g):
        x = _standardise(0.5 + torch.randn(batch, generator=g, dtype=_F64), centre=False)
        mod = SecondMomentNorm(1, eps=1e-300).double()
        return gram_moments(_norm_jacobian(mod, x)), M.second_moment_norm(batch)
    add("SMN", smn, True, f"M = {batch}, unit mean square")

    def l1(g):
        x = torch.randn(batch, generator=g, dtype=_F64)
        mod = L1MomentNorm(1, eps=1e-300).double()
        pred = M.l1_moment_norm(batch, float(x.abs().mean()), float(x.pow(2).mean().sqrt()))
        return gram_moments(_norm_jacobian(mod, x)), pred
    add("L1 moment norm", l1, True, f"M = {batch}, at the draw's μ₁ and rms")

    def dropout(g):
        keep = 0.8
        mask = (torch.rand(units, generator=g, dtype=_F64) < keep).to(_F64) / keep
        d2 = mask.pow(2)
        return (float(d2.mean()), float(d2.pow(2).mean())), M.dropout(keep)
    add("dropout", dropout, False, f"{units} units, keep 0.8")

    def avg_pool(g):
        x = torch.randn(1, channels, grid, grid, generator=g, dtype=_F64)
        f = lambda t: nn.functional.avg_pool2d(t, 2).reshape(-1)  # noqa: E731
        j = torch.autograd.functional.jacobian(f, x).reshape(-1, x.numel())
        return gram_moments(j), M.avg_pool(2)
    add("average pool 2×2", avg_pool, True, f"c = {channels}, {grid}×{grid}", "average pool")

    def concatenation(g):
        k = max(1, n // 4)
        w = torch.randn(mats, k, n, generator=g, dtype=_F64) / math.sqrt(n)
        j = torch.cat([torch.eye(n, dtype=_F64).expand(mats, n, n), w], dim=-2)
        return gram_moments(j), M.concatenation(n, k, M.dense(k, n, 1 / n))
    add("concatenation [x; F(x)]", concatenation, False, f"c = {n}, k = {max(1, n // 4)}")
    return probes


def measure(probe: ComponentProbe, draws: int, seed: int = 0,
            exact_draws: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` independent draws of one probe (``min(draws, exact_draws)`` for an exact
    entry, whose identity holds draw by draw): (measured, predicted), two (draws, 2) arrays
    of (φ₁, φ₂). The prediction is the same in every row unless the entry is evaluated at
    each draw's own statistics (the L1 moment norm)."""
    rows, preds = [], []
    for i in range(min(draws, exact_draws) if probe.exact else draws):
        got, pred = probe.draw(torch.Generator().manual_seed(seed + i))
        rows.append(got)
        preds.append((pred.phi1, pred.phi2))
    return np.asarray(rows), np.asarray(preds)
