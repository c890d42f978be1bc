"""What a reader does in Jupyter: start JupyterLab (`make lab`), open a chapter -- a MyST
Markdown notebook -- as a notebook through jupytext's contents manager, run its first cells on
the project's kernel at the smoke profile, and save an edit back to the .md.

The server is a subprocess of this Python on 127.0.0.1 with a random token, its own
runtime, config and data folders, and its own session; it is stopped, and its kernel with it,
whatever happens. Every wait has a timeout.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "book/chapters/first_look.md"  # the cheapest chapter
PARAMETER_LINE = 'profile = os.environ.get("GNE_PROFILE", "book")'
# Measured on 2 CPU cores: the server starts in 4-7 s and the kernel's work (start, imports
# of torch and gnelib, the cells) takes 20-35 s; on a machine loaded five times over, 14 s
# and 40 s. The timeouts only bound a hang.
START_TIMEOUT = 60  # s, server start
CELL_TIMEOUT = 60  # s, one cell at the smoke profile
KERNEL_TIMEOUT = 90  # s, everything the kernel test does with the kernel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A JupyterLab server started the way `make lab` starts it, isolated from the user's
    Jupyter, IPython and jupytext configuration."""

    def __init__(self, tmp: Path):
        self.token = uuid.uuid4().hex
        self.tmp = tmp
        self.kernel_pids: list[int] = []
        self.runtime = tmp / "runtime"
        env = dict(os.environ)
        for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython"),
                         ("JUPYTERLAB_SETTINGS_DIR", "lab-user-settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
                         ("XDG_CONFIG_HOME", "xdg-config"), ("GNE_DATA_DIR", "gne-data")]:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(tmp / sub)
        # a user whose global jupytext configuration pairs every notebook with an .ipynb:
        # the repository's jupytext.toml takes precedence, so no .ipynb appears
        (tmp / "xdg-config" / "jupytext").mkdir()
        (tmp / "xdg-config" / "jupytext" / "jupytext.toml").write_text('formats = "ipynb,md:myst"\n')
        env["GNE_PROFILE"] = "smoke"
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env["OMP_NUM_THREADS"] = "1"  # unit tests run side by side
        env["TQDM_DISABLE"] = "1"
        env.pop("JUPYTER_TOKEN", None)
        env.pop("JUPYTER_PATH", None)
        self.port = free_port()
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=20",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={ROOT}",
               "--ServerApp.allow_root=True", "--ServerApp.log_level=WARN"]
        self.log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        info = self.runtime / f"jpserver-{self.proc.pid}.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}:\n"
                                   + self.log_text())
            if info.exists():
                try:
                    self.port = json.loads(info.read_text())["port"]
                    self.api("GET", "/api/status")
                    return
                except (ValueError, KeyError, OSError):
                    pass  # info file half-written, or not listening yet
            time.sleep(0.2)
        raise TimeoutError(f"the server did not start in {START_TIMEOUT} s:\n" + self.log_text())

    def log_text(self) -> str:
        self.log.flush()
        return (self.tmp / "server.log").read_text()[-4000:]

    def url(self, path: str, scheme="http", **query) -> str:
        query["token"] = self.token
        return f"{scheme}://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(query)}"

    def api(self, method: str, path: str, body=None, timeout=20, **query):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path, **query), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read()
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{method} {path}: {err.code} {err.read().decode()[:2000]}\n"
                                 f"server log:\n{self.log_text()}") from None
        return json.loads(text) if text else None

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server shuts its kernels down
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        finally:
            # kernels run in their own session: make sure none outlives the server
            for pid in self.kernel_pids:
                try:
                    if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass  # gone already (or no /proc: the kernel exits when its server does)
            self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("lab"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def chapter_source() -> jupytext.notebook.NotebookNode:
    return jupytext.read(ROOT / CHAPTER)


# ---------------------------------------------------------------------------- contents


def test_chapter_opens_as_the_same_notebook(server):
    model = server.api("GET", f"/api/contents/{CHAPTER}", type="notebook", content=1)
    assert model["type"] == "notebook" and model["format"] == "json"
    nb, src = model["content"], chapter_source()
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert [c["cell_type"] for c in nb["cells"]] == [c.cell_type for c in src.cells]
    assert [c["source"] for c in nb["cells"]] == [c.source for c in src.cells]
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "parameters" in first["metadata"]["tags"]
    # the chapter is a notebook without asking, too (what the file browser sees)
    assert server.api("GET", f"/api/contents/{CHAPTER}", content=0)["type"] == "notebook"
    # and the kernel it names is the project's Python
    specs = server.api("GET", "/api/kernelspecs")
    assert "python3" in specs["kernelspecs"]


def test_saving_an_edit_writes_the_md_only(server):
    model = server.api("GET", f"/api/contents/{CHAPTER}", type="notebook", content=1)
    nb = model["content"]
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert first["source"].count(PARAMETER_LINE) == 1
    first["source"] = first["source"].replace(PARAMETER_LINE, 'profile = "smoke"')
    marker = f"output-{uuid.uuid4().hex}"
    first["outputs"] = [{"output_type": "stream", "name": "stdout", "text": marker + "\n"}]
    first["execution_count"] = 1
    folder = f"build/lab-test-{uuid.uuid4().hex[:8]}"
    out = ROOT / folder
    try:
        out.mkdir(parents=True)
        server.api("PUT", f"/api/contents/{folder}/first_look.md",
                   {"type": "notebook", "format": "json", "content": nb})
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["first_look.md"]
        text = (out / "first_look.md").read_text()
        assert text.startswith("---\njupytext:\n") and "format_name: myst" in text
        assert "jupytext_version" not in text  # jupytext.toml keeps the header as it was
        assert marker not in text  # outputs are not saved in the .md
        saved, src = jupytext.read(out / "first_look.md"), chapter_source()
        assert len(saved.cells) == len(src.cells)
        i = next(i for i, c in enumerate(saved.cells) if c.cell_type == "code")
        assert saved.cells[i].source == first["source"]
        assert "parameters" in saved.cells[i].metadata["tags"]
        for j, (a, b) in enumerate(zip(saved.cells, src.cells)):
            if j != i:
                assert (a.cell_type, a.source) == (b.cell_type, b.source)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_jupytext_toml_changes_no_conversion(tmp_path):
    """tools/book.py converts with jupytext's Python API (no configuration file); the
    command line reads jupytext.toml. Both give the same notebook for every chapter."""
    from jupytext.cli import jupytext as jupytext_cli
    from jupytext.config import find_jupytext_configuration_file

    for md in sorted((ROOT / "book" / "chapters").glob("*.md")):
        assert Path(find_jupytext_configuration_file(md.parent)) == ROOT / "jupytext.toml"
        out = tmp_path / f"{md.stem}.ipynb"
        jupytext_cli(["--quiet", "--to", "ipynb", "-o", str(out), str(md)])
        cli = json.loads(out.read_text())
        jupytext.write(jupytext.read(md), tmp_path / "api.ipynb")
        api = json.loads((tmp_path / "api.ipynb").read_text())
        for nb in (cli, api):
            for cell in nb["cells"]:
                cell.pop("id", None)
        assert cli == api, md.name


def test_lab_opens_chapters_as_notebooks_on_double_click(server):
    installed = Path(sys.prefix, "share", "jupyter", "lab", "settings", "overrides.d",
                     "gnebook.json5")
    if not installed.exists():
        pytest.skip(f"{installed} is not installed (`make venv` installs it)")
    assert installed.read_text() == (ROOT / "tools" / "lab-overrides.json5").read_text(), \
        "the installed JupyterLab defaults are stale: run `make venv`"
    plugin = server.api("GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    viewers = plugin["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("markdown") == "Jupytext Notebook"


# ---------------------------------------------------------------------------- kernel


class Kernel:
    """The kernel's channels over the server's websocket (Jupyter's JSON protocol)."""

    def __init__(self, server: Server, kernel_id: str):
        self.server, self.kernel_id, self.session = server, kernel_id, uuid.uuid4().hex
        self.ws = None

    async def connect(self):
        from tornado.websocket import websocket_connect

        url = self.server.url(f"/api/kernels/{self.kernel_id}/channels", scheme="ws",
                              session_id=self.session)
        self.ws = await asyncio.wait_for(websocket_connect(url), 20)

    async def execute(self, code: str, user_expressions=None, timeout=CELL_TIMEOUT) -> dict:
        """Run ``code``; return the reply's content with the iopub errors and the streamed
        text added. Waits for the reply and for the kernel to be idle again."""
        msg_id = uuid.uuid4().hex
        self.ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": self.session, "version": "5.3",
                       "date": datetime.now(timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": user_expressions or {}, "allow_stdin": False,
                        "stop_on_error": True},
        }))
        reply, idle, errors, text = None, False, [], []
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply in {timeout} s to:\n{code[:300]}")
            raw = await asyncio.wait_for(self.ws.read_message(), left)
            if raw is None:
                raise ConnectionError("the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if msg["channel"] == "shell" and kind == "execute_reply":
                reply = msg["content"]
            elif kind == "error":
                errors.append(msg["content"])
            elif kind == "stream":
                text.append(msg["content"]["text"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return {**reply, "errors": errors, "text": "".join(text)}

    async def run_ok(self, code: str, **kw) -> dict:
        out = await self.execute(code, **kw)
        tb = "\n".join("\n".join(e.get("traceback", [])) for e in out["errors"])
        assert out["status"] == "ok" and not out["errors"], \
            f"cell failed: {out.get('ename')}: {out.get('evalue')}\n{code[:500]}\n{tb[-3000:]}"
        return out

    async def value(self, expr: str):
        """The repr of ``expr`` in the kernel, evaluated after a no-op cell."""
        out = await self.run_ok("", user_expressions={"x": expr})
        res = out["user_expressions"]["x"]
        assert res["status"] == "ok", res
        return res["data"]["text/plain"]


def cells_to_run(nb) -> list[str]:
    """The code cells a reader runs to reach the chapter's first check: the parameters cell,
    the set-up cell and every code cell up to the first one that asserts or calls check()."""
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for i in range(2, len(code)):
        if re.search(r"\bassert\b|\bcheck\(", code[i]):
            return code[: i + 1]
    raise AssertionError(f"{CHAPTER} has no check cell (assert or check()) after its set-up")


CHAPTER_STATE = ("(lambda ch: (ch.name, ch.profile, vars(ch.sizes) == "
                 "vars(__import__('gnelib').sizes(ch.name, 'smoke'))))"
                 "(__import__('gnelib').current_chapter())")


def test_chapter_runs_on_the_kernel_at_smoke(server):
    model = server.api("GET", f"/api/contents/{CHAPTER}", type="notebook", content=1)
    served = [c["source"] for c in model["content"]["cells"] if c["cell_type"] == "code"]
    cells = cells_to_run(chapter_source())
    assert served[: len(cells)] == cells
    params, setup, rest = cells[0], cells[1], cells[2:]
    assert params.count(PARAMETER_LINE) == 1
    edited = params.replace(PARAMETER_LINE, 'profile = "smoke"')
    # the kernel starts where Jupyter starts it for this notebook: in the chapter's folder
    kernel = server.api("POST", "/api/kernels",
                        {"name": model["content"]["metadata"]["kernelspec"]["name"],
                         "path": CHAPTER})
    name = Path(CHAPTER).stem

    async def session():
        k = Kernel(server, kernel["id"])
        await k.connect()
        try:
            server.kernel_pids.append(int(await k.value("__import__('os').getpid()")))
            assert await k.value("__import__('sys').executable") == repr(sys.executable)
            # GNE_PROFILE from the environment (`make lab` sets smoke)
            await k.run_ok(params)
            assert await k.value("profile") == "'smoke'"
            await k.run_ok(setup)
            assert await k.value(CHAPTER_STATE) == repr((name, "smoke", True))
            # a reader without GNE_PROFILE who edits the cell to profile = "smoke"
            await k.run_ok("import os\nos.environ.pop('GNE_PROFILE', None)")
            await k.run_ok(params)
            assert await k.value("profile") == "'book'"
            await k.run_ok(edited)
            assert await k.value("profile") == "'smoke'"
            await k.run_ok(setup)
            assert await k.value(CHAPTER_STATE) == repr((name, "smoke", True))
            # then on to the chapter's first check
            for code in rest:
                await k.run_ok(code)
            # every registered run the chapter made used the smoke sizes (ch.run logs them)
            assert await k.value("all('--profile smoke' in r['command'] for r in "
                                 "__import__('gnelib').current_chapter().runs)") == "True"
        finally:
            k.ws.close()

    try:
        asyncio.run(asyncio.wait_for(session(), KERNEL_TIMEOUT))
    except TimeoutError:
        pytest.fail(f"running the first cells of {CHAPTER} took over {KERNEL_TIMEOUT} s\n"
                    + server.log_text())
    finally:
        try:
            server.api("DELETE", f"/api/kernels/{kernel['id']}")
        except (urllib.error.URLError, OSError):
            pass  # the fixture's teardown kills it with the server
