"""Benchmark 2: Parametric Weights Standardization (PWS) against activation normalisation.

``pws_train``: one SGD training step (forward, cross-entropy, backward, update) of a conv stack
on 32x32 inputs, at several batch sizes, with three normalisations:

- ``BN``: ``Conv2d`` (no bias) + ``BatchNorm2d`` + ReLU per layer (the reference);
- ``GN``: ``Conv2d`` (no bias) + ``GroupNorm`` + ReLU;
- ``PWS``: :class:`gnelib.nn.convs.PWSConv2d` + ReLU (the kernel is standardised, not the
  activations: cost :math:`O(C_{out}C_{in}k^2)` per step instead of :math:`O(NCHW)`).

``pws_eval``: the forward pass in eval mode of the PWS stack (kernel folded once) against the
same stack of plain ``nn.Conv2d`` with the same kernels. Goal: ratio <= 1.02 (inference costs
nothing extra).
"""
from __future__ import annotations

import torch
from torch import nn

from gnelib.nn.convs import PWSConv2d

from .harness import FULL, Case, Settings, goal, median_ratio, run_suite

KINDS = ("BN", "GN", "PWS")


def conv_stack(kind: str, channels: int, depth: int, classes: int = 10,
               generator: torch.Generator | None = None) -> nn.Sequential:
    """``depth`` 3x3 conv layers (``channels`` wide, padding 1; the first takes 3 channels)
    normalised by ``kind`` (one of :data:`KINDS`, or ``"plain"``: biased conv, nothing else),
    ReLU after each, then global average pooling and a linear read-out."""
    layers: list[nn.Module] = []
    c_in = 3
    for _ in range(depth):
        if kind == "PWS":
            layers += [PWSConv2d(c_in, channels, 3, padding=1, generator=generator)]
        elif kind == "plain":
            layers += [nn.Conv2d(c_in, channels, 3, padding=1)]
        else:
            conv = nn.Conv2d(c_in, channels, 3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=generator)
            norm = nn.BatchNorm2d(channels) if kind == "BN" else \
                nn.GroupNorm(min(32, channels // 2), channels)
            layers += [conv, norm]
        layers.append(nn.ReLU())
        c_in = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


def plain_copy(pws_stack: nn.Sequential) -> nn.Sequential:
    """The PWS stack with every PWS conv replaced by an ``nn.Conv2d`` holding its folded
    kernel (what an exporter would ship for inference), in eval mode."""
    layers = []
    for m in pws_stack:
        if isinstance(m, PWSConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                             padding=m.padding, bias=m.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(m.kernel())
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            layers.append(conv)
        else:
            layers.append(m)
    return nn.Sequential(*layers).eval()


def _train_step(model, x, y, opt):
    def run():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return run


def _sizes(settings: Settings, device):
    if settings.smoke:
        return dict(channels=8, depth=2, batches=[2, 4], hw=32)
    if device.type == "cuda":
        return dict(channels=64, depth=6, batches=[16, 64, 256], hw=32)
    return dict(channels=32, depth=4, batches=[8, 32, 128], hw=32)


def run_pws_train(settings: Settings = FULL, device="cpu", out=None, progress=True) -> dict:
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    sz = _sizes(settings, device)

    def case(batch):
        def build():
            x = torch.randn(batch, 3, sz["hw"], sz["hw"], generator=gen).to(device)
            y = torch.randint(10, (batch,), generator=gen).to(device)
            fns = {}
            for kind in KINDS:
                model = conv_stack(kind, sz["channels"], sz["depth"], generator=gen).to(device)
                opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                fns[kind] = _train_step(model.train(), x, y, opt)
            return fns
        return Case(label=str(batch), size=float(batch), build=build,
                    params={"batch": batch, **{k: v for k, v in sz.items() if k != "batches"}})

    def goals(rec):
        # direction only (the paper's README: PWS trains faster than BN and GN on a GPU)
        return [goal("PWS / BN training step, median over batch sizes",
                     rec["median_ratio"]["PWS"], "<=", 1.0),
                goal("PWS / GN training step, median over batch sizes",
                     median_ratio(rec["cases"], "PWS", "GN"), "<=", 1.0)]

    notes = [f"{sz['depth']} conv layers of {sz['channels']} channels, 3x3, on "
             f"{sz['hw']}x{sz['hw']} inputs; SGD with momentum; time per training step"]
    return run_suite("pws_train", "PWS vs BN vs GN: one training step of a conv stack",
                     [case(b) for b in sz["batches"]], "BN", settings=settings, device=device,
                     size_name="batch", what="seconds per training step", goals=goals,
                     notes=notes, out=out, progress=progress)


def run_pws_eval(settings: Settings = FULL, device="cpu", out=None, progress=True) -> dict:
    device = torch.device(device)
    gen = torch.Generator().manual_seed(1)
    sz = _sizes(settings, device)

    def case(batch):
        held = {}

        def build():
            x = torch.randn(batch, 3, sz["hw"], sz["hw"], generator=gen).to(device)
            pws = conv_stack("PWS", sz["channels"], sz["depth"], generator=gen).to(device).eval()
            plain = plain_copy(pws).to(device)
            held.update(x=x, pws=pws, plain=plain)

            def fwd(model):
                def run():
                    with torch.no_grad():
                        model(x)
                return run
            return {"plain conv": fwd(plain), "PWS eval": fwd(pws)}

        def extra(fns):  # the two stacks compute the same function
            with torch.no_grad():
                diff = (held["pws"](held["x"]) - held["plain"](held["x"])).abs().max().item()
            held.clear()
            return {"max_abs_diff": diff}
        return Case(label=str(batch), size=float(batch), build=build, extra=extra,
                    params={"batch": batch, **{k: v for k, v in sz.items() if k != "batches"}})

    def goals(rec):
        return [goal("PWS eval / plain conv forward, median over batch sizes",
                     rec["median_ratio"]["PWS eval"], "<=", 1.02)]

    notes = ["eval mode: the PWS kernel is folded once (refreshed only when the weights "
             "change), so each forward is one conv2d per layer"]
    return run_suite("pws_eval", "PWS at inference vs a plain conv stack (forward, no grad)",
                     [case(b) for b in sz["batches"]], "plain conv", settings=settings,
                     device=device, size_name="batch", what="seconds per forward pass",
                     goals=goals, notes=notes, out=out, progress=progress)
