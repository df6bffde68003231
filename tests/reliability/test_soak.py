"""Soak: hundreds of jobs under faults, with the backend killed (SIGKILL) and restarted mid-run.

300 jobs of both local pipelines (``ATAI_SOAK_JOBS`` changes the number) are submitted, half
from ``%%atai_job`` cells in a real InteractiveShell and half from ``Client.create_job`` on two
threads, to a backend that injects 5xx answers, 429s with Retry-After, latency, dropped
connections and pipeline crashes. When half are submitted, with jobs running, the backend is
killed with SIGKILL and started again on the same port and state directory, while the
submitting threads keep going. One ``Watcher`` follows every job throughout.

Then:
- every job has ended, and each handle's status is the one the backend records;
- every job exists exactly once, and the backend handled exactly one create request per job;
- every FAILED job failed of an injected crash, and nothing else;
- every output of every COMPLETED job downloads (through the same faults) and is
  byte-identical to the output of the same job spec in a fault-free run on another backend.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atai_magics import Client
from atai_magics.api import models as m
from atai_magics.jobs import Job
from atai_magics.local import server
from atai_magics.local.faults import FaultSpec
from atai_magics.magics import AtaiMagics
from atai_magics.watch import Watcher
from tests.conftest import LocalBackend

pytestmark = pytest.mark.reliability

JOBS = int(os.environ.get("ATAI_SOAK_JOBS", "300"))
FAULTS = FaultSpec(
    error_rate=0.03,
    rate_limit_rate=0.02,
    retry_after=1,
    latency_ms=4,
    drop_rate=0.02,
    crash_rate=0.04,
    seed=20261129,
)
RETRIES = 8  # for the client and the magic: these fault rates are far above a real platform's
DEADLINE = 900.0  # seconds for every job to end; the soak takes a few minutes on 2 cores
TERMINAL = {m.JobStatus.COMPLETED, m.JobStatus.FAILED, m.JobStatus.CANCELLED}

# -- the jobs --------------------------------------------------------------------------------

CLASSES = ("idle", "spin", "shake")
INFERENCE = tuple(f"soak-inf-{i}.csv" for i in range(3))
PROMPTS = tuple(f"soak-prompts-{i}.jsonl" for i in range(3))


def _csv(kind: int, rows: int, phase: int) -> bytes:
    """A two-channel signal whose shape depends on ``kind`` (0 flat, 1 ramp, 2 saw)."""
    lines = ["ts,x,y"]
    for t in range(rows):
        x = [0.1 * ((t + phase) % 3), (t + phase) % 17 / 17.0, float((t + phase) % 5)][kind]
        y = [1.0, -x, 2.0 * x][kind] + 0.01 * ((t * 7 + phase) % 11)
        lines.append(f"{t},{x:.4f},{y:.4f}")
    return ("\n".join(lines) + "\n").encode()


def _jsonl(i: int) -> bytes:
    words = ("walking to the door", "sitting still", "running fast", "cooking dinner", "")
    lines = [
        f'{{"prompt": "Is the person {words[(i + k) % len(words)]}?", "id": {k}}}'
        for k in range(12 + 4 * i)
    ]
    lines.append('{"inputs": "not a list"}')  # one bad line: the job completes with failures
    return ("\n".join(lines) + "\n").encode()


def _files() -> dict[str, bytes]:
    files = {
        f"soak-nshot-{c}-{k}.csv": _csv(n, 90, k) for n, c in enumerate(CLASSES) for k in (0, 1)
    }
    files.update({name: _csv(i % 3, 240, 5 * i) for i, name in enumerate(INFERENCE)})
    files.update({name: _jsonl(i) for i, name in enumerate(PROMPTS)})
    return files


@dataclass(frozen=True)
class Spec:
    """One distinct job: ``body`` for the client, ``cell`` for the magic (same request)."""

    key: str
    body: dict[str, Any]
    cell: str


def _machine_state(inference: tuple[str, ...], window: int) -> Spec:
    n_shots = [{"file_id": f"soak-nshot-{c}-{k}.csv", "class": c} for c in CLASSES for k in (0, 1)]
    config = {
        "reader_config": {
            "data_columns": ["x", "y"],
            "timestamp_column": "ts",
            "window_size": window,
            "step_size": 2,
        }
    }
    body = {
        "pipeline_key": "machine-state-classification",
        "inputs": {
            "worker.inference": [{"file_id": f} for f in inference],
            "worker.n_shots": [
                {"file_id": s["file_id"], "metadata": {"class": s["class"]}} for s in n_shots
            ],
        },
        "parameters": {"worker": {"config": config}},
    }
    shots = "\n".join(f"    - {{file_id: {s['file_id']}, class: {s['class']}}}" for s in n_shots)
    cell = (
        "pipeline: machine-state-classification\n"
        f"inputs:\n  worker.inference: {{{{ soak_inference }}}}\n  worker.n_shots:\n{shots}\n"
        "config:\n  reader_config:\n    data_columns: [x, y]\n    timestamp_column: ts\n"
        "    window_size: {{ soak_window }}\n    step_size: 2\n"
    )
    return Spec(f"ms-{'+'.join(inference)}-w{window}", body, cell)


def _activity(prompts: str, batch_size: int) -> Spec:
    body = {
        "pipeline_key": "activity-detection",
        "inputs": {"worker.data": [{"file_id": prompts}]},
        "parameters": {"worker": {"config": {"batch_size": batch_size}}},
    }
    cell = (
        "pipeline: activity-detection\n"
        f"inputs:\n  worker.data: [{prompts}]\n"
        f"config:\n  batch_size: {batch_size}\n"
    )
    return Spec(f"ad-{prompts}-b{batch_size}", body, cell)


SPECS = (
    *(_machine_state((f,), w) for f in INFERENCE for w in (8, 16)),
    _machine_state(INFERENCE[:2], 12),
    *(_activity(p, b) for p in PROMPTS for b in (4, 16)),
)


def _spec_of(i: int) -> Spec:
    return SPECS[i % len(SPECS)]


def _name(i: int) -> str:
    return f"soak-{i:03d}"


# -- helpers ---------------------------------------------------------------------------------


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _outputs(job: Job, directory: Path) -> dict[str, bytes]:
    """Every output file of ``job`` as the user downloads it (a later attempt's part replaces
    an earlier attempt's part of the same name)."""
    return {p.name: p.read_bytes() for p in job.download(directory)}


class Gate:
    """Lets create requests through, or holds new ones while the backend is counted and killed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._inside = 0

    @contextlib.contextmanager
    def passing(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._open)
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        with self._cond:
            self._open = False
            self._cond.wait_for(lambda: self._inside == 0)
        try:
            yield
        finally:
            with self._cond:
                self._open = True
                self._cond.notify_all()


# -- the reference run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Each spec's outputs from a fault-free backend of its own: spec key -> {file: bytes}."""
    home = tmp_path_factory.mktemp("soak-reference")
    info = server.start(home, concurrency=2)
    try:
        client = Client(info.url, api_key=info.token())
        for name, data in _files().items():
            client.upload_bytes(data, name)
        jobs = [Job(client.create_job({**s.body, "name": f"ref-{s.key}"}), client) for s in SPECS]
        outputs: dict[str, dict[str, bytes]] = {}
        for spec, job in zip(SPECS, jobs, strict=True):
            job.wait(timeout=300)
            assert job.status == m.JobStatus.COMPLETED, (spec.key, job.record.error)
            outputs[spec.key] = _outputs(job, home.parent / f"{home.name}-out" / job.id)
            assert outputs[spec.key], spec.key
        return outputs
    finally:
        server.stop(home)


# -- the soak --------------------------------------------------------------------------------


def test_soak_under_faults_with_a_backend_kill(
    reference: dict[str, dict[str, bytes]],
    tmp_path: Path,
    ipython: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("ATAI_API_KEY", "ATAI_API_ENDPOINT", "ATAI_MAGICS_WAIT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    info = server.start(home, concurrency=2, faults=FAULTS)
    try:
        _soak(LocalBackend(info), tmp_path, ipython, reference)
    finally:
        server.stop(home)


def _soak(
    backend: LocalBackend,
    tmp_path: Path,
    shell: Any,
    reference: dict[str, dict[str, bytes]],
) -> None:
    info = backend.info
    client = Client(info.url, api_key=info.token(), max_retries=RETRIES)
    for name, data in _files().items():  # JSONL goes direct: initiate, PUT, complete
        client.upload_bytes(data, name)

    magics = AtaiMagics(shell)
    magics.session.settings.local_home = str(info.home)
    magics.session.settings.journal = str(tmp_path / "journal.jsonl")
    magics.session.settings.wait = "never"
    magics.session.settings.max_retries = RETRIES
    shell.register_magics(magics)

    watcher = Watcher(interval=0.5, fast=0.25, slow=1.0, max_backoff=2.0)
    gate = Gate()
    handles: dict[str, Job] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def keep(i: int, job: Job) -> None:
        assert job.name == _name(i)
        with lock:
            handles[job.name] = job
        watcher.watch(job)

    by_client = [i for i in range(JOBS) if i % 2 == 1]
    by_magic = [i for i in range(JOBS) if i % 2 == 0]

    def submit_from_client(indices: list[int]) -> None:
        try:
            for i in indices:
                with gate.passing():
                    record = client.create_job({**_spec_of(i).body, "name": _name(i)})
                keep(i, Job(record, client))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=submit_from_client, args=(by_client[k::2],), daemon=True)
        for k in range(2)
    ]
    for t in threads:
        t.start()

    creates_before_kill = 0
    killed = False
    for i in by_magic:
        if not killed and len(handles) >= JOBS // 2:
            creates_before_kill = _kill_and_restart(backend, gate, handles, lock)
            killed = True
        spec = _spec_of(i)
        shell.user_ns["soak_window"] = (
            spec.body["parameters"]["worker"]["config"].get("reader_config", {}).get("window_size")
        )
        shell.user_ns["soak_inference"] = [
            f["file_id"] for f in spec.body["inputs"].get("worker.inference", [])
        ]
        result = shell.run_cell(
            f"%%atai_job soak_job --no-card --quiet\nname: {_name(i)}\n{spec.cell}"
        )
        assert result.success, f"cell {_name(i)} failed: {result.error_in_exec!r}"
        keep(i, shell.user_ns["soak_job"])
    for t in threads:
        t.join(timeout=DEADLINE)
    assert not errors, errors
    assert killed and len(handles) == JOBS

    try:
        # a job leaves `watching()` right before its handle takes the final record
        _wait_for(
            lambda: not watcher.watching() and all(job.done for job in handles.values()),
            "every job to end",
            timeout=DEADLINE,
        )
    finally:
        watcher.stop()
    _check(backend, client, handles, creates_before_kill, tmp_path, reference)
    magics.session.reset()


def _kill_and_restart(
    backend: LocalBackend, gate: Gate, handles: dict[str, Job], lock: threading.Lock
) -> int:
    """Kill the backend with SIGKILL while jobs run, restart it on the same port and home;
    the create requests it handled before dying."""
    info = backend.info
    client = Client(info.url, api_key=info.token(), max_retries=RETRIES)
    with gate.closed():  # no create in flight while the count is read and the server dies
        _wait_for(lambda: list(client.iter_jobs(status="RUNNING")), "a running job")
        created = backend.handled("create_job")
        os.kill(info.pid, signal.SIGKILL)
        _wait_for(lambda: not server._pid_alive(info.pid), "the backend to die")  # and reaped
    # the client threads go on submitting (connection refused, retried) while it restarts
    restarted = server.start(info.home, port=info.port, concurrency=2, faults=FAULTS)
    assert restarted.pid != info.pid and restarted.port == info.port
    with lock:
        assert handles, "nothing was submitted before the kill"
    return created


def _check(
    backend: LocalBackend,
    client: Client,
    handles: dict[str, Job],
    creates_before_kill: int,
    tmp_path: Path,
    reference: dict[str, dict[str, bytes]],
) -> None:
    # every job ended, in the state the backend records
    records = {j.name: j for j in client.iter_jobs(q="soak-") if (j.name or "").startswith("soak-")}
    for name, job in handles.items():
        assert job.status in TERMINAL, (name, job.status)
        assert records[name].status == job.status, (name, records[name].status, job.status)

    # no job created twice: one job per name, one create request per job
    names = collections.Counter(j.name for j in client.iter_jobs(q="soak-"))
    assert set(names) == {_name(i) for i in range(JOBS)}
    assert max(names.values()) == 1, [n for n, c in names.items() if c > 1]
    assert creates_before_kill + backend.handled("create_job") == JOBS

    # FAILED only of an injected crash; COMPLETED outputs byte-identical to the reference
    statuses = collections.Counter(j.status for j in handles.values())
    assert statuses[m.JobStatus.COMPLETED] >= JOBS * 0.8, statuses
    assert set(statuses) <= {m.JobStatus.COMPLETED, m.JobStatus.FAILED}, statuses
    preempted = sum(bool(j.record.preemption_count) for j in handles.values())
    assert preempted >= 1, "no job was running when the backend was killed"
    counts = {status.value: n for status, n in statuses.items()}
    print(f"soak: {counts}, {preempted} preempted, {creates_before_kill} created before the kill")
    for i in range(JOBS):
        job = handles[_name(i)]
        if job.status == m.JobStatus.FAILED:
            messages = [e.message or "" for e in job.events()]
            assert any("Container worker terminated" in t for t in messages), (job.name, messages)
            continue
        got = _outputs(job, tmp_path / "downloads" / job.id)
        want = reference[_spec_of(i).key]
        assert got.keys() == want.keys(), (job.name, sorted(got), sorted(want))
        for file, data in want.items():
            assert got[file] == data, (job.name, file)
