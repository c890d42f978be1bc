"""Seeding, device selection and the one thread policy of gnelib.

Thread policy: :func:`default_threads` is ``$OMP_NUM_THREADS`` when set (``make test`` and
``tools/book.py`` set it when chapters run side by side), else torch's default;
:func:`set_threads` applies it (chapters, the CLI, benchmarks and sweep workers call it), and
:func:`torch_threads` runs a block with a given count (small batched linear algebra is
latency-bound: one thread beats two competing ones)."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from gnelib.base.errors import check_choice, check_positive_int

DEVICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a seeded CPU ``torch.Generator``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)


def get_device(device: str = "auto") -> torch.device:
    """Return the torch device for ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``."""
    if isinstance(device, torch.device):
        return device
    check_choice("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available: use 'auto' or 'cpu'")
    return torch.device(device)


def default_threads() -> int:
    """The torch thread count gnelib uses: ``$OMP_NUM_THREADS`` if set, else torch's own."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return torch.get_num_threads()


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count to ``n`` (default :func:`default_threads`); returns it."""
    n = default_threads() if n is None else check_positive_int("threads", n)
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (``None``: leave as is), restoring
    the previous setting."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(check_positive_int("threads", n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
