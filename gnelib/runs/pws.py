"""Registered experiments of the PWS chapter (Liu et al.'s parametric weights standardization):
training a deep plain ReLU network at a large learning rate, with or without PWS or one of its
ingredients, while recording the filter sums and activations step by step, and training a small
ResNet with BN, GN or PWS at a given batch size.

Each experiment takes a frozen configuration and returns a JSON-able record, so that
:class:`gnelib.runs.store.Store` can key, store and read it back (see :mod:`gnelib.runs.registry`). The
per-profile sizes come from ``SIZES["pws"]`` in :mod:`gnelib.base.profiles`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.runs.registry import parse_numbers, profiles_from_sizes, register
from gnelib.base.profiles import SIZES

__all__ = ["CollapseConfig", "BatchSizeConfig", "pws_collapse", "pws_batch_size",
           "COLLAPSE_NORMS", "BATCH_SIZE_NORMS"]

COLLAPSE_NORMS = ("none", "centre", "wn", "pws")
BATCH_SIZE_NORMS = ("bn", "gn", "pws")
_BOOK = SIZES["pws"]["book"]


@dataclass(frozen=True)
class CollapseConfig:
    """One SGD run of a plain ReLU MLP (:class:`~gnelib.nn.normnets.NormMLP`) on teacher data."""

    norm: str = "pws"
    lr: float = 0.2
    depth: int = _BOOK["collapse_depth"]
    width: int = _BOOK["collapse_width"]
    steps: int = _BOOK["collapse_steps"]
    batch: int = 128
    momentum: float = 0.9
    eps: float = 1e-5
    in_dim: int = 64
    classes: int = 10
    probe_size: int = 256
    data_seed: int = 1
    record_steps: bool = True
    seed: int = 1

    def __post_init__(self):
        check_choice("norm", self.norm, COLLAPSE_NORMS)
        check_positive("lr", self.lr)
        check_positive("eps", self.eps)
        for f in ("depth", "width", "steps", "batch", "in_dim", "probe_size"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("classes", self.classes, minimum=2)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")


@register("pws_collapse", CollapseConfig,
          profiles=profiles_from_sizes("pws", {"depth": "collapse_depth", "width": "collapse_width",
                              "steps": "collapse_steps"}))
def pws_collapse(config: CollapseConfig, device="cpu") -> dict:
    """Train a deep plain ReLU network at a large learning rate and record, after every step,
    the largest per-layer second moment of the pre-activations and the mean filter sum
    :math:`|S_k|` of the effective kernels (the shift law, theorem ``pws-shift-law``).

    The network is :class:`~gnelib.nn.normnets.NormMLP` with normalization ``norm`` (``none``,
    ``centre`` = centring only, ``wn`` = weight normalization only, ``pws``; PWS with
    :math:`\\epsilon` = ``eps``) and a He-initialised read-out; the data are
    :func:`~gnelib.nn.normnets.teacher_data` drawn with ``data_seed``; the statistics are taken on
    the first ``probe_size`` test inputs with :func:`~gnelib.probes.variance.forward_records` and
    :func:`~gnelib.probes.variance.weight_records` (read-out excluded). Training is
    :func:`~gnelib.training.train` (SGD, no weight decay), seeded with ``seed``. Returns the
    loss per step, ``diverged_step`` (``None`` if the run finished) and, if ``record_steps``,
    the per-step lists ``step``, ``max_q``, ``mean_abs_S``.
    """
    from gnelib.probes import variance as vt
    from gnelib.nn.normnets import NormMLP
    from gnelib.data import teacher_data
    from gnelib.training import train

    dev = torch.device(device)
    teacher = teacher_data(dim=config.in_dim, classes=config.classes,
                           generator=torch.Generator().manual_seed(config.data_seed))
    probe = teacher.x_test[:config.probe_size].to(dev)
    g = torch.Generator().manual_seed(config.seed)
    model = NormMLP(config.in_dim, config.width, config.depth, config.classes, norm=config.norm,
                    pws_kw=dict(eps=config.eps), head_std=math.sqrt(2 / config.width),
                    generator=g)
    rows = {"step": [], "max_q": [], "mean_abs_S": []}

    def callback(step, m, loss):
        if config.record_steps:
            f = vt.forward_records(m, probe, step)
            w = vt.weight_records(m, step)
            rows["step"].append(step)
            rows["max_q"].append(max(r["second_moment"] for r in f[:-1]))
            rows["mean_abs_S"].append(float(np.mean([r["mean_abs_S"] for r in w[:-1]])))

    hist = train(model, teacher, config.steps, config.batch, config.lr, config.momentum, 0.0,
                 device=dev, generator=g, progress=False, callback=callback)
    out = {"loss": list(hist.loss), "diverged_step": hist.diverged_step,
           "last_finite_loss": hist.last_finite_loss}
    if config.record_steps:
        out.update(rows)
    return out


@dataclass(frozen=True)
class BatchSizeConfig:
    """One training run of :class:`~gnelib.nn.normnets.PWSResNet` at one batch size."""

    norm: str = "pws"
    batch: int = 64
    steps: int = _BOOK["bs_steps"]
    lr: float = _BOOK["bs_lr"]
    dataset: str = _BOOK["bs_dataset"]
    widths: str = ",".join(str(w) for w in _BOOK["bs_widths"])
    blocks: str = ",".join(str(b) for b in _BOOK["bs_blocks"])
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gn_groups: int = 4
    seed: int = 13

    def __post_init__(self):
        check_choice("norm", self.norm, BATCH_SIZE_NORMS)
        check_choice("dataset", self.dataset, ("mnist1d", "cifar10"))
        for f in ("batch", "steps", "gn_groups"):
            check_positive_int(f, getattr(self, f))
        check_positive("lr", self.lr)
        if len(tuple(parse_numbers(self.widths, "widths"))) != len(tuple(parse_numbers(self.blocks, "blocks"))):
            raise ValueError(f"widths and blocks must have equal length, got {self.widths!r} "
                             f"and {self.blocks!r}")


@register("pws_batch_size", BatchSizeConfig,
          profiles=profiles_from_sizes("pws", {"steps": "bs_steps", "lr": "bs_lr", "dataset": "bs_dataset",
                              "widths": "bs_widths", "blocks": "bs_blocks"}))
def pws_batch_size(config: BatchSizeConfig, device="cpu") -> dict:
    """Test accuracy of a small ResNet (:class:`~gnelib.nn.normnets.PWSResNet`, BN or GN in every
    block, or PWS convolutions with only two GroupNorm(1) layers, Definition ``pws-def-pws``)
    after ``steps`` SGD steps at batch size ``batch``.

    ``dataset`` is ``mnist1d`` (1-d convolutions) or ``cifar10`` (2-d, must be on disk);
    ``widths``/``blocks`` are comma-separated per-stage values. Training is
    :func:`~gnelib.training.train` with momentum and weight decay (none on α), seeded with
    ``seed``. Returns ``accuracy`` (final test accuracy), ``diverged_step``, the loss per step,
    the data set's name and number of classes, and ``sec_per_step`` (wall clock: volatile).
    """
    from gnelib.data import cifar10, mnist1d
    from gnelib.nn.normnets import PWSResNet
    from gnelib.training import train

    if config.dataset == "cifar10":
        try:
            data = cifar10()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"pws_batch_size on cifar10 needs CIFAR-10: {err}") from None
        in_ch, dim = 3, 2
    else:
        data = mnist1d()
        in_ch, dim = 1, 1
    g = torch.Generator().manual_seed(config.seed)
    net = PWSResNet(in_ch, data.num_classes, widths=tuple(parse_numbers(config.widths, "widths")),
                    blocks=tuple(parse_numbers(config.blocks, "blocks")), norm=config.norm, dim=dim,
                    gn_groups=config.gn_groups, generator=g)
    t0 = time.perf_counter()
    h = train(net, data, config.steps, config.batch, config.lr, config.momentum,
              config.weight_decay, device=device, generator=g, progress=False)
    return {"accuracy": h.final_accuracy, "diverged_step": h.diverged_step,
            "loss": list(h.loss), "dataset": data.name, "num_classes": data.num_classes,
            "sec_per_step": (time.perf_counter() - t0) / config.steps}
