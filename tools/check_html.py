#!/usr/bin/env python
"""Check the rendered book for formulas that did not render and references that did not resolve.

    python tools/check_html.py build/smoke/_build/html

Fails (exit 1, one line per problem) on: a ``$`` or ``$$`` left in the text of a page (outside
math, code and scripts), an unrendered equation label such as ``(bdi-mult-eq)`` after ``$$``,
a raw ``\\begin{`` / ``\\frac`` in text, or an internal link whose target file does not exist.
"""
from __future__ import annotations

import html
import re
import sys
from pathlib import Path

STRIP = (r"<script.*?</script>", r"<style.*?</style>", r'<span class="math[^"]*"[^>]*>.*?</span>',
         r'<div class="math[^"]*"[^>]*>.*?</div>', r"<pre.*?</pre>", r"<code.*?</code>",
         r'<div class="highlight[^"]*">.*?</div>', r'<mjx-container.*?</mjx-container>')
RAW_TEX = re.compile(r"\$|\\(begin|frac|mathbf|mathrm|sum|sqrt|left|right)\b")


def page_text(markup: str) -> str:
    for pat in STRIP:
        markup = re.sub(pat, " ", markup, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def problems(root: Path) -> list[str]:
    out = []
    for page in sorted(root.rglob("*.html")):
        rel = page.relative_to(root)
        if rel.parts[0] in ("_static", "_sources", "genindex.html", "search.html"):
            continue
        markup = page.read_text(encoding="utf-8", errors="replace")
        text = page_text(markup)
        for m in RAW_TEX.finditer(text):
            ctx = " ".join(text[max(0, m.start() - 40):m.end() + 40].split())
            out.append(f"{rel}: raw TeX {m.group(0)!r} in text: …{ctx}…")
        for href in re.findall(r'href="([^"#:?]+\.html)(?:#[^"]*)?"', markup):
            if not (page.parent / href).resolve().exists():
                out.append(f"{rel}: broken link to {href}")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: check_html.py HTML_DIR (a rendered book)", file=sys.stderr)
        return 2
    found = problems(Path(argv[0]))
    for line in found:
        print(line)
    print(f"check_html: {len(found)} problem(s) in {argv[0]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
