"""The local backend as users run it: its own detached process, a real socket, our client.

These tests start the backend with ``server.start`` (as ``atai-magics local start`` does),
so they exercise the process, the routes, the store and the worker processes together:
both pipelines end to end, a kill -9 of the backend in the middle of a RUNNING job, cancel
of a running job, and the client against injected faults.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atai_magics import Client
from atai_magics.api.client import RetryPolicy
from atai_magics.api.models import JobRecord, JobStatus
from atai_magics.local import server

HERE = Path(__file__).parent
WAIT = 90.0  # generous bound for a 2-core CI machine; never a timing assertion


@pytest.fixture
def plugin_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Register ``slow_pipeline`` as a real entry-point plug-in for the backend process."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "slowplug-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slowplug\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[atai_magics.local_pipelines]\nslow = slow_pipeline:PIPELINE\n"
    )
    paths = [str(site), str(HERE), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


Backend = Callable[..., tuple[server.ServerInfo, Client]]


@pytest.fixture
def backend(tmp_path: Path, plugin_env: None) -> Iterator[Backend]:
    """Start (or restart) the backend of one home; everything started is stopped after."""
    home = tmp_path / "home"
    clients: list[Client] = []

    def start(**kwargs: Any) -> tuple[server.ServerInfo, Client]:
        info = server.start(home, **kwargs)
        retry = RetryPolicy(max_retries=8, backoff=0.02, backoff_max=0.2)
        client = Client(info.url, api_key=info.token(), retry=retry)
        clients.append(client)
        return info, client

    yield start
    for client in clients:
        client.close()
    server.stop(home)


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_terminal(client: Client, job_id: str) -> JobRecord:
    def done() -> JobRecord | None:
        job = client.get_job(job_id)
        return job if job.status.is_terminal else None

    result: JobRecord = wait_for(done, f"{job_id} to finish")
    return result


def signal_csv(path: Path, freq: float, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    a = np.sin(freq * t) + rng.normal(0, 0.05, rows)
    b = np.cos(freq * t) + rng.normal(0, 0.05, rows)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ts", "a", "b"])
        writer.writerows(zip(t, np.round(a, 4), np.round(b, 4), strict=True))


def test_machine_state_lifecycle(backend: Backend, tmp_path: Path) -> None:
    _, client = backend()
    signal_csv(tmp_path / "slow.csv", 0.05, 300, 1)
    signal_csv(tmp_path / "fast.csv", 0.6, 300, 2)
    signal_csv(tmp_path / "inference.csv", 0.6, 200, 3)
    for name in ("slow.csv", "fast.csv", "inference.csv"):
        assert client.upload_file(tmp_path / name).file_id == name
    created = client.create_job(
        {
            "name": "msc-e2e",
            "pipeline_key": "machine-state-classification",
            "inputs": {
                "worker.inference": [{"file_id": "inference.csv"}],
                "worker.n_shots": [
                    {"file_id": "slow.csv", "metadata": {"class": "slow"}},
                    {"file_id": "fast.csv", "metadata": {"class": "fast"}},
                ],
            },
            "parameters": {
                "worker": {
                    "parallelism": 1,
                    "config": {
                        "batch_size": 8,
                        "flush_every_n_iteration": 5,
                        "reader_config": {
                            "data_columns": ["a", "b"],
                            "timestamp_column": "ts",
                            "window_size": 16,
                            "step_size": 1,
                        },
                    },
                }
            },
        }
    )
    assert created.status == JobStatus.PENDING
    assert created.queue_position is not None and created.queue_depth is not None

    job = wait_terminal(client, created.id)
    assert job.status == JobStatus.COMPLETED, list(client.iter_events(job.id))
    assert job.input_progress is not None
    assert (job.input_progress.completed, job.input_progress.failed) == (1, 0)
    assert job.started_at is not None and job.completed_at is not None
    assert job.queue_position is None and job.pipeline_version

    messages = [e.message for e in client.iter_events(job.id)]
    assert "Running job" in messages
    assert any("stand-in" in (m or "") for m in messages)
    assert any((m or "").startswith("Processed 185 windows") for m in messages)
    assert len(list(client.iter_progress(job.id))) >= 1

    inputs = {i.file_id: i.status for i in client.list_inputs(job.id).inputs}
    assert inputs == {
        "inference.csv": "completed",
        "slow.csv": "reference",
        "fast.csv": "reference",
    }

    outputs = list(client.iter_outputs(job.id))
    # 185 windows, 8 per iteration, a part every 5 iterations: 40 windows a part -> 5 parts
    assert len(outputs) == 5
    rows: list[list[str]] = []
    for output in outputs:
        path = client.download_output(output, tmp_path / "out")
        table = list(csv.reader(io.StringIO(path.read_text())))
        assert table[0] == ["ts", "Prediction"]
        rows += table[1:]
    assert len(rows) == 200 - 16 + 1
    predictions = [label for _, label in rows]
    assert predictions.count("fast") / len(predictions) > 0.9


def test_activity_detection_lifecycle(backend: Backend, tmp_path: Path) -> None:
    _, client = backend()
    lines = [
        json.dumps({"prompt": "The person is walking the dog in the park"}),
        "this is not json",
        json.dumps({"inputs": [{"type": "text", "data": "no format field"}]}),
        json.dumps({"instruction": "Classify", "prompt": "Someone is cooking dinner"}),
    ]
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(lines) + "\n")
    client.upload_file(source)
    assert client.get_file_metadata("prompts.jsonl").file_type == "application/x-ndjson"
    created = client.create_job(
        {
            "name": "ad-e2e",
            "pipeline_key": "activity-detection",
            "inputs": {"worker.data": [{"file_id": "prompts.jsonl"}]},
        }
    )
    job = wait_terminal(client, created.id)
    assert job.status == JobStatus.COMPLETED
    (output,) = list(client.iter_outputs(job.id))
    records = [
        json.loads(line)
        for line in client.download_output(output, tmp_path).read_text().splitlines()
    ]
    assert [r["line_index"] for r in records] == [0, 1, 2, 3]
    assert records[0]["prediction"] and records[3]["prediction"]
    assert records[1]["prediction"] is None and records[1]["error"] == "parse error"
    assert records[2]["prediction"] is None and "format" in records[2]["error"]
    assert any(
        "not Newton" in (e.message or "") or "baseline" in (e.message or "")
        for e in client.iter_events(job.id)
    )


def _slow_job(client: Client, tmp_path: Path, name: str, **config: Any) -> JobRecord:
    if not name.startswith("fault-"):
        client.upload_bytes(b"payload", "data.txt")
    return client.create_job(
        {
            "name": name,
            "pipeline_key": "slow-test",
            "inputs": {"worker.data": [{"file_id": "data.txt"}]},
            "parameters": {"worker": {"config": config}},
        }
    )


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_cancel_of_a_running_job_stops_its_workers(backend: Backend, tmp_path: Path) -> None:
    _, client = backend()
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    job = _slow_job(client, tmp_path, "to-cancel", seconds=120, pid_dir=str(pid_dir))
    wait_for(lambda: client.get_job(job.id).status == JobStatus.RUNNING, "RUNNING")
    pid_file = wait_for(lambda: next(pid_dir.glob("*.pid"), None), "a worker pid")
    pid = int(wait_for(pid_file.read_text, "its pid"))
    assert _process_alive(pid)
    # the pid file comes before the marker output: cancel only once the marker is recorded
    wait_for(lambda: list(client.iter_outputs(job.id)), "the marker output")

    assert client.cancel_job(job.id).status == JobStatus.CANCELLED
    gone_by = time.monotonic() + 2.0
    while _process_alive(pid) and time.monotonic() < gone_by:
        time.sleep(0.02)
    assert not _process_alive(pid), "the worker outlived the 2 s cancel bound"

    after = client.get_job(job.id)
    assert after.status == JobStatus.CANCELLED and after.cancelled_at is not None
    names = [o.data.filename for o in client.iter_outputs(job.id)]
    assert names == ["started_0.txt"]  # what was written before the cancel is kept


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill_9_during_a_running_job_then_restart(backend: Backend, tmp_path: Path) -> None:
    info, client = backend()
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    release = tmp_path / "release"  # made only after the restart: the first run cannot finish
    job = _slow_job(
        client, tmp_path, "survivor", seconds=0, pid_dir=str(pid_dir), release_file=str(release)
    )
    wait_for(lambda: client.get_job(job.id).status == JobStatus.RUNNING, "RUNNING")
    pid_file = wait_for(lambda: next(pid_dir.glob("*.pid"), None), "a worker")
    worker = int(wait_for(pid_file.read_text, "its pid"))
    store_outputs = tmp_path / "home" / "outputs"
    # recorded, not merely on disk: the bytes are spooled under outputs/ before the commit
    wait_for(lambda: list(client.iter_outputs(job.id)), "the first marker")

    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: not _process_alive(info.pid), "the backend to die")
    wait_for(lambda: not _process_alive(worker), "the orphaned worker to stop", timeout=2)
    written = sorted(p.name for p in store_outputs.rglob("*") if p.is_file())

    restarted, client = backend()
    assert restarted.pid != info.pid and not restarted.reused
    second = wait_for(lambda: len(list(client.iter_outputs(job.id))) == 2, "the second marker")
    assert second and client.get_job(job.id).status == JobStatus.RUNNING
    release.touch()
    done = wait_terminal(client, job.id)
    assert done.status == JobStatus.COMPLETED
    assert done.preemption_count == 1
    messages = [e.message or "" for e in client.iter_events(job.id)]
    assert any("preempted" in m.lower() for m in messages)
    assert client.get_file_metadata("data.txt").num_bytes == len(b"payload")
    names = sorted(o.data.filename for o in client.iter_outputs(job.id))
    assert names.count("copy_data.txt") == 1  # the orphan stopped before writing it
    assert names.count("started_0.txt") == 2  # one per run; the first survived the kill
    assert len(written) == 1  # only the first run's marker existed at the kill


def test_workers_run_the_plugin_code_the_backend_started_with(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plug-in upgraded on disk under a running backend (pip install -U): the fork server
    was started, with the plug-in imported, when the backend started, so jobs still run."""
    site = tmp_path / "upgradable-site"
    dist = site / "upgradable-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: upgradable\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[atai_magics.local_pipelines]\nupgradable = upgradable_plugin:PIPELINE\n"
    )
    module = site / "upgradable_plugin.py"
    module.write_text(
        "import dataclasses\n"
        "import slow_pipeline\n\n\n"
        "def run(ctx):\n"
        "    slow_pipeline.run(ctx)\n\n\n"
        "PIPELINE = dataclasses.replace(slow_pipeline.PIPELINE, key='upgradable', run=run)\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ["PYTHONPATH"]]))
    _, client = backend()
    module.write_text("raise ImportError('version 2 is not what the backend loaded')\n")
    client.upload_bytes(b"payload", "data.txt")
    job = client.create_job(
        {
            "name": "upgraded-under-me",
            "pipeline_key": "upgradable",
            "inputs": {"worker.data": [{"file_id": "data.txt"}]},
            "parameters": {"worker": {"config": {"seconds": 0}}},
        }
    )
    done = wait_terminal(client, job.id)
    assert done.status == JobStatus.COMPLETED, [e.message for e in client.iter_events(job.id)]
    assert "copy_data.txt" in [o.data.filename for o in client.iter_outputs(job.id)]


def test_a_worker_that_dies_starting_leaves_a_readable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception before the pipeline runs (here: calling the worker entry point with
    arguments it does not take) is an ERROR event with its text, not only BackoffLimit."""
    import slow_pipeline

    from atai_magics.local import scheduler as scheduler_module
    from atai_magics.local.store import Store

    monkeypatch.setattr(scheduler_module, "_worker_main", slow_pipeline.run)
    store = Store(tmp_path / "home")
    sched = scheduler_module.Scheduler(store, {slow_pipeline.KEY: slow_pipeline.PIPELINE})
    sched.start()
    try:
        store.add_file("data.txt", "text/plain", b"payload")
        request = {
            "name": "dies-starting",
            "pipeline_type": "batch",
            "pipeline_key": slow_pipeline.KEY,
            "inputs": {slow_pipeline.DATA_PORT: [{"file_id": "data.txt"}]},
        }
        pipeline = slow_pipeline.PIPELINE
        job_id = str(store.create_job(request, pipeline.version, pipeline.inputs)["id"])
        sched.wake()
        wait_for(lambda: store.get_job(job_id)["status"] == "FAILED", "the job to fail")
        errors = [
            str(e["message"])
            for e in store.list_events(job_id, level="ERROR", limit=None)["events"]
        ]
    finally:
        sched.stop()
        store.close()
    assert errors[0].startswith("Worker 0: TypeError: run() takes 1 positional argument"), errors
    assert errors[1:] == ["Container worker terminated: exit=1"]


def test_the_client_rides_out_injected_faults(backend: Backend, tmp_path: Path) -> None:
    info, client = backend()
    client.upload_bytes(b"payload", "data.txt")  # an upload is a POST: not retried blindly
    server.stop(info.home)
    _, client = backend(
        concurrency=1, faults="error_rate=0.2,rate_limit_rate=0.1,drop_rate=0.1,latency_ms=5"
    )
    client.retry.max_retries = 12
    names = [f"fault-{i}" for i in range(15)]
    for name in names:
        _slow_job(client, tmp_path, name, seconds=0)
    listed = [j.name for j in client.iter_jobs(page_size=7)]
    assert sorted(listed) == sorted(names)  # every job exists, none twice
