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

from gnelib.base.io import _jsonable, atomic_write_json, data_dir, results_path
from gnelib.base.profiles import check_profile, sizes
from gnelib.base.device import get_device, seed_everything, set_threads

__all__ = ["Chapter", "setup_chapter", "record", "current_chapter"]


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
    set_threads()  # the one thread policy (gnelib.base.device)
    gen = seed_everything(seed)
    if style:
        from gnelib.base.plotting import use_style
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
