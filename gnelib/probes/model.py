"""Probe any ``torch.nn.Module`` for block dynamical isometry.

A network is read as a serial composition of blocks :math:`f = f_L\\circ\\cdots\\circ f_1`
(Chen et al. 2020, §3). For every block :func:`probe_model` measures, at the input the block
actually receives, :math:`\\phi(J_jJ_j^\\top)` and :math:`\\phi((J_jJ_j^\\top)^2)` with
:func:`~gnelib.probes.jacobian.jacobian_moments`, the relative spectral variance
:math:`\\varphi/\\phi^2 = \\phi((JJ^\\top)^2)/\\phi(JJ^\\top)^2 - 1`, and their standard errors;
then the end-to-end :math:`\\phi(JJ^\\top)` of the whole model. Block dynamical isometry
(Chen et al., Definition 3.1) asks :math:`\\phi(J_jJ_j^\\top)\\approx 1` and
:math:`\\varphi(J_jJ_j^\\top)\\approx 0` for every block; the multiplication theorem says that
for a serial net with (asymptotically) free block Jacobians the end-to-end first moment is
the product of the per-block ones, and relative variances add.

Blocks are the model's top-level children by default (a child that is a bare
``ModuleList``/``ModuleDict`` container, which is never called itself, is replaced by its
own children), or a list of dotted names (``layer1.0``) given by the user.

The module also holds two small standard architectures for examples and tests:
:func:`mlp` and :func:`resnet` (a CIFAR-style ResNet of He et al. 2016, with or without
batch normalization).
"""
from __future__ import annotations

import ast
import copy
import importlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.nn.init import init_weight_
from gnelib.probes.jacobian import JacobianMoments, jacobian_moments

__all__ = ["BlockProbe", "ModelProbe", "load_factory", "parse_shape", "named_blocks",
           "probe_model", "format_table", "plot_probe", "mlp", "resnet", "vgg", "VERDICTS"]

#: Network-level verdicts of :func:`probe_model`.
VERDICTS = ("holds", "first-moment", "explodes", "vanishes", "mixed")


@dataclass(frozen=True)
class BlockProbe:
    """One block's moments. ``rv`` is the relative spectral variance
    :math:`\\varphi/\\phi^2` and ``rv_se`` its delta-method standard error (covariance of the
    two moment estimates neglected, which makes it conservative). ``status`` is one of
    ``ok``, ``explodes``, ``vanishes`` (first moment against the tolerance)."""

    name: str
    phi: float
    phi_se: float
    phi2: float
    phi2_se: float
    rv: float
    rv_se: float
    n_in: int
    n_out: int
    status: str


@dataclass(frozen=True)
class ModelProbe:
    """What :func:`probe_model` returns; see :func:`format_table` for a reading."""

    blocks: list
    end_to_end: JacobianMoments
    product: float
    product_se: float
    rv_sum: float
    rv_sum_se: float
    serial: bool
    tolerance: float
    rv_tolerance: float
    verdict: str
    explanation: str
    input_shape: tuple = field(default=())

    @property
    def end_to_end_rv(self) -> float:
        return self.end_to_end.relative_variance

    @property
    def end_to_end_rv_se(self) -> float:
        """Delta-method standard error of the end-to-end relative variance (conservative)."""
        e = self.end_to_end
        return math.hypot(e.phi2_se / e.phi1**2, 2 * e.phi2 * e.phi1_se / e.phi1**3)

    @property
    def rv_z(self) -> float:
        """(measured end-to-end relative variance − sum of the blocks') in standard errors
        (the additive half of the multiplication theorem)."""
        se = math.hypot(self.end_to_end_rv_se, self.rv_sum_se)
        return (self.end_to_end_rv - self.rv_sum) / se if se > 0 else math.inf

    @property
    def product_z(self) -> float:
        """(measured end-to-end φ − product of per-block φ) in units of their combined
        standard error (multiplication theorem check)."""
        se = math.hypot(self.end_to_end.phi1_se, self.product_se)
        return (self.end_to_end.phi1 - self.product) / se if se > 0 else math.inf

    def as_dict(self) -> dict:
        e = self.end_to_end
        return {
            "input_shape": list(self.input_shape), "serial": self.serial,
            "tolerance": self.tolerance, "rv_tolerance": self.rv_tolerance,
            "verdict": self.verdict, "explanation": self.explanation,
            "blocks": [b.__dict__.copy() for b in self.blocks],
            "end_to_end": {"phi": e.phi1, "phi_se": e.phi1_se, "phi2": e.phi2,
                           "phi2_se": e.phi2_se, "rv": e.relative_variance,
                           "n_in": e.n_in, "n_out": e.n_out},
            "product": self.product, "product_se": self.product_se,
            "rv_sum": self.rv_sum, "rv_sum_se": self.rv_sum_se,
        }


