#!/usr/bin/env python
"""Science mutation testing: does the book notice when gnelib is wrong?

    python tools/mutate.py [--only ID ...] [--jobs 2] [--json data/results/mutate.json]
                           [--profile smoke] [--unit-only | --skip-chapters] [--list]

``tools/mutants.toml`` lists plausible bugs in gnelib's mathematics (a wrong constant, a
dropped term, an off-by-one finite-size correction, a biased estimator, ...), each a small
declarative patch::

    [[mutant]]
    id = "weingarten-coef-5pct"
    what = "orthogonal Weingarten function 5 % off for one coset type"
    find = "exact text, unique across gnelib/**/*.py (may span lines)"
    replace = "its replacement"
    symbol = "optional: a function or class (name or dotted qualname) the text lies in"
    chapters = ["bn"]                          # chapters the mutant concerns
    tests = ["tests/test_bn_weingarten.py"]    # optional: the unit tests most likely to kill it

For every mutant the runner copies the repository (sources, tests, book, tools; not ``.venv``,
``build`` or ``data/results``) into a temporary folder, checks that ``find`` occurs exactly once
in ``gnelib/**/*.py`` (inside ``symbol`` if given) and otherwise reports the mutant as
**stale**, applies it, and then

- runs the unit tests: the listed test files first (``-x``); if they pass, the whole suite
  (``tests/``, ``-x``, without ``tests/test_mutate.py``, which checks the mutant list against the
  source and would fail on any mutant), so "survives the unit tests" means no unit test fails;
- executes each listed chapter at ``--profile`` with ``tools/book.py execute --chapter NAME
  --force`` in the copy (its own ``build/`` and ``data/results``; the MNIST-1D cache is linked).
  A chapter that raises is **killed**; the failing cell and its exception are recorded.

Before the mutants, the listed test files run once unmutated (the *unit baseline*): a test
that fails there is no evidence against a mutant, so it is deselected and the stage rerun; a
whole-suite failure is likewise checked by rerunning that one test on an unmutated copy (a
flaky or load-sensitive test is reported under ``discounted``, not as a kill). Every chapter
concerned is also executed once unmutated (the *baseline*). A
chapter that already fails there cannot judge a mutant by failing at the same cell: a mutant
then counts as killed by that chapter only if it fails at an earlier cell (else
*inconclusive*). The baseline is cached in ``data/results/mutate-baseline-<profile>.json`` and
reused while no copied file changes. The kill matrix (mutant x {unit, chapters}) is printed and written as JSON
(atomically, after every mutant). Exit status: 0 when every mutant is current and killed by
the unit tests, 1 otherwise (chapter survivors are reported, not fatal: they show where the
chapters' own checks are weak), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "tools" / "mutants.toml"
#: What a mutant's copy of the repository holds (missing entries are skipped).
COPY = ("gnelib", "tests", "book", "tools", "benchmarks", "_config.yml", "_toc.yml",
        "pyproject.toml", "constraints.txt", "conftest.py", "setup.cfg", "README.md")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.ipynb", ".ipynb_checkpoints",
                                "_build", "build")
#: Data that is expensive to regenerate and read-only for the chapters: linked, not copied.
DATA_LINKS = ("mnist1d", "cifar-10-batches-py")
REQUIRED = ("id", "what", "find", "replace")
OPTIONAL = ("symbol", "chapters", "tests")
UNIT_TIMEOUT = 900
CHAPTER_TIMEOUT = 1200
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ----------------------------------------------------------------------------- mutants

@dataclass
class Mutant:
    id: str
    what: str
    find: str
    replace: str
    symbol: str | None = None
    chapters: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)


def load_mutants(path: Path = MUTANTS) -> list[Mutant]:
    """Parse ``mutants.toml``; raises ``ValueError`` naming the entry for a malformed one."""
    data = tomllib.loads(Path(path).read_text())
    out, seen = [], set()
    for i, entry in enumerate(data.get("mutant", [])):
        where = f"{path.name} entry {i + 1} ({entry.get('id', '?')})"
        missing = [k for k in REQUIRED if not isinstance(entry.get(k), str) or not entry[k]]
        if missing and not (missing == ["replace"] and entry.get("replace") == ""):
            raise ValueError(f"{where}: missing or empty field(s) {', '.join(missing)}")
        unknown = set(entry) - set(REQUIRED) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for k in ("chapters", "tests"):
            if not isinstance(entry.get(k, []), list) or not all(isinstance(s, str) for s in entry.get(k, [])):
                raise ValueError(f"{where}: {k} must be a list of strings")
        if entry["find"] == entry["replace"]:
            raise ValueError(f"{where}: find and replace are identical")
        if entry["id"] in seen:
            raise ValueError(f"{where}: duplicate id {entry['id']!r}")
        seen.add(entry["id"])
        out.append(Mutant(**entry))
    return out


@dataclass
class Site:
    """Where a mutant's text was found: ``path`` relative to the root, character ``offset``."""

    path: str
    offset: int
    line: int


