"""Browser tests: a private JupyterLab driven by Debian's Chromium through Playwright.

Why each piece is the way it is:

- JupyterLab runs as ``sys.executable -m jupyterlab`` on a free 127.0.0.1 port with a random
  token, in a temporary root dir. Its config, runtime, IPython, home and XDG dirs are
  temporary too, so nothing of the user's is read or written; the data path is NOT replaced
  (the ipywidgets labextension lives in ``<venv>/share/jupyter``), only prepended to with a
  ``python3`` kernelspec whose argv is ``sys.executable``: the kernel is this interpreter.
- Lab's news feed, update check and extension manager are turned off: the network is closed.
- The browser is ``/usr/bin/chromium`` (Debian's package), never a downloaded build. If it is
  missing the tests FAIL, so that CI cannot pass by skipping them; ``ATAI_SKIP_BROWSER=1``
  is the explicit local opt-out (``-m "not browser"`` deselects them too). Playwright runs
  per test module: while it runs, ``asyncio.run`` cannot be called in this process.
- ``LabApp.expose_app_in_browser`` gives the page ``window.jupyterapp``: commands (run a cell,
  interrupt) and the kernel's status are read from JupyterLab itself instead of guessed from
  pixels; what a user sees (outputs, widgets, buttons) is checked in the DOM.
- Screenshots, the server log and, on failure, a screenshot and the browser console go to
  ``test-artifacts/browser/`` at the repository root (gitignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
STARTUP_TIMEOUT = 120.0  # s: JupyterLab's start on 2 busy cores
TIMEOUT_MS = 90_000  # any wait in the browser (2 noisy cores: be generous, never flaky)
# Not inherited: the platform's settings (these tests stay local), and Jupyter's own paths.
REMOVED_ENV = (
    "ATAI_API_KEY",
    "ATAI_API_ENDPOINT",
    "ATAI_MAGICS_WAIT",
    "JUPYTER_DATA_DIR",
    "JUPYTERLAB_DIR",
    "JUPYTERLAB_SETTINGS_DIR",
    "JUPYTERLAB_WORKSPACES_DIR",
)
_CONSOLE = pytest.StashKey[list[str]]()


# -- collection: every test here is a browser test ----------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = os.environ.get("ATAI_SKIP_BROWSER") == "1"
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.browser)
            if skip:
                item.add_marker(pytest.mark.skip(reason="ATAI_SKIP_BROWSER=1"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """When a test using a page fails: its screenshot and console, before any teardown
    (which shuts the kernels down) changes what the page shows."""
    report = yield
    page = getattr(item, "funcargs", {}).get("browser_page")
    if report.failed and report.when == "call" and page is not None:
        name = _safe(item.name)
        with contextlib.suppress(Exception):
            page.screenshot(path=ARTIFACTS / f"{name}-FAILED.png", full_page=True)
        (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(item.stash.get(_CONSOLE, [])))
    return report


# -- the JupyterLab server ------------------------------------------------------------------


@dataclass(frozen=True)
class JupyterLab:
    """A running JupyterLab: its base URL, token and root directory."""

    url: str
    token: str
    root: Path

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _prepare_dirs(base: Path) -> dict[str, str]:
    """The private dirs and the environment the server (and so its kernels) runs with."""
    dirs = {name: base / name for name in ("root", "config", "runtime", "ipython", "home", "path")}
    for path in dirs.values():
        path.mkdir()
    # The kernel of notebooks saying `python3` is this interpreter (JUPYTER_PATH comes first).
    _write_json(
        dirs["path"] / "kernels" / "python3" / "kernel.json",
        {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (browser tests)",
            "language": "python",
        },
    )
    settings = dirs["config"] / "lab" / "user-settings" / "@jupyterlab"
    # No news or update toasts over the notebook.
    _write_json(
        settings / "apputils-extension" / "notification.jupyterlab-settings",
        {"fetchNews": "false", "checkForUpdates": False},
    )
    # Every cell stays in the DOM (no virtual scrolling), so any cell can be found.
    _write_json(
        settings / "notebook-extension" / "tracker.jupyterlab-settings",
        {"windowingMode": "none"},
    )
    env = {k: v for k, v in os.environ.items() if k not in REMOVED_ENV}
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_PATH=str(dirs["path"]),
        IPYTHONDIR=str(dirs["ipython"]),
        HOME=str(dirs["home"]),
        XDG_CONFIG_HOME=str(dirs["home"] / ".config"),
        XDG_DATA_HOME=str(dirs["home"] / ".local" / "share"),
        XDG_CACHE_HOME=str(dirs["home"] / ".cache"),
        ATAI_LOCAL_HOME=str(base / "atai-local-home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


def _lab_command(port: int, token: str, root: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--LabApp.expose_app_in_browser=True",
    ]


def _wait_until_up(proc: subprocess.Popen[bytes], lab: JupyterLab, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited ({proc.returncode}):\n{_tail(log)}", pytrace=False)
        with contextlib.suppress(httpx.HTTPError):
            if lab.api("GET", "/api/status").status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(
        f"JupyterLab did not answer in {STARTUP_TIMEOUT:.0f} s:\n{_tail(log)}", pytrace=False
    )


def _check_widgets_extension(lab: JupyterLab) -> None:
    """The Lab page must list the ipywidgets front end, or no widget can ever render."""
    page = httpx.get(f"{lab.url}/lab?token={lab.token}", timeout=30).text
    config = re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S)
    assert config, "no page config in /lab"
    names = [ext["name"] for ext in json.loads(config.group(1)).get("federated_extensions", [])]
    assert WIDGETS_EXTENSION in names, f"{WIDGETS_EXTENSION} not loaded by JupyterLab: {names}"


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes], lab: JupyterLab, runtime: Path) -> None:
    """Shut down kernels and server, then kill whatever of ours is left.

    Kernels run in sessions of their own (jupyter_client starts them so), so killing the
    server's process group alone would orphan them: they are found by their connection
    file, which lives in our private runtime dir.
    """
    with contextlib.suppress(httpx.HTTPError):
        lab.api("POST", "/api/shutdown")
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
            break
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ProcessLookupError):
            if str(runtime).encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/browser/``, emptied once per session."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def jupyter_lab(
    chromium_path: Path, tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> Iterator[JupyterLab]:
    """One private JupyterLab for the session (only if there is a browser to drive it);
    stopped, kernels included, at the end."""
    base = tmp_path_factory.mktemp("jupyterlab")
    env = _prepare_dirs(base)
    port, token = _free_port(), secrets.token_hex(24)
    lab = JupyterLab(f"http://127.0.0.1:{port}", token, base / "root")
    log = artifacts / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _lab_command(port, token, lab.root),
            cwd=lab.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_up(proc, lab, log)
        _check_widgets_extension(lab)
        yield lab
    finally:
        _stop(proc, lab, base / "runtime")
        if (base / "atai-local-home").is_dir():  # a test's notebook started a local backend
            from atai_magics.local import server

            server.stop(base / "atai-local-home")


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """``/usr/bin/chromium``; its absence FAILS the tests (CI must not pass by skipping)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(`apt-get install -y chromium`, as .ci/run does). "
            "Set ATAI_SKIP_BROWSER=1 or use -m 'not browser' to leave them out locally.",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def chromium(chromium_path: Path) -> Iterator[Browser]:
    """Debian's Chromium, headless, with a fresh temporary profile, for one test module.

    Not for the session: while Playwright's sync API is started, its event loop counts as
    the running one, and every later test calling ``asyncio.run`` would fail."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(
    chromium: Browser, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A fresh page in a fresh browser context (no cookies, storage or cache carried over);
    its console is kept for the failure report."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)  # for every expect(), not Playwright's 5 s
    page = context.new_page()
    console = request.node.stash[_CONSOLE] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
    try:
        yield page
    finally:
        context.close()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# -- helpers --------------------------------------------------------------------------------


class LabDriver:
    """What a test does in JupyterLab: write and open a notebook, run cells, read outputs."""

    def __init__(self, page: Page, server: JupyterLab, artifacts: Path, test_name: str) -> None:
        self.page, self.server, self.artifacts = page, server, artifacts
        self.test_name = _safe(test_name)

    def write_notebook(self, name: str, cells: list[str]) -> Path:
        """``<root>/<name>.ipynb`` with these code cells, for the ``python3`` kernel."""
        notebook = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(source) for source in cells],
            metadata={
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
            },
        )
        path = self.server.root / f"{name}.ipynb"
        nbformat.write(notebook, path)
        return path

    def open(self, name: str) -> None:
        """Open ``<name>.ipynb`` (in a workspace of its own, so no earlier layout comes back)
        and wait until its kernel is idle and the widget manager is active."""
        workspace = f"{self.test_name}-{secrets.token_hex(4)}"
        self.page.goto(
            f"{self.server.url}/lab/workspaces/{workspace}/tree/{name}.ipynb"
            f"?token={self.server.token}"
        )
        expect(self.cells.first).to_be_visible()
        self.page.wait_for_function(
            "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"
            "?.status === 'idle'"
        )
        assert self.page.evaluate(
            f"() => window.jupyterapp.isPluginActivated('{WIDGETS_EXTENSION}:plugin')"
        ), "the ipywidgets manager is not active in JupyterLab"

    @property
    def cells(self) -> Locator:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def cell(self, index: int) -> Locator:
        return self.cells.nth(index)

    def output(self, index: int) -> Locator:
        """The output area of cell ``index`` (all of its outputs)."""
        return self.cell(index).locator(".jp-OutputArea")

    def prompt(self, index: int) -> Locator:
        """``[ ]:``, ``[*]:`` while queued or running, ``[3]:`` once run."""
        return self.cell(index).locator(".jp-InputArea-prompt")

    def run_cell(self, index: int, wait: bool = True) -> None:
        """Run cell ``index`` as ``notebook:run-cell`` does; ``wait``: until it has finished."""
        self.page.evaluate(
            """(index) => {
                const app = window.jupyterapp;
                app.shell.currentWidget.content.activeCellIndex = index;
                void app.commands.execute('notebook:run-cell');  // resolves when the cell ends
            }""",
            index,
        )
        if wait:
            self.wait_until_run(index)

    def run_all(self) -> None:
        self.command("notebook:run-all-cells")

    def command(self, command: str) -> None:
        """Start a JupyterLab command (e.g. ``notebook:interrupt-kernel``); does not wait for it."""
        self.page.evaluate("(c) => { void window.jupyterapp.commands.execute(c); }", command)

    def wait_until_run(self, index: int) -> None:
        expect(self.prompt(index)).to_have_text(re.compile(r"\[\d+\]:"))

    def wait_for_output(self, index: int, text: str | re.Pattern[str]) -> None:
        """Until cell ``index``'s outputs contain ``text`` (widgets' text included)."""
        expect(self.output(index)).to_contain_text(text)

    def click_button(self, index: int, text: str) -> None:
        """Click the button labelled ``text`` (a widget's or any) in cell ``index``'s output."""
        self.output(index).locator("button", has_text=text).click()

    def screenshot(self, label: str) -> Path:
        path = self.artifacts / f"{self.test_name}-{_safe(label)}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def shutdown_kernels(self) -> None:
        for session in self.server.api("GET", "/api/sessions").json():
            self.server.api("DELETE", f"/api/sessions/{session['id']}")


@pytest.fixture
def lab(
    browser_page: Page, jupyter_lab: JupyterLab, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[LabDriver]:
    """A ``LabDriver`` on a fresh page; the test's kernels are shut down afterwards."""
    driver = LabDriver(browser_page, jupyter_lab, artifacts, request.node.name)
    try:
        yield driver
    finally:
        driver.shutdown_kernels()
