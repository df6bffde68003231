"""The API key never shows: real kernels run the notebooks and magic cells with a key set.

Two secrets are looked for, everywhere a run leaves text behind:

- the **token** of a private local backend. The kernel gets ``ATAI_API_ENDPOINT`` = that
  backend's URL and ``ATAI_API_KEY`` = its token, so the magics talk to a real backend over
  loopback, with the key taken from the environment exactly as on the platform (setting
  ``ATAI_API_KEY`` alone would switch the magics to the platform);
- a **canary** key, for a kernel whose endpoint is a small server in this process that
  answers every request with an error echoing the ``Authorization`` header it received,
  then a closed port, then plain-HTTP endpoints on other hosts (refused before connecting).

Scanned, each for both secrets (and a 16-character prefix of each, to catch a truncated
copy): every cell output of the executed notebooks (stream text, display data of every
mime type, ``error`` ename/evalue/traceback, i.e. the ``_render_traceback_`` lines), the
widget state nbclient stores in ``nb.metadata.widgets``, the executed notebook written to a
temporary file, the kernel process's stdout/stderr (where the magic-cell kernels send every
logger at DEBUG: httpx, httpcore, the watcher), every file of the extension's data dir
(the journal, downloads), and every file of the backend's home (``server.log``,
``server.json``, the SQLite store and its WAL, stored files and outputs) except ``token``.

The client-level rule "no key over plain HTTP to a non-loopback host, nothing sent" is
``tests/api/test_client_endpoints.py::test_plain_http_to_remote_host_sends_nothing``
(MockTransport, no request recorded); here the same refusal is checked through the magics in a
real kernel, with ``socket`` instrumented to show that no connection was even attempted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import LocalBackend, plugin_backend

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REMOVED = ("ATAI_API_KEY", "ATAI_API_ENDPOINT", "ATAI_MAGICS_WAIT", "ATAI_LOCAL_HOME")
CANARY = f"sk_canary_{uuid.uuid4().hex}"


# --- looking for a secret -----------------------------------------------------------------------


def needles(*secrets: str) -> list[str]:
    """Each secret, and its first 16 characters (a truncated copy is a leak too)."""
    return [n for s in secrets for n in (s, s[:16])]


def hits_in(text: str | bytes, where: str, secrets: list[str]) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [f"{where}: {s[:6]}..." for s in secrets if s.encode() in data]


def notebook_hits(nb: Any, secrets: list[str]) -> list[str]:
    """Every output of every cell, and the stored widget state."""
    found: list[str] = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            found += hits_in(json.dumps(output), f"cell {i} {output['output_type']}", secrets)
    found += hits_in(json.dumps(nb.metadata.get("widgets", {})), "widget state", secrets)
    return found


def tree_hits(root: Path, secrets: list[str], *, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file under ``root`` (bytes, so SQLite pages and WAL frames too)."""
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in skip:
            found += hits_in(path.read_bytes(), str(path.relative_to(root)), secrets)
    return found


# --- a kernel ----------------------------------------------------------------------------------


def run_kernel(
    nb: Any, tmp: Path, env: dict[str, str], *, cwd: Path, allow_errors: bool = False
) -> Path:
    """Execute ``nb`` in a fresh kernel with ``env``; returns the file of its stdout+stderr."""
    full = {k: v for k, v in os.environ.items() if k not in REMOVED}
    full.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        XDG_DATA_HOME=str(tmp / "data"),
        ATAI_LOCAL_HOME=str(tmp / "unused-local-home"),  # no local backend must start
        MPLBACKEND="Agg",
    )
    full.update(env)
    log = tmp / "kernel.log"
    with log.open("wb") as out:
        client = NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute(env=full, stdout=out, stderr=subprocess.STDOUT, cwd=str(cwd))
    return log


def all_hits(nb: Any, tmp: Path, log: Path, secrets: list[str]) -> list[str]:
    saved = tmp / "executed.ipynb"
    nbformat.write(nb, saved)
    found = notebook_hits(nb, secrets)
    found += hits_in(saved.read_bytes(), "saved notebook", secrets)
    found += hits_in(log.read_bytes(), "kernel stdout/stderr", secrets)
    found += tree_hits(tmp / "data", secrets)
    return found


def outputs_text(cell: Any) -> str:
    return json.dumps(cell.get("outputs", []))


def printed(cell: Any) -> str:
    return "".join(
        o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream"
    )


def errors(nb: Any) -> list[dict[str, Any]]:
    return [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]


