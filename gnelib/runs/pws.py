"""Registered experiments of the PWS chapter (Liu et al.'s parametric weights standardisation).

- ``pws_stability``: a block of seeds of a deep ReLU MLP (:class:`~gnelib.nn.kernelmlp.KernelMLP`)
  in one arm (none / centring / WS / PWS / WN, preserving or decaying initial gain, read-out
  head), each seed trained by SGD at every learning rate of a log grid (the rates are replicas
  of one model: same initial weights, same mini-batches; the seeds are one batched ensemble);
  returns the divergence step at every rate. ``gne sweep pws_stability --grid arm=... --seeds
  N`` adds N blocks of seeds.
- ``pws_collapse``: one run of the same network at one learning rate with the transmission
  terms of every layer recorded at every step (centred path, shift path, bias path and the
  measured second moment).
- ``pws_batch_size``: a plain 1-d conv net with BN, GN, WS or PWS at one batch size, trained
  for a fixed number of epochs (equal examples seen at every batch size).
- ``pws_convnet``: the paper's own setting: a conv net without activation normalisation
  (Normal, WN, WS or PWS convolutions), SGD lr 0.1, momentum 0.9, weight decay 5e-4.

Each experiment takes a frozen, typed configuration and returns a JSON-able record that
:class:`gnelib.runs.store.Store` keys and reads back. The per-profile tables of ``@register``
are the only source of the sizes of these runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from gnelib.nn.kernelmlp import ARMS, GAIN_FAMILIES
from gnelib.runs.registry import Config, param, register

__all__ = ["ArmMLPConfig", "StabilityConfig", "CollapseConfig", "BatchSizeConfig", "ConvNetConfig",
           "pws_stability", "pws_collapse", "pws_batch_size", "pws_convnet", "LR_GRID",
           "HEADS", "BATCH_SIZE_NORMS", "CONVNET_ARMS", "largest_stable_lr", "head_std",
           "train_replicas", "init_gain_draws", "transmission_split_draws", "LR_GRID_FINE", "block_seeds"]

#: The learning-rate grid of the stability sweep: 0.005 to 0.64 in steps of 2.
LR_GRID = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
#: The finer grid of the ``full`` profile (steps of about sqrt(2)).
LR_GRID_FINE = (0.005, 0.007, 0.01, 0.014, 0.02, 0.028, 0.04, 0.057, 0.08, 0.11, 0.16, 0.23,
                0.32, 0.45, 0.64, 0.9)
#: Read-out heads: ``small`` = N(0, 0.01^2) (the reference notes' head), ``he`` = N(0, 2/width).
HEADS = ("small", "he")
#: Normalisations of the batch-size experiment.
BATCH_SIZE_NORMS = ("bn", "gn", "ws", "pws")
#: Convolution types of the paper's own setting (no activation normalisation).
CONVNET_ARMS = ("normal", "wn", "ws", "pws")


def head_std(head: str, width: int) -> float:
    """The standard deviation of the read-out weights: 0.01 (``small``) or sqrt(2/width)."""
    return 0.01 if head == "small" else math.sqrt(2.0 / width)


def largest_stable_lr(lrs, diverged) -> float:
    """The largest rate of the ascending grid ``lrs`` below the first diverged one (0 when the
    smallest rate diverged; the largest rate when none did: the value is then censored)."""
    best = 0.0
    for lr, d in zip(lrs, diverged):
        if d is not None:
            break
        best = lr
    return best


def train_replicas(model, data, steps: int, batch: int, lrs, momentum: float = 0.9,
                   weight_decay: float = 0.0, generator=None, callback=None) -> dict:
    """SGD with momentum (torch's rule, no dampening) on the replicas of ``model`` (a
    :class:`~gnelib.nn.kernelmlp.KernelMLP` with ``len(lrs)`` replicas), replica r at rate
    ``lrs[r]``. ``generator`` is one ``torch.Generator`` or a list of G of them: the replicas
    then form G consecutive groups of equal size (one seed each, see
    :meth:`~gnelib.nn.kernelmlp.KernelMLP.concat`), and group g draws its mini-batches from
    ``generator[g]`` as :func:`gnelib.training.train` does (a reshuffle per epoch), the same for
    every replica of the group. A replica whose loss becomes non-finite is dropped from that
    step on (:meth:`~gnelib.nn.kernelmlp.KernelMLP.keep`: the model is trained in place and
    ends with the replicas that finished, as new parameter objects). ``callback(step, model, losses)`` runs after every
    step. Returns ``loss`` (steps × replicas, NaN after divergence) and ``diverged_step`` (per
    replica, None if it finished); every replica's numbers are those of a run of its own."""
    R = len(lrs)
    if getattr(model, "replicas", 1) != R:
        raise ValueError(f"model has {model.replicas} replicas but {R} rates were given")
    gens = list(generator) if isinstance(generator, (list, tuple)) else [
        generator if generator is not None else torch.Generator().manual_seed(0)]
    G = len(gens)
    if R % G:
        raise ValueError(f"{R} replicas cannot form {G} groups of equal size")
    params = [p for p in model.parameters() if p.requires_grad]
    no_decay = {id(p) for n, p in model.named_parameters() if n in model.no_weight_decay()}
    bufs = [torch.zeros_like(p) for p in params]
    dtype = params[0].dtype
    lr = torch.tensor(lrs, dtype=dtype)
    live = torch.arange(R)               # the original number of every replica still training
    group = torch.arange(R) // (R // G)  # its group
    diverged = [None] * R
    losses = []
    n = len(data.x_train)
    bs = min(batch, n)
    orders = [[torch.randperm(n, generator=g), 0] for g in gens]
    for step in range(1, steps + 1):
        idx = []
        for st, g in zip(orders, gens):
            if st[1] + bs > n:
                st[0], st[1] = torch.randperm(n, generator=g), 0
            idx.append(st[0][st[1]:st[1] + bs])
            st[1] += bs
        k = len(live)
        if G == 1:
            xb, yb = data.x_train[idx[0]], data.y_train[idx[0]].repeat(k)
        else:
            rows = torch.stack(idx)[group]
            xb, yb = data.x_train[rows], data.y_train[rows].reshape(-1)
        out = model.logits(xb)
        loss = F.cross_entropy(out.reshape(k * bs, -1), yb, reduction="none").view(k, bs).mean(1)
        vals = loss.detach()
        row = torch.full((R,), math.nan, dtype=vals.dtype)
        row[live] = vals
        ok = torch.isfinite(vals)
        losses.append(row.tolist())
        if not ok.all():
            for r in live[~ok].tolist():
                diverged[r] = step
            if not ok.any():
                break
        grads = torch.autograd.grad(torch.where(ok, loss, torch.zeros_like(loss)).sum(), params)
        if not ok.all():
            keep = torch.nonzero(ok).flatten()
            model.keep(keep)
            params = [p for p in model.parameters() if p.requires_grad]
            no_decay = {id(p) for n, p in model.named_parameters() if n in model.no_weight_decay()}
            grads = [gr.index_select(0, keep) for gr in grads]
            bufs = [b.index_select(0, keep) for b in bufs]
            lr, live, group = lr[keep], live[keep], group[keep]
        with torch.no_grad():
            for p, gr, b in zip(params, grads, bufs):
                if weight_decay and id(p) not in no_decay:
                    gr = gr.add(p, alpha=weight_decay)
                b.mul_(momentum).add_(gr)
                p.addcmul_(lr.view((-1,) + (1,) * (p.dim() - 1)), b, value=-1.0)
        if callback is not None:
            callback(step, model, row)
    return {"loss": losses, "diverged_step": diverged}


