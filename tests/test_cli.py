"""The ``atai-magics`` console script, in-process and as ``python -m atai_magics.cli``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atai_magics.cli import EXIT_NOT_RUNNING, main
from atai_magics.local import server

ROOT = Path(__file__).resolve().parents[1]
STATUS_KEYS = {"running", "url", "token_file", "home", "pid", "port", "started_at", "faults"}


@pytest.fixture(autouse=True)
def fake_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve the minimal app of tests/local (the ``ATAI_LOCAL_APP`` testing hook)."""
    monkeypatch.setenv(server.ENV_APP, "fake_local_app:create_app")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests" / "local")]))


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    server.stop(home, timeout=5)


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atai_magics.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_console_script_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["atai-magics"] == "atai_magics.cli:main"
    assert {"starlette", "uvicorn"} <= {
        d.split(">")[0].split("=")[0] for d in project["dependencies"]
    }


def test_start_status_stop_through_python_m(home: Path) -> None:
    started = cli("local", "start", "--home", str(home), "--faults", "latency_ms=1,seed=3")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("Started: http://127.0.0.1:")
    token = server.read_token(home)

    again = cli("local", "start", "--home", str(home))
    assert again.stdout.startswith("Already running: ")

    st = cli("local", "status", "--home", str(home), "--json")
    assert st.returncode == 0
    data = json.loads(st.stdout)
    assert STATUS_KEYS | {"jobs"} <= set(data)
    assert data["running"] is True and data["url"].endswith("/v0.5")
    assert data["home"] == str(home.resolve())
    assert data["token_file"] == str(home.resolve() / "token")
    assert isinstance(data["pid"], int) and data["faults"] == "latency_ms=1,seed=3"
    assert data["jobs"]["PENDING"] == 0 and set(data["jobs"]) >= {"RUNNING", "COMPLETED"}

    human = cli("local", "status", "--home", str(home))
    assert human.returncode == 0
    lines = dict(line.split(":", 1) for line in human.stdout.splitlines())
    assert lines["running"].strip() == "yes" and lines["url"].strip() == data["url"]
    assert lines["jobs"].strip() == "none"
    columns = {
        len(line) - len(line.split(":", 1)[1].lstrip()) for line in human.stdout.splitlines()
    }
    assert len(columns) == 1  # values aligned in one column

    for out in (started, again, st, human):
        assert token not in out.stdout + out.stderr

    stopped = cli("local", "stop", "--home", str(home))
    assert stopped.stdout == f"Stopped (pid {data['pid']}).\n"
    assert not server.status(home).running
    assert cli("local", "stop", "--home", str(home)).stdout == "Not running.\n"


def test_status_json_when_not_running(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "status", "--home", str(home), "--json"]) == EXIT_NOT_RUNNING
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is False and data["pid"] is None and data["url"] is None
    assert set(data) >= STATUS_KEYS and data["jobs"] == {}


def test_home_defaults_to_the_env(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATAI_LOCAL_HOME", str(home))
    main(["local", "status", "--json"])
    assert json.loads(capsys.readouterr().out)["home"] == str(home.resolve())


def test_reset_asks_first(home: Path) -> None:
    cli("local", "start", "--home", str(home))
    (home / "state.sqlite3").write_bytes(b"db")

    declined = cli("local", "reset", "--home", str(home), stdin="n\n")
    assert declined.returncode == 1 and "Nothing deleted" in declined.stdout
    assert (home / "state.sqlite3").exists() and server.status(home).running
    no_answer = cli("local", "reset", "--home", str(home))  # stdin at EOF: no
    assert no_answer.returncode == 1 and (home / "state.sqlite3").exists()

    accepted = cli("local", "reset", "--home", str(home), stdin="y\n")
    assert accepted.returncode == 0 and "Reset " in accepted.stdout
    assert not (home / "state.sqlite3").exists() and not server.status(home).running

    (home / "state.sqlite3").write_bytes(b"db")
    assert cli("local", "reset", "--home", str(home), "--yes").returncode == 0
    assert not (home / "state.sqlite3").exists()


def test_reset_refuses_the_user_home(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "reset", "--home", str(Path.home()), "--yes"]) == 1
    assert "refusing to reset" in capsys.readouterr().err


def test_bad_faults_spec_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "start", "--faults", "eror_rate=0.1"])
    assert exit_info.value.code == 2
    assert "did you mean 'error_rate'?" in capsys.readouterr().err


def test_every_local_subcommand_takes_home() -> None:
    for action in ("start", "status", "stop", "reset"):
        out = cli("local", action, "--help")
        assert out.returncode == 0 and "--home" in out.stdout
