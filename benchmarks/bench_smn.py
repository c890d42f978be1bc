"""Benchmark 1: second moment normalisation (SMN) against batch normalisation.

Forward + backward in training mode on the nine ResNet-50 feature-map shapes that Chen et al.
profile (batch 128 there; here the batch is scaled down so that one tensor holds at most
``elements`` numbers, to fit a CPU's memory and time). Contenders:

- ``BatchNorm2d``: ``torch.nn.BatchNorm2d`` (the reference; a fused native kernel);
- ``SMN eager``: :class:`gnelib.SecondMomentNorm` (closed-form backward, the default);
- ``SMN eager autograd``: :func:`gnelib.second_moment_norm` (plain ops, autograd backward);
- ``BN eager``: batch norm written in plain ops the same way (:func:`batch_norm_plain`);
- ``SMN compiled``: :class:`gnelib.fast.CompiledSecondMomentNorm`, what the library ships;
- ``BN compiled``: :func:`batch_norm_plain` compiled the same way (like for like: same
  compiler, same kind of code, so the ratio measures the algorithm, not the kernel).

Goals (medians over the shapes): SMN compiled <= 0.77 of BN compiled (the paper's
"theoretically 30 % faster"), and <= 0.5 of ``BatchNorm2d``.
"""
from __future__ import annotations

import torch

from gnelib.fast import CompiledFunction, CompiledSecondMomentNorm, compile_enabled, reset_compiled
from gnelib.layers import SecondMomentNorm, second_moment_norm

from .harness import FULL, Case, Settings, goal, median_ratio, run_suite

#: The nine ResNet-50 feature-map shapes (N, C, H, W) of Chen et al.'s SMN profiling.
RESNET50_SHAPES = [(128, 64, 112, 112), (128, 64, 56, 56), (128, 256, 56, 56),
                   (128, 128, 28, 28), (128, 512, 28, 28), (128, 256, 14, 14),
                   (128, 1024, 14, 14), (128, 512, 7, 7), (128, 2048, 7, 7)]

REFERENCE = "BatchNorm2d"


def batch_norm_plain(x, weight, bias, eps: float = 1e-5):
    """Training-mode batch normalisation (Ioffe & Szegedy 2015) in plain ops, written like
    :func:`gnelib.second_moment_norm`: :math:`y=\\gamma_c(x-\\mu_c)/\\sqrt{\\sigma_c^2+\\epsilon}
    +\\beta_c` with the biased batch variance over all dims but the channel dim."""
    dims = [0, *range(2, x.ndim)]
    view = (1, -1) + (1,) * (x.ndim - 2)
    mu = x.mean(dims, keepdim=True)
    xc = x - mu
    var = xc.pow(2).mean(dims, keepdim=True)
    return xc * torch.rsqrt(var + eps) * weight.reshape(view) + bias.reshape(view)


def scaled_shapes(elements: int, max_batch: int = 128, spatial_div: int = 1):
    """The nine shapes with the batch cut so that N*C*H*W <= ``elements`` (at least 1) and
    the spatial size divided by ``spatial_div`` (for smoke runs)."""
    out = []
    for n, c, h, w in RESNET50_SHAPES:
        h, w = max(1, h // spatial_div), max(1, w // spatial_div)
        out.append((max(1, min(max_batch, n, elements // (c * h * w))), c, h, w))
    return out


def _step(module_or_fn, x, g, params=()):
    """Forward + backward of one normalisation; gradients accumulate in place (their cost
    is the same for every contender)."""
    if params:
        def run():
            module_or_fn(x, *params).backward(g)
    else:
        def run():
            module_or_fn(x).backward(g)
    return run


def make_case(shape, device, backend: str, generator: torch.Generator) -> Case:
    n, c, h, w = shape
    held = {}

    def build():
        reset_compiled()  # one static graph per shape, under dynamo's recompilation limit
        x = torch.randn(shape, generator=generator).to(device).requires_grad_(True)
        g = torch.randn(shape, generator=generator).to(device)
        weight = torch.ones(c, device=device, requires_grad=True)
        bias = torch.zeros(c, device=device, requires_grad=True)
        bn = torch.nn.BatchNorm2d(c).to(device).train()
        smn = SecondMomentNorm(c).to(device).train()
        held["csmn"] = CompiledSecondMomentNorm(c, backend=backend).to(device).train()
        held["cbn"] = CompiledFunction(batch_norm_plain, backend=backend)
        return {
            REFERENCE: _step(bn, x, g),
            "SMN eager": _step(smn, x, g),
            "SMN eager autograd": _step(second_moment_norm, x, g, (weight, bias)),
            "BN eager": _step(batch_norm_plain, x, g, (weight, bias)),
            "SMN compiled": _step(held["csmn"], x, g),
            "BN compiled": _step(held["cbn"], x, g, (weight, bias)),
        }

    def extra(fns):  # after timing: did the compiled contenders really run compiled?
        out = {"smn_compiled": held["csmn"].compiled, "bn_compiled": held["cbn"].compiled}
        held.clear()
        return out

    return Case(label="x".join(map(str, shape)), size=float(n * c * h * w), build=build,
                params={"shape": list(shape)}, extra=extra)


def _goals(rec):
    cases = rec["cases"]
    return [goal("SMN compiled / BN compiled (like for like), median over shapes",
                 median_ratio(cases, "SMN compiled", "BN compiled"), "<=", 0.77),
            goal("SMN compiled / BatchNorm2d, median over shapes",
                 median_ratio(cases, "SMN compiled", REFERENCE), "<=", 0.5)]


def run(settings: Settings = FULL, device="cpu", out=None, progress=True) -> dict:
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    if settings.smoke:
        shapes = scaled_shapes(2 ** 12, spatial_div=8)[::8]
        backend = "eager"  # dynamo capture only: exercises the compiled path in seconds
    else:
        shapes = scaled_shapes(2 ** 26 if device.type == "cuda" else 2 ** 22)
        backend = "inductor"
    ok, why = compile_enabled()
    notes = [f"batch scaled so that a tensor holds at most {max(s[0]*s[1]*s[2]*s[3] for s in shapes)}"
             " numbers (the paper profiles batch 128)",
             f"compiled contenders: torch.compile(backend={backend!r}), one static graph per "
             "shape; " + ("compile time (first call) is excluded from the timings" if ok
                          else f"compilation unavailable ({why}): they ran eagerly")]
    if settings.smoke:
        notes.append("smoke run: two small shapes, backend 'eager' (graph capture only, no "
                     "code generation): the compiled timings here say nothing about speed")
    cases = [make_case(s, device, backend, gen) for s in shapes]
    rec = run_suite("smn", "Second moment normalisation vs batch normalisation "
                    "(forward + backward, training mode)", cases, REFERENCE, settings=settings,
                    device=device, size_name="shape (N x C x H x W)", goals=_goals, notes=notes,
                    what="seconds per forward+backward", out=out, progress=progress)
    reset_compiled()
    return rec
