"""Experiments as data: a registry of functions from a small configuration dataclass to a
JSON-able result record.

An experiment is registered with a decorator::

    @dataclass(frozen=True)
    class MyConfig:
        width: int = 64
        seed: int = 0

    @gnelib.runs.registry.register("my_experiment", MyConfig,
                                 profiles={"smoke": dict(width=16)})
    def my_experiment(config: MyConfig, device="cpu", progress=False) -> dict:
        ...
        return {"phi": [...], "loss": 0.3}

Every configuration has an integer ``seed`` field; fields are ``int``, ``float``, ``str`` or
``bool`` so that ``gne run ... --set key=value`` can parse them. ``profiles`` maps a profile
(``smoke``/``book``/``full``) to the defaults it overrides. The function may accept the
keyword arguments ``device`` and ``progress``; it returns a dict of JSON-able values
(numbers, strings, lists, dicts). :mod:`gnelib.runs.store` keys results by a hash of the
configuration and the library version, and :mod:`gnelib.runs.sweep` runs grids of them.

The two experiments defined here, ``gradient_norms_at_init`` and ``train_mlp``, are built
on the core API (:class:`~gnelib.nn.mlp.MLP`, :func:`~gnelib.probes.jacobian.jacobian_moments`,
:func:`~gnelib.probes.jacobian.gradient_norms`, :func:`~gnelib.training.train`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass

import torch

from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.base.profiles import SIZES, check_profile

__all__ = ["Experiment", "register", "get", "names", "make_config", "parse_value",
           "config_key", "config_dict", "library_version", "estimate_memory",
           "GradientNormsConfig", "TrainMLPConfig", "profiles_from_sizes", "parse_numbers", "gradient_norms_at_init", "train_mlp"]

_TYPES = (int, float, str, bool)


def profiles_from_sizes(chapter: str, fields: dict) -> dict:
    """Per-profile defaults for :func:`register` read from ``SIZES[chapter]``, the one source
    of a chapter's sizes: ``fields`` maps a configuration field to a size key or to a function
    of the sizes dict; list values become comma-separated strings (configuration fields are
    scalars, see :func:`parse_numbers`)."""
    out = {}
    for profile, sizes in SIZES[chapter].items():
        row = {}
        for field, src in fields.items():
            value = src(sizes) if callable(src) else sizes[src]
            if isinstance(value, (list, tuple)):
                value = ",".join(format(v, "g") if isinstance(v, float) else str(v) for v in value)
            row[field] = value
        out[profile] = row
    return out


def parse_numbers(text: str, field: str, kind: type = int) -> list:
    """The positive numbers of a comma-separated configuration field, e.g. ``"5,10,20"``;
    a clear ``ValueError`` naming ``field`` otherwise."""
    what = "integers" if kind is int else "numbers"
    try:
        values = [kind(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{field} must be comma-separated positive {what}, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise ValueError(f"{field} must be comma-separated positive {what}, got {text!r}")
    return values


def library_version() -> str:
    """``gnelib.__version__`` plus a digest of the library's source files: any change to
    ``gnelib`` gives new store keys, so a stored result never outlives the code that made it."""
    from pathlib import Path

    from gnelib.base import __version__
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its name, configuration class, function, per-profile
    defaults, and an optional ``summary(result) -> dict`` of scalars for tables."""

    name: str
    config: type
    fn: typing.Callable
    profiles: dict
    summary: typing.Callable | None = None
    memory: typing.Callable | None = None

    @property
    def module(self) -> str:
        """The module whose import registers this experiment (for remote workers)."""
        return self.fn.__module__

    @property
    def doc(self) -> str:
        text = (inspect.getdoc(self.fn) or "").split("\n\n")[0].replace("\n", " ")
        return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")

    def parameters(self) -> list[tuple[str, str, object]]:
        """``(name, type name, default)`` of every configuration field."""
        hints = typing.get_type_hints(self.config)
        return [(f.name, hints[f.name].__name__, f.default) for f in dataclasses.fields(self.config)]

    def __call__(self, config, device="cpu", progress: bool = False) -> dict:
        if not isinstance(config, self.config):
            raise TypeError(f"{self.name} needs a {self.config.__name__}, got {type(config).__name__}")
        accepted = inspect.signature(self.fn).parameters
        kwargs = {k: v for k, v in (("device", device), ("progress", progress)) if k in accepted}
        return self.fn(config, **kwargs)


