"""Chapter set-up and the record of every number the book shows.

:func:`record` glues a value for the prose (``{glue:text}`` in MyST) and writes it to
``data/results/<profile>/<chapter>.json`` atomically, so that every number in the book can
be read back by a program.
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from .profiles import check_profile, sizes
from .repro import get_device, seed_everything

__all__ = ["Chapter", "setup_chapter", "record", "current_chapter", "atomic_write_json",
           "data_dir", "results_path"]


def data_dir() -> Path:
    """The data folder: ``$GNE_DATA_DIR`` if set, else ``data/`` of the source checkout,
    else ``./data``."""
    env = os.environ.get("GNE_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").exists() and (repo / "data").is_dir():
        return repo / "data"
    return Path.cwd() / "data"


def results_path(profile: str, chapter: str) -> Path:
    """Where :func:`record` writes the numbers of ``chapter`` run at ``profile``."""
    return data_dir() / "results" / profile / f"{chapter}.json"


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def atomic_write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``, so an
    interrupted run never leaves a truncated file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_jsonable(obj), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class Chapter:
    """What a chapter's set-up cell returns: its name, profile, sizes, device and seed."""

    name: str
    profile: str
    sizes: SimpleNamespace
    device: torch.device
    seed: int
    generator: torch.Generator
    values: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return results_path(self.profile, self.name)

    def save(self) -> None:
        meta = {
            "chapter": self.name, "profile": self.profile, "device": str(self.device),
            "seed": self.seed, "torch": torch.__version__, "python": platform.python_version(),
        }
        atomic_write_json(self.path, {"meta": meta, "values": self.values})


_CURRENT: Chapter | None = None


def setup_chapter(name: str, profile: str, seed: int = 0, device: str = "auto",
                  style: bool = True) -> Chapter:
    """Start a chapter: validate the profile, seed everything, pick the device, apply the
    house plotting style, and make :func:`record` write to this chapter's results file."""
    global _CURRENT
    check_profile(profile)
    dev = get_device(device)
    gen = seed_everything(seed)
    if style:
        from .plotting import use_style
        use_style()
    _CURRENT = Chapter(name=name, profile=profile, sizes=sizes(name, profile), device=dev,
                       seed=seed, generator=gen)
    record("profile", profile)
    record("device", str(dev))
    return _CURRENT


def current_chapter() -> Chapter:
    if _CURRENT is None:
        raise RuntimeError("no chapter is set up: call gnelib.setup_chapter(name, profile) first")
    return _CURRENT


def record(name: str, value, fmt: str | None = None):
    """Glue ``value`` under ``name`` for the prose and store it in the chapter's JSON.

    With ``fmt`` (a format spec such as ``".3f"``) the prose shows ``format(value, fmt)``;
    the JSON keeps the raw value and the formatted text. Returns ``value``.
    """
    chapter = current_chapter()
    raw = _jsonable(value)
    if fmt is not None:
        text = format(value, fmt)
        chapter.values[name] = {"value": raw, "text": text}
        shown = text  # myst-nb literal-evals the glued repr, so the string shows as is
    else:
        chapter.values[name] = raw
        shown = value
    chapter.save()
    try:
        from IPython import get_ipython
        from myst_nb import glue
    except ImportError:  # running outside the book's environment
        return value
    if get_ipython() is not None:  # glue only inside a notebook kernel
        glue(name, shown, display=False)
    return value