def _teacher(config):
    from gnelib.data import teacher_data
    return teacher_data(dim=config.in_dim, classes=config.classes,
                        generator=torch.Generator().manual_seed(config.data_seed))


# --------------------------------------------------------------------------- stability sweep

@dataclass(frozen=True)
class ArmMLPConfig(Config):
    """The fields shared by :class:`StabilityConfig` and :class:`CollapseConfig`: the arm of
    :class:`~gnelib.nn.kernelmlp.KernelMLP`, its initial gains and read-out, its size, the
    optimiser (SGD with momentum) and the teacher data."""

    arm: str = param("none", choices=ARMS)
    gains: str = param("preserving", choices=GAIN_FAMILIES)
    head: str = param("small", choices=HEADS)
    steps: int = param(300, positive=True)
    depth: int = param(20, positive=True)
    width: int = param(32, positive=True)
    batch: int = param(64, positive=True)
    momentum: float = param(0.9, minimum=0.0)
    eps: float = param(1e-5, minimum=0.0)
    in_dim: int = param(64, positive=True)
    classes: int = param(10, minimum=2)
    data_seed: int = param(1, minimum=0)
    seed: int = param(0, minimum=0)

    def __post_init__(self):
        super().__post_init__()
        if not self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def model(self, generator: torch.Generator, replicas: int = 1):
        """The :class:`~gnelib.nn.kernelmlp.KernelMLP` of this configuration, initialised from
        ``generator``."""
        from gnelib.nn.kernelmlp import KernelMLP

        return KernelMLP(self.in_dim, self.width, self.depth, self.classes, arm=self.arm,
                         gains=self.gains, eps=self.eps, head_std=head_std(self.head, self.width),
                         replicas=replicas, generator=generator)


