"""Argument checks that fail with one clear line naming the parameter and what is allowed."""
from __future__ import annotations

from collections.abc import Iterable


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"unknown {name} {value!r}: allowed values are {', '.join(repr(a) for a in allowed)}"
        )


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Raise ``ValueError`` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(name: str, value) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and v != float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v