def load_factory(spec: str, kwargs: dict | None = None) -> nn.Module:
    """Build a model from ``"package.module:factory"`` (``factory`` may be dotted, e.g.
    ``Class.method``), calling it with ``kwargs``. Raises ``ValueError`` naming the part of
    the spec that is wrong."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"model must look like 'package.module:factory', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as err:
        raise ValueError(f"model: cannot import module {mod_name!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model: {spec!r} is not callable")
    model = obj(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``; every entry a positive integer (batch first)."""
    try:
        shape = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError(f"input-shape must be comma-separated positive integers such as "
                         f"1,3,32,32, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input-shape must be comma-separated positive integers such as "
                         f"1,3,32,32, got {text!r}")
    return shape


def parse_kwargs(items) -> dict:
    """``["depth=4", "norm=False"]`` -> ``{"depth": 4, "norm": False}`` (Python literals,
    else strings)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"arg must look like key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def named_blocks(model: nn.Module, names=None) -> list[tuple[str, nn.Module]]:
    """The blocks to probe: ``names`` (dotted submodule names) or the top-level children,
    with ``ModuleList``/``ModuleDict`` containers expanded into their children."""
    if names:
        allowed = [n for n, _ in model.named_modules() if n]
        out = []
        for n in names:
            check_choice("block", n, allowed)
            out.append((n, model.get_submodule(n)))
        return out
    out = []
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            out.extend((f"{name}.{n}", c) for n, c in child.named_children())
        else:
            out.append((name, child))
    if not out:
        raise ValueError("model has no child modules: give blocks explicitly")
    return out


def _prepare(model: nn.Module, mode: str) -> nn.Module:
    """A copy of ``model`` in ``mode``, with dropout off and batch-norm running statistics
    frozen (so probing neither changes the user's model nor is prevented from batching)."""
    m = copy.deepcopy(model)
    m.train(mode == "train")
    for sub in m.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd):
            sub.eval()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            sub.track_running_stats = False  # batch statistics, no running-stat update
    return m


def _status(phi: float, tol: float) -> str:
    if phi > 1 + tol:
        return "explodes"
    if phi < 1 - tol:
        return "vanishes"
    return "ok"


def _verdict(blocks, tol, rv_tol, product) -> tuple[str, str]:
    up = [b.name for b in blocks if b.status == "explodes"]
    down = [b.name for b in blocks if b.status == "vanishes"]
    spread = [b.name for b in blocks if b.rv > rv_tol]
    if not up and not down and not spread:
        return "holds", (f"block dynamical isometry holds: every block has |φ-1| <= {tol:g} "
                         f"and φ-relative variance <= {rv_tol:g}")
    if not up and not down:
        return "first-moment", (f"first moment holds (every |φ-1| <= {tol:g}), but {len(spread)} "
                                f"of {len(blocks)} blocks have relative variance > {rv_tol:g}")
    if up and down:
        return "mixed", (f"violated: {len(up)} blocks explode, {len(down)} vanish; "
                         f"product of φ = {product:.3g}")
    which, names = ("explodes", up) if up else ("vanishes", down)
    return which, (f"violated: {len(names)} of {len(blocks)} blocks have φ {'>' if up else '<'} "
                   f"{1 + tol if up else 1 - tol:g}; product of φ = {product:.3g}")