@dataclass(frozen=True)
class StabilityConfig(ArmMLPConfig):
    """A block of ``seeds`` seeds of a deep ReLU MLP in one arm, each trained at every rate of
    ``lrs``."""

    lrs: tuple[float, ...] = param(LR_GRID, positive=True)
    seeds: int = param(5, positive=True)

    def __post_init__(self):
        super().__post_init__()
        if list(self.lrs) != sorted(set(self.lrs)):
            raise ValueError(f"lrs must be strictly increasing, got {self.lrs!r}")


def block_seeds(seed: int, seeds: int) -> list[int]:
    """The torch seeds of the block ``seed`` of ``seeds`` seeds: ``seed·seeds`` to
    ``seed·seeds + seeds − 1`` (disjoint blocks, so ``gne sweep --seeds N`` adds N blocks)."""
    return [seed * seeds + j for j in range(seeds)]


def _summary_stability(result: dict) -> dict:
    lr = np.array(result["largest_stable_lr"], dtype=float)
    return {"median_largest_stable_lr": float(np.median(lr)),
            "diverged": sum(d is not None for row in result["diverged_step"] for d in row)}


_STABILITY_PROFILES = {"smoke": dict(steps=40, lrs=(0.01, 0.04, 0.16, 0.64), seeds=3),
                       "book": dict(steps=300, seeds=5),
                       "full": dict(steps=1000, lrs=LR_GRID_FINE, width=128, batch=128, seeds=10)}


@register("pws_stability", StabilityConfig, profiles=_STABILITY_PROFILES,
          summary=_summary_stability)
def pws_stability(config: StabilityConfig, device="cpu") -> dict:
    """Train ``seeds`` seeds (:func:`block_seeds`) of :class:`~gnelib.nn.kernelmlp.KernelMLP`
    (arm ``arm``, initial gains ``gains``, read-out ``head``, see :func:`head_std`) on teacher
    data (:func:`~gnelib.data.teacher_data`, ``data_seed``) by SGD with momentum at every rate
    of ``lrs``, for ``steps`` steps. Each seed fixes its initial weights and its mini-batches
    and is trained at all rates at once (one replica per rate, paired), and the seeds are
    trained together as one batched ensemble (:meth:`~gnelib.nn.kernelmlp.KernelMLP.concat`,
    :func:`train_replicas`; every number is that of a run of its own, tested). Returns, per
    seed (outer lists) and rate, the divergence step (None if the run finished), the first and
    last losses and the loss every 10 steps, and per seed ``largest_stable_lr``
    (:func:`largest_stable_lr`).

    Used in: PWS chapter, section "Collapse at a large learning rate"."""
    from gnelib.nn.kernelmlp import KernelMLP

    data = _teacher(config)
    L = len(config.lrs)
    gens = [torch.Generator().manual_seed(s) for s in block_seeds(config.seed, config.seeds)]
    model = KernelMLP.concat([config.model(g, replicas=L) for g in gens])
    h = train_replicas(model, data, config.steps, config.batch, tuple(config.lrs) * config.seeds,
                       config.momentum, generator=gens)
    loss = np.array(h["loss"], dtype=float)
    last = [float(col[np.isfinite(col)][-10:].mean()) if np.isfinite(col).any() else math.nan
            for col in loss.T]
    div = h["diverged_step"]

    def per_seed(values):
        return [list(values[j * L:(j + 1) * L]) for j in range(config.seeds)]

    every = loss[::10].T.tolist()
    return {"lrs": list(config.lrs), "seeds": block_seeds(config.seed, config.seeds),
            "diverged_step": per_seed(div), "first_loss": per_seed(loss[0].tolist()),
            "final_loss": per_seed(last), "loss_every_10": per_seed(every),
            "largest_stable_lr": [largest_stable_lr(config.lrs, div[j * L:(j + 1) * L])
                                  for j in range(config.seeds)]}


