"""Kernel restart: jobs submitted before a restart are listed from the journal and re-attach.

A real ipykernel is started with ``jupyter_client`` (no nbclient): the extension submits three
``slow-test`` jobs (one that ends at once, two that run for minutes) from ``%%atai_job`` cells,
then the kernel is restarted (a new process), and later killed with SIGKILL and started again.
After each, the fresh kernel (nothing in memory, only the journal on disk) must list all three
jobs for this notebook with ``%atai_job attach``, re-attach to each by id with the status the
backend reports, and re-running an unchanged cell of a still-running job must re-attach to it
without a new ``create_job`` request. None is lost.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from tests.conftest import LocalBackend

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
LONG = 600  # seconds: longer than the test, so these jobs run until cancelled


def _run(kc: BlockingKernelClient, code: str, timeout: float = 60) -> str:
    """Execute ``code``; its stream and display text. Fails the test on an error reply."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            out.append(content["data"].get("text/plain", "") + "\n")
        elif kind == "error":
            out.append("\n".join(content["traceback"]))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=False)
    text = "".join(out)
    assert reply["content"]["status"] == "ok", f"{code!r} failed:\n{text}"
    return text


def _client(km: KernelManager) -> BlockingKernelClient:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def _wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _journal(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "data").rglob("journal.jsonl")
    return path


@pytest.fixture
def kernel(
    local_backend: LocalBackend, tmp_path: Path
) -> Iterator[tuple[KernelManager, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATAI_API_KEY", "ATAI_API_ENDPOINT")}
    env.update(
        ATAI_LOCAL_HOME=str(local_backend.info.home),
        ATAI_MAGICS_WAIT="0",
        XDG_DATA_HOME=str(tmp_path / "data"),
        PYTHONPATH=str(ROOT),
        JPY_SESSION_NAME=str(tmp_path / "restart.ipynb"),
    )
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path))
    try:
        yield km, env
    finally:
        km.shutdown_kernel(now=True)


def test_jobs_survive_a_kernel_restart_and_a_kill(
    kernel: tuple[KernelManager, dict[str, str]], local_backend: LocalBackend, tmp_path: Path
) -> None:
    km, _ = kernel
    backend = local_backend.client()
    tag = uuid.uuid4().hex[:8]
    backend.upload_bytes(b"x", f"r-{tag}.txt", "text/plain")

    def cell(var: str, seconds: int) -> str:
        return (
            f"%%atai_job {var}\nname: restart-{tag}-{var}\npipeline: slow-test\n"
            f"inputs:\n  worker.data: [r-{tag}.txt]\nconfig:\n  seconds: {seconds}\n"
        )

    cells = {"j1": cell("j1", 0), "j2": cell("j2", LONG), "j3": cell("j3", LONG)}
    ids: dict[str, str] = {}
    kc = _client(km)
    try:
        _run(kc, "%load_ext atai_magics")
        _run(kc, cells["j1"])
        ids["j1"] = _run(kc, "print(j1.id)").strip()
        # the quick job ends before the long ones take the backend's two slots
        _wait_for(lambda: backend.get_job(ids["j1"]).status.value == "COMPLETED")
        for var in ("j2", "j3"):
            _run(kc, cells[var])
            ids[var] = _run(kc, f"print({var}.id)").strip()
        _wait_for(
            lambda: all(backend.get_job(ids[v]).status.value == "RUNNING" for v in ("j2", "j3"))
        )
    finally:
        kc.stop_channels()
    assert len(set(ids.values())) == 3
    journal = [json.loads(line) for line in _journal(tmp_path).read_text().splitlines()]
    assert [e["job_id"] for e in journal] == [v for i in ids.values() for v in ("", i)]
    assert {e["notebook"] for e in journal} == {str(tmp_path / "restart.ipynb")}
    created = local_backend.handled("create_job")

    try:
        for how in ("restart", "kill -9"):
            old_pid = km.provisioner.process.pid  # type: ignore[union-attr]
            if how == "kill -9":
                os.kill(old_pid, signal.SIGKILL)
                _wait_for(lambda: not km.is_alive())
            km.restart_kernel(now=True)
            new_pid = km.provisioner.process.pid  # type: ignore[union-attr]
            assert new_pid != old_pid, how
            kc = _client(km)
            try:
                assert "j1" not in _run(kc, "print(sorted(globals()))"), how  # a fresh process
                _run(kc, "%load_ext atai_magics")
                listing = _run(kc, "%atai_job attach")
                assert len(listing.strip().splitlines()) == 3, (how, listing)
                for var, job_id in ids.items():
                    assert job_id in listing, (how, var, listing)
                    assert f"restart-{tag}-{var}" in listing, (how, var, listing)
                for var, job_id in ids.items():
                    shown = _run(kc, f"%atai_job attach {job_id} v\nprint(v.status.value)")
                    expected = backend.get_job(job_id).status.value
                    assert shown.strip().splitlines()[-1] == expected, (how, var, shown)
                    assert expected == ("COMPLETED" if var == "j1" else "RUNNING"), (how, var)
                # an unchanged cell of a live job re-attaches: no new create_job
                for var in ("j2", "j3"):
                    out = _run(kc, cells[var])
                    assert f"Attached to live job {ids[var]}" in out, (how, var, out)
                    assert _run(kc, f"print({var}.id)").strip() == ids[var], (how, var)
                assert local_backend.handled("create_job") == created, how
            finally:
                kc.stop_channels()
    finally:
        long_ids = [ids[v] for v in ("j2", "j3") if v in ids]
        for job_id in long_ids:  # free the shared backend's two slots
            backend.cancel_job(job_id)
        _wait_for(lambda: all(backend.get_job(i).status.value == "CANCELLED" for i in long_ids))
