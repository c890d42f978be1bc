"""tools/check_html.py finds formulas that did not render and broken internal links."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_html", ROOT / "tools" / "check_html.py")
check_html = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_html)


def _page(tmp_path, name, body):
    (tmp_path / name).write_text(f"<html><body>{body}</body></html>")


def test_clean_page_passes(tmp_path):
    _page(tmp_path, "a.html", '<p>Text with <span class="math notranslate nohighlight">\\(x^2\\)</span> '
                              '<code>$HOME</code></p><a href="a.html#x">self</a>')
    assert check_html.problems(tmp_path) == []


def test_raw_display_math_and_label_are_found(tmp_path):
    _page(tmp_path, "b.html", "<p>$$ (bdi-mult-eq) \\phi = 1 $$</p>")
    found = check_html.problems(tmp_path)
    assert found and all("b.html" in f for f in found)


def test_raw_macro_and_broken_link_are_found(tmp_path):
    _page(tmp_path, "c.html", '<p>\\frac{1}{2}</p><a href="missing.html">x</a>')
    found = check_html.problems(tmp_path)
    assert any("raw TeX" in f for f in found) and any("broken link" in f for f in found)
    assert check_html.main([str(tmp_path)]) == 1


def test_labelled_display_equation_passes(tmp_path):
    _page(tmp_path, "d.html", '<div class="math notranslate nohighlight" id="equation-x">'
                              '<span class="eqno">(1)<a class="headerlink" href="#equation-x">#</a></span>'
                              '\\[\\phi = \\frac{1}{2}\\]</div>')
    assert check_html.problems(tmp_path) == []