def test_the_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    """The scanners are not blind: a secret (or a truncated copy) planted anywhere is found."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("error", ename="E", evalue="", traceback=[])]
    nb.cells[0].outputs[0]["traceback"] = [f"key {CANARY[:20]}"]
    nb.metadata["widgets"] = {"state": {"m": {"value": f"<b>{CANARY}</b>"}}}
    assert len(notebook_hits(nb, needles(CANARY))) == 3  # traceback prefix; widget key + prefix
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "state.sqlite3").write_bytes(b"\x00" + CANARY.encode() + b"\xff")
    (tmp_path / "token").write_text(CANARY)
    assert tree_hits(tmp_path, [CANARY], skip=("token",)) == ["sub/state.sqlite3: sk_can..."]


# --- the notebooks, on a private backend whose token is the key ----------------------------------


@pytest.fixture
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with plugin_backend(tmp_path_factory, "secrets", concurrency=2) as b:
        yield b


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_notebook_run_shows_the_key_nowhere(
    path: Path, backend: LocalBackend, tmp_path: Path
) -> None:
    token = backend.info.token()
    nb = nbformat.read(path, as_version=4)  # a copy in memory: the repository's file is untouched
    creates = backend.handled("create_job")
    env = {"ATAI_API_ENDPOINT": backend.info.url, "ATAI_API_KEY": token}
    log = run_kernel(nb, tmp_path, env, cwd=path.parent)

    load = next(c for c in nb.cells if c.source.startswith("%load_ext atai_magics"))
    first = printed(load)  # the one line naming the backend
    assert backend.info.url in first and "key from $ATAI_API_KEY" in first, first
    assert backend.handled("create_job") > creates  # the jobs really went to this backend
    assert not (tmp_path / "unused-local-home" / "server.json").exists()
    secrets = needles(token, CANARY)
    found = all_hits(nb, tmp_path, log, secrets)
    found += tree_hits(backend.info.home, secrets, skip=("token",))
    assert found == []


# --- magic cells: cards, tables, errors --------------------------------------------------------

SOCKET_SPY = """\
import logging, socket, sys
# every logger at DEBUG, to the kernel's stderr (scanned): httpx, httpcore, the watcher's ticks
logging.basicConfig(level=logging.DEBUG, stream=sys.__stderr__, force=True)
attempts = []
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def _spy_connect(self, address):
    attempts.append(("connect", address))
    return _connect(self, address)
