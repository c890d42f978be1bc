"""The one place that maps a profile name to the sizes each chapter runs at.

Profiles:

``smoke``
    The whole chapter in well under 90 s on 2 CPU cores; run by ``make test`` in CI.
``book``
    The rendered book on a laptop CPU, at most about 6 minutes per chapter.
``full``
    The papers' scale (paper depths and widths, real CIFAR-10 where a chapter uses it);
    meant for a GPU.

Each chapter owns one entry of :data:`SIZES`; a chapter reads its sizes with
:func:`sizes` (usually through :func:`~gnelib.reporting.setup_chapter`).
"""
from __future__ import annotations

import os
from types import SimpleNamespace

from .errors import check_choice

PROFILES = ("smoke", "book", "full")
DEFAULT_PROFILE_ENV = "GNE_PROFILE"

SIZES: dict[str, dict[str, dict]] = {
    # Chapter 1: gradient norm equality, a first look.
    "first_look": {
        "smoke": dict(width=128, depth=16, batch=32, probes=16),
        "book": dict(width=512, depth=48, batch=64, probes=32),
        "full": dict(width=1024, depth=200, batch=128, probes=64),
    },
    # Chapter 2: block dynamical isometry (Chen et al.).
    "bdi": {"smoke": {}, "book": {}, "full": {}},
    # Chapter 3: variance transmission and PWS (Liu et al.).
    "pws": {"smoke": {}, "book": {}, "full": {}},
    # Chapter 4: batch normalization without gradient explosion (Meterez et al.).
    "bn": {"smoke": {}, "book": {}, "full": {}},
}


def default_profile() -> str:
    """The profile named by ``$GNE_PROFILE`` (``book`` when unset), validated."""
    return check_profile(os.environ.get(DEFAULT_PROFILE_ENV, "book"))


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is one of :data:`PROFILES`, else raise naming the three."""
    check_choice("profile", profile, PROFILES)
    return profile


def sizes(chapter: str, profile: str) -> SimpleNamespace:
    """The sizes ``chapter`` runs at under ``profile``, as attributes."""
    check_profile(profile)
    check_choice("chapter", chapter, SIZES)
    return SimpleNamespace(**SIZES[chapter][profile])
