"""The results store: one JSON record per (experiment, configuration, library version).

Records live in ``data/results/store/<experiment>/<key>.json`` where ``key`` is
:func:`gnelib.runs.registry.config_key` (a hash of the experiment name, the configuration and
the library version, :func:`gnelib.runs.registry.library_version`: ``gnelib.__version__`` and a
digest of the library's source, so a change to the code never reads back a stale result). Each record holds the configuration, the result, run metadata and a
SHA-256 checksum of the configuration and result, and is written atomically with
:func:`~gnelib.base.io.atomic_write_json`. :meth:`Store.run` reads a finished configuration back
instead of rerunning it; a record that does not parse, whose key or checksum does not match,
or that misses a field is reported with a :class:`StoreWarning` and recomputed; something
else in a record's place (a folder) is a :class:`StoreError`. Opening a store removes the
temporary files of writes that were killed midway (older than a minute).
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from gnelib.runs import registry as experiments
from gnelib.base.io import _jsonable, atomic_write_json, data_dir

__all__ = ["Store", "StoreWarning", "StoreError", "CorruptRecord", "default_root", "compute",
           "make_record", "checksum"]

_FIELDS = ("experiment", "key", "version", "config", "result", "meta", "checksum")


class StoreWarning(UserWarning):
    """A stored record was unreadable or inconsistent and will be recomputed."""


class CorruptRecord(ValueError):
    """Raised by :meth:`Store.read` for a record that fails its checks."""


class StoreError(ValueError):
    """The store cannot hold a record where it belongs (e.g. a folder is in its place)."""


#: A write's temporary file older than this (seconds) belongs to a write that was killed.
STALE_SECONDS = 60.0


def default_root() -> Path:
    """``data/results/store`` under :func:`~gnelib.base.io.data_dir`."""
    return data_dir() / "results" / "store"


def _canonical(obj) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))


def checksum(experiment: str, key: str, version: str, config: dict, result) -> str:
    """SHA-256 of the canonical JSON of a record's identity and result."""
    text = _canonical({"experiment": experiment, "key": key, "version": version,
                       "config": config, "result": result})
    return hashlib.sha256(text.encode()).hexdigest()


class Store:
    """A folder of experiment records; see the module docstring."""

    def __init__(self, root: str | Path | None = None, version: str | None = None):
        if version is None:
            version = experiments.library_version()
        self.root = Path(root) if root is not None else default_root()
        self.version = version
        self.clean_temporaries()

    def clean_temporaries(self, older_than: float = STALE_SECONDS) -> list[Path]:
        """Remove the temporary files (``.<record>.json.*.tmp``) of writes that were killed
        before they finished, if older than ``older_than`` seconds; return them."""
        removed = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for path in self.root.glob("*/.*.json.*.tmp"):
            try:
                if path.is_file() and now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed.append(path)
            except OSError:  # removed meanwhile by another process
                pass
        return removed

    def key(self, name: str, config) -> str:
        return experiments.config_key(name, config, self.version)

    def path(self, name: str, config) -> Path:
        return self.root / name / f"{self.key(name, config)}.json"

    def read(self, path: str | Path) -> dict:
        """Read and verify one record; raise :class:`CorruptRecord` saying what is wrong."""
        path = Path(path)
        if path.is_dir():
            raise StoreError(f"{path} is a folder where a record belongs: move it away")
        try:
            rec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptRecord(f"{path}: not valid JSON (truncated or corrupt): {err}") from None
        if not isinstance(rec, dict) or any(f not in rec for f in _FIELDS):
            raise CorruptRecord(f"{path}: missing fields (needs {', '.join(_FIELDS)})")
        if path.stem != rec["key"]:
            raise CorruptRecord(f"{path}: file name does not match the record's key {rec['key']!r}")
        expected = checksum(rec["experiment"], rec["key"], rec["version"], rec["config"], rec["result"])
        if rec["checksum"] != expected:
            raise CorruptRecord(f"{path}: checksum mismatch (record altered or truncated)")
        return rec

    def get(self, name: str, config) -> dict | None:
        """The verified record of ``config``, or ``None`` if absent; a corrupt record is
        reported with a :class:`StoreWarning` and treated as absent."""
        path = self.path(name, config)
        if not path.exists():
            return None
        try:
            rec = self.read(path)
        except CorruptRecord as err:
            warnings.warn(f"corrupt record, recomputing: {err}", StoreWarning, stacklevel=2)
            return None
        if rec["config"] != json.loads(_canonical(experiments.config_dict(config))):
            warnings.warn(f"corrupt record, recomputing: {path}: configuration differs from the "
                          "one its key was made from", StoreWarning, stacklevel=2)
            return None
        return rec

    def make_record(self, name: str, config, result: dict, meta: dict | None = None) -> dict:
        """A record (with checksum) for ``result`` of ``config``, not yet written."""
        return make_record(name, config, result, meta, self.version)

    def put(self, record: dict) -> Path:
        """Write a record made by :meth:`make_record` atomically; return its path."""
        path = self.root / record["experiment"] / f"{record['key']}.json"
        if path.is_dir():
            raise StoreError(f"{path} is a folder where a record belongs: move it away")
        atomic_write_json(path, record)
        return path

    def run(self, name: str, config, device="cpu", progress: bool = False,
            force: bool = False) -> tuple[dict, bool]:
        """The record of ``config``: read back if stored (``(record, True)``), else computed,
        written and returned (``(record, False)``). ``force`` recomputes regardless."""
        if not force:
            rec = self.get(name, config)
            if rec is not None:
                return rec, True
        rec = compute(name, config, device=device, progress=progress, version=self.version)
        self.put(rec)
        return rec, False

    def records(self, name: str) -> list[dict]:
        """Every verified record of experiment ``name`` in this store (corrupt ones are
        reported and skipped), sorted by key."""
        out = []
        for path in sorted((self.root / name).glob("*.json")):
            try:
                out.append(self.read(path))
            except (CorruptRecord, StoreError) as err:
                warnings.warn(f"skipping corrupt record: {err}", StoreWarning, stacklevel=2)
        return out


def compute(name: str, config, device="cpu", progress: bool = False,
            version: str | None = None) -> dict:
    """Run experiment ``name`` on ``config`` and return its record (not written)."""
    exp = experiments.get(name)
    start = time.perf_counter()
    result = exp(config, device=device, progress=progress)
    meta = {"device": str(device), "seconds": round(time.perf_counter() - start, 3),
            "torch": torch.__version__, "python": platform.python_version(),
            "host": platform.node(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return make_record(name, config, result, meta, version)


def make_record(name: str, config, result: dict, meta: dict | None = None,
                version: str | None = None) -> dict:
    """The record of ``result`` for ``config``: identity, configuration, result (as
    canonical JSON), metadata and checksum."""
    if version is None:
        version = experiments.library_version()
    key = experiments.config_key(name, config, version)
    cfg = json.loads(_canonical(experiments.config_dict(config)))
    res = json.loads(_canonical(result))
    return {"experiment": name, "key": key, "version": version, "config": cfg,
            "result": res, "meta": dict(meta or {}),
            "checksum": checksum(name, key, version, cfg, res)}