def probe_model(model: nn.Module, x: torch.Tensor, blocks=None, probes: int = 64,
                generator: torch.Generator | None = None, tolerance: float = 0.25,
                rv_tolerance: float = 0.25, mode: str = "train") -> ModelProbe:
    """Per-block and end-to-end Jacobian moments of ``model`` at input ``x`` and a verdict
    against block dynamical isometry (Chen et al. 2020, Definition 3.1: every block has
    :math:`\\phi(J_jJ_j^\\top)\\approx 1` and :math:`\\varphi(J_jJ_j^\\top)\\approx 0`).

    Each block is probed at the input it receives in one forward pass of ``x`` (a forward
    hook), with ``probes`` Hutchinson probes drawn from ``generator`` (blocks in order, then
    the whole model). ``tolerance`` bounds :math:`|\\phi-1|` and ``rv_tolerance`` the relative
    variance :math:`\\varphi/\\phi^2`. The product of the per-block φ and the sum of their
    relative variances are the multiplication theorem's predictions of the end-to-end values;
    ``serial`` says whether each block's input is the previous block's output, the condition
    under which that prediction applies; the end-to-end moments are then those of the chain
    of blocks (from the first block's input to the last block's output, the whole model when
    the blocks are its top-level children), otherwise those of the whole model.
    ``mode`` (``train``/``eval``) is the mode the model is probed in.
    """
    check_choice("mode", mode, ("train", "eval"))
    check_positive_int("probes", probes, minimum=2)
    check_positive("tolerance", tolerance)
    check_positive("rv_tolerance", rv_tolerance)
    m = _prepare(model, mode)
    chosen = named_blocks(m, blocks)
    seen: dict[str, list] = {n: [] for n, _ in chosen}
    handles = []
    for name, mod in chosen:
        def hook(module, args, output, name=name):
            seen[name].append((args, output))
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = m(x)
    finally:
        for h in handles:
            h.remove()
    for name, calls in seen.items():
        if len(calls) != 1:
            raise ValueError(f"block {name!r} was called {len(calls)} times in one forward pass: "
                             "give blocks that are each called exactly once")
        args, out = calls[0]
        if len(args) != 1 or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            raise ValueError(f"block {name!r} does not map one tensor to one tensor")
    results = []
    for name, mod in chosen:
        inp = seen[name][0][0][0]
        jm = jacobian_moments(mod, inp, probes=probes, generator=generator)
        rv = jm.relative_variance
        rv_se = math.hypot(jm.phi2_se / jm.phi1**2, 2 * jm.phi2 * jm.phi1_se / jm.phi1**3)
        results.append(BlockProbe(name, jm.phi1, jm.phi1_se, jm.phi2, jm.phi2_se, rv, rv_se,
                                  jm.n_in, jm.n_out, _status(jm.phi1, tolerance)))
    ins = [seen[n][0][0][0] for n, _ in chosen]
    outs = [seen[n][0][1] for n, _ in chosen]
    serial = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(outs[:-1], ins[1:]))
    if serial:  # end to end = the chain of blocks, from the first input to the last output
        mods = [mod for _, mod in chosen]

        def chain(t):
            for mod in mods:
                t = mod(t)
            return t

        e2e = jacobian_moments(chain, ins[0], probes=probes, generator=generator)
    else:  # no chain: the whole model, and the product is no prediction of it
        e2e = jacobian_moments(m, x, probes=probes, generator=generator)
    product = math.prod(b.phi for b in results)
    product_se = abs(product) * math.sqrt(sum((b.phi_se / b.phi) ** 2 for b in results))
    rv_sum = sum(b.rv for b in results)
    rv_sum_se = math.sqrt(sum(b.rv_se**2 for b in results))
    verdict, text = _verdict(results, tolerance, rv_tolerance, product)
    return ModelProbe(results, e2e, product, product_se, rv_sum, rv_sum_se, bool(serial),
                      tolerance, rv_tolerance, verdict, text, tuple(x.shape))


def format_table(p: ModelProbe, tablefmt: str = "simple") -> str:
    """The probe as a text table (one row per block, then the product and the measured
    end-to-end values) followed by the verdict."""
    from tabulate import tabulate

    rows = [[b.name, f"{b.phi:.4g} ± {b.phi_se:.2g}", f"{b.rv:.4g} ± {b.rv_se:.2g}",
             f"{b.n_in}→{b.n_out}", b.status] for b in p.blocks]
    rows.append(["product of blocks", f"{p.product:.4g} ± {p.product_se:.2g}",
                 f"{p.rv_sum:.4g} ± {p.rv_sum_se:.2g}", "", "(sum of rel. var.)"])
    e = p.end_to_end
    rows.append(["end to end (measured)", f"{e.phi1:.4g} ± {e.phi1_se:.2g}",
                 f"{e.relative_variance:.4g} ± {p.end_to_end_rv_se:.2g}", f"{e.n_in}→{e.n_out}", ""])
    table = tabulate(rows, headers=["block", "φ(JJᵀ)", "φ-rel. variance", "dims", "status"],
                     tablefmt=tablefmt)
    serial = ("serial net: end-to-end vs product differ by "
              f"{p.product_z:+.2f} standard errors" if p.serial else
              "blocks are not a serial chain of the model: the product is no prediction")
    return f"{table}\n{serial}\nverdict: {p.verdict}: {p.explanation}"


