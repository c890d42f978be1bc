"""Benchmark 1: second moment normalisation (SMN) against batch normalisation.

Forward + backward in training mode on the nine ResNet-50 feature-map shapes that Chen et al.
profile (batch 128 there; here the batch is scaled down so that one tensor holds at most
``elements`` numbers, to fit a CPU's memory and time). Each call returns the gradients with
respect to the input, the scale and the shift (``torch.autograd.grad``: nothing accumulates
into a leaf's ``.grad``, as for a layer inside a network). Contenders:

- ``BatchNorm2d``: ``torch.nn.BatchNorm2d`` (the reference; a fused native kernel);
- ``SMN eager``: :class:`gnelib.nn.norms.SecondMomentNorm` (closed-form backward, the default);
- ``BN eager``: batch norm in plain ops (:func:`batch_norm_plain`), autograd backward;
- ``SMN compiled``: :class:`gnelib.nn.fast.CompiledSecondMomentNorm`, what the library ships:
  forward and closed-form backward, each compiled with ``torch.compile``;
- ``BN compiled`` and ``BN compiled, two-pass``: batch norm written and compiled the same
  way (:func:`bn_forward` with one ``var_mean`` pass, or :func:`bn_forward_two_pass`, and
  the closed-form :func:`bn_backward`): like for like, so the ratio measures the algorithm;
  the goal compares with the faster of the two, shape by shape;
- ``SMN compiled, autograd bwd`` and ``BN compiled, autograd bwd``: the plain-ops layers
  compiled with the backward that autograd derives (AOTAutograd).

*The bandwidth bound.* Both layers are single-pass reductions followed by elementwise
passes, so beyond the cache their time is bounded below by the bytes they must move over the
machine's memory bandwidth. The suite measures the bandwidth in the same run
(:func:`gnelib.bench.harness.stream_bandwidth`: STREAM copy and triad in torch, same thread
count, arrays 4x the last-level cache read from the OS) and counts the minimal traffic of a
forward+backward step whose tensors do not fit in the cache: the forward reads ``x`` twice
(the statistic, then the normalisation: the statistic must be complete before the first
output) and writes ``y``; the backward reads ``dy`` and ``x`` for its per-channel sums, then
both again and writes ``dx``: 8 tensor passes of ``N*C*H*W*4`` bytes, for SMN and for a
one-pass batch norm alike (a two-pass batch norm reads ``x`` once more). Each contender's
time is reported as a multiple of ``8 * bytes / bandwidth``, on the ResNet-50 shapes (cut
to a fixed number of values, which may fit in the cache, where the bound does not bind) and
on shapes whose tensors hold at least 4x the last-level cache ("beyond cache").

Goals: SMN compiled <= 0.77 of BN compiled (median over the shapes; the paper's
"theoretically 30 % faster"), <= 0.5 of ``BatchNorm2d`` (median over all shapes), and within
1.3x of its bandwidth bound (median over the beyond-cache shapes).
"""
from __future__ import annotations

import torch

from gnelib.nn.fast import (CompiledFunction, CompiledSecondMomentNorm, compile_enabled,
                         reduce_dims, reset_compiled)
from gnelib.nn.norms import SecondMomentNorm

from .harness import (FULL, Case, Settings, first_touch_cost, goal, llc_bytes, median_ratio,
                      reuse_freed_memory, run_suite, stream_bandwidth)

#: The nine ResNet-50 feature-map shapes (N, C, H, W) of Chen et al.'s SMN profiling.
RESNET50_SHAPES = [(128, 64, 112, 112), (128, 64, 56, 56), (128, 256, 56, 56),
                   (128, 128, 28, 28), (128, 512, 28, 28), (128, 256, 14, 14),
                   (128, 1024, 14, 14), (128, 512, 7, 7), (128, 2048, 7, 7)]

REFERENCE = "BatchNorm2d"
#: the contender that moves the bound's bytes and does nothing else
BOUND = "memory-bound kernel (8 passes)"
#: the same with its two outputs allocated afresh at every call, as a layer's are
BOUND_FRESH = "memory-bound kernel, fresh outputs"
#: minimal tensor passes of a forward+backward step beyond the cache (module docstring)
PASSES = 8


