"""In a real kernel run by nbclient: the card keeps moving while another cell blocks.

A second client listens to the kernel's iopub channel (every message, whatever its parent),
so the test sees *when* the card's widget updates and the final display update arrive: inside
the busy window of a cell that sits in ``time.sleep``. The job waits in the queue of a
one-slot backend until that cell lets it start, and runs until that cell has seen it running,
so both changes happen while the cell blocks, however slow the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client import BlockingKernelClient
from nbclient import NotebookClient

from tests.conftest import LocalBackend, plugin_backend

ROOT = Path(__file__).resolve().parents[2]
BLOCKING = "import pathlib, time\n"
BLOCKING_CELL = (
    BLOCKING + "pathlib.Path({blocker!r}).touch()  # the queued job may start now\n"
    "while not job.done:  # the watcher's thread updates job.record\n"
    "    if job.status.value == 'RUNNING':  # the card has shown it: the job may end\n"
    "        pathlib.Path({release!r}).touch()\n"
    "    time.sleep(0.2)\n"
    "print(job.status.value)"
)


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with plugin_backend(tmp_path_factory, "one-slot", concurrency=1) as backend:
        yield backend


class IopubListener:
    """Every iopub message of a kernel, in order, from a client of its own."""

    def __init__(self, km: Any) -> None:
        self.kc = BlockingKernelClient()  # nbclient's own clients are async
        self.kc.load_connection_info(km.get_connection_info())
        self.kc.start_channels(shell=False, stdin=False, hb=False, control=False)
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.kc.get_iopub_msg(timeout=0.2))
            except queue.Empty:
                continue

    def stop(self) -> None:
        time.sleep(0.5)  # the last messages are in flight
        self._stop.set()
        self._thread.join(5)
        self.kc.stop_channels()


IPYKERNEL6_ENV = "ATAI_IPYKERNEL6_PYTHON"
"""A Python with this project and ipykernel 6 installed (``.ci/run`` makes one)."""


def _kernel(which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The kernel name to run: this interpreter's ``python3``, or a kernelspec written here
    for the ipykernel 6 interpreter."""
    if which == "this":
        return "python3"
    python = os.environ.get(IPYKERNEL6_ENV)
    if not python:
        pytest.skip(f"set {IPYKERNEL6_ENV} to a Python with ipykernel 6 (.ci/run does)")
    spec = tmp_path / "kernels" / "kernels" / "atai-ipykernel6"
    spec.mkdir(parents=True)
    argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "ipykernel 6", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels"))
    return "atai-ipykernel6"


@pytest.mark.parametrize("which", ["this", "ipykernel6"])
def test_the_card_advances_while_a_cell_blocks(
    which: str, one_slot: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel_name = _kernel(which, tmp_path, monkeypatch)
    tag = uuid.uuid4().hex[:8]
    blocker, release = tmp_path / "blocker", tmp_path / "release"
    api = one_slot.client()
    api.upload_bytes(b"x", f"k-{tag}.txt", "text/plain")
    held = api.create_job(  # takes the one slot until the blocking cell lets it end
        {
            "name": f"slot-{tag}",
            "pipeline_key": "slow-test",
            "inputs": {"worker.data": [{"file_id": f"k-{tag}.txt"}]},
            "parameters": {"worker": {"config": {"seconds": 0, "release_file": str(blocker)}}},
        }
    )
    deadline = time.monotonic() + 60
    while api.get_job(held.id).status.value != "RUNNING":
        assert time.monotonic() < deadline, "the slot job did not start"
        time.sleep(0.05)
    monkeypatch.setenv("ATAI_LOCAL_HOME", str(one_slot.info.home))
    monkeypatch.setenv("ATAI_MAGICS_WAIT", "0")  # nbclient is no live front end: do not wait
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for name in ("ATAI_API_KEY", "ATAI_API_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    cells = [
        "%load_ext atai_magics\nimport ipykernel\nprint('ipykernel', ipykernel.__version__)",
        f"%%atai_job job\nname: kernel-{tag}\npipeline: slow-test\n"
        f"inputs:\n  worker.data: [k-{tag}.txt]\n"
        f"config:\n  seconds: 0\n  release_file: {release}\n",
        BLOCKING_CELL.format(blocker=str(blocker), release=str(release)),
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    listeners: list[IopubListener] = []

    async def listen(**_: Any) -> None:
        listeners.append(IopubListener(client.km))
        await asyncio.sleep(0.5)  # let the subscription settle before the cells run

    client = NotebookClient(nb, timeout=180, kernel_name=kernel_name, on_notebook_start=listen)
    try:
        client.execute(cwd=str(tmp_path))
    finally:
        for listener in listeners:
            listener.stop()
    assert nb.cells[2].outputs[0]["text"].strip() == "COMPLETED"
    version = "".join(o.get("text", "") for o in nb.cells[0].outputs).split("ipykernel ")[1]
    assert version.startswith("6.") == (which == "ipykernel6")
    messages = listeners[0].messages

    # The blocking cell's busy window, found by its code.
    blocking_id = next(
        m["parent_header"]["msg_id"]
        for m in messages
        if m["msg_type"] == "execute_input" and m["content"]["code"].startswith(BLOCKING)
    )
    start = next(
        i
        for i, m in enumerate(messages)
        if m["msg_type"] == "status"
        and m["parent_header"].get("msg_id") == blocking_id
        and m["content"]["execution_state"] == "busy"
    )
    end = next(
        i
        for i, m in enumerate(messages)
        if i > start
        and m["msg_type"] == "status"
        and m["parent_header"].get("msg_id") == blocking_id
        and m["content"]["execution_state"] == "idle"
    )
    during = messages[start:end]
    updates = [
        str(m["content"]["data"].get("state", {}))
        for m in during
        if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
    ]
    assert any(">running<" in u for u in updates), "no RUNNING badge while the cell blocked"
    assert any(">completed<" in u for u in updates), "no COMPLETED badge while the cell blocked"
    finals = [
        m["content"]["data"]["text/plain"] for m in during if m["msg_type"] == "update_display_data"
    ]
    assert finals and f"kernel-{tag}" in finals[-1] and ": completed" in finals[-1]
    # nbclient (no live front end) applied the update: the saved notebook shows the outcome
    # in the plain output under the card, without widget state.
    saved = [o["data"].get("text/plain", "") for o in nb.cells[1].outputs if "data" in o]
    assert f"kernel-{tag}" in saved[-1] and ": completed" in saved[-1]