def _spy_getaddrinfo(host, *args, **kwargs):
    attempts.append(("getaddrinfo", host))
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = _spy_connect, _spy_getaddrinfo
"""

REMOTE_HTTP = ["http://10.255.255.1/v0.5", "http://example.invalid"]


def remote_plain_http_cells() -> list[str]:
    """For each non-loopback plain-HTTP endpoint: a job cell that must fail before sending."""
    cells = []
    for url in REMOTE_HTTP:
        cells += [
            f"%atai_config endpoint={url}",
            "%%atai_job\nname: x\npipeline: slow-test\ninputs:\n  worker.data: [a.txt]\n",
            "%atai_job status job_01abcdefghjkmnpqrstvwxyz0",
        ]
    cells.append(
        "print('remote attempts:', [a for a in attempts if '10.255.255.1' in str(a)"
        " or 'example.invalid' in str(a)])"
    )
    return cells


LAST_TRACEBACK = (
    "import sys, traceback\n"
    "print(''.join(traceback.format_exception(sys.last_value)))\n"
    "print(repr(sys.last_value), vars(sys.last_value))"
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the with-block ends; nothing listens


def test_magic_cells_show_the_key_nowhere(backend: LocalBackend, tmp_path: Path) -> None:
    token = backend.info.token()
    tag = uuid.uuid4().hex[:8]
    backend.client().upload_bytes(b"x", f"s-{tag}.txt", "text/plain")
    job = (
        f"name: secrets-{tag}\npipeline: slow-test\n"
        f"inputs:\n  worker.data: [s-{tag}.txt]\nconfig:\n  seconds: 0.3\n"
    )
    cells = [
        "%load_ext atai_magics",
        SOCKET_SPY,
        "%atai_config",
        f"%%atai_job job --wait\n{job}",
        "job",
        "print(repr(job), str(job), job.record, job.events(), job.outputs(), sep='\\n')",
        f"%%atai_job --dry-run\n{job}",
        "%atai_config wait=never",
        f"%%atai_job job2 --force\n{job}",  # a card: a live widget, in the stored widget state
        "job2.wait(); print(job2.status)",
        "%atai_jobs",
        "%atai_files",
        "%atai_pipelines slow-test",
        "%atai_job attach",
        # failing cells: rendered errors, then the whole Python traceback of the last one
        "%atai_job status job_01abcdefghjkmnpqrstvwxyz0",
        LAST_TRACEBACK,
        f"%%atai_job\n{job.replace('pipeline:', 'pipline:')}",  # a SpecError
        f"%atai_config endpoint=http://127.0.0.1:{closed_port()}/v0.5",
        f"%%atai_job\n{job}",
        LAST_TRACEBACK,
        *remote_plain_http_cells(),
        LAST_TRACEBACK,
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {"ATAI_API_ENDPOINT": backend.info.url, "ATAI_API_KEY": token}
    log = run_kernel(nb, tmp_path, env, cwd=tmp_path, allow_errors=True)

    text = [outputs_text(c) for c in nb.cells]
    assert "COMPLETED" in text[9] or "completed" in text[9].lower(), text[9]
    assert nb.metadata.get("widgets"), "no widget state was stored"
    names = [e["ename"] for e in errors(nb)]
    assert {"NotFound", "SpecErrors", "TransportError"} <= set(names), names
    assert names.count("ConfigError") == 2 * len(REMOTE_HTTP), names
    assert "Refusing to send the API key over plain HTTP" in "".join(text), names
    assert "remote attempts: []" in printed(nb.cells[-2]), text[
        -2
    ]  # refused before any DNS or connect
    assert "HTTP Request: POST" in log.read_text(errors="replace"), "no log was written"
    secrets = needles(token, CANARY)
    found = all_hits(nb, tmp_path, log, secrets)
    found += tree_hits(backend.info.home, secrets, skip=("token",))
    assert found == []


# --- a canary key sent to a server that echoes it in its errors ----------------------------------


class EchoServer:
    """Answers every request with an error whose texts all contain the Authorization header."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                auth = self.headers.get("Authorization", "")
                seen.append(auth)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                key = auth.removeprefix("Bearer ")
                if "text" in self.path:
                    status, kind = 400, "text/plain"
                    body = f"bad request from {auth}".encode()
                else:
                    status, kind = 401, "application/json"
                    error = {
                        "code": f"invalid_key_{key}",
                        "message": f"The key {key} ({auth}) is not valid",
                        "suggestion": f"Check {key}",
                        "error_uid": f"err-{key}",
                        "context": {"key": key, key: [auth]},
                    }
                    body = json.dumps({"errors": [error]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Echo", auth)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v0.5"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


WATCHED_CARD = """\
import time
from atai_magics.api.models import JobRecord
from atai_magics.jobs import Job
from atai_magics.ui import card_for

record = JobRecord(id="job_01abcdefghjkmnpqrstvwxyz1", name="watched", status="RUNNING")
card = card_for(Job(record, client))
deadline = time.monotonic() + 60
while "attempt 2," not in card._alerts.value:  # two watcher ticks, each answered by a 401
    assert time.monotonic() < deadline, card._alerts.value
    time.sleep(0.05)
"""


def test_a_canary_key_echoed_back_in_errors_shows_nowhere(echo: EchoServer, tmp_path: Path) -> None:
    job = "name: canary\npipeline: slow-test\ninputs:\n  worker.data: [a.txt]\n"
    cells = [
        "%load_ext atai_magics",
        SOCKET_SPY,
        "%atai_config",
        f"%%atai_job job\n{job}",  # validation asks for the pipeline: 401 with the key in it
        LAST_TRACEBACK,
        "%atai_job status job_01abcdefghjkmnpqrstvwxyz0",
        "%atai_job status text",  # a 400 with a plain-text body echoing the header
        LAST_TRACEBACK,
        "%atai_jobs",
        "from atai_magics import Client\nclient = Client()\nclient",
        "client.get_job('job_01abcdefghjkmnpqrstvwxyz0')",
        "try:\n    client.list_files()\nexcept Exception as exc:\n"
        "    print(repr(exc), exc, vars(exc), exc.__cause__, exc.__context__, sep='\\n')",
        WATCHED_CARD,  # a live card whose watcher gets the echoing 401s: "reconnecting… <why>"
        f"%atai_config endpoint=http://127.0.0.1:{closed_port()}/v0.5",
        f"%%atai_job job\n{job}",
        LAST_TRACEBACK,
        *remote_plain_http_cells(),
        LAST_TRACEBACK,
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {"ATAI_API_ENDPOINT": echo.url, "ATAI_API_KEY": CANARY}
    log = run_kernel(nb, tmp_path, env, cwd=tmp_path, allow_errors=True)

    assert echo.seen and set(echo.seen) == {f"Bearer {CANARY}"}  # the key was really sent
    text = "".join(outputs_text(c) for c in nb.cells)
    assert "invalid_key_***" in text or "The key ***" in text, "the echoed error is not shown"
    names = [e["ename"] for e in errors(nb)]
    assert "AuthError" in names and "TransportError" in names, names
    assert names.count("ConfigError") == 2 * len(REMOTE_HTTP), names
    assert "remote attempts: []" in printed(nb.cells[-2]), printed(nb.cells[-2])
    widgets = json.dumps(nb.metadata.get("widgets", {}))
    assert "reconnecting" in widgets and "Bearer ***" in widgets, "the card shows no echoed error"
    logged = log.read_text(errors="replace")
    assert "watcher tick failed" in logged and "HTTP Request: GET" in logged, "no log was written"
    found = all_hits(nb, tmp_path, log, needles(CANARY))
    assert found == []
