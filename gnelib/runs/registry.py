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
from gnelib.base.profiles import check_profile

__all__ = ["Experiment", "Config", "param", "validate", "type_name", "command_line", "register", "get", "names", "make_config", "parse_value",
           "config_key", "config_dict", "library_version", "estimate_memory"]

_SCALARS = (int, float, str, bool)
_TUPLES = {tuple[int, ...]: int, tuple[float, ...]: float, tuple[str, ...]: str}
_TYPES = _SCALARS + tuple(_TUPLES)


def type_name(kind) -> str:
    """``int``, ``float``, ``str``, ``bool``, or ``ints``/``floats``/``strs`` for tuple fields."""
    return _TUPLES[kind].__name__ + "s" if kind in _TUPLES else kind.__name__


def param(default, *, choices=None, minimum=None, positive: bool = False, doc: str | None = None):
    """A configuration field with its validation declared once: ``choices`` (allowed values,
    for a tuple field allowed elements), ``minimum`` (inclusive), ``positive`` (> 0). Tuple
    fields (``tuple[int, ...]``) are non-empty and every element is checked. Non-finite floats
    are always refused. Use in a :class:`Config` dataclass::

        @dataclass(frozen=True)
        class MyConfig(Config):
            depths: tuple[int, ...] = param((5, 10), positive=True)
            init: str = param("he", choices=("he", "xavier"))
            seed: int = param(0, minimum=0)
    """
    meta = {"choices": tuple(choices) if choices is not None else None, "minimum": minimum,
            "positive": positive, "doc": doc}
    return dataclasses.field(default=default, metadata=meta)


def _check_scalar(name: str, kind: type, value, meta) -> None:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    elif kind in (str, bool) and not isinstance(value, kind):
        raise ValueError(f"{name} must be {kind.__name__}, got {value!r}")
    if meta.get("choices") is not None:
        check_choice(name, value, meta["choices"])
    if meta.get("positive") and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ValueError(f"{name} must be >= {meta['minimum']}, got {value!r}")


def validate(config) -> None:
    """Check every field of ``config`` against its type and its :func:`param` metadata; a
    ``ValueError`` names the first bad field. Tuple fields given as lists become tuples."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kind, value = hints[f.name], getattr(config, f.name)
        if kind in _TUPLES:
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(config, f.name, value)
            if not isinstance(value, tuple) or not value:
                raise ValueError(f"{f.name} must be a non-empty list of {type_name(kind)}, got {value!r}")
            elem = _TUPLES[kind]
            if elem is float:
                value = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
                object.__setattr__(config, f.name, value)
            for v in value:
                _check_scalar(f.name, elem, v, f.metadata)
        else:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(config, f.name, float(value))
                value = float(value)
            _check_scalar(f.name, kind, value, f.metadata)


class Config:
    """Base class of experiment configurations: ``__post_init__`` runs :func:`validate`."""

    def __post_init__(self):
        validate(self)






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
        return [(f.name, type_name(hints[f.name]), f.default) for f in dataclasses.fields(self.config)]

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
            raise TypeError(f"field {config.__name__}.{f.name} must be int, float, str, bool "
                            "or tuple[int|float|str, ...]")
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
    if kind in _TUPLES:
        elem = _TUPLES[kind]
        items = text.split(",") if isinstance(text, str) else text
        if isinstance(items, (int, float, str)):
            items = [items]
        return tuple(parse_value(field, elem, v.strip() if isinstance(v, str) else v)
                     for v in items if not (isinstance(v, str) and not v.strip()))
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
    """The configuration as a plain JSON-able dict (field order; tuple fields as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _cli_value(v) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(_cli_value(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def command_line(name: str, profile: str, overrides: dict | None = None) -> str:
    """The ``gne run`` command that builds the same configuration (hence the same store key)
    as ``make_config(name, profile, overrides)``."""
    parts = ["gne", "run", name, "--profile", profile]
    for k, v in (overrides or {}).items():
        parts += ["--set", f"{k}={_cli_value(v)}"]
    return " ".join(parts)


def config_key(name: str, config, version: str | None = None) -> str:
    """SHA-256 (first 20 hex digits) of the experiment name, the configuration and the
    library version, the store's key: a new version of gnelib never reads old results."""
    if version is None:
        version = library_version()
    text = json.dumps({"experiment": name, "config": config_dict(config), "version": version},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
