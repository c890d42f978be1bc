"""Files: the data folder, the results paths and atomic JSON writes (used by every layer
that writes)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["data_dir", "results_path", "atomic_write_json", "jsonable"]


def data_dir() -> Path:
    """The data folder: ``$GNE_DATA_DIR`` if set, else ``data/`` of the source checkout,
    else ``./data``."""
    env = os.environ.get("GNE_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
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


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no /proc: read it by setting it (and put it back)
    os.umask(old)
    return old


def atomic_write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``, so an
    interrupted run never leaves a truncated file behind. The file gets the permissions a
    plain ``open`` would give it (``0o666`` less the umask), not the temporary's ``0o600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as fh:
            json.dump(_jsonable(obj), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


jsonable = _jsonable