# --------------------------------------------------------------------------- traced collapse

@dataclass(frozen=True)
class CollapseConfig(ArmMLPConfig):
    """One run of the stability network at one rate, with the transmission terms recorded."""

    steps: int = param(100, positive=True)
    lr: float = param(0.2, positive=True)
    probe_size: int = param(256, positive=True)


@register("pws_collapse", CollapseConfig,
          profiles={"smoke": dict(steps=40), "book": dict(steps=100),
                    "full": dict(steps=300, width=128, batch=128)})
def pws_collapse(config: CollapseConfig, device="cpu") -> dict:
    """Train the network of :func:`pws_stability` at rate ``lr`` and record, before the first
    step and after every step, on ``probe_size`` held-out inputs and for every layer, the terms
    of theorem ``pws-transmission`` (:func:`~gnelib.probes.variance.transmission_records`):
    ``centred`` = n v̄ σ², ``shift`` = mean S² (μ² + σ²/n), ``bias`` and the measured second
    moment ``q`` of the pre-activations (lists over steps of lists over layers). Returns them
    with ``step``, the loss per step and ``diverged_step``.

    Used in: PWS chapter, section "What grows first"."""
    from gnelib.probes.variance import transmission_records

    data = _teacher(config)
    probe = data.x_test[:config.probe_size]
    g = torch.Generator().manual_seed(config.seed)
    model = config.model(g)
    rows = {"step": [], "centred": [], "shift": [], "bias": [], "q": []}

    def record(step, m, _):
        recs = transmission_records(m, probe)
        rows["step"].append(step)
        for key in ("centred", "shift", "bias", "q"):
            rows[key].append([r[key] for r in recs])

    record(0, model, None)
    h = train_replicas(model, data, config.steps, config.batch, (config.lr,), config.momentum,
                       generator=g, callback=record)
    loss = [row[0] for row in h["loss"]]
    return {"loss": loss, "diverged_step": h["diverged_step"][0], **rows}


# --------------------------------------------------------------------------- conv nets

def _image_data(dataset: str, dry_run: bool, generator: torch.Generator):
    from gnelib.data import Dataset, cifar10, mnist1d

    if dry_run:  # 8 random examples of the data set's shape: code paths only (see tests)
        shape = (3, 32, 32) if dataset == "cifar10" else (40,)
        x = torch.randn(8, *shape, generator=generator)
        y = torch.randint(10, (8,), generator=generator)
        return Dataset(dataset, x, y, x[:4], y[:4], 10), (3 if dataset == "cifar10" else 1)
    if dataset == "cifar10":
        try:
            return cifar10(), 3
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{dataset} must be on disk: {err}") from None
    return mnist1d(), 1


def _conv_net(norm: str, in_ch: int, width: int, depth: int, dim: int, kernel_size: int,
              eps: float, gn_groups: int, generator):
    """A :class:`~gnelib.nn.normnets.PlainConvNet` in which ``ws`` is PWS with alpha frozen
    (standardisation with a fixed gain) and ``normal`` is no normalisation; WS and PWS start
    at the preserving alpha (1-1/pi)^(-1/2), WN at torch's g = ||V|| (the He kernel)."""
    from gnelib.nn.normnets import PlainConvNet
    from gnelib.theory.variance import holding_alpha

    kind = {"normal": "none", "ws": "pws"}.get(norm, norm)
    pws_kw = dict(eps=eps, alpha_init=float(holding_alpha())) if kind == "pws" else None
    net = PlainConvNet(in_ch, width, depth, 10, norm=kind, dim=dim, kernel_size=kernel_size,
                       gn_groups=gn_groups, pws_kw=pws_kw, head_std=0.01, generator=generator)
    if norm == "ws":
        for name, p in net.named_parameters():
            if name.endswith("alpha"):
                p.requires_grad_(False)
    return net


def _train_conv(net, data, steps, batch, lr, momentum, weight_decay, generator, eval_every):
    from gnelib.training import train

    t0 = time.perf_counter()
    h = train(net, data, steps, batch, lr, momentum, weight_decay, generator=generator,
              progress=False, eval_every=eval_every)
    return h, time.perf_counter() - t0


