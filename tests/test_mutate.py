"""The science-mutation harness (tools/mutate.py, tools/mutants.toml): every mutant is well formed
and still applies to the current gnelib (a refactor that changes a mutant's text fails here:
update tools/mutants.toml), and the patch machinery works on a toy tree."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("gne_mutate_tool", ROOT / "tools" / "mutate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


mt = _load_tool()
MUTANTS = mt.load_mutants()


def test_mutant_list_is_well_formed():
    assert len(MUTANTS) >= 32
    ids = [m.id for m in MUTANTS]
    assert len(ids) == len(set(ids))
    for m in MUTANTS:
        assert m.id and m.what and m.find and m.find != m.replace
        assert all(c in ("first_look", "bdi", "pws", "bn", "own_model") for c in m.chapters), m.id
        for t in m.tests:
            assert (ROOT / t.split("::")[0]).is_file(), f"{m.id}: no test file {t}"
    files = {mt.locate(m, ROOT).path for m in MUTANTS}
    assert len(files) >= 10  # spread across the library


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_mutant_text_occurs_exactly_once(mutant):
    """If this fails, the code the mutant targets changed: update tools/mutants.toml."""
    try:
        site = mt.locate(mutant, ROOT)
    except mt.Stale as err:
        pytest.fail(f"mutant {mutant.id} is stale: {err}")
    text = (ROOT / site.path).read_text()
    assert text[site.offset:site.offset + len(mutant.find)] == mutant.find


def _toy_tree(tmp_path):
    pkg = tmp_path / "gnelib"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text(
        "def f(x):\n    return x * 2  # twice\n\n\n"
        "class C:\n    def g(self, x):\n        return x * 2\n\n"
        "    @staticmethod\n    def h(x):\n        y = 1\n        return y + x\n")
    (pkg / "sub" / "b.py").write_text("ALPHA = 1.5\n\n\ndef k():\n    return 'é' + 'x * 2'\n")
    return tmp_path


def test_patch_application_on_a_toy_tree(tmp_path):
    root = _toy_tree(tmp_path)
    M = mt.Mutant
    # unique text anywhere
    site = mt.apply(M("alpha", "w", "ALPHA = 1.5", "ALPHA = 1.6"), root)
    assert site.path == "gnelib/sub/b.py" and site.line == 1
    assert (root / "gnelib/sub/b.py").read_text().startswith("ALPHA = 1.6\n")
    # ambiguous text: stale without a symbol, unique inside one
    amb = M("twice", "w", "return x * 2", "return x * 3")
    with pytest.raises(mt.Stale, match="2 times"):
        mt.locate(amb, root)
    amb.symbol = "g"
    assert mt.apply(amb, root).line == 7
    a = (root / "gnelib/a.py").read_text()
    assert "        return x * 3\n" in a and "    return x * 2  # twice" in a
    # dotted qualname, a decorated method, and a find spanning lines
    multi = M("multi", "w", "y = 1\n        return y + x", "y = 2\n        return y - x", symbol="C.h")
    mt.apply(multi, root)
    assert "y = 2\n        return y - x" in (root / "gnelib/a.py").read_text()
    # text only outside the symbol, or nowhere: stale, not silently skipped
    with pytest.raises(mt.Stale, match="outside"):
        mt.locate(M("out", "w", "return x * 2  # twice", "", symbol="C"), root)
    with pytest.raises(mt.Stale, match="not found"):
        mt.locate(M("gone", "w", "no such text", "x"), root)
    # non-ASCII text before the site keeps offsets right
    mt.apply(M("str", "w", "'x * 2'", "'x * 5'", symbol="k"), root)
    assert (root / "gnelib/sub/b.py").read_text().endswith("return 'é' + 'x * 5'\n")


def test_load_mutants_rejects_malformed_entries(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text("[[mutant]]\nid = 'x'\nwhat = 'w'\nfind = 'a'\n")
    with pytest.raises(ValueError, match="replace"):
        mt.load_mutants(bad)
    bad.write_text("[[mutant]]\nid = 'x'\nwhat = 'w'\nfind = 'a'\nreplace = 'b'\ncolour = 1\n")
    with pytest.raises(ValueError, match="unknown"):
        mt.load_mutants(bad)
    bad.write_text("[[mutant]]\nid = 'x'\nwhat = 'w'\nfind = 'a'\nreplace = ''\n"
                   "[[mutant]]\nid = 'x'\nwhat = 'w'\nfind = 'b'\nreplace = 'c'\n")
    with pytest.raises(ValueError, match="duplicate"):
        mt.load_mutants(bad)
    bad.write_text("[[mutant]]\nid = 'x'\nwhat = 'w'\nfind = 'a'\nreplace = ''\ntests = 'y'\n")
    with pytest.raises(ValueError, match="list"):
        mt.load_mutants(bad)


def test_notebook_error_and_chapter_verdicts(tmp_path):
    nb = {"cells": [
        {"cell_type": "markdown", "source": "x"},
        {"cell_type": "code", "source": "a = 1", "outputs": []},
        {"cell_type": "code", "source": ["x = 2\n", "assert x < 1, 'too big'\n"], "outputs": [
            {"output_type": "error", "ename": "AssertionError", "evalue": "too big",
             "traceback": ["\x1b[0;31m---------\x1b[0m",
                           "Cell \x1b[0;32mIn[2], line 2\x1b[0m\n      1 x = 2\n"
                           "\x1b[0;32m----> 2\x1b[0m \x1b[38;5;28;01massert\x1b[39;00m x < 1, 'too big'\n"]}]}]}
    path = tmp_path / "ch.ipynb"
    path.write_text(json.dumps(nb))
    err = mt.notebook_error(path)
    assert err["cell"] == 2 and err["exception"] == "AssertionError: too big"
    assert err["line"] == "assert x < 1, 'too big'"
    assert mt.notebook_error(tmp_path / "missing.ipynb") is None
    killed = {"killed": True, "error": {"cell": 5}}
    assert mt.judge_chapter({"killed": False}, None) == "survived"
    assert mt.judge_chapter(killed, None) == "killed"
    assert mt.judge_chapter(killed, {"killed": False}) == "killed"
    assert mt.judge_chapter(killed, {"killed": True, "error": {"cell": 9}}) == "killed"
    assert mt.judge_chapter(killed, {"killed": True, "error": {"cell": 5}}) == "inconclusive"


def test_matrix_and_summary():
    recs = [
        {"id": "a", "status": "ok", "chapters_listed": ["bn"],
         "unit": {"killed": True, "stage": "targeted"},
         "chapters": {"bn": {"killed": True, "verdict": "killed", "error": {"cell": 3}}}},
        {"id": "b", "status": "ok", "chapters_listed": ["bn"],
         "unit": {"killed": False, "stage": None},
         "chapters": {"bn": {"killed": False, "verdict": "survived"}}},
        {"id": "c", "status": "stale", "reason": "text not found"},
    ]
    s = mt.summary(recs, ["bn"])
    assert s["current"] == 2 and s["unit_killed"] == 1 and s["unit_survivors"] == ["b"]
    assert s["stale"] == ["c"] and s["chapters"]["bn"]["survivors"] == ["b"]
    assert s["chapter_killed_mutants"] == 1 and s["chapter_survivors"] == ["b"]
    text = mt.matrix_text(recs, ["bn"])
    assert "killed (targeted)" in text and "SURVIVED" in text and "STALE" in text
    assert "killed c3" in text


def test_atomic_json_write(tmp_path):
    p = tmp_path / "out" / "m.json"
    mt.atomic_write_json(p, {"a": 1})
    mt.atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in p.parent.iterdir()] == ["m.json"]