def plot_probe(p: ModelProbe, path=None, ax=None, label: str | None = None, color=None):
    """Per-block φ(JJᵀ) (log scale, with ±2 standard errors) and the BDI band
    1 ± tolerance; saved to ``path`` if given. Returns the axes."""
    from gnelib.base.plotting import subplots

    if ax is None:
        fig, ax = subplots(1, 1, width=6.0, height=3.2)
    else:
        fig = ax.figure
    idx = list(range(1, len(p.blocks) + 1))
    ax.errorbar(idx, [b.phi for b in p.blocks], yerr=[2 * b.phi_se for b in p.blocks],
                marker="o", capsize=2, label=label, color=color)
    ax.axhspan(1 - p.tolerance, 1 + p.tolerance, color="0.85", zorder=0)
    ax.axhline(1.0, color="0.4", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(idx)
    ax.set_xticklabels([b.name for b in p.blocks], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("block")
    ax.set_ylabel(r"$\phi(J_jJ_j^\top)$ (mean squared singular value)")
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return ax


# --------------------------------------------------------------------------------------
# Two small standard architectures
# --------------------------------------------------------------------------------------

def mlp(in_dim: int = 40, width: int = 64, depth: int = 4, out_dim: int = 10,
        init: str = "he", activation: str = "relu", seed: int = 0) -> nn.Module:
    """A ``~gnelib.nn.mlp.MLP`` with seeded weights: the default-argument factory
    ``gnelib.probes.model:mlp`` for ``gne probe``."""
    from gnelib.nn.mlp import MLP
    return MLP(in_dim, width, depth, out_dim, activation=activation, init=init,
               generator=torch.Generator().manual_seed(seed))


class BasicBlock(nn.Module):
    """The residual block of He et al. 2016: ``relu(norm(conv(relu(norm(conv x)))) + s(x))``
    with two 3×3 convolutions; ``s`` is the identity, or a strided 1×1 convolution (and
    norm) when the shape changes. ``norm=False`` replaces batch norm by the identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: bool = True):
        super().__init__()
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = make_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = make_norm(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), make_norm(c_out))

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        return self.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


def resnet(blocks_per_stage: int = 1, width: int = 16, stages: int = 3, norm: bool = True,
           in_channels: int = 3, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """A CIFAR-style ResNet (He et al. 2016, §4.2: a 3×3 stem, ``stages`` stages of
    ``blocks_per_stage`` basic blocks with widths ``width·2^s``, stride 2 between stages,
    global average pooling and a linear read-out), with batch norm (``norm=True``) or
    without. Convolutions get He (Kaiming normal) weights from a generator seeded by
    ``seed``; batch norm starts at γ = 1, β = 0. The top-level children are the stem,
    each residual block and the head, so ``gne probe`` sees one block per residual block."""
    check_positive_int("blocks_per_stage", blocks_per_stage)
    check_positive_int("width", width)
    check_positive_int("stages", stages)
    gen = torch.Generator().manual_seed(seed)
    layers = OrderedDict()
    layers["stem"] = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(width) if norm else nn.Identity(), nn.ReLU())
    c = width
    for s in range(stages):
        for b in range(blocks_per_stage):
            c_out = width * 2**s
            stride = 2 if (s > 0 and b == 0) else 1
            layers[f"block{s + 1}_{b + 1}"] = BasicBlock(c, c_out, stride, norm)
            c = c_out
    layers["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
    model = nn.Sequential(layers)
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            init_weight_(mod.weight, "he", generator=gen)
        elif isinstance(mod, nn.Linear):
            init_weight_(mod.weight, "xavier", generator=gen)
            nn.init.zeros_(mod.bias)
    return model


def vgg(depth: int = 6, width: int = 16, norm: bool = True, init: str = "default",
        padding: str = "zeros", in_channels: int = 3, num_classes: int = 10,
        seed: int = 0) -> nn.Sequential:
    """A plain VGG-style CNN (Simonyan & Zisserman 2015): ``depth`` blocks
    ``conv3×3 → [BatchNorm] → ReLU`` of ``width`` channels, then global average pooling and
    a linear read-out. ``init="default"`` keeps PyTorch's default initialisation
    (Kaiming-uniform with :math:`a=\\sqrt5`, weight variance :math:`1/(3\\,\\text{fan-in})`),
    what a model gets when nobody chooses; ``"he"`` uses He (Kaiming normal) weights, drawn
    from a generator seeded by ``seed``. ``padding`` is the convolutions' padding mode
    (``zeros``, the usual, or ``circular``, which makes every position see all nine taps).
    Top-level children: ``block1..block<depth>`` and ``head``."""
    check_positive_int("depth", depth)
    check_positive_int("width", width)
    check_choice("init", init, ("default", "he"))
    check_choice("padding", padding, ("zeros", "circular"))
    gen = torch.Generator().manual_seed(seed)
    layers = OrderedDict()
    c = in_channels
    for i in range(depth):
        layers[f"block{i + 1}"] = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1, bias=False, padding_mode=padding),
            nn.BatchNorm2d(width) if norm else nn.Identity(), nn.ReLU())
        c = width
    layers["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
    model = nn.Sequential(layers)
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            if init == "he" and isinstance(mod, nn.Conv2d):
                init_weight_(mod.weight, "he", generator=gen)
            else:  # PyTorch's default: U(-b, b), b = 1/sqrt(fan_in), i.e. variance 1/(3 fan_in)
                bound = 1.0 / math.sqrt(mod.weight[0].numel())
                with torch.no_grad():
                    mod.weight.uniform_(-bound, bound, generator=gen)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)
    return model
