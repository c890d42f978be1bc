"""check_html: a labelled display equation (MathJax div with an id) is math, not raw TeX."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import check_html  # noqa: E402


def test_labelled_display_math_is_not_raw_tex(tmp_path):
    (tmp_path / "a.html").write_text(
        '<div class="math notranslate nohighlight" id="equation-bdi-bn-rate">'
        '\\[\\phi=\\frac{\\pi}{\\pi-1}\\]</div><p>text</p>', encoding="utf-8")
    assert check_html.problems(tmp_path) == []
    (tmp_path / "b.html").write_text("<p>$$ (bdi-bn-rate) \\frac{1}{2}</p>", encoding="utf-8")
    assert len(check_html.problems(tmp_path)) >= 1