@dataclass(frozen=True)
class BatchSizeConfig(Config):
    """A plain 1-d (or 2-d) conv net with one normalisation, at one batch size."""

    norm: str = param("pws", choices=BATCH_SIZE_NORMS)
    batch: int = param(32, positive=True)
    epochs: float = param(2.0, positive=True)
    lr_at_128: float = param(0.1, positive=True)
    dataset: str = param("mnist1d", choices=("mnist1d", "cifar10"))
    n_train: int = param(4000, positive=True)
    depth: int = param(4, positive=True)
    width: int = param(32, positive=True)
    kernel_size: int = param(5, positive=True)
    momentum: float = param(0.9, minimum=0.0)
    weight_decay: float = param(5e-4, minimum=0.0)
    eps: float = param(1e-3, minimum=0.0)
    gn_groups: int = param(8, positive=True)
    dry_run: bool = param(False)
    seed: int = param(0, minimum=0)


_BS_PROFILES = {"smoke": dict(epochs=1.0, n_train=200, depth=3, width=16),
                "book": dict(epochs=2.0, n_train=600),
                "full": dict(dataset="cifar10", epochs=30.0, n_train=50000, depth=9, width=96,
                             kernel_size=3)}


@register("pws_batch_size", BatchSizeConfig, profiles=_BS_PROFILES)
def pws_batch_size(config: BatchSizeConfig, device="cpu") -> dict:
    """Test accuracy of a plain conv net (:class:`~gnelib.nn.normnets.PlainConvNet`, read-out
    N(0, 0.01²)) with BN or GN after every conv, or WS / PWS convolutions and no activation
    normalisation, after ``epochs`` epochs over the first ``n_train`` training examples at
    batch size ``batch``: the number of steps is ``epochs·n_train/batch``, so every batch size
    sees the same examples; the rate is scaled linearly, ``lr = lr_at_128·batch/128``
    (Goyal et al. 2017). SGD with momentum and weight decay (none on alpha). ``dry_run`` uses
    random tensors of the data set's shape and two steps. Returns ``accuracy``, ``test_loss``,
    ``diverged_step``, ``steps``, ``lr`` and ``sec_per_step`` (wall clock, volatile).

    Used in: PWS chapter, section "Robustness to the batch size"."""
    g = torch.Generator().manual_seed(config.seed)
    data, in_ch = _image_data(config.dataset, config.dry_run, g)
    data = data.subset(config.n_train)
    dim = 2 if config.dataset == "cifar10" else 1
    net = _conv_net(config.norm, in_ch, config.width, config.depth, dim, config.kernel_size,
                    config.eps, config.gn_groups, g)
    steps = 2 if config.dry_run else max(1, round(config.epochs * len(data.x_train) / config.batch))
    lr = config.lr_at_128 * config.batch / 128
    h, sec = _train_conv(net, data, steps, config.batch, lr, config.momentum,
                         config.weight_decay, g, None)
    return {"accuracy": h.final_accuracy if not h.diverged else math.nan,
            "test_loss": h.test_loss[-1] if h.test_loss else math.nan,
            "diverged_step": h.diverged_step, "steps": steps, "lr": lr,
            "sec_per_step": sec / steps}


@dataclass(frozen=True)
class ConvNetConfig(Config):
    """The paper's own setting: a conv net without activation normalisation."""

    arm: str = param("pws", choices=CONVNET_ARMS)
    lr: float = param(0.1, positive=True)
    momentum: float = param(0.9, minimum=0.0)
    weight_decay: float = param(5e-4, minimum=0.0)
    batch: int = param(128, positive=True)
    epochs: float = param(10.0, positive=True)
    dataset: str = param("mnist1d", choices=("mnist1d", "cifar10"))
    depth: int = param(9, positive=True)
    width: int = param(32, positive=True)
    kernel_size: int = param(3, positive=True)
    eps: float = param(1e-3, minimum=0.0)
    eval_every: int = param(50, positive=True)
    dry_run: bool = param(False)
    seed: int = param(0, minimum=0)


@register("pws_convnet", ConvNetConfig,
          profiles={"smoke": dict(epochs=1.0, depth=5, width=16, eval_every=10),
                    "book": dict(epochs=4.0),
                    "full": dict(dataset="cifar10", epochs=30.0, depth=9, width=96,
                                 eval_every=400)})
