"""How much memory there is, how to say a number of bytes, and how to recognise running out.

:func:`available_memory` is what a new allocation can still get: ``MemAvailable`` of
``/proc/meminfo`` (capped by a cgroup v2 limit when one is set) on Linux, the free pages
elsewhere, the free device memory on CUDA. The command line compares its memory estimates
with it and refuses a configuration that cannot fit, instead of letting the allocator fail
deep inside torch."""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["available_memory", "format_bytes", "is_memory_error"]


def _cgroup_room() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if not limit.isdigit():
        return None  # "max": no limit
    return max(int(limit) - used, 0)


def available_memory(device="cpu") -> int:
    """Bytes a new allocation on ``device`` can still get (an estimate)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        room = None
    if room is None:
        try:
            room = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            room = 2**62  # unknown: do not refuse on our own account
    cgroup = _cgroup_room()
    return min(room, cgroup) if cgroup is not None else room


def format_bytes(n: float) -> str:
    """``1.5e9`` -> ``'1.5 GB'`` (decimal units)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # pragma: no cover


def is_memory_error(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (Python's, torch's CPU or CUDA allocator's)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "out of memory", "not enough memory",
                            "failed to allocate", "bad_alloc"))
