"""Start, find, stop and reset the local backend: an ASGI server in its own detached process.

The backend of one *home* (a state directory) is one process, so jobs outlive the kernel
or shell that started it, and several homes can run side by side. Everything a client needs
to find it lives in the home::

    token          the Bearer token (mode 0600, made once, never printed)
    server.json    pid, port, url, started_at, faults; written by the server once it listens
    server.log     the server's stdout/stderr
    server.lock    flock'ed while starting, stopping or resetting, so two callers never race

``start`` reuses a healthy server of the home or spawns ``python -m atai_magics.local.server
run`` and waits for it; the extension and the ``atai-magics local`` CLI both call it. The home
never goes on the server's ``sys.path`` (nor its workers'), so a file there named like a module
(``json.py``) cannot shadow an import: Python 3.11+ runs it with ``-P``, 3.10 from ``/``.

The server process serves ``atai_magics.local.app:create_app(home, token, concurrency)``
(plus ``faults=FaultSpec`` if the factory takes it) behind ``FaultMiddleware``, with
``/healthz`` beside it. Testing hook: ``ATAI_LOCAL_APP="module:factory"`` names another
factory, so the process lifecycle can be tested with a minimal app.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import secrets
import shutil
import signal
import site
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from atai_magics.local.faults import ASGIApp, FaultMiddleware, FaultSpec, Receive, Scope, Send

if TYPE_CHECKING:
    import socket

__all__ = [
    "ENV_APP",
    "ENV_HOME",
    "LocalServerError",
    "ServerInfo",
    "ServerStatus",
    "default_home",
    "ensure_token",
    "read_token",
    "reset",
    "start",
    "status",
    "stop",
]

ENV_HOME = "ATAI_LOCAL_HOME"
ENV_APP = "ATAI_LOCAL_APP"
API_PREFIX = "/v0.5"
DEFAULT_APP = "atai_magics.local.app:create_app"

TOKEN_FILE = "token"
SERVER_FILE = "server.json"
LOG_FILE = "server.log"
LOCK_FILE = "server.lock"
SERVING_LOCK_FILE = "serving.lock"
"""Held by the serving process for its whole life: one server, and one scheduler, per home."""
# What ``reset`` deletes: the store's layout (see store.py) and the server's own files.
# An allowlist, so a home pointed at a directory with other things in it loses only ours.
STATE_NAMES = (
    "state.sqlite3",
    "state.sqlite3-wal",
    "state.sqlite3-shm",
    "state.sqlite3-journal",
    "files",
    "outputs",
    "uploads",
    SERVER_FILE,
    LOG_FILE,
)

_HTTP_TIMEOUT = 2.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # spawned by us: poll to reap, not leak


class LocalServerError(RuntimeError):
    """The local backend could not be started, stopped or reset; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a running backend listens; the token stays in ``token_file``."""

    home: Path
    pid: int
    port: int
    url: str
    token_file: Path
    log_file: Path
    started_at: str
    faults: str
    reused: bool = field(default=False, compare=False)

    def token(self) -> str:
        return read_token(self.home)


@dataclass(frozen=True)
class ServerStatus:
    """What ``atai-magics local status`` shows; ``jobs`` is empty when unknown."""

    running: bool
    home: Path
    token_file: Path
    log_file: Path
    url: str | None = None
    pid: int | None = None
    port: int | None = None
    started_at: str | None = None
    faults: str | None = None
    jobs: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "url": self.url,
            "token_file": str(self.token_file),
            "home": str(self.home),
            "pid": self.pid,
            "port": self.port,
            "started_at": self.started_at,
            "faults": self.faults,
            "log_file": str(self.log_file),
            "jobs": dict(self.jobs),
        }


# -- the home and its token ------------------------------------------------------------------


def default_home() -> Path:
    """``$ATAI_LOCAL_HOME``, else the per-user data directory of the platform."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "atai_magics"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "atai_magics"
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg if xdg else Path.home() / ".local" / "share") / "atai_magics"


def _resolve_home(home: str | os.PathLike[str] | None) -> Path:
    return (Path(home).expanduser() if home is not None else default_home()).resolve()