def batch_norm_plain(x, weight, bias, eps: float = 1e-5):
    """Training-mode batch normalisation (Ioffe & Szegedy 2015) in plain ops, written like
    :func:`gnelib.nn.norms.second_moment_norm`: :math:`y=\\gamma_c(x-\\mu_c)/\\sqrt{\\sigma_c^2+\\epsilon}
    +\\beta_c` with the biased batch variance over all dims but the channel dim."""
    view = (1, -1) + (1,) * (x.ndim - 2)
    var, mu = torch.var_mean(x, reduce_dims(x), correction=0, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * weight.reshape(view) + bias.reshape(view)


def _bn_autograd_train(x, weight, bias, eps: float):
    return batch_norm_plain(x, weight, bias, eps), None


def bn_forward(x, weight, bias, eps: float):
    """Batch norm forward for the compiler, like :func:`gnelib.nn.fast.smn_forward`: returns
    ``(y, mu, rstd)`` with :math:`\\mathrm{rstd}=1/\\sqrt{\\sigma^2+\\epsilon}`; mean and
    variance from one ``var_mean`` (one pass over the input once compiled)."""
    view = (1, -1) + (1,) * (x.ndim - 2)
    var, mu = torch.var_mean(x, reduce_dims(x), correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    return (x - mu) * (weight.reshape(view) * rstd) + bias.reshape(view), mu, rstd


def bn_forward_two_pass(x, weight, bias, eps: float):
    """:func:`bn_forward` with the mean and the variance in two passes (the mean, then the
    mean squared deviation) instead of one ``var_mean`` (Welford) pass."""
    dims = reduce_dims(x)
    view = (1, -1) + (1,) * (x.ndim - 2)
    mu = x.mean(dims, keepdim=True)
    rstd = torch.rsqrt((x - mu).pow(2).mean(dims, keepdim=True) + eps)
    return (x - mu) * (weight.reshape(view) * rstd) + bias.reshape(view), mu, rstd


def bn_backward(dy, x, mu, rstd, weight):
    """The closed-form batch-norm backward (Ioffe & Szegedy 2015), with
    :math:`\\hat x=(x-\\mu)\\,\\mathrm{rstd}`:
    :math:`dx=\\frac{\\gamma\\,\\mathrm{rstd}}{M}(M\\,dy-\\sum dy-\\hat x\\sum dy\\,\\hat x)`,
    :math:`\\partial\\gamma=\\sum dy\\,\\hat x`, :math:`\\partial\\beta=\\sum dy`."""
    dims = reduce_dims(x)
    view = (1, -1) + (1,) * (x.ndim - 2)
    m = x.numel() // x.shape[1]
    xhat = (x - mu) * rstd
    sum_dy = dy.sum(dims, keepdim=True)
    sum_dy_xhat = (dy * xhat).sum(dims, keepdim=True)
    dx = (weight.reshape(view) * rstd / m) * (m * dy - sum_dy - xhat * sum_dy_xhat)
    return dx, sum_dy_xhat.reshape(-1), sum_dy.reshape(-1)


class CompiledBatchNormFunction(torch.autograd.Function):
    """Batch norm with :func:`bn_forward` and :func:`bn_backward` compiled separately, the
    way :class:`gnelib.nn.fast.CompiledSecondMomentNorm` compiles SMN."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, kernels):
        y, mu, rstd = kernels[0](x, weight, bias, eps)
        ctx.save_for_backward(x, mu, rstd, weight)
        ctx.kernels = kernels
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, mu, rstd, weight = ctx.saved_tensors
        dx, dweight, dbias = ctx.kernels[1](dy.contiguous(), x, mu, rstd, weight)
        return dx, dweight, dbias, None, None


def scaled_shapes(elements: int, max_batch: int = 128, spatial_div: int = 1):
    """The nine shapes with the batch cut so that N*C*H*W <= ``elements`` (at least 1) and
    the spatial size divided by ``spatial_div`` (for smoke runs)."""
    out = []
    for n, c, h, w in RESNET50_SHAPES:
        h, w = max(1, h // spatial_div), max(1, w // spatial_div)
        out.append((max(1, min(max_batch, n, elements // (c * h * w))), c, h, w))
    return out


def _step(fn, x, g, params):
    """Forward + backward of one normalisation: ``fn(x)`` and the gradients with respect to
    ``x`` and ``params`` (returned, not accumulated)."""
    inputs = (x, *params)

    def run():
        return torch.autograd.grad(fn(x), inputs, g)
    return run


def beyond_cache_shapes(llc: int, factor: int = 4, which=(0, 2, 6)):
    """ResNet-50 shapes (``which``) with the batch raised until one float32 tensor holds at
    least ``factor`` times the last-level cache ``llc`` (bytes)."""
    out = []
    for i in which:
        _, c, h, w = RESNET50_SHAPES[i]
        per = c * h * w * 4
        out.append((max(1, -(-factor * llc // per)), c, h, w))
    return out


def bound_kernel(shape, device, fresh: bool = False):
    """A step that moves exactly the bytes of the bound and computes almost nothing: two
    ``a = b + s c`` (reads 2, writes 1 each) and one ``b . c`` (reads 2) on preallocated
    tensors of ``shape``: 6 tensor reads and 2 writes, the traffic of a forward+backward of
    SMN or a one-pass BN beyond the cache (module docstring), with the same kernels
    torch uses (STREAM's triad). With ``fresh`` the two outputs are allocated at every
    call (``torch.add(b, c, alpha=s)``), as a layer allocates ``y`` and ``dx``."""
    b = torch.rand(shape, device=device)
    c = torch.rand(shape, device=device)
    a, d = torch.empty_like(b), torch.empty_like(b)
    bf, cf = b.reshape(-1), c.reshape(-1)

    def run():
        torch.add(b, c, alpha=0.5, out=a)
        torch.add(b, c, alpha=2.0, out=d)
        return torch.dot(bf, cf)

    def run_fresh():
        y = torch.add(b, c, alpha=0.5)
        dx = torch.add(b, c, alpha=2.0)
        return torch.dot(bf, cf), y, dx
    return run_fresh if fresh else run


def make_case(shape, device, backend: str, generator: torch.Generator, bw: dict | None = None,
              beyond: bool = False) -> Case:
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
        csmn = CompiledSecondMomentNorm(c, backend=backend).to(device).train()
        csmn_ag = CompiledSecondMomentNorm(c, backward="autograd",
                                           backend=backend).to(device).train()
        kernels = (CompiledFunction(bn_forward, backend=backend),
                   CompiledFunction(bn_backward, backend=backend))
        kernels2 = (CompiledFunction(bn_forward_two_pass, backend=backend),
                    CompiledFunction(bn_backward, backend=backend))
        cbn_ag = CompiledFunction(_bn_autograd_train, backend=backend)
        held.update(csmn=csmn, csmn_ag=csmn_ag, cbn=kernels + kernels2, cbn_ag=cbn_ag)

        def params(m):
            return (m.weight, m.bias)
        return {
            REFERENCE: _step(bn, x, g, params(bn)),
            BOUND: bound_kernel(shape, device),
            BOUND_FRESH: bound_kernel(shape, device, fresh=True),
            "SMN eager": _step(smn, x, g, params(smn)),
            "BN eager": _step(lambda z: batch_norm_plain(z, weight, bias), x, g, (weight, bias)),
            "SMN compiled": _step(csmn, x, g, params(csmn)),
            "BN compiled": _step(lambda z: CompiledBatchNormFunction.apply(
                z, weight, bias, 1e-5, kernels), x, g, (weight, bias)),
            "BN compiled, two-pass": _step(lambda z: CompiledBatchNormFunction.apply(
                z, weight, bias, 1e-5, kernels2), x, g, (weight, bias)),
            "SMN compiled, autograd bwd": _step(csmn_ag, x, g, params(csmn_ag)),
            "BN compiled, autograd bwd": _step(lambda z: cbn_ag(z, weight, bias, 1e-5)[0], x, g,
                                               (weight, bias)),
        }

    def extra(fns):  # after timing: did the compiled contenders really run compiled?
        out = {"beyond_cache": beyond, "bytes_min": PASSES * n * c * h * w * 4,
               "smn_compiled": held["csmn"].compiled,
               "bn_compiled": all(k.compiled for k in held["cbn"]),
               "smn_autograd_compiled": held["csmn_ag"].compiled,
               "bn_autograd_compiled": held["cbn_ag"].compiled}
        held.clear()
        return out

    label = "x".join(map(str, shape)) + (" (beyond cache)" if beyond else "")
    return Case(label=label, size=float(n * c * h * w), build=build,
                params={"shape": list(shape), "beyond_cache": beyond}, extra=extra)


def add_bound(rec: dict, bw: dict) -> None:
    """Each case's bound (seconds) and every contender's time as a multiple of it
    (``extra['of_bound']``): the bound is the median time of :func:`bound_kernel`, timed
    alongside the contenders (same rounds, same load), when the record has it, else
    ``bytes_min / bandwidth`` from the STREAM run (``extra['bound_stream_s']``, always
    kept; on a loaded machine the best-of STREAM time is faster than any median)."""
    for case in rec["cases"]:
        x = case.setdefault("extra", {})
        n, c, h, w = case["params"]["shape"]
        x.setdefault("bytes_min", PASSES * n * c * h * w * 4)
        x["bound_stream_s"] = x["bytes_min"] / bw["bandwidth"]
        timed = case["times"].get(BOUND)
        x["bound_s"] = timed["median"] if timed else x["bound_stream_s"]
        x["bound_kernel_bandwidth"] = x["bytes_min"] / x["bound_s"]
        x["of_bound"] = {k: t["median"] / x["bound_s"] for k, t in case["times"].items()}


def _median(xs):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def like_for_like(case: dict) -> float:
    """SMN compiled over the faster of the two batch norms written and compiled the same
    way (one-pass ``var_mean`` or two-pass statistics), for one case."""
    t = case["times"]
    return t["SMN compiled"]["median"] / min(t["BN compiled"]["median"],
                                             t["BN compiled, two-pass"]["median"])


def _goals(rec):
    cases = rec["cases"]
    med = _median([like_for_like(c) for c in cases])
    beyond = [c for c in cases if c["params"].get("beyond_cache")]
    bw = rec.get("bandwidth", {}).get("bandwidth", float("nan"))
    return [goal("SMN compiled / faster BN compiled the same way (like for like), median "
                 "over shapes", med, "<=", 0.77),
            goal("SMN compiled / BatchNorm2d, median over shapes",
                 median_ratio(cases, "SMN compiled", REFERENCE), "<=", 0.5),
            goal(f"SMN compiled time / bandwidth bound ({PASSES} tensor passes, timed alongside;"
                 f" STREAM {bw / 1e9:.1f} GB/s), median over the {len(beyond)} beyond-cache "
                 "shapes",
                 _median([c["extra"]["of_bound"]["SMN compiled"] for c in beyond]),
                 "<=", 1.3)]


def run(settings: Settings = FULL, device="cpu", out=None, progress=True) -> dict:
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    llc = llc_bytes() or 32 * 2**20
    if settings.smoke:
        shapes = scaled_shapes(2 ** 12, spatial_div=8)[::8]
        beyond = [(2, 8, 16, 16)]  # stands in for a beyond-cache shape; no claim
        backend = "eager"  # dynamo capture only: exercises the compiled path in seconds
        bw = stream_bandwidth(2 ** 16, device, repeats=2)
    else:
        shapes = scaled_shapes(2 ** 26 if device.type == "cuda" else 2 ** 22)
        beyond = beyond_cache_shapes(llc)
        if settings.profile == "book":
            shapes, beyond = shapes[2::4], beyond[:1]
        backend = "inductor"
        bw = stream_bandwidth(max(4 * llc // 4, 2 ** 22), device)
    # what a fresh output tensor costs under the default allocator, then reuse freed memory
    # (harness.reuse_freed_memory): every contender allocates its outputs each call, and
    # page faults on fresh mappings would otherwise be timed as if they were the kernel's
    touch_n = max(s[0] * s[1] * s[2] * s[3] for s in beyond)
    touch = {"default": first_touch_cost(touch_n, repeats=2 if settings.smoke else 5)}
    touch["allocator"] = reuse_freed_memory()
    touch["reused"] = first_touch_cost(touch_n, repeats=2 if settings.smoke else 5)
    ok, why = compile_enabled()
    notes = [f"batch scaled so that a tensor holds at most {max(s[0]*s[1]*s[2]*s[3] for s in shapes)}"
             " numbers (the paper profiles batch 128)",
             f"compiled contenders: torch.compile(backend={backend!r}), one static graph per "
             "shape; " + ("compile time (first call) is excluded from the timings" if ok
                          else f"compilation unavailable ({why}): they ran eagerly")]
    if settings.smoke:
        notes.append("smoke run: two small shapes, backend 'eager' (graph capture only, no "
                     "code generation): the compiled timings here say nothing about speed")
    notes.append(f"bandwidth bound: STREAM copy {bw['copy'] / 1e9:.1f} GB/s, triad "
                 f"{bw['triad'] / 1e9:.1f} GB/s on {bw['bytes_per_array'] / 2**20:.0f} MiB "
                 f"arrays, {bw['threads']} threads (last-level cache {llc / 2**20:.0f} MiB); "
                 f"minimal traffic {PASSES} tensor passes per forward+backward; the bound is "
                 f"the median of '{BOUND}' (6 reads, 2 writes with torch's add and dot), timed "
                 "with the contenders")
    notes.append(f"allocator: {touch['allocator']['how']} "
                 f"({'applied' if touch['allocator']['applied'] else 'not applied'}); before, "
                 f"a fresh {touch_n * 4 / 2**20:.0f} MiB tensor filled once took "
                 f"{touch['default']['ratio']:.1f}x a fill of a held one (page faults on a new "
                 f"mapping), after, {touch['reused']['ratio']:.1f}x")
    cases = [make_case(s, device, backend, gen) for s in shapes] + \
        [make_case(s, device, backend, gen, beyond=True) for s in beyond]

    def goals(rec):
        rec["bandwidth"] = {**bw, "llc_bytes": llc}
        rec["first_touch"] = touch
        add_bound(rec, bw)
        return _goals(rec)
    rec = run_suite("smn", "Second moment normalisation vs batch normalisation "
                    "(forward + backward, training mode)", cases, REFERENCE, settings=settings,
                    device=device, size_name="shape (N x C x H x W)", goals=goals, notes=notes,
                    what="seconds per forward+backward", out=out, progress=progress)
    reset_compiled()
    return rec
