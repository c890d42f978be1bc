"""gnelib is layered by concept (base → theory → nn → probes → data → training → runs → book →
cli): the import contract in ``.importlinter`` fails this test if a lower layer imports a
higher one, or if the closed-form theory imports torch."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe), str(ROOT / ".importlinter")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_no_layer_imports_the_package_root():
    """``from gnelib import X`` inside a layer would hide an upward import from the contract."""
    bad = []
    for path in (ROOT / "gnelib").rglob("*.py"):
        if path.parent == ROOT / "gnelib" and path.name == "__init__.py":
            continue
        top_level = path.parent == ROOT / "gnelib"  # there, `from . import` is the package root
        pattern = r"\s*(from gnelib import |import gnelib\s*$|from \.\. import " + (r"|from \. import )" if top_level else ")")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(pattern, line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_api_page_lists_every_module():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "api.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
