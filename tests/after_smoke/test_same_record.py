"""Both routes to a number meet: every registered run a chapter made at ``smoke`` (logged by
``ch.run`` in ``data/results/smoke/<chapter>.json``) is rebuilt from its logged ``gne run``
command line, and the command's configuration must have the same store key as the chapter's
record. Runs after ``make smoke`` (``make test`` calls it)."""
import contextlib
import io
import json
import shlex
from pathlib import Path

import pytest

from gnelib.base.io import data_dir
from gnelib.cli import main

RESULTS = data_dir() / "results" / "smoke"
RUNS = [(path.stem, run) for path in sorted(RESULTS.glob("*.json"))
        for run in json.loads(path.read_text()).get("runs", [])]


def test_chapters_logged_their_runs():
    chapters = {c for c, _ in RUNS}
    assert {"first_look"} <= chapters, f"no ch.run log in {RESULTS} (run `make smoke` first)"


@pytest.mark.parametrize("chapter,run", RUNS, ids=[f"{c}:{r['experiment']}:{r['key'][:8]}" for c, r in RUNS])
def test_gne_run_command_has_the_chapters_key(chapter, run):
    argv = shlex.split(run["command"])
    assert argv[:2] == ["gne", "run"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv[1:] + ["--key"]) == 0
    assert out.getvalue().strip().splitlines()[-1] == run["key"], run["command"]
