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

__all__ = ["Chapter", "Run", "setup_chapter", "record", "current_chapter"]


class Run(dict):
    """The result dict of a registered experiment run through the store by
    :meth:`Chapter.run`, with ``key`` (the store key), ``command`` (the ``gne run`` command
    that reads back the same record), ``config`` and ``cached``; ``arr(name)`` returns a
    field as a float ``numpy`` array."""

    key: str
    command: str
    config: dict
    cached: bool

    def arr(self, name: str):
        import numpy as np
        return np.asarray(self[name], dtype=float)


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
    runs: list = field(default_factory=list)
    started: float = field(default_factory=time.time)
    show_commands: bool = True

    @property
    def path(self) -> Path:
        return results_path(self.profile, self.name)

    def save(self) -> None:
        meta = {
            "chapter": self.name, "profile": self.profile, "device": str(self.device),
            "seed": self.seed, "torch": torch.__version__, "python": platform.python_version(),
        }
        atomic_write_json(self.path, {"meta": meta, "values": self.values, "runs": self.runs})

    def run(self, name: str, *, glue: str | None = None, **overrides) -> Run:
        """Run the registered experiment ``name`` through the results store and return its
        result (:class:`Run`).

        The configuration is the experiment's defaults, then this chapter's profile sizes
        (the registry's per-profile table, the one source of a run's sizes), then
        ``overrides``: exactly what ``gne run NAME --profile P --set key=value ...`` builds,
        so both routes read and write the same record. The call is logged in the chapter's
        results file (experiment, overrides, key, command), and the command is shown under
        the cell, collapsed. With ``glue="prefix"`` every configuration field is glued as
        ``prefix_field`` for the prose.
        """
        from gnelib.runs import registry
        from gnelib.runs.store import Store

        config = registry.make_config(name, self.profile, overrides)
        rec, cached = Store().run(name, config, device=self.device)
        out = Run(rec["result"])
        out.key, out.config, out.cached = rec["key"], rec["config"], cached
        out.command = registry.command_line(name, self.profile, overrides)
        self.runs.append({"experiment": name, "overrides": _jsonable(overrides),
                          "key": rec["key"], "command": out.command})
        self.save()
        if glue:
            for k, v in rec["config"].items():
                text = ", ".join(map(str, v)) if isinstance(v, list) else v
                record(f"{glue}_{k}", text)
        if self.show_commands:
            _show_command(out.command)
        return out


def _show_command(command: str) -> None:
    """Show ``command`` in a collapsed block under the cell (inside a notebook kernel)."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return
    if get_ipython() is None:
        return
    import html
    display(HTML("<details class=\"gne-command\"><summary>Reproduce this run with "
                 f"<code>gne</code></summary><pre>{html.escape(command)}</pre></details>"))


_CURRENT: Chapter | None = None


def setup_chapter(name: str, profile: str, seed: int = 0, device: str = "auto",
                  style: bool = True) -> Chapter:
    """Start a chapter: validate the profile, seed everything, pick the device, apply the
    house plotting style, and make :func:`record` write to this chapter's results file."""
    global _CURRENT
    check_profile(profile)
    dev = get_device(device)
    set_threads()  # the one thread policy (gnelib.base.device)
    from gnelib.book.checks import reset_checks
    reset_checks()  # the chapter's closing table lists this chapter's checks only
    gen = seed_everything(seed)
    if style:
        from gnelib.base.plotting import use_style
        use_style()
    _CURRENT = Chapter(name=name, profile=profile, sizes=sizes(name, profile), device=dev,
                       seed=seed, generator=gen)
    record("profile", profile)
    record("device", str(dev))
    for key, value in vars(_CURRENT.sizes).items():  # every inline size, glued as size_<key>
        record(f"size_{key}", ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value)
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