def ensure_token(home: str | os.PathLike[str] | None = None) -> Path:
    """The token file of ``home``, made on first use with mode 0600; returns its path.

    The token is written to a private temporary file and *linked* into place, so a racing
    reader never sees a half-written token and a racing writer loses cleanly.
    """
    home_path = _resolve_home(home)
    home_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home_path / TOKEN_FILE
    if path.exists():
        if os.name == "posix" and path.stat().st_mode & 0o077:
            path.chmod(0o600)  # someone loosened it; the token is a password
        return path
    tmp = home_path / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(32))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: keep theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_token(home: str | os.PathLike[str] | None = None) -> str:
    return (_resolve_home(home) / TOKEN_FILE).read_text(encoding="ascii").strip()


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Hold the home's lock file: one start/stop/reset at a time per home, across processes."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (home / LOCK_FILE).open("a+b") as f:
        if sys.platform == "win32":
            import msvcrt

            f.seek(0)
            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after ~10 s; keep waiting
                    continue
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- processes -------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie child of ours counts as dead, and is reaped)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, but not ours to signal
    except OSError:
        return False
    with contextlib.suppress(OSError, IndexError):  # zombie whose parent has not reaped it
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _read_server_file(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((home / SERVER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    return data


def _healthy(port: int, pid: int) -> bool:
    """Whether the server on ``port`` answers ``/healthz`` as process ``pid`` (not a stranger)."""
    try:
        with httpx.Client(trust_env=False, timeout=_HTTP_TIMEOUT) as client:
            response = client.get(f"http://127.0.0.1:{port}/healthz")
        return response.status_code == 200 and response.json().get("pid") == pid
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def _info(home: Path, data: dict[str, Any], *, reused: bool = False) -> ServerInfo:
    return ServerInfo(
        home=home,
        pid=int(data["pid"]),
        port=int(data["port"]),
        url=str(data["url"]),
        token_file=home / TOKEN_FILE,
        log_file=home / LOG_FILE,
        started_at=str(data.get("started_at", "")),
        faults=str(data.get("faults", "")),
        reused=reused,
    )


def _running(home: Path) -> ServerInfo | None:
    """The server recorded in ``server.json`` if it is alive and answers as itself."""
    data = _read_server_file(home)
    if data is None or not _pid_alive(data["pid"]):
        return None
    if not _healthy(int(data.get("port", 0)), data["pid"]):
        return None
    return _info(home, data, reused=True)


def _answering(home: Path, wait: float) -> ServerInfo | None:
    """The recorded server, given up to ``wait`` seconds to answer if its process still lives
    (a busy or stopped server is not replaced: two would share one store). None when it is
    gone; ``LocalServerError`` when it lives but stays silent."""
    deadline = time.monotonic() + wait
    while True:
        running = _running(home)
        if running is not None:
            return running
        data = _read_server_file(home)
        if data is None or not _serving(home).locked():
            return None  # nothing serves this home: server.json is a dead server's (its pid
            # may be another process's by now, which only the lock can tell on every system)
        if time.monotonic() >= deadline:
            raise LocalServerError(
                f"the local backend of {home} (pid {data['pid']}) is running but does not "
                f"answer; `atai-magics local stop --home {home}` stops it"
            )
        time.sleep(0.2)


def _child_env() -> dict[str, str]:
    """Our environment without the platform's API key (the backend and its pipelines never
    need it), plus our source tree on ``PYTHONPATH`` when we run from a checkout."""
    env = {name: value for name, value in os.environ.items() if name != "ATAI_API_KEY"}
    root = str(Path(__file__).resolve().parents[2])
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    installed = {str(Path(p).resolve()) for p in site_dirs}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


_SAFE_PATH_FLAGS = ("-P",) if sys.version_info >= (3, 11) else ()
"""``-P``: ``-m`` does not put the working directory first on ``sys.path``."""


def _child_cwd(home: Path) -> Path:
    """The home where ``-P`` keeps it off ``sys.path``; elsewhere the filesystem root, since
    ``-m`` puts the working directory first on ``sys.path`` (logs still go to the home)."""
    return home if _SAFE_PATH_FLAGS else Path(home.anchor or os.sep)


def _log_tail(home: Path, lines: int = 15) -> str:
    try:
        text = (home / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start(
    home: str | os.PathLike[str] | None = None,
    port: int = 0,
    concurrency: int = 2,
    faults: FaultSpec | str | None = None,
    wait: float = 15.0,
) -> ServerInfo:
    """Return the running backend of ``home``, starting a detached one if there is none.

    A running server is reused as it is (``info.reused``), whatever ``port``, ``concurrency``
    or ``faults`` ask for: stop it first to change them. ``port=0`` picks a free port.
    """
    home_path = _resolve_home(home)
    spec = faults if isinstance(faults, FaultSpec) else FaultSpec.parse(faults)
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    ensure_token(home_path)
    with _locked(home_path):
        running = _answering(home_path, wait)
        if running is not None:
            return running
        (home_path / SERVER_FILE).unlink(missing_ok=True)  # stale: its process is gone
        command = [
            sys.executable,
            *_SAFE_PATH_FLAGS,
            "-m",
            "atai_magics.local.server",
            "run",
            "--home",
            str(home_path),
            "--port",
            str(port),
            "--concurrency",
            str(concurrency),
            "--faults",
            str(spec),
        ]
        detach: dict[str, Any] = {}
        if sys.platform == "win32":
            detach["creationflags"] = (
                subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
            )
        else:
            detach["start_new_session"] = True  # no SIGINT/SIGHUP from the starter's terminal
        with (home_path / LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                cwd=_child_cwd(home_path),
                env=_child_env(),
                **detach,
            )
        _CHILDREN[proc.pid] = proc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                _CHILDREN.pop(proc.pid, None)
                raise LocalServerError(
                    f"the local backend exited with code {proc.returncode} while starting; "
                    f"end of {home_path / LOG_FILE}:\n{_log_tail(home_path)}"
                )
            data = _read_server_file(home_path)
            if data is not None and data["pid"] == proc.pid and _healthy(data["port"], proc.pid):
                return _info(home_path, data)
            time.sleep(0.05)
        _terminate(proc.pid, timeout=2.0)
        raise LocalServerError(
            f"the local backend did not answer within {wait:g}s; end of "
            f"{home_path / LOG_FILE}:\n{_log_tail(home_path)}"
        )


def _job_counts(url: str, token: str) -> dict[str, int]:
    """Jobs per status from the server's list route; ``{}`` when it has no such route."""
    from atai_magics.api.models import JobStatus

    counts: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(trust_env=False, timeout=_HTTP_TIMEOUT, headers=headers) as client:
        for job_status in JobStatus:
            response = client.get(
                f"{url}/batch/jobs", params={"status": job_status.value, "limit": 1}
            )
            if response.status_code == 404:
                return {}
            response.raise_for_status()
            counts[job_status.value] = int(response.json()["total"])
    return counts


def status(home: str | os.PathLike[str] | None = None) -> ServerStatus:
    """Whether the backend of ``home`` runs, where, and how many jobs it holds by status."""
    home_path = _resolve_home(home)
    stopped = ServerStatus(
        running=False,
        home=home_path,
        token_file=home_path / TOKEN_FILE,
        log_file=home_path / LOG_FILE,
    )
    info = _running(home_path)
    if info is None:
        return stopped
    try:
        jobs = _job_counts(info.url, info.token())
    except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError):
        jobs = {}  # a status line is still worth printing when the count fails
    return dataclasses.replace(
        stopped,
        running=True,
        url=info.url,
        pid=info.pid,
        port=info.port,
        started_at=info.started_at,
        faults=info.faults,
        jobs=jobs,
    )


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM (uvicorn shuts down gracefully), then SIGKILL after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)
    if _pid_alive(pid):
        raise LocalServerError(f"the local backend (pid {pid}) did not exit")


def _stop_locked(home: Path, timeout: float) -> int | None:
    data = _read_server_file(home)
    if data is None:
        return None
    pid: int = data["pid"]
    stopped = None
    if _pid_alive(pid) and _serving(home).locked() and _is_our_server(pid, data):
        _terminate(pid, timeout)
        stopped = pid
    (home / SERVER_FILE).unlink(missing_ok=True)
    return stopped


def _is_our_server(pid: int, data: dict[str, Any]) -> bool:
    """Guard against a recycled pid: the server answers as ``pid``, or its command line says so."""
    if _healthy(int(data.get("port", 0)), pid):
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return pid in _CHILDREN or sys.platform != "linux"  # cannot tell: trust server.json
    return "atai_magics.local.server" in cmdline


def stop(home: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> int | None:
    """Stop the backend of ``home``; returns the pid it stopped, or None if none was running."""
    home_path = _resolve_home(home)
    if not home_path.is_dir():
        return None
    with _locked(home_path):
        return _stop_locked(home_path, timeout)


def _check_resettable(home: Path) -> None:
    """Refuse homes where a mistake would hurt: /, the user's home or above, strangers' dirs."""
    user_home = Path.home().resolve()
    if home.parent == home or home == user_home or home in user_home.parents:
        raise LocalServerError(f"refusing to reset {home}: it is not a backend's own directory")
    if not home.is_dir():
        raise LocalServerError(f"refusing to reset {home}: no such directory")
    ours = (home / "state.sqlite3").is_file() or (
        (home / TOKEN_FILE).is_file() and (home / LOCK_FILE).is_file()
    )
    if not ours:
        raise LocalServerError(
            f"refusing to reset {home}: it does not look like a local backend's home "
            f"(no state.sqlite3, nor {TOKEN_FILE} and {LOCK_FILE})"
        )


def reset(home: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> list[Path]:
    """Stop the backend of ``home`` and delete its state (jobs, files, outputs, log).

    Only the names in ``STATE_NAMES`` directly inside ``home`` are removed (a symlink is
    unlinked, never followed); the token is kept, so configured clients still authenticate.
    Returns what was removed.
    """
    home_path = _resolve_home(home)
    _check_resettable(home_path)
    removed: list[Path] = []
    with _locked(home_path):
        _stop_locked(home_path, timeout)
        for name in STATE_NAMES:
            path = home_path / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                continue
            removed.append(path)
    return removed


# -- the server process ----------------------------------------------------------------------


def _load_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr or "create_app")


class _Health:
    """Answers ``GET /healthz`` (no auth, no faults) with our pid; passes the rest on."""

    def __init__(self, app: ASGIApp, pid: int) -> None:
        self.app = app
        self.body = json.dumps({"status": "ok", "pid": pid}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/healthz":
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(self.body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.body})
            return
        await self.app(scope, receive, send)


def build_app(home: Path, concurrency: int, faults: FaultSpec) -> ASGIApp:
    """The app the server process serves: the API with faults, plus ``/healthz``.

    The factory is called as ``factory(home, token, concurrency)``, plus ``faults=spec`` when
    it takes a ``faults`` parameter: the scheduler needs ``crash_rate`` (``should_crash``).
    """
    factory = _load_factory(os.environ.get(ENV_APP) or DEFAULT_APP)
    extra = {"faults": faults} if "faults" in inspect.signature(factory).parameters else {}
    api: ASGIApp = factory(home, read_token(home), concurrency, **extra)
    return _Health(FaultMiddleware(api, faults, prefix=API_PREFIX), os.getpid())


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


class _serving:  # noqa: N801 - used as a context manager, like a function
    """``serving.lock``, held by the serving process for its whole life: one server, and one
    scheduler, per home. A POSIX record lock (``lockf``) belongs to one process alone:
    workers never inherit it, and it is gone the moment the process dies, kill -9 included,
    so it also tells whether anything serves the home, on every system."""

    def __init__(self, home: Path) -> None:
        self.path = home / SERVING_LOCK_FILE

    def _try(self, f: Any) -> bool:
        try:
            if sys.platform == "win32":
                import msvcrt

                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def locked(self) -> bool:
        """Whether a server holds it now (taking it for an instant tells). Never ask from the
        serving process: closing another handle of the file would drop its own lock."""
        if not self.path.exists():
            return False
        with self.path.open("a+b") as f:  # closing it releases what we took
            return not self._try(f)

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file = self.path.open("a+b")
        if not self._try(self._file):
            self._file.close()
            data = _read_server_file(self.path.parent) or {}
            raise LocalServerError(
                f"another local backend (pid {data.get('pid', '?')}) serves "
                f"{self.path.parent}; not starting a second one on the same state"
            )

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()


def run(home: Path, port: int, concurrency: int, faults: FaultSpec) -> None:
    """Serve in this process until SIGTERM/SIGINT; publish ``server.json`` once listening."""
    with _serving(home):
        _serve(home, port, concurrency, faults)


def _serve(home: Path, port: int, concurrency: int, faults: FaultSpec) -> None:
    import uvicorn

    ensure_token(home)
    app = build_app(home, concurrency, faults)
    server_file = home / SERVER_FILE

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.should_exit:
                return
            bound = self.servers[0].sockets[0].getsockname()[1]
            _write_json_atomic(
                server_file,
                {
                    "pid": os.getpid(),
                    "port": bound,
                    "url": f"http://127.0.0.1:{bound}{API_PREFIX}",
                    "started_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "faults": str(faults),
                    "concurrency": concurrency,
                },
            )

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    try:
        Server(config).run()
    finally:
        data = _read_server_file(home)
        if data is not None and data["pid"] == os.getpid():
            server_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atai_magics.local.server run ...``: what ``start`` spawns."""
    parser = argparse.ArgumentParser(prog="python -m atai_magics.local.server")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="serve a home in this process (foreground)")
    run_parser.add_argument("--home", type=Path, default=None)
    run_parser.add_argument("--port", type=int, default=0)
    run_parser.add_argument("--concurrency", type=int, default=2)
    run_parser.add_argument("--faults", default="")
    args = parser.parse_args(argv)
    try:
        run(_resolve_home(args.home), args.port, args.concurrency, FaultSpec.parse(args.faults))
    except LocalServerError as exc:
        print(f"atai_magics.local.server: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
