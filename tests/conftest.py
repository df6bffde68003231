"""Fixtures shared across the suite: one real local backend per test session."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from atai_magics import Client
from atai_magics.local import server


@dataclass(frozen=True)
class LocalBackend:
    """A local backend running in its own process for the whole session."""

    info: server.ServerInfo

    def client(self) -> Client:
        return Client(self.info.url, api_key=self.info.token())

    def handled(self, handler: str) -> int:
        """How many requests reached ``handler`` (e.g. ``create_job``), counted by the backend."""
        root = self.info.url.rsplit("/v0.5", 1)[0]
        auth = {"Authorization": f"Bearer {self.info.token()}"}
        counts: dict[str, int] = httpx.get(f"{root}/_local/requests", headers=auth).json()
        return counts.get(handler, 0)


def job_lookups(monkeypatch: pytest.MonkeyPatch, client: Client) -> list[str]:
    """The ids ``client.get_job`` is asked for from now on (the job is still fetched)."""
    asked: list[str] = []
    get_job = client.get_job
    monkeypatch.setattr(client, "get_job", lambda job_id: asked.append(job_id) or get_job(job_id))
    return asked


def plugin_pythonpath(site: Path) -> str:
    """A PYTHONPATH under which the backend finds ``tests/local/slow_pipeline.py`` as a real
    entry-point plug-in (``slow-test``): a job that runs until cancelled or released."""
    dist = site / "slowplug-0.0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slowplug\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[atai_magics.local_pipelines]\nslow = slow_pipeline:PIPELINE\n"
    )
    paths = [str(site), str(Path(__file__).parent / "local"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in paths if p)


def start_with_plugin(home: Path, site: Path, **options: Any) -> server.ServerInfo:
    """Start the backend of ``home`` with the ``slow-test`` plug-in (its dist-info in ``site``);
    this process's PYTHONPATH is as it was afterwards. ``benchmarks/bench_watch.py`` uses it too."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = plugin_pythonpath(site)
    try:
        return server.start(home, **options)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


@contextlib.contextmanager
def plugin_backend(
    tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[LocalBackend]:
    """A backend of its own, with the ``slow-test`` plug-in, stopped on exit."""
    home: Path = tmp_path_factory.mktemp(f"{name}-home")
    info = start_with_plugin(home, tmp_path_factory.mktemp(f"{name}-site"), **options)
    try:
        yield LocalBackend(info)
    finally:
        server.stop(home)


@pytest.fixture(scope="session")
def local_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """The backend with the ``slow-test`` plug-in, shared by the tests of a session."""
    with plugin_backend(tmp_path_factory, "local", concurrency=2) as backend:
        yield backend


@pytest.fixture(scope="session")
def ipython() -> object:
    """IPython's shared test shell (``globalipapp`` starts it once per process)."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    start_ipython()
    shell = get_ipython()
    assert shell is not None
    return shell