_REGISTRY: dict[str, Experiment] = {}


def register(name: str, config: type, profiles: dict | None = None, summary=None, memory=None):
    """Decorator registering ``fn(config, device=..., progress=...) -> dict`` under ``name``.

    ``config`` must be a dataclass whose fields are ``int``/``float``/``str``/``bool`` with
    defaults, one of them an ``int`` named ``seed``. ``profiles`` maps profile names to
    default overrides. ``memory(config) -> bytes``, optional, estimates the memory a
    configuration needs (see :func:`estimate_memory`). Registering a name twice replaces the
    earlier experiment only when it comes from the same function (a module re-import); otherwise it is an error.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config for {name!r} must be a dataclass, got {config!r}")
    hints = typing.get_type_hints(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    if hints.get("seed") is not int:
        raise TypeError(f"config {config.__name__} must have an int field 'seed'")
    for f in fields.values():
        if hints[f.name] not in _TYPES:
            raise TypeError(f"field {config.__name__}.{f.name} must be int, float, str or bool")
        if f.default is dataclasses.MISSING:
            raise TypeError(f"field {config.__name__}.{f.name} needs a default")
    profiles = dict(profiles or {})
    for p, over in profiles.items():
        check_profile(p)
        for k in over:
            check_choice(f"field of {config.__name__} in profile {p!r}", k, fields)

    def decorator(fn):
        old = _REGISTRY.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"experiment {name!r} is already registered by {old.module}")
        _REGISTRY[name] = Experiment(name, config, fn, profiles, summary, memory)
        return fn

    return decorator


def names() -> list[str]:
    """Names of the registered experiments, sorted."""
    return sorted(_REGISTRY)


def get(name: str, module: str | None = None) -> Experiment:
    """The experiment registered as ``name``; ``module`` is imported first if given (that is
    how a remote worker learns about experiments registered outside this module)."""
    if module is not None and name not in _REGISTRY:
        importlib.import_module(module)
    check_choice("experiment", name, names())
    return _REGISTRY[name]


def parse_value(field: str, kind: type, text):
    """Parse the command-line string ``text`` as the type of configuration field ``field``;
    non-strings are checked and passed through."""
    if not isinstance(text, str):
        if kind is float and isinstance(text, int) and not isinstance(text, bool):
            return float(text)
        if not isinstance(text, kind) or (kind is int and isinstance(text, bool)):
            raise ValueError(f"{field} must be {kind.__name__}, got {text!r}")
        return text
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{field} must be a boolean (true/false), got {text!r}")
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{field} must be {kind.__name__}, got {text!r}") from None
    if kind is int and not -2**63 <= value < 2**63:
        raise ValueError(f"{field} must be an integer between -2**63 and 2**63-1, got {text!r}")
    if kind is float and math.isnan(value):
        raise ValueError(f"{field} must be a number, got {text!r}")
    return value


def make_config(name: str, profile: str = "book", overrides: dict | None = None):
    """The configuration of experiment ``name``: its defaults, then the ``profile``
    defaults, then ``overrides`` (values or strings to parse). Unknown keys raise a
    ``ValueError`` naming the allowed fields."""
    exp = get(name)
    check_profile(profile)
    hints = typing.get_type_hints(exp.config)
    values = dict(exp.profiles.get(profile, {}))
    for key, val in (overrides or {}).items():
        check_choice(f"parameter of {name}", key, hints)
        values[key] = parse_value(key, hints[key], val)
    return exp.config(**values)


def estimate_memory(name: str, config) -> int | None:
    """Bytes experiment ``name`` needs for ``config`` by its registered estimate, or
    ``None`` when it has none."""
    exp = get(name)
    return None if exp.memory is None else int(exp.memory(config))


def config_dict(config) -> dict:
    """The configuration as a plain dict (field order)."""
    return dataclasses.asdict(config)


def config_key(name: str, config, version: str | None = None) -> str:
    """SHA-256 (first 20 hex digits) of the experiment name, the configuration and the
    library version, the store's key: a new version of gnelib never reads old results."""
    if version is None:
        version = library_version()
    text = json.dumps({"experiment": name, "config": config_dict(config), "version": version},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------------------
# Built-in experiments
# --------------------------------------------------------------------------------------

MLP_INITS = ("xavier", "he", "orthogonal")


@dataclass(frozen=True)
class GradientNormsConfig:
    """A deep ReLU MLP at initialisation, probed on one random batch."""

    init: str = "he"
    gain: float = 1.0
    width: int = 256
    depth: int = 32
    in_dim: int = 40
    classes: int = 10
    batch: int = 32
    probes: int = 32
    seed: int = 0

    def __post_init__(self):
        check_choice("init", self.init, MLP_INITS)
        check_positive("gain", self.gain)
        for f in ("width", "depth", "in_dim", "batch"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("classes", self.classes, minimum=2)
        check_positive_int("probes", self.probes, minimum=2)
        check_positive_int("seed", self.seed, minimum=0)


def _summary_gradient_norms(result: dict) -> dict:
    g = result["grad_sq_norms"]
    return {"phi_mean": sum(result["phi"]) / len(result["phi"]),
            "grad_first/last": g[0] / g[-2] if g[-2] > 0 else float("inf"),
            "end_to_end_phi": result["end_to_end_phi"]}


def _mlp_params(in_dim: int, width: int, depth: int, classes: int) -> int:
    return in_dim * width + (depth - 1) * width * width + width * classes + depth * width + classes


def _memory_gradient_norms(c: GradientNormsConfig) -> int:
    """float64: the weights and their gradients, the forward activations, and the probes'
    vmapped Jacobian products through the whole stack (``probes`` copies of it)."""
    params = _mlp_params(c.in_dim, c.width, c.depth, c.classes)
    return 8 * (3 * params + c.batch * c.width * c.depth * (4 + 4 * c.probes))


@register("gradient_norms_at_init", GradientNormsConfig,
          profiles={"smoke": dict(width=64, depth=8, batch=16, probes=16),
                    "book": dict(width=256, depth=32, batch=32, probes=32),
                    "full": dict(width=1024, depth=200, batch=128, probes=64)},
          summary=_summary_gradient_norms, memory=_memory_gradient_norms)
def gradient_norms_at_init(config: GradientNormsConfig, device="cpu") -> dict:
    """Per-layer squared weight-gradient norms and per-block φ(JJᵀ) of a deep ReLU MLP at
    initialisation (Chen et al. 2020, Definition 3.1 and the multiplication theorem).

    The MLP (``~gnelib.nn.mlp.MLP``, float64) sees a batch of standard Gaussian inputs with uniform
    random labels; the gradient of the mean cross-entropy gives ``grad_sq_norms``
    (:func:`~gnelib.probes.jacobian.gradient_norms`, every weight tensor including the read-out) and
    ``activation_grad_sq_norms`` (:func:`~gnelib.probes.jacobian.activation_gradient_norms`, at the input
    and every block output), and each
    block ``Linear→ReLU`` is probed at its own input with :func:`~gnelib.probes.jacobian.jacobian_moments`
    (φ, φ((JJᵀ)²) and their standard errors). ``end_to_end_phi`` is φ(JJᵀ) of the whole
    stack of blocks, to compare with the product of the per-block values.
    """
    from gnelib.nn.mlp import MLP
    from gnelib.probes.jacobian import activation_gradient_norms, gradient_norms, jacobian_moments

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(config.seed)
    model = MLP(config.in_dim, config.width, config.depth, config.classes, activation="relu",
                init=config.init, gain=config.gain, generator=gen).double().to(dev)
    x = torch.randn(config.batch, config.in_dim, generator=gen, dtype=torch.float64).to(dev)
    y = torch.randint(config.classes, (config.batch,), generator=gen).to(dev)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    norms = gradient_norms(model, loss)
    act = activation_gradient_norms(model.blocks, model.head, x, y)
    inputs, h = [], x
    with torch.no_grad():
        for block in model.blocks:
            inputs.append(h)
            h = block(h)
    moments = [jacobian_moments(b, hin, probes=config.probes, generator=gen)
               for b, hin in zip(model.blocks, inputs)]

    def trunk(t):
        for b in model.blocks:
            t = b(t)
        return t

    e2e = jacobian_moments(trunk, x, probes=config.probes, generator=gen)
    return {
        "layers": list(norms), "grad_sq_norms": list(norms.values()),
        "activation_grad_sq_norms": act,
        "phi": [m.phi1 for m in moments], "phi_se": [m.phi1_se for m in moments],
        "phi2": [m.phi2 for m in moments], "phi2_se": [m.phi2_se for m in moments],
        "relative_variance": [m.relative_variance for m in moments],
        "end_to_end_phi": e2e.phi1, "end_to_end_phi_se": e2e.phi1_se,
        "loss": loss.item(),
    }


TRAIN_DATASETS = ("mnist1d", "gaussian_mixture")


@dataclass(frozen=True)
class TrainMLPConfig:
    """SGD training of an MLP on MNIST-1D or a Gaussian mixture."""

    dataset: str = "mnist1d"
    init: str = "he"
    gain: float = 1.0
    activation: str = "relu"
    width: int = 128
    depth: int = 8
    steps: int = 500
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    n_train: int = 4000
    eval_every: int = 100
    seed: int = 0

    def __post_init__(self):
        from gnelib.nn.mlp import ACTIVATIONS
        check_choice("dataset", self.dataset, TRAIN_DATASETS)
        check_choice("init", self.init, MLP_INITS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_positive("gain", self.gain)
        check_positive("lr", self.lr)
        for f in ("width", "depth", "steps", "batch_size", "n_train", "eval_every"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("seed", self.seed, minimum=0)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


def _summary_train(result: dict) -> dict:
    return {"final_accuracy": result["final_accuracy"], "final_loss": result["final_loss"],
            "diverged_step": result["diverged_step"]}


def _memory_train(c: TrainMLPConfig) -> int:
    """float32: weights, gradients and momentum, the data set, and the activations of a
    training batch and of a 1000-example evaluation batch."""
    params = _mlp_params(40, c.width, c.depth, 10)
    return 4 * (4 * params + 2 * 64 * c.n_train + 4 * (c.batch_size + 1000) * c.width * c.depth)


@register("train_mlp", TrainMLPConfig,
          profiles={"smoke": dict(width=32, depth=4, steps=60, n_train=1000, eval_every=20),
                    "book": dict(width=128, depth=8, steps=500, n_train=4000, eval_every=100),
                    "full": dict(width=512, depth=32, steps=5000, n_train=4000, eval_every=500)},
          summary=_summary_train, memory=_memory_train)
def train_mlp(config: TrainMLPConfig, device="cpu", progress: bool = False) -> dict:
    """Train a ``~gnelib.nn.mlp.MLP`` with :func:`~gnelib.training.train` (SGD with momentum) and return the
    loss and test-accuracy history; divergence (a NaN/inf loss) is recorded, not raised."""
    from gnelib.data import gaussian_mixture, mnist1d
    from gnelib.nn.mlp import MLP
    from gnelib.training import train

    gen = torch.Generator().manual_seed(config.seed)
    if config.dataset == "mnist1d":
        data = mnist1d().subset(config.n_train)
    else:
        data = gaussian_mixture(n_train=config.n_train, generator=torch.Generator().manual_seed(1234))
    model = MLP(data.input_shape[0], config.width, config.depth, data.num_classes,
                activation=config.activation, init=config.init, gain=config.gain, generator=gen)
    hist = train(model, data, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                 momentum=config.momentum, weight_decay=config.weight_decay, device=device,
                 generator=gen, eval_every=config.eval_every, progress=progress, desc="train_mlp")
    return {
        "step": hist.step, "loss": hist.loss, "eval_step": hist.eval_step,
        "test_accuracy": hist.test_accuracy, "test_loss": hist.test_loss,
        "diverged_step": hist.diverged_step, "last_finite_loss": hist.last_finite_loss,
        "final_accuracy": hist.final_accuracy if hist.test_accuracy else None,
        "final_loss": hist.loss[-1] if hist.loss else None,
    }