class Stale(Exception):
    """The mutant's text does not occur exactly once where it should."""


def _symbol_spans(source: str, symbol: str) -> list[tuple[int, int]]:
    """Character spans of every def/class named ``symbol`` (or with dotted qualname ``symbol``)."""
    tree = ast.parse(source)
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def off(lineno, col):  # ast columns are UTF-8 byte offsets
        line = source[starts[lineno - 1]:starts[lineno]]
        return starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    spans = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}.{child.name}" if prefix else child.name
                if symbol in (child.name, qual):
                    first = child.decorator_list[0] if child.decorator_list else child
                    spans.append((off(first.lineno, first.col_offset),
                                  off(child.end_lineno, child.end_col_offset)))
                walk(child, qual)
            else:
                walk(child, prefix)

    walk(tree, "")
    return spans


def locate(mutant: Mutant, root: Path) -> Site:
    """The unique occurrence of ``mutant.find`` in ``root/gnelib/**/*.py`` (inside
    ``mutant.symbol`` when given); raises :class:`Stale` otherwise."""
    hits = []
    outside = 0
    for path in sorted((root / "gnelib").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        text = path.read_text()
        start = text.find(mutant.find)
        if start < 0:
            continue
        spans = _symbol_spans(text, mutant.symbol) if mutant.symbol else None
        while start >= 0:
            end = start + len(mutant.find)
            if spans is None or any(a <= start and end <= b for a, b in spans):
                hits.append(Site(str(path.relative_to(root)), start, text.count("\n", 0, start) + 1))
            else:
                outside += 1
            start = text.find(mutant.find, start + 1)
    if len(hits) == 1:
        return hits[0]
    inside = f" inside {mutant.symbol!r}" if mutant.symbol else ""
    if not hits:
        extra = f" ({outside} occurrence(s) outside it)" if outside else ""
        raise Stale(f"text not found{inside} in gnelib/**/*.py{extra}")
    where = ", ".join(f"{h.path}:{h.line}" for h in hits)
    raise Stale(f"text found {len(hits)} times{inside} ({where}); give a longer find or a symbol")


def apply(mutant: Mutant, root: Path) -> Site:
    """Locate and patch the mutant in the tree at ``root`` (in place); returns the site."""
    site = locate(mutant, root)
    path = root / site.path
    text = path.read_text()
    path.write_text(text[:site.offset] + mutant.replace + text[site.offset + len(mutant.find):])
    return site


# ----------------------------------------------------------------------------- running

def make_copy(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    (dest / "data").mkdir(exist_ok=True)
    if (ROOT / "data" / "README.md").exists():
        shutil.copy2(ROOT / "data" / "README.md", dest / "data" / "README.md")
    for name in DATA_LINKS:
        if (ROOT / "data" / name).exists():
            (dest / "data" / name).symlink_to(ROOT / "data" / name)


def _env(copy: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(copy), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TQDM_DISABLE="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
               MPLBACKEND="Agg")
    for k in ("GNE_DATA_DIR", "GNE_PROFILE"):
        env.pop(k, None)  # data/ and results of the copy, the profile given on the command line
    return env


def _run(cmd, cwd: Path, timeout: int) -> tuple[int | None, str, float, float]:
    """Run ``cmd`` in its own process group; returns (exit status or None on timeout, output,
    wall seconds, CPU seconds of the process and the descendants it waited for)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as log:
        p = subprocess.Popen(cmd, cwd=cwd, env=_env(cwd), stdout=log, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        rc, cpu = None, 0.0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                rc, cpu = os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime
                p.returncode = rc
                break
            if time.perf_counter() - t0 > timeout:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode, cpu = -9, ru.ru_utime + ru.ru_stime
                break
            time.sleep(0.2)
        log.seek(0)
        text = log.read()
    return rc, text, time.perf_counter() - t0, cpu


def _pytest_failure(output: str) -> str:
    """The first failing test id and message from pytest's short summary."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1][:300]
    tail = [ln for ln in output.splitlines() if ln.strip()]
    return tail[-1][:300] if tail else "(no output)"


def _failed_ids(output: str) -> list[str]:
    """Test ids (``path::name[param]``) of pytest's FAILED/ERROR summary lines."""
    ids = []
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            ids.append(line.split(" ", 1)[1].split(" - ", 1)[0].strip())
    return ids


# tests/test_mutate.py checks the mutant list (fails on any mutant); tests/after_smoke needs the
# chapters' smoke logs; tests/test_lab.py starts a JupyterLab server (no mathematics in it).
PYTEST = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
          "--ignore=tests/test_mutate.py", "--ignore=tests/after_smoke", "--ignore=tests/test_lab.py"]
_UNMUTATED: dict[str, bool] = {}  # test id -> passes on the unmutated tree
EXTRA_CPU: list[float] = []  # CPU seconds of baseline and verification runs
_UNMUTATED_LOCK = threading.Lock()


def passes_unmutated(test_id: str, timeout: int = UNIT_TIMEOUT) -> bool:
    """Whether one test passes on a fresh unmutated copy (cached): a failure that also
    happens without the mutant (a flaky or broken test) is no kill."""
    with _UNMUTATED_LOCK:
        if test_id in _UNMUTATED:
            return _UNMUTATED[test_id]
    tmp = Path(tempfile.mkdtemp(prefix="mutate-verify-"))
    try:
        make_copy(tmp)
        rc, _, _, cpu = _run(PYTEST + [test_id], tmp, timeout)
        EXTRA_CPU.append(cpu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with _UNMUTATED_LOCK:
        _UNMUTATED[test_id] = rc == 0
    return rc == 0


def run_unit(mutant: Mutant, copy: Path, timeout: int = UNIT_TIMEOUT,
             known_failures: frozenset = frozenset()) -> dict:
    """Listed test files first, then the whole suite if they do not kill the mutant (both with
    ``-x``). A failing test that also fails unmutated (in ``known_failures``, the unit baseline
    of the listed files, or found so by :func:`passes_unmutated` for the whole suite) is
    recorded under ``discounted``, deselected, and the stage rerun (at most 3 times)."""
    stages = []
    targeted = [t for t in mutant.tests if (copy / t.split("::")[0]).exists()]
    missing = sorted(set(mutant.tests) - set(targeted))
    if targeted:
        stages.append(("targeted", targeted))
    stages.append(("full", ["tests"]))
    out = {"killed": False, "stage": None, "by": None, "seconds": 0.0, "cpu_s": 0.0,
           "missing_tests": missing, "discounted": []}
    done = False
    for stage, args in stages:
        for _attempt in range(4):
            deselect = [f"--deselect={t}" for t in out["discounted"]]
            rc, text, secs, cpu = _run(PYTEST + ["-x"] + deselect + args, copy, timeout)
            out["seconds"] += secs
            out["cpu_s"] += cpu
            if rc == 0:
                break
            if rc is None:
                out.update(killed=True, stage=stage, by=f"timeout after {timeout} s")
            elif rc in (1, 2):  # test failures; interrupted (collection or import error)
                ids = _failed_ids(text)
                if ids and (ids[0] in known_failures or
                            (stage == "full" and not passes_unmutated(ids[0], timeout))):
                    out["discounted"].append(ids[0])
                    continue
                out.update(killed=True, stage=stage, by=_pytest_failure(text))
                if not ids:
                    out["unverified"] = True
            else:
                out.update(error=f"pytest exit status {rc}: {_pytest_failure(text)}")
            done = True
            break
        else:
            out.update(error=f"more than 3 failing tests also fail unmutated: {out['discounted']}")
            done = True
        if done:
            break
    out["seconds"], out["cpu_s"] = round(out["seconds"], 1), round(out["cpu_s"], 1)
    return out


def run_unit_baseline(files: list[str], args) -> list[str]:
    """The tests of the listed files that fail on the unmutated tree (one pytest run)."""
    tmp = Path(tempfile.mkdtemp(prefix="mutate-unit-baseline-"))
    try:
        make_copy(tmp)
        rc, text, secs, cpu = _run(PYTEST + sorted(files), tmp, args.unit_timeout)
        EXTRA_CPU.append(cpu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failing = _failed_ids(text)
    print(f"unit baseline ({len(files)} listed test files): "
          f"{'all pass' if rc == 0 else f'{len(failing)} fail unmutated: ' + ', '.join(failing)}"
          f" ({secs:.0f} s, CPU {cpu:.0f} s)", flush=True)
    if rc not in (0, 1):
        raise RuntimeError(f"the listed test files do not run unmutated (pytest status {rc}): "
                           f"{_pytest_failure(text)}")
    return failing


def notebook_error(path: Path) -> dict | None:
    """The first cell of an executed notebook with an error output: its index, the exception
    and the line of the cell that raised (from the IPython traceback)."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    code_index = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        code_index += 1
        for o in cell.get("outputs", []):
            if o.get("output_type") != "error":
                continue
            tb = [ANSI.sub("", t) for t in o.get("traceback", [])]
            arrow = next((ln.strip() for t in tb for ln in t.splitlines()
                          if ln.lstrip().startswith("---->")), None)
            if arrow:
                arrow = re.sub(r"^---->\s*\d*\s*", "", arrow)
            src = "".join(cell.get("source", ""))
            first = next((ln for ln in src.splitlines() if ln.strip() and not ln.startswith(("#", "---", ":"))), "")
            return {"cell": code_index, "exception": f"{o.get('ename')}: {o.get('evalue', '')}"[:300],
                    "line": (arrow or "")[:200], "cell_start": first[:120]}
    return None


def run_chapter(name: str, copy: Path, profile: str, timeout: int = CHAPTER_TIMEOUT) -> dict:
    cmd = [sys.executable, "tools/book.py", "execute", "--profile", profile, "--chapter", name,
           "--force"]
    rc, text, secs, cpu = _run(cmd, copy, timeout)
    out = {"killed": rc != 0, "seconds": round(secs, 1), "cpu_s": round(cpu, 1)}
    if rc is None:
        out["error"] = {"exception": f"timeout after {timeout} s"}
    elif rc != 0:
        err = notebook_error(copy / "build" / profile / "failed" / f"{name}.ipynb")
        if err is None:  # failed before a cell ran (conversion, kernel): keep the log's tail
            tail = [ln for ln in text.splitlines() if ln.strip() and "WARNING" not in ln]
            err = {"exception": " | ".join(tail[-3:])[:300]}
        out["error"] = err
    return out


def judge_chapter(res: dict, baseline: dict | None) -> str:
    """``killed``, ``survived`` or ``inconclusive`` (the chapter fails unmutated at the same
    or an earlier cell than under the mutant)."""
    if not res["killed"]:
        return "survived"
    if not baseline or not baseline.get("killed"):
        return "killed"
    b_cell = (baseline.get("error") or {}).get("cell")
    m_cell = (res.get("error") or {}).get("cell")
    if b_cell is not None and m_cell is not None and m_cell < b_cell:
        return "killed"
    return "inconclusive"


def run_mutant(mutant: Mutant, args, baseline: dict, known_failures: frozenset = frozenset()) -> dict:
    t0 = time.perf_counter()
    rec = {"id": mutant.id, "what": mutant.what, "symbol": mutant.symbol,
           "chapters_listed": mutant.chapters, "tests_listed": mutant.tests}
    tmp = Path(tempfile.mkdtemp(prefix=f"mutate-{mutant.id}-"))
    try:
        make_copy(tmp)
        try:
            site = apply(mutant, tmp)
        except Stale as err:
            rec.update(status="stale", reason=str(err))
            return rec
        rec.update(file=site.path, line=site.line)
        check = subprocess.run([sys.executable, "-c", "import ast,sys; ast.parse(open(sys.argv[1]).read())",
                                str(tmp / site.path)], capture_output=True, text=True)
        if check.returncode:
            rec.update(status="invalid", reason=f"the patched file does not parse: {check.stderr.strip()[-200:]}")
            return rec
        rec["status"] = "ok"
        rec["unit"] = run_unit(mutant, tmp, args.unit_timeout, known_failures)
        rec["chapters"] = {}
        if not args.skip_chapters:
            for ch in mutant.chapters:
                res = run_chapter(ch, tmp, args.profile, args.chapter_timeout)
                res["verdict"] = judge_chapter(res, baseline.get(ch))
                rec["chapters"][ch] = res
        return rec
    finally:
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        rec["cpu_s"] = round(rec.get("unit", {}).get("cpu_s", 0.0)
                             + sum(c.get("cpu_s", 0.0) for c in rec.get("chapters", {}).values()), 1)
        if args.keep:
            rec["copy"] = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def tree_digest() -> str:
    """SHA-256 of every file a mutant's copy holds (what the baselines depend on), except the
    harness itself and its mutant list."""
    import hashlib
    h = hashlib.sha256()
    skip = {Path(__file__).resolve(), MUTANTS.resolve()}
    for name in COPY:
        src = ROOT / name
        files = sorted(src.rglob("*")) if src.is_dir() else [src]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".ipynb") \
                    and f.resolve() not in skip:
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _baseline_cache(profile: str) -> tuple[Path, dict]:
    cache = ROOT / "data" / "results" / f"mutate-baseline-{profile}.json"
    digest = tree_digest()
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get("digest") != digest:
        cached = {"digest": digest, "chapters": {}, "unit": {}}
    cached.setdefault("unit", {})
    return cache, cached


_CACHE_LOCK = threading.Lock()


def unit_baseline(files: list[str], args) -> list[str]:
    """:func:`run_unit_baseline`, cached like the chapter baseline."""
    key = ",".join(sorted(files))
    cache, cached = _baseline_cache(args.profile)
    if key in cached["unit"]:
        failing = cached["unit"][key]
        print(f"unit baseline: {len(failing)} listed tests fail unmutated (cached for this "
              f"source tree)", flush=True)
        return failing
    failing = run_unit_baseline(files, args)
    with _CACHE_LOCK:
        cache, cached = _baseline_cache(args.profile)
        cached["unit"][key] = failing
        atomic_write_json(cache, cached)
    return failing


def run_baseline(chapters: list[str], args) -> dict:
    """Execute every chapter concerned once, unmutated, in a copy of its own; reuse the result
    stored in ``data/results/mutate-baseline-<profile>.json`` when no copied file changed."""
    cache, cached = _baseline_cache(args.profile)
    todo = [ch for ch in chapters if ch not in cached["chapters"]]
    for ch in chapters:
        if ch not in todo:
            b = cached["chapters"][ch]
            print(f"baseline {ch}: {'FAILS unmutated' if b['killed'] else 'passes'} "
                  f"(cached for this source tree)", flush=True)
    if todo:
        fresh = _run_baseline(todo, args)
        with _CACHE_LOCK:
            cache, cached = _baseline_cache(args.profile)
            cached["chapters"].update(fresh)
            atomic_write_json(cache, cached)
    return {ch: dict(cached["chapters"][ch], cached=ch not in todo) for ch in chapters}


def _run_baseline(chapters: list[str], args) -> dict:
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="mutate-baseline-"))
    try:
        make_copy(tmp)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futs = {pool.submit(run_chapter, ch, tmp, args.profile, args.chapter_timeout): ch
                    for ch in chapters}
            for f in as_completed(futs):
                ch = futs[f]
                out[ch] = f.result()
                state = "FAILS unmutated" if out[ch]["killed"] else "passes"
                extra = ""
                if out[ch]["killed"]:
                    e = out[ch].get("error") or {}
                    extra = f" at cell {e.get('cell')}: {e.get('exception')} [{e.get('line', '')}]"
                print(f"baseline {ch}: {state} ({out[ch]['seconds']:.0f} s){extra}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- reporting

def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(rec: dict, col: str) -> str:
    if rec.get("status") != "ok":
        return rec.get("status", "?").upper()
    if col == "unit":
        u = rec["unit"]
        if u.get("error"):
            return "ERROR"
        return f"killed ({u['stage']})" if u["killed"] else "SURVIVED"
    if col not in rec.get("chapters_listed", []):
        return "·"
    res = rec.get("chapters", {}).get(col)
    if res is None:
        return "skipped"
    return {"killed": f"killed c{(res.get('error') or {}).get('cell', '?')}",
            "survived": "SURVIVED", "inconclusive": "inconcl."}[res["verdict"]]


def matrix_text(records: list[dict], chapters: list[str]) -> str:
    cols = ["unit"] + chapters
    rows = [[r["id"]] + [_cell(r, c) for c in cols] for r in records]
    head = ["mutant"] + cols
    w = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(h.ljust(n) for h, n in zip(head, w)), "  ".join("-" * n for n in w)]
    lines += ["  ".join(c.ljust(n) for c, n in zip(row, w)) for row in rows]
    return "\n".join(lines)


def summary(records: list[dict], chapters: list[str]) -> dict:
    ok = [r for r in records if r.get("status") == "ok"]
    s = {"mutants": len(records), "current": len(ok),
         "stale": [r["id"] for r in records if r.get("status") == "stale"],
         "invalid": [r["id"] for r in records if r.get("status") == "invalid"],
         "unit_killed": sum(r["unit"]["killed"] for r in ok),
         "unit_survivors": [r["id"] for r in ok if not r["unit"]["killed"]],
         "unit_errors": [r["id"] for r in ok if r["unit"].get("error")],
         "chapters": {}}
    for ch in chapters:
        runs = [(r["id"], r["chapters"][ch]) for r in ok if ch in r.get("chapters", {})]
        s["chapters"][ch] = {
            "run": len(runs),
            "killed": sum(v["verdict"] == "killed" for _, v in runs),
            "survivors": [i for i, v in runs if v["verdict"] == "survived"],
            "inconclusive": [i for i, v in runs if v["verdict"] == "inconclusive"]}
    runs = [(r["id"], v) for r in ok for v in r.get("chapters", {}).values()]
    by_mutant = {}
    for i, v in runs:
        by_mutant.setdefault(i, []).append(v["verdict"])
    s["chapter_killed_mutants"] = sum("killed" in v for v in by_mutant.values())
    s["chapter_run_mutants"] = len(by_mutant)
    s["chapter_survivors"] = sorted(i for i, v in by_mutant.items() if "killed" not in v)
    return s


def _line(rec: dict, done: int, total: int) -> str:
    head = f"[{done}/{total}] {rec['id']} ({rec.get('seconds', 0):.0f} s, CPU {rec.get('cpu_s', 0):.0f} s):"
    if rec.get("status") != "ok":
        return f"{head} {rec.get('status', '?').upper()}: {rec.get('reason', '')}"
    u = rec["unit"]
    if u.get("error"):
        parts = [f"unit ERROR {u['error']}"]
    elif u["killed"]:
        parts = [f"unit killed ({u['stage']}: {u['by']})"]
    else:
        parts = ["unit SURVIVED"]
    for ch, res in rec.get("chapters", {}).items():
        if res["verdict"] == "survived":
            parts.append(f"{ch} SURVIVED")
        else:
            e = res.get("error") or {}
            what = e.get("exception", "")
            if what.rstrip().endswith(":") and e.get("line"):  # an assert without a message
                what += f" [{e['line']}]"
            parts.append(f"{ch} {res['verdict']} (cell {e.get('cell', '?')}: {what[:160]})")
    return f"{head} " + " | ".join(parts)


# ----------------------------------------------------------------------------- main

def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    p.add_argument("--jobs", type=int, default=2, help="mutants run side by side (default 2)")
    p.add_argument("--json", default="data/results/mutate.json",
                   help="kill matrix output (relative to the repository root)")
    p.add_argument("--profile", default="smoke", choices=("smoke", "book", "full"))
    p.add_argument("--skip-chapters", "--unit-only", dest="skip_chapters", action="store_true",
                   help="unit tests only")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not execute the chapters unmutated first (nor read a cached baseline)")
    p.add_argument("--list", action="store_true", help="list the mutants and where they apply")
    p.add_argument("--keep", action="store_true", help="keep the mutated copies (debugging)")
    p.add_argument("--mutants", default=str(MUTANTS), help="the mutant list (TOML)")
    p.add_argument("--unit-timeout", type=int, default=UNIT_TIMEOUT)
    p.add_argument("--chapter-timeout", type=int, default=CHAPTER_TIMEOUT)
    args = p.parse_args(argv)
    if args.jobs < 1:
        print(f"--jobs must be an integer >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    try:
        mutants = load_mutants(Path(args.mutants))
    except (OSError, ValueError, tomllib.TOMLDecodeError) as err:
        print(f"cannot read the mutant list: {err}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutants})
        if unknown:
            print(f"unknown mutant id(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        stale = 0
        for m in mutants:
            try:
                s = locate(m, ROOT)
                where = f"{s.path}:{s.line}"
            except Stale as err:
                where, stale = f"STALE ({err})", stale + 1
            print(f"{m.id:34s} {where:34s} [{', '.join(m.chapters) or '-'}] {m.what}")
        print(f"{len(mutants)} mutants, {stale} stale")
        return 1 if stale else 0

    chapters = sorted({c for m in mutants for c in m.chapters})
    started = time.time()
    meta = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "profile": args.profile, "jobs": args.jobs, "unit_only": args.skip_chapters,
            "commit": _git_commit(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "mutant_list": str(Path(args.mutants).resolve())}
    out_path = ROOT / args.json if not Path(args.json).is_absolute() else Path(args.json)
    baseline, known = {}, frozenset()
    if not args.no_baseline:
        files = sorted({t for m in mutants for t in m.tests if (ROOT / t.split("::")[0]).exists()})
        with ThreadPoolExecutor(max_workers=2) as pool:
            unit_job = pool.submit(unit_baseline, files, args) if files else None
            if not args.skip_chapters and chapters:
                baseline = run_baseline(chapters, args)
            known = frozenset(unit_job.result()) if unit_job else frozenset()
        meta["unit_baseline_failures"] = sorted(known)
    records: dict[str, dict] = {}
    lock = threading.Lock()

    def write():
        ordered = [records[m.id] for m in mutants if m.id in records]
        cpu = sum(r.get("cpu_s", 0.0) for r in ordered) + \
            sum(b.get("cpu_s", 0.0) for b in baseline.values() if not b.get("cached")) + sum(EXTRA_CPU)
        atomic_write_json(out_path, {"meta": {**meta, "wall_s": round(time.time() - started, 1),
                                              "cpu_s": round(cpu, 1)},
                                     "baseline": baseline, "mutants": ordered,
                                     "summary": summary(ordered, chapters)})

    try:
        from tqdm import tqdm
        bar = tqdm(total=len(mutants), desc="mutants", unit="mutant", mininterval=30,
                   file=sys.stderr, disable=None if sys.stderr.isatty() else True)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(run_mutant, m, args, baseline, known): m for m in mutants}
        for f in as_completed(futs):
            m = futs[f]
            try:
                rec = f.result()
            except Exception as err:  # noqa: BLE001 - a harness failure for one mutant
                rec = {"id": m.id, "what": m.what, "status": "error", "reason": repr(err)}
            with lock:
                records[m.id] = rec
                write()
                msg = _line(rec, len(records), len(mutants))
                if bar is not None and not bar.disable:
                    bar.write(msg)
                    bar.update()
                else:
                    print(msg, flush=True)
    if bar is not None:
        bar.close()
    ordered = [records[m.id] for m in mutants]
    write()
    s = summary(ordered, chapters)
    print()
    print(matrix_text(ordered, chapters))
    print()
    print(f"unit tests: {s['unit_killed']}/{s['current']} current mutants killed"
          + (f"; SURVIVORS: {', '.join(s['unit_survivors'])}" if s["unit_survivors"] else ""))
    if s["stale"]:
        print(f"STALE (update tools/mutants.toml): {', '.join(s['stale'])}")
    if s["invalid"]:
        print(f"INVALID patches: {', '.join(s['invalid'])}")
    if not args.skip_chapters:
        for ch, c in s["chapters"].items():
            line = f"chapter {ch} at {args.profile}: {c['killed']}/{c['run']} killed"
            if c["survivors"]:
                line += f"; survivors: {', '.join(c['survivors'])}"
            if c["inconclusive"]:
                line += f"; inconclusive (chapter fails unmutated): {', '.join(c['inconclusive'])}"
            print(line)
        print(f"chapters together: {s['chapter_killed_mutants']}/{s['chapter_run_mutants']} mutants "
              f"killed by at least one chapter")
    cpu = sum(r.get("cpu_s", 0.0) for r in ordered) + sum(b.get("cpu_s", 0.0) for b in baseline.values() if not b.get("cached")) + sum(EXTRA_CPU)
    print(f"wall time {time.time() - started:.0f} s, CPU time {cpu:.0f} s (subprocesses; about "
          f"{cpu / min(args.jobs, os.cpu_count() or 1):.0f} s of wall time on idle cores); "
          f"matrix written to {out_path}")
    bad = s["stale"] or s["invalid"] or s["unit_survivors"] or s["unit_errors"] or \
        any(r.get("status") == "error" for r in ordered)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