def pws_convnet(config: ConvNetConfig, device="cpu") -> dict:
    """The paper's conv-net setting, on our data: ``depth`` convolutions (Normal = He, WN, WS =
    standardisation with a fixed gain, PWS) each followed by a ReLU and no activation
    normalisation, global average pooling and a read-out N(0, 0.01²)
    (:class:`~gnelib.nn.normnets.PlainConvNet`); every arm starts with the He-preserving gain.
    SGD at ``lr`` with momentum and weight decay (none on alpha), batch ``batch``, for
    ``epochs`` epochs. Returns the training loss per step, the test accuracy every
    ``eval_every`` steps, ``diverged_step`` and ``accuracy`` (final test accuracy).

    Used in: PWS chapter, section "The paper's setting"."""
    g = torch.Generator().manual_seed(config.seed)
    data, in_ch = _image_data(config.dataset, config.dry_run, g)
    dim = 2 if config.dataset == "cifar10" else 1
    net = _conv_net(config.arm, in_ch, config.width, config.depth, dim, config.kernel_size,
                    config.eps, 8, g)
    steps = 2 if config.dry_run else max(1, round(config.epochs * len(data.x_train) / config.batch))
    h, sec = _train_conv(net, data, steps, config.batch, config.lr, config.momentum,
                         config.weight_decay, g, config.eval_every)
    return {"loss": list(h.loss), "eval_step": list(h.eval_step),
            "test_accuracy": list(h.test_accuracy), "diverged_step": h.diverged_step,
            "accuracy": h.final_accuracy if not h.diverged else math.nan, "steps": steps,
            "sec_per_step": sec / steps}


# --------------------------------------------------------------------------- inline helpers

def transmission_split_draws(n: int, batch: int, seeds: int, width: int = 64) -> dict:
    """Theorem ``pws-transmission`` (a) where its hypothesis holds exactly: the first layer
    (fan-in ``n``, He weights, the plain arm of :class:`~gnelib.nn.kernelmlp.KernelMLP`) fed
    ``batch`` inputs whose entries are i.i.d. ReLUs of standard Gaussians, one network and
    batch per seed. Returns per-seed arrays of the two paths as
    :func:`~gnelib.probes.variance.transmission_records` predicts them (``centred``,
    ``shift``) and as measured (``centred_measured``, ``shift_measured``).

    Used in: PWS chapter, section "What grows first"."""
    from gnelib.nn.kernelmlp import KernelMLP
    from gnelib.probes.variance import transmission_records

    keys = ("centred", "shift", "centred_measured", "shift_measured")
    out = {k: [] for k in keys}
    for s in range(seeds):
        g = torch.Generator().manual_seed(20_000 + s)
        m = KernelMLP(n, width, 1, 10, arm="none", gains="preserving", eps=0.0, generator=g)
        rec = transmission_records(m, torch.relu(torch.randn(batch, n, generator=g)))[0]
        for k in keys:
            out[k].append(rec[k])
    return {k: np.array(v) for k, v in out.items()}


def init_gain_draws(width: int, depth: int, batch: int, seeds: int, in_dim: int = 64,
                    families=GAIN_FAMILIES, arms=ARMS) -> dict:
    """Per-layer forward and backward gains at initialisation of
    :class:`~gnelib.nn.kernelmlp.KernelMLP` (epsilon 0) for every arm and gain family,
    measured with :func:`~gnelib.probes.variance.backward_forward_gains` on ``batch`` Gaussian
    inputs: ``{(family, arm): {"forward": per-seed mean ratio over layers 2.., "backward":
    per-seed mean ratio over the layer pairs, "q": (seeds, depth) pre-activation second
    moments}}`` (arrays of ``seeds`` values).

    Used in: PWS chapter, section "Equal footing"."""
    from gnelib.nn.kernelmlp import KernelMLP
    from gnelib.probes.variance import backward_forward_gains

    out = {}
    for fam in families:
        for arm in arms:
            fw, bw, q = [], [], []
            for s in range(seeds):
                g = torch.Generator().manual_seed(10_000 + s)
                m = KernelMLP(in_dim, width, depth, 10, arm=arm, gains=fam, eps=0.0, generator=g)
                r = backward_forward_gains(m, torch.randn(batch, in_dim, generator=g), g)
                fw.append(float(r["forward"][0, 1:].mean()))
                bw.append(float(r["backward"][0].mean()))
                q.append(r["q"][0])
            out[fam, arm] = {"forward": np.array(fw), "backward": np.array(bw), "q": np.array(q)}
    return out
