"""Structure of the book: every chapter in the toc is a MyST notebook whose first code cell
is tagged `parameters` and reads the profile from GNE_PROFILE, and papermill can override it."""
import importlib.util
import re
from pathlib import Path

import jupytext
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("book_tool", ROOT / "tools" / "book.py")
book_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book_tool)
CHAPTERS = book_tool.chapters()


def test_toc_lists_existing_chapters_and_no_notebooks_are_committed():
    assert CHAPTERS, "no chapters in _toc.yml"
    for path in CHAPTERS:
        assert path.exists(), path
    for f in book_tool.toc_files():
        assert (ROOT / f"{f}.md").exists(), f
    assert not list((ROOT / "book").rglob("*.ipynb"))


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_first_code_cell_is_the_parameters_cell(path, tmp_path):
    nb = jupytext.read(path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    assert 'os.environ.get("GNE_PROFILE", "book")' in first.source
    jupytext.write(nb, tmp_path / "ch.ipynb")
    injected = parameterize_notebook(load_notebook_node(str(tmp_path / "ch.ipynb")), {"profile": "smoke"},
                                     kernel_name="python3", language="python")
    codes = [c for c in injected.cells if c.cell_type == "code"]
    assert "injected-parameters" in codes[1].metadata["tags"]
    assert 'profile = "smoke"' in codes[1].source


def test_unknown_chapter_is_a_clear_error(capsys):
    assert book_tool.main(["execute", "--profile", "smoke", "--chapter", "nope"]) == 2
    assert "unknown chapter 'nope': allowed values are" in capsys.readouterr().err


STYLE = re.compile(r"^\s*(ax|axes|fig|plt|leg|cb)\b|\.set_|\.set\(|\.legend\(|\.annotate\(|\.text\(|"
                   r"\.tick_params|\.axhline|\.axvline|\.grid\(|\.semilogy\(|\.plot\(|\.errorbar\(|"
                   r"\.fill_between\(|\.loglog\(|\.scatter\(|\.bar\(|\.imshow\(")


def _code_lines(source: str) -> list[str]:
    return [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_cells_are_short_steps(path):
    """d2l/QuantEcon style: a cell is one step of the argument; no cell has more than 25 lines
    outside figure styling (plotting calls). (The median target, 10 lines, is met by some
    chapters only; see the README.)"""
    cells = [c for c in jupytext.read(path).cells
             if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    long = [c.source.splitlines()[0] for c in cells
            if len([ln for ln in _code_lines(c.source) if not STYLE.search(ln)]) > 25]
    assert not long, f"{path.stem}: cells over 25 lines outside figure styling: {long}"
