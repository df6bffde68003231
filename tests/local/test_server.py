"""The local backend as its own process: start, reuse, detach, status, stop, reset.

The server process serves ``fake_local_app`` through the ``ATAI_LOCAL_APP`` testing hook (the
real app is tested with it elsewhere); every test stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from atai_magics.local import server
from atai_magics.local.faults import FaultSpec
from atai_magics.local.server import LocalServerError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX processes and modes")


@pytest.fixture(autouse=True)
def fake_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(server.ENV_APP, "fake_local_app:create_app")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(HERE)]))


@pytest.fixture
def make_home(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Fresh homes whose servers are stopped at the end, whatever the test did."""
    homes: list[Path] = []

    def make(name: str = "home") -> Path:
        home = tmp_path / name
        homes.append(home)
        return home

    yield make
    for home in homes:
        server.stop(home, timeout=5)


@pytest.fixture
def home(make_home: Callable[[str], Path]) -> Path:
    return make_home("home")


def _alive(pid: int) -> bool:
    return server._pid_alive(pid)


def _get(url: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=headers, trust_env=False, timeout=5)


# -- home and token ---------------------------------------------------------------------------


def test_default_home_prefers_the_env_then_the_per_user_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ATAI_LOCAL_HOME", str(tmp_path / "x"))
    assert server.default_home() == tmp_path / "x"
    monkeypatch.delenv("ATAI_LOCAL_HOME")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        assert server.default_home() == tmp_path / "data" / "atai_magics"
        monkeypatch.delenv("XDG_DATA_HOME")
        assert server.default_home() == Path.home() / ".local" / "share" / "atai_magics"


@posix_only
def test_token_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = server.ensure_token(tmp_path / "h")
    assert path == tmp_path / "h" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = server.read_token(tmp_path / "h")
    assert len(token) >= 43 and token.replace("-", "").replace("_", "").isalnum()
    assert server.ensure_token(tmp_path / "h") == path
    assert server.read_token(tmp_path / "h") == token  # never regenerated
    path.chmod(0o644)
    server.ensure_token(tmp_path / "h")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["token"]  # no temp left


def test_racing_token_makers_agree(tmp_path: Path) -> None:
    home = tmp_path / "h"
    tokens: list[str] = []

    def make() -> None:
        server.ensure_token(home)
        tokens.append(server.read_token(home))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 1 and tokens[0]


# -- start, status, stop ----------------------------------------------------------------------


def test_start_serves_with_auth_and_status_reports_it(home: Path) -> None:
    info = server.start(home)
    assert not info.reused
    assert info.url == f"http://127.0.0.1:{info.port}/v0.5"
    assert info.port > 0 and _alive(info.pid)
    record = json.loads((home / "server.json").read_text())
    assert record["pid"] == info.pid and record["url"] == info.url and record["faults"] == ""

    assert _get(f"http://127.0.0.1:{info.port}/healthz").json() == {"status": "ok", "pid": info.pid}
    assert _get(f"{info.url}/batch/jobs").status_code == 401
    listed = _get(f"{info.url}/batch/jobs", info.token())
    assert listed.json() == {"total": 0, "offset": 0, "limit": 100, "jobs": []}

    st = server.status(home)
    assert st.running and st.pid == info.pid and st.url == info.url
    assert st.home == home.resolve() and st.token_file == home.resolve() / "token"
    assert st.jobs == dict.fromkeys(
        ["PENDING", "ADMITTED", "RUNNING", "COMPLETED", "FAILED", "PREEMPTED", "CANCELLED"], 0
    )
    token = info.token()
    assert token not in json.dumps(st.to_json()) and token not in repr(st) + repr(info)
    assert token not in (home / "server.log").read_text()


