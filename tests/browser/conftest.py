"""Fixtures for the JupyterLab end-to-end tests (marker ``browser``).

One ``jupyter lab`` per session on 127.0.0.1 (a free port, isolated settings, workspaces, config and runtime
folders; Lab root = the repository), one headless Debian Chromium driven by Playwright, and one fresh page per
test that opens its notebook in a workspace of its own. Screenshots always go to ``outputs/browser/`` (a
``*-FAILED.png`` one when a test fails), together with the server's log ``outputs/browser/jupyterlab.log``.

The tests skip themselves when ``/usr/bin/chromium`` (Debian package ``chromium``) or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM = Path(os.environ.get("RECON_KIT_CHROMIUM", "/usr/bin/chromium"))
SHOTS = ROOT / "outputs" / "browser"
SERVER_CONFIG = HERE / "jupyter_server_test_config.py"

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    # WebGL (k3d) without a GPU: software rendering through ANGLE + SwiftShader
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
]
#: generous: the CI machine has 2 cores, shared with the kernel that trains
TIMEOUT_MS = 120_000

# Lab user settings for the tests: no news/update toast over the UI, every cell attached to the DOM (the default
# content-visibility windowing leaves off-screen outputs unpainted), no autosave of the throw-away copies.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, "rep_" + report.when, report)  # the page fixture reads rep_call to name its screenshot
    return report


# ---- requirements ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) for browser tests")
    try:
        import playwright.sync_api  # noqa: F401  (only: is it there?)
    except ImportError as exc:
        pytest.skip(f"playwright is not importable ({exc}); pip install playwright")
    try:
        import jupyterlab  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"jupyterlab is not importable ({exc})")
    return CHROMIUM


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


# ---- JupyterLab -----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    def __init__(self, proc: subprocess.Popen, base_url: str, log: Path):
        self.proc, self.base_url, self.log = proc, base_url, log

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.base_url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel (a training thread keeps a core busy otherwise)."""
        try:
            for k in self.api("/api/kernels"):
                self.api(f"/api/kernels/{k['id']}", method="DELETE")
        except Exception:  # best effort: the server may be on its way down
            pass

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def lab_server(chromium_path, shots_dir, tmp_path_factory) -> LabServer:
    base = tmp_path_factory.mktemp("jupyterlab")
    settings = base / "settings"
    for rel, value in LAB_SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    for sub in ("workspaces", "config", "runtime", "tmp"):
        (base / sub).mkdir()
    env = {**os.environ,
           "JUPYTERLAB_GALATA_ROOT_DIR": str(ROOT),      # Lab root: the repository (notebook copies live inside)
           "JUPYTERLAB_SETTINGS_DIR": str(settings),     # not the user's ~/.jupyter/lab/user-settings
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
           "RECON_KIT_LAB_WORKSPACES": str(base / "workspaces"),
           "JUPYTER_CONFIG_DIR": str(base / "config"),   # not the user's ~/.jupyter
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "TMPDIR": str(base / "tmp"),                  # galata's helper makes temporary files and folders
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "PYTHONUNBUFFERED": "1"}
    log = shots_dir / "jupyterlab.log"
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between the probe and the bind
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter", "lab", "--config", str(SERVER_CONFIG), f"--ServerApp.port={port}",
                 "--no-browser"], cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
        server = LabServer(proc, url, log)
        deadline, ready = time.monotonic() + 120, False
        while not ready and time.monotonic() < deadline and proc.poll() is None:  # a crash fails fast
            try:
                server.api("/api/status")
                ready = True
            except Exception:
                time.sleep(0.5)
        if ready:
            break
        last_error = server.log_tail()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    else:
        pytest.fail(f"jupyter lab did not start (log {log}):\n{last_error}")
    yield server
    server.shutdown_kernels()
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def lab_workdir(lab_server) -> Path:
    """A throw-away folder inside the Lab root for the notebook copies (outputs/ is ignored by git)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=SHOTS))
    yield work
    shutil.rmtree(work, ignore_errors=True)


# ---- data -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """The built-in demo object at 96 px, prepared at 64 px (about 10 s): the folder holding transforms.json."""
    from recon_kit.data import dataset
    from recon_kit import synth

    tmp = tmp_path_factory.mktemp("demo")
    capture = synth.write_demo_capture(tmp / "capture", resolution=96, n_test=0)
    dataset.prepare_dataset(capture, tmp / "data", [64], progress=False)
    ds = tmp / "data" / "64"
    assert (ds / "transforms.json").exists()
    return ds


# ---- browser --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS, headless=True)
    except Exception as exc:
        pw.stop()
        pytest.fail(f"could not launch {chromium_path} with Playwright: {exc}")
    yield b
    b.close()
    pw.stop()


def _shot_name(node) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", node.name)


@pytest.fixture
def new_page(browser, shots_dir, request):
    """``new_page()`` -> a Playwright page in a fresh context (1600x1000). At teardown every page leaves a final
    screenshot ``outputs/browser/<test>[-<i>].png``, or ``<test>[-<i>]-FAILED.png`` when the test failed."""
    pages = []
    name = _shot_name(request.node)
    for stale in list(shots_dir.glob(f"{name}.png")) + list(shots_dir.glob(f"{name}-*")):
        stale.unlink(missing_ok=True)  # the last run's pictures of this test, failed ones included

    def make(**context_args):
        context = browser.new_context(viewport={"width": 1600, "height": 1000}, **context_args)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page._rk_console = []
        page.on("console", lambda msg: page._rk_console.append(f"{msg.type}: {msg.text}"))
        pages.append(page)
        return page

    make.cleanups = []  # run after the screenshots (e.g. shutting the kernels down)
    yield make
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    for i, page in enumerate(pages):
        stem = name + (f"-{i}" if i else "") + ("-FAILED" if failed else "")
        try:
            page.screenshot(path=str(shots_dir / f"{stem}.png"), full_page=False, timeout=30_000)
            if failed:
                (shots_dir / f"{stem}-console.txt").write_text("\n".join(page._rk_console[-300:]) + "\n")
        except Exception as exc:  # a crashed page: say so, don't hide the test's own error
            print(f"could not save the screenshot of page {i}: {exc}")
        page.context.close()
    for fn in make.cleanups:
        fn()


class LabPage:
    """A Lab page with a notebook open, plus the helpers the tests share."""

    def __init__(self, page, server: LabServer):
        self.page, self.server = page, server

    def open_notebook(self, path: Path) -> "LabPage":
        rel = path.resolve().relative_to(ROOT).as_posix()
        workspace = "t" + uuid.uuid4().hex[:10]  # a workspace of its own: no tabs left over from other tests
        self.page.goto(f"{self.server.base_url}/lab/workspaces/{workspace}/tree/{rel}")
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=TIMEOUT_MS)
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=TIMEOUT_MS)
        # the file browser only takes space in screenshots
        self.page.evaluate("() => { const s = window.jupyterapp.shell; if (s.leftCollapsed === false) "
                           "window.jupyterapp.commands.execute('application:toggle-left-area'); }")
        self.page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=TIMEOUT_MS)  # kernel started
        return self

    def run_all(self) -> None:
        # the command's promise resolves only when every cell has run: wrap it so Playwright does not await it
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    def wait_until_run(self, timeout_ms: int = 300_000) -> None:
        """Wait until Run All is over: no [*] prompt left and the first code cell has a number."""
        self.page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]
                    .map(p => p.textContent);
                return prompts.length > 0 && !prompts.some(t => t.includes('*')) && /\\d/.test(prompts[0]);
            }""", timeout=timeout_ms, polling=500)

    def errors(self) -> list[str]:
        """Error outputs of the notebook's cells, as 'ename: evalue'."""
        return self.page.evaluate(
            """() => {
                const nb = window.jupyterapp.shell.currentWidget.content;
                const errs = [];
                for (const cell of nb.widgets) {
                    if (cell.model.type !== 'code') continue;
                    for (const o of cell.model.outputs.toJSON())
                        if (o.output_type === 'error') errs.push(o.ename + ': ' + o.evalue);
                }
                return errs;
            }""")


@pytest.fixture
def lab(new_page, lab_server):
    """``lab(notebook_path)`` -> a :class:`LabPage` with the notebook open and its kernel idle."""
    new_page.cleanups.append(lab_server.shutdown_kernels)

    def open_(path: Path) -> LabPage:
        return LabPage(new_page(), lab_server).open_notebook(path)

    return open_
