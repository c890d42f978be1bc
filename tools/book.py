#!/usr/bin/env python
"""Execute the book's chapters at a profile and render them.

    python tools/book.py execute --profile smoke [--chapter NAME] [--force]
    python tools/book.py render  --profile smoke

``execute`` converts each chapter listed in ``_toc.yml`` (a MyST Markdown notebook under
``book/chapters/``) to ``.ipynb`` with jupytext and runs it with papermill, injecting
``profile``, into ``build/<profile>/notebooks/``. A chapter whose notebook is newer than its
source and than every file of ``gnelib`` is not rerun (``--force`` reruns it). Every profile
has its own folder, so smoke and book executions never share outputs.

``render`` stages the book with the executed notebooks in place of the sources and runs
``jupyter-book build -W -n --keep-going`` on it: HTML lands in ``build/<profile>/_build/html``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "book", "full")
TIMEOUT = {"smoke": 300, "book": 1200, "full": 36000}  # per cell, seconds


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    out = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc.get("parts", toc.get("chapters", [])))
    return out


def chapters() -> list[Path]:
    return [ROOT / f"{f}.md" for f in toc_files() if f.startswith("book/chapters/")]


def newest_dependency(src: Path) -> float:
    deps = [src, ROOT / "constraints.txt", *(ROOT / "gnelib").rglob("*.py")]
    return max(p.stat().st_mtime for p in deps)


def execute_one(src: Path, profile: str, out_dir: Path) -> bool:
    """Convert one chapter with jupytext and execute it with papermill; True on success."""
    import jupytext
    import papermill as pm

    out = out_dir / f"{src.stem}.ipynb"
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    raw = out_dir / f"{src.stem}.source.ipynb"
    jupytext.write(nb, raw)
    tmp = out_dir / f".{src.stem}.running.ipynb"
    t0 = time.time()
    print(f"[{profile}] {src.stem}: executing ...", flush=True)
    try:
        pm.execute_notebook(str(raw), str(tmp), parameters={"profile": profile},
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                            execution_timeout=TIMEOUT[profile])
    except Exception as exc:  # noqa: BLE001 - report every failing chapter, then fail
        failed = out_dir.parent / "failed" / f"{src.stem}.ipynb"
        failed.parent.mkdir(exist_ok=True)
        if tmp.exists():
            tmp.replace(failed)
        print(f"[{profile}] {src.stem}: FAILED after {time.time() - t0:.0f} s "
              f"(executed notebook: {failed})\n{exc}", file=sys.stderr)
        return False
    finally:
        raw.unlink(missing_ok=True)
    tmp.replace(out)
    (out_dir.parent / "failed" / f"{src.stem}.ipynb").unlink(missing_ok=True)
    print(f"[{profile}] {src.stem}: done in {time.time() - t0:.0f} s", flush=True)
    return True


def execute(profile: str, only: str | None, force: bool, jobs: int = 1) -> int:
    from concurrent.futures import ThreadPoolExecutor

    out_dir = ROOT / "build" / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = [c for c in chapters() if only in (None, c.stem)]
    if only and not selected:
        names = ", ".join(c.stem for c in chapters())
        print(f"unknown chapter {only!r}: allowed values are {names}", file=sys.stderr)
        return 2
    todo = []
    for src in selected:
        out = out_dir / f"{src.stem}.ipynb"
        if not force and out.exists() and out.stat().st_mtime > newest_dependency(src):
            print(f"[{profile}] {src.stem}: up to date")
        else:
            todo.append(src)
    # each chapter runs in its own kernel process, so threads are enough to run them side by side;
    # the kernels share the cores, so each gets its share of torch threads unless told otherwise
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        ok = list(pool.map(lambda src: execute_one(src, profile, out_dir), todo))
    failures = [src.stem for src, good in zip(todo, ok) if not good]
    if failures:
        print(f"[{profile}] failed chapters: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def status_page(profile: str, notebooks: list[Path]) -> str:
    import torch

    rows = []
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        meta = nb.get("metadata", {}).get("papermill", {})
        res = ROOT / "data" / "results" / profile / f"{nb_path.stem}.json"
        device = "—"
        if res.exists():
            device = json.loads(res.read_text()).get("meta", {}).get("device", "—")
        duration = meta.get("duration")
        rows.append(f"| {nb_path.stem} | {profile} | {device} | "
                    f"{'' if duration is None else f'{duration:.0f} s'} | "
                    f"{str(meta.get('end_time', ''))[:19]} |")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return "\n".join([
        "# Execution status", "",
        f"The chapters on this site were executed at the `{profile}` profile by "
        "`tools/book.py` (papermill). Rendered on "
        f"{dt.date.today().isoformat()}.", "",
        "| chapter | profile | device | execution time | finished (UTC) |",
        "|---|---|---|---|---|", *rows, "",
        "## Environment", "",
        f"- Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads",
        f"- torch {torch.__version__}; GPU: {gpu}", "",
        "Every number glued into the prose is also in "
        f"`data/results/{profile}/<chapter>.json`.", ""])


def render(profile: str) -> int:
    nb_dir = ROOT / "build" / profile / "notebooks"
    site = ROOT / "build" / profile / "site"
    if site.exists():
        shutil.rmtree(site)
    missing = [c.stem for c in chapters() if not (nb_dir / f"{c.stem}.ipynb").exists()]
    if missing:
        print(f"not executed at profile {profile!r}: {', '.join(missing)} "
              f"(run: python tools/book.py execute --profile {profile})", file=sys.stderr)
        return 1
    shutil.copytree(ROOT / "book", site / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    shutil.copy(ROOT / "_toc.yml", site / "_toc.yml")
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    cfg.setdefault("execute", {})["execute_notebooks"] = "off"
    (site / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    notebooks = []
    for c in chapters():
        (site / "book" / "chapters" / f"{c.stem}.md").unlink()
        nb = json.loads((nb_dir / f"{c.stem}.ipynb").read_text())
        for cell in nb["cells"]:  # hide papermill's injected cell from readers
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags and "remove-cell" not in tags:
                tags.append("remove-cell")
        dest = site / "book" / "chapters" / f"{c.stem}.ipynb"
        dest.write_text(json.dumps(nb, indent=1))
        notebooks.append(nb_dir / f"{c.stem}.ipynb")
    (site / "book" / "status.md").write_text(status_page(profile, notebooks))
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(site),
           "--path-output", str(ROOT / "build" / profile), "-W", "-n", "--keep-going"]
    print(" ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc == 0:
        print(f"HTML: {ROOT / 'build' / profile / '_build' / 'html' / 'index.html'}")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("execute", "render", "list"))
    p.add_argument("--profile", choices=PROFILES, default=os.environ.get("GNE_PROFILE", "book"))
    p.add_argument("--chapter", default=None, help="execute only this chapter (file stem)")
    p.add_argument("--force", action="store_true", help="re-execute even if up to date")
    p.add_argument("--jobs", type=int, default=1, help="chapters executed side by side")
    a = p.parse_args(argv)
    if a.command == "list":
        print("\n".join(c.stem for c in chapters()))
        return 0
    if a.command == "execute":
        if a.jobs < 1:
            print(f"--jobs must be an integer >= 1, got {a.jobs}", file=sys.stderr)
            return 2
        return execute(a.profile, a.chapter, a.force, a.jobs)
    return render(a.profile)


if __name__ == "__main__":
    sys.exit(main())