def test_the_backend_process_does_not_inherit_the_platform_key(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATAI_API_KEY", "sk-platform-key-stays-here")
    monkeypatch.setenv("ATAI_UNRELATED_SETTING", "kept")
    info = server.start(home)
    environ = Path(f"/proc/{info.pid}/environ").read_bytes()
    assert b"ATAI_UNRELATED_SETTING=kept" in environ
    assert b"sk-platform-key-stays-here" not in environ and b"ATAI_API_KEY=" not in environ


@posix_only
def test_a_silent_server_is_waited_for_never_replaced(home: Path) -> None:
    """A stopped (or badly stalled) server still owns its store: no second one is started."""
    info = server.start(home)
    os.kill(info.pid, signal.SIGSTOP)
    try:
        with pytest.raises(LocalServerError, match="is running but does not answer"):
            server.start(home, wait=1)
        assert json.loads((home / "server.json").read_text())["pid"] == info.pid
    finally:
        os.kill(info.pid, signal.SIGCONT)
    again = server.start(home)
    assert again.reused and again.pid == info.pid


def test_a_dead_servers_record_naming_a_live_stranger_is_replaced_not_killed(
    home: Path,
) -> None:
    """server.json of a server killed long ago, its pid now another process's: nothing holds
    serving.lock, so a new server starts at once, and stop never signals the stranger."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        home.mkdir(parents=True)
        record = {"pid": stranger.pid, "port": 9, "url": "http://127.0.0.1:9/v0.5"}
        (home / "server.json").write_text(json.dumps(record))
        assert server.stop(home) is None and stranger.poll() is None
        (home / "server.json").write_text(json.dumps(record))
        info = server.start(home, wait=30)
        assert not info.reused and info.pid != stranger.pid and stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_second_server_process_refuses_a_served_home(home: Path) -> None:
    info = server.start(home)
    command = [sys.executable, "-m", "atai_magics.local.server", "run", "--home", str(home)]
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 3, second.stderr
    assert f"another local backend (pid {info.pid}) serves" in second.stderr
    assert server.start(home).pid == info.pid and _alive(info.pid)


def test_start_reuses_a_running_server(home: Path) -> None:
    first = server.start(home)
    again = server.start(home, concurrency=5, faults="error_rate=1")
    assert again.reused and again.pid == first.pid and again.port == first.port
    assert again.faults == ""  # what runs, not what was asked


def test_racing_starts_from_two_processes_share_one_server(home: Path) -> None:
    code = f"from atai_magics.local import server; print(server.start({str(home)!r}).pid)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    pids = {int(proc.communicate(timeout=60)[0]) for proc in procs}
    assert len(pids) == 1
    assert server.status(home).pid == pids.pop()


@posix_only
def test_detached_server_outlives_the_process_that_started_it(home: Path) -> None:
    code = f"from atai_magics.local import server; print(server.start({str(home)!r}).pid)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    pid = int(done.stdout)
    st = server.status(home)
    assert st.running and st.pid == pid
    assert os.getsid(pid) == pid  # its own session: no SIGHUP/SIGINT from the starter's terminal
    assert server.stop(home) == pid
    assert not _alive(pid)


def test_two_homes_side_by_side(make_home: Callable[[str], Path]) -> None:
    one, two = make_home("one"), make_home("two")
    a, b = server.start(one), server.start(two)
    assert a.pid != b.pid and a.port != b.port
    assert server.read_token(one) != server.read_token(two)
    assert _get(f"{a.url}/batch/jobs", server.read_token(two)).status_code == 401
    server.stop(one)
    assert not server.status(one).running
    assert server.status(two).running and server.status(two).pid == b.pid


def test_stop_terminates_and_cleans_up(home: Path) -> None:
    info = server.start(home)
    assert server.stop(home) == info.pid
    assert not _alive(info.pid)
    assert not (home / "server.json").exists()
    st = server.status(home)
    assert not st.running and st.pid is None and st.url is None and st.jobs == {}
    assert server.stop(home) is None
    assert server.stop(home.parent / "never-made") is None


@posix_only
def test_terminate_falls_back_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print(1, flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline()  # handler installed
            server._CHILDREN[proc.pid] = proc
            server._terminate(proc.pid, timeout=0.3)
            assert proc.returncode == -signal.SIGKILL
        finally:
            proc.kill()
            server._CHILDREN.pop(proc.pid, None)


def test_a_stale_server_file_is_replaced(home: Path) -> None:
    server.ensure_token(home)
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stale = {"pid": int(dead.stdout), "port": 1, "url": "http://127.0.0.1:1/v0.5"}
    (home / "server.json").write_text(json.dumps(stale))
    assert not server.status(home).running
    assert server.stop(home) is None  # nothing to signal: a recycled pid is left alone
    info = server.start(home)
    assert info.pid != stale["pid"] and server.status(home).running


def test_faults_apply_to_the_api_but_not_to_healthz(home: Path) -> None:
    info = server.start(home, faults="error_rate=1,seed=2")
    assert info.faults == "error_rate=1,seed=2"
    assert _get(f"{info.url}/batch/jobs", info.token()).status_code in (500, 502, 503)
    st = server.status(home)
    assert st.running and st.faults == "error_rate=1,seed=2"
    assert st.jobs == {}  # the count failed: no numbers rather than wrong ones


def test_build_app_hands_the_faults_to_a_factory_that_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.ensure_token(tmp_path)
    spec = FaultSpec(crash_rate=0.5, seed=1)
    app = server.build_app(tmp_path, 3, spec)
    api = app.app.app  # type: ignore[attr-defined]  # _Health -> FaultMiddleware -> the API
    assert api.state.faults == spec and api.state.concurrency == 3
    monkeypatch.setenv(server.ENV_APP, "fake_local_app:create_bare_app")  # no faults parameter
    assert server.build_app(tmp_path, 1, spec) is not None


def test_status_has_no_counts_when_the_app_lacks_the_route(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(server.ENV_APP, "fake_local_app:create_bare_app")
    server.start(home)
    st = server.status(home)
    assert st.running and st.jobs == {}


def test_a_server_that_cannot_start_is_reported_with_its_log(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(server.ENV_APP, "fake_local_app:create_broken_app")
    with pytest.raises(LocalServerError, match="fake app refuses to start"):
        server.start(home)
    assert not server.status(home).running


def test_start_rejects_bad_arguments_before_spawning(home: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'drop_rate'"):
        server.start(home, faults="drop=1")
    with pytest.raises(ValueError, match="concurrency"):
        server.start(home, concurrency=0)
    assert not (home / "server.log").exists()


# -- reset ------------------------------------------------------------------------------------


def test_reset_stops_and_deletes_only_the_state(home: Path, tmp_path: Path) -> None:
    info = server.start(home)
    token = server.read_token(home)
    (home / "state.sqlite3").write_bytes(b"db")
    (home / "files").mkdir()
    (home / "files" / "fil_1").write_bytes(b"data")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (home / "outputs").symlink_to(outside, target_is_directory=True)
    (home / "notes.txt").write_text("not ours")

    removed = server.reset(home)

    assert not _alive(info.pid)
    names = {p.name for p in removed}
    assert {"state.sqlite3", "files", "outputs", "server.log"} <= names
    assert sorted(p.name for p in home.iterdir()) == [
        "notes.txt",
        "server.lock",
        "serving.lock",
        "token",
    ]
    assert server.read_token(home) == token
    assert (outside / "precious").read_text() == "keep"  # a symlink is unlinked, not followed
    assert server.start(home).pid != info.pid  # and it starts again afresh


@pytest.mark.parametrize("where", ["root", "user-home", "above-user-home", "missing", "stranger"])
def test_reset_refuses_dangerous_homes(where: str, tmp_path: Path) -> None:
    stranger = tmp_path / "project"
    (stranger / "files").mkdir(parents=True)
    (stranger / "token").write_text("not ours")
    home = {
        "root": Path("/"),
        "user-home": Path.home(),
        "above-user-home": Path.home().parent,
        "missing": tmp_path / "missing",
        "stranger": stranger,
    }[where]
    with pytest.raises(LocalServerError, match="refusing to reset"):
        server.reset(home)
    assert (stranger / "files").is_dir()


def test_server_module_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "atai_magics.local.server", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--faults" in done.stdout


@pytest.mark.parametrize("name", ["json.py", "atai_magics.py", "httpx.py"])
def test_modules_in_the_home_do_not_shadow_the_servers_imports(home: Path, name: str) -> None:
    """The home is not on the server's sys.path: a file there named like a module is inert."""
    home.mkdir(parents=True)
    marker = home / "imported"
    (home / name).write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('shadowed from the home')\n"
    )
    info = server.start(home)
    assert _get(f"{info.url}/batch/jobs", info.token()).status_code == 200
    assert not marker.exists()
