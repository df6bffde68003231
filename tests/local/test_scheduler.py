"""The local scheduler with real worker processes, a real store and the real pipelines."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import slow_pipeline
import stubborn_pipeline

from atai_magics.local import scheduler as scheduler_module
from atai_magics.local.pipelines import LocalPipeline, builtin_pipelines
from atai_magics.local.scheduler import BACKOFF_MESSAGE, WORKER_NICENESS, Scheduler
from atai_magics.local.store import Store

MSC = "machine-state-classification"
AD = "activity-detection"
PIPELINES: dict[str, LocalPipeline] = {p.key: p for p in builtin_pipelines()}
PIPELINES[slow_pipeline.KEY] = slow_pipeline.PIPELINE
PIPELINES[stubborn_pipeline.KEY] = stubborn_pipeline.PIPELINE
TIMEOUT = 60.0

JSON = dict[str, Any]


class RecordingStore(Store):
    """A store that remembers the status changes the scheduler makes, in order."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.history: dict[str, list[str]] = {}

    def transition(self, job_id: str, to_status: str, **kwargs: Any) -> JSON:
        job = super().transition(job_id, to_status, **kwargs)
        self.history.setdefault(job_id, []).append(job["status"])
        return job

    def admit_next(self, limit_running: int) -> JSON | None:
        job = super().admit_next(limit_running)
        if job is not None:
            self.history.setdefault(job["id"], []).append(job["status"])
        return job


Make = Callable[..., tuple[RecordingStore, Scheduler]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def make_scheduler(home: Path) -> Iterator[Make]:
    """make_scheduler(concurrency=2, crash=None): a started scheduler; always stopped after."""
    made: list[tuple[RecordingStore, Scheduler]] = []

    def make(concurrency: int = 2, crash: Callable[[], bool] | None = None) -> Any:
        store = RecordingStore(home)
        scheduler = Scheduler(store, PIPELINES, concurrency, crash=crash)
        made.append((store, scheduler))
        scheduler.start()
        return store, scheduler

    yield make
    for store, scheduler in made:
        scheduler.stop()
        store.close()


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_status(store: Store, job_id: str, *statuses: str) -> JSON:
    def check() -> JSON | None:
        job = store.get_job(job_id)
        return job if job["status"] in statuses else None

    job: JSON = wait_for(check, what=f"{job_id} in {statuses}")
    return job


def history(store: RecordingStore, job_id: str, length: int) -> list[str]:
    """The statuses the scheduler set, once ``length`` are recorded: its thread records a
    change only after the store has it, so a test can see the status before the history."""
    wait_for(lambda: len(store.history.get(job_id, [])) >= length, what=f"{job_id}'s history")
    return store.history[job_id]


def events(store: Store, job_id: str, level: str | None = None) -> list[JSON]:
    return list(store.list_events(job_id, level=level, limit=None)["events"])


def messages(store: Store, job_id: str, level: str | None = None) -> list[str]:
    return [str(e["message"]) for e in events(store, job_id, level)]


def inputs(store: Store, job_id: str, port: str | None = None) -> list[JSON]:
    return list(store.list_inputs(job_id, port_name=port, limit=None)["inputs"])


def sensor_csv(rows: int, amplitude: float, phase: float = 0.0) -> bytes:
    lines = ["ts,a,b"]
    for i in range(rows):
        t = i * 0.3 + phase
        lines.append(f"2026-01-01T00:00:{i:02d},{amplitude * math.sin(t):.4f},{amplitude * t:.4f}")
    return ("\n".join(lines) + "\n").encode()


READER = {"data_columns": ["a", "b"], "timestamp_column": "ts", "window_size": 10, "step_size": 5}


def msc_job(
    store: Store, scheduler: Scheduler, files: list[str], parallelism: int = 1, **config: Any
) -> str:
    """Upload n-shot files (once) and ``files`` (40-row CSVs) and create an MSC job."""
    if store.find_file("idle.csv") is None:
        store.add_file("idle.csv", "text/csv", sensor_csv(50, 0.1))
        store.add_file("busy.csv", "text/csv", sensor_csv(50, 5.0))
    for n, name in enumerate(files):
        if store.find_file(name) is None:
            store.add_file(name, "text/csv", sensor_csv(40, 0.1 if n % 2 else 5.0, n))
    request = {
        "name": "msc",
        "pipeline_type": "batch",
        "pipeline_key": MSC,
        "inputs": {
            "worker.inference": [{"file_id": name} for name in files],
            "worker.n_shots": [
                {"file_id": "idle.csv", "metadata": {"class": "idle"}},
                {"file_id": "busy.csv", "metadata": {"class": "busy"}},
            ],
        },
        "parameters": {
            "worker": {"parallelism": parallelism, "config": {"reader_config": READER, **config}}
        },
    }
    job = store.create_job(request, PIPELINES[MSC].version, PIPELINES[MSC].inputs)
    scheduler.wake()
    return str(job["id"])


def slow_job(
    store: Store, scheduler: Scheduler | None, name: str = "data.txt", **config: Any
) -> str:
    if store.find_file(name) is None:
        store.add_file(name, "text/plain", name.encode())
    request = {
        "name": "slow",
        "pipeline_type": "batch",
        "pipeline_key": slow_pipeline.KEY,
        "inputs": {slow_pipeline.DATA_PORT: [{"file_id": name}]},
        "parameters": {"worker": {"config": config}},
    }
    pipeline = slow_pipeline.PIPELINE
    job = store.create_job(request, pipeline.version, pipeline.inputs)
    if scheduler is not None:
        scheduler.wake()
    return str(job["id"])


def processing(store: Store, job_id: str) -> bool:
    return any(i["status"] == "processing" for i in inputs(store, job_id))


def test_machine_state_job_runs_to_completion(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler()
    job_id = msc_job(store, scheduler, ["run1.csv"])
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    assert job["status"] == "COMPLETED", messages(store, job_id)
    assert history(store, job_id, 3) == ["ADMITTED", "RUNNING", "COMPLETED"]
    assert job["started_at"] and job["completed_at"] and job["error"] is None
    assert job["input_progress"] == {"pending": 0, "processing": 0, "completed": 1, "failed": 0}

    outputs = store.list_outputs(job_id, limit=None)["outputs"]
    assert [o["data"]["filename"] for o in outputs] == ["pred_run1_part_0.csv"]
    text = store.output_path(outputs[0]["id"]).read_text()
    lines = text.splitlines()
    assert lines[0] == "ts,Prediction"
    assert len(lines) == 1 + 7  # (40 - 10) // 5 + 1 windows
    assert {line.split(",")[1] for line in lines[1:]} <= {"idle", "busy"}

    info = messages(store, job_id, "INFO")
    assert info.index("Starting 1 worker(s)") < info.index("Running job")
    success = messages(store, job_id, "SUCCESS")
    assert success[-1].startswith("Job completed in ") and success[-1].endswith("s")
    assert "Processed 7 windows from run1.csv" in success
    progress = store.list_progress(job_id, limit=None)["entries"]
    assert progress and progress[-1]["metrics"]["percent_complete"] == 100.0

    statuses = {i["port_name"]: i["status"] for i in inputs(store, job_id)}
    assert statuses == {"worker.inference": "completed", "worker.n_shots": "reference"}
    assert not scheduler.running() or wait_for(lambda: not scheduler.running())


def test_activity_detection_job_runs_to_completion(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler()
    lines = [
        json.dumps({"prompt": "Sensor log: stove on, kettle boiling in the kitchen"}),
        "not json",
    ]
    store.add_file("home.jsonl", "application/x-ndjson", ("\n".join(lines) + "\n").encode())
    request = {
        "name": "ad",
        "pipeline_type": "batch",
        "pipeline_key": AD,
        "inputs": {"worker.data": [{"file_id": "home.jsonl"}]},
    }
    job_id = str(store.create_job(request, PIPELINES[AD].version, PIPELINES[AD].inputs)["id"])
    scheduler.wake()
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    assert job["status"] == "COMPLETED", messages(store, job_id)
    assert history(store, job_id, 3) == ["ADMITTED", "RUNNING", "COMPLETED"]
    outputs = store.list_outputs(job_id, limit=None)["outputs"]
    assert [o["data"]["filename"] for o in outputs] == ["pred_home_part_0.jsonl"]
    out = store.output_path(outputs[0]["id"]).read_text().splitlines()
    assert len(out) == 2 and json.loads(out[0])["line_index"] == 0
    assert "Processed 2 items (1 success, 1 failed) from home.jsonl" in messages(
        store, job_id, "SUCCESS"
    )
    assert [i["status"] for i in inputs(store, job_id)] == ["completed"]
    assert store.list_progress(job_id, limit=None)["total"] >= 1


def test_concurrency_limit_keeps_second_job_pending(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler(concurrency=1)
    first = slow_job(store, scheduler, "a.txt", seconds=60)
    wait_status(store, first, "RUNNING")
    second = slow_job(store, scheduler, "b.txt", seconds=0)
    time.sleep(0.6)  # several scheduler polls: the second job must stay queued
    job = store.get_job(second)
    assert (job["status"], job["queue_position"], job["queue_depth"]) == ("PENDING", 1, 1)
    # cancelled through the store only: the loop notices and frees the slot
    procs = wait_for(lambda: scheduler.processes(first))
    store.cancel(first)
    assert wait_status(store, second, "COMPLETED")["status"] == "COMPLETED"
    for p in procs:
        p.join(5)
        assert not p.is_alive()
    assert store.get_job(first)["status"] == "CANCELLED"


def test_parallelism_scatters_inputs(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler()
    names = ["x1.csv", "x2.csv", "x3.csv"]
    job_id = msc_job(store, scheduler, names, parallelism=2)
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    assert job["status"] == "COMPLETED", messages(store, job_id)
    info = messages(store, job_id, "INFO")
    assert "Starting 2 worker(s)" in info
    assert info.count("Running job") == 2
    vectorized = [
        e["input_id"] for e in events(store, job_id) if e["event_type"] == "vectorizing_file"
    ]
    tracked = inputs(store, job_id, "worker.inference")
    assert sorted(vectorized) == sorted(i["id"] for i in tracked)  # each input exactly once
    assert {i["status"] for i in tracked} == {"completed"}
    filenames = sorted(
        o["data"]["filename"] for o in store.list_outputs(job_id, limit=None)["outputs"]
    )
    assert filenames == [f"pred_x{n}_part_0.csv" for n in (1, 2, 3)]


def test_pipeline_failure_fails_job(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler()
    job_id = msc_job(store, scheduler, ["run1.csv"], classifier_config={"n_neighbors": 1000})
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    message = "n_neighbors must be <= number of samples in index"
    assert job["status"] == "FAILED"
    assert job["error"] == {"message": message, "type": "PipelineFailure"}
    assert job["failed_at"] is not None
    assert messages(store, job_id, "FAILED") == [f"Job failed: {message}"]
    assert [i["status"] for i in inputs(store, job_id, "worker.inference")] == ["pending"]
    wait_for(lambda: not scheduler.running(), what="workers reaped")


def _failing_once(
    monkeypatch: pytest.MonkeyPatch, store: Store, method: str, when: Callable[..., bool]
) -> list[str]:
    """``store.<method>`` raises a database error the first time ``when(*args)`` holds."""
    real = getattr(store, method)
    failed: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not failed and when(*args):
            failed.append(str(args[0]))
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, flaky)
    return failed


def test_a_failed_write_of_a_jobs_end_is_tried_again(
    make_scheduler: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, scheduler = make_scheduler(concurrency=1)
    failed = _failing_once(monkeypatch, store, "transition", lambda _, to: to == "FAILED")
    job_id = slow_job(store, scheduler, fail="the sensor file is empty")
    job = wait_status(store, job_id, "FAILED")  # not RUNNING forever with no workers
    assert failed == [job_id] and job["error"]["type"] == "PipelineFailure"
    after = slow_job(store, scheduler, "after.txt", seconds=0)  # its slot was freed
    assert wait_status(store, after, "COMPLETED", "FAILED")["status"] == "COMPLETED"


def test_a_crash_whose_end_is_written_twice_is_reported_once(
    make_scheduler: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, scheduler = make_scheduler(crash=lambda: True)
    failed = _failing_once(monkeypatch, store, "transition", lambda _, to: to == "FAILED")
    job_id = msc_job(store, scheduler, ["run1.csv"])
    job = wait_status(store, job_id, "FAILED")
    assert failed == [job_id] and job["error"]["type"] == "BackoffLimitExceeded"
    crashes = [m for m in messages(store, job_id, "ERROR") if m.startswith("Container worker")]
    assert crashes == ["Container worker terminated: exit=137"]


def test_a_job_whose_launch_failed_is_failed_not_left_admitted(
    make_scheduler: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, scheduler = make_scheduler(concurrency=1)
    starting = _failing_once(
        monkeypatch, store, "add_event", lambda *args: str(args[3]).startswith("Starting")
    )
    job_id = slow_job(store, scheduler, seconds=0)
    job = wait_status(store, job_id, "FAILED")
    assert starting == [job_id] and job["error"]["type"] == "SchedulerError"
    assert "disk I/O error" in job["error"]["message"]
    after = slow_job(store, scheduler, "after.txt", seconds=0)
    assert wait_status(store, after, "COMPLETED", "FAILED")["status"] == "COMPLETED"


def test_a_job_left_admitted_with_no_workers_is_failed_by_the_reconciler(
    make_scheduler: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write that should have ended it failed: the loop still finds it later."""
    monkeypatch.setattr(scheduler_module, "RECONCILE_SECONDS", 0.3)
    store, scheduler = make_scheduler(concurrency=1)
    _failing_once(monkeypatch, store, "add_event", lambda *a: str(a[3]).startswith("Starting"))
    _failing_once(monkeypatch, store, "transition", lambda _, to: to == "FAILED")
    job_id = slow_job(store, scheduler, seconds=0)
    job = wait_status(store, job_id, "FAILED")
    assert job["error"] == {
        "message": "The local scheduler lost this job's workers",
        "type": "SchedulerError",
    }


def test_injected_crash_fails_with_backoff_limit(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler(crash=lambda: True)
    job_id = msc_job(store, scheduler, ["run1.csv"])
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    assert job["status"] == "FAILED"
    assert history(store, job_id, 3) == ["ADMITTED", "RUNNING", "FAILED"]
    assert "Container worker terminated: exit=137" in messages(store, job_id, "ERROR")
    assert messages(store, job_id, "FAILED") == [f"Job failed: {BACKOFF_MESSAGE}"]
    assert job["error"]["type"] == "BackoffLimitExceeded"


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX priorities")
def test_workers_run_below_the_servers_cpu_priority(make_scheduler: Make, tmp_path: Path) -> None:
    store, scheduler = make_scheduler()
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    job_id = slow_job(store, scheduler, seconds=120, pid_dir=str(pid_dir))
    pid_file = wait_for(lambda: next(pid_dir.glob("*.pid"), None), what="a worker")
    pid = int(wait_for(pid_file.read_text, what="its pid"))
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + WORKER_NICENESS)
    store.cancel(job_id)
    scheduler.cancel(job_id)


def test_cancel_kills_workers_within_two_seconds(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler()
    # ignore_term: the worker ignores SIGTERM and cancellation, so only the SIGKILL stops it
    job_id = slow_job(store, scheduler, seconds=120, ignore_term=True)
    wait_status(store, job_id, "RUNNING")
    wait_for(lambda: processing(store, job_id), what="input processing")
    wait_for(lambda: store.list_outputs(job_id, limit=None)["outputs"], what="the marker")
    procs = scheduler.processes(job_id)
    assert procs and all(p.is_alive() for p in procs)
    store.cancel(job_id)
    scheduler.cancel(job_id)
    for p in procs:
        p.join(2.0)
    assert not any(p.is_alive() for p in procs)
    assert store.get_job(job_id)["status"] == "CANCELLED"
    outputs = store.list_outputs(job_id, limit=None)["outputs"]
    assert [o["data"]["filename"] for o in outputs] == ["started_0.txt"]  # kept
    wait_for(lambda: not scheduler.running(), what="job forgotten")
    assert [i["status"] for i in inputs(store, job_id)] == ["pending"]


def test_stop_then_restart_preempts_and_requeues(make_scheduler: Make, tmp_path: Path) -> None:
    store, scheduler = make_scheduler()
    release = tmp_path / "release"  # made only after the stop: the first run cannot finish
    job_id = slow_job(store, scheduler, seconds=0, release_file=str(release))
    wait_status(store, job_id, "RUNNING")
    wait_for(lambda: processing(store, job_id), what="input processing")
    wait_for(lambda: store.list_outputs(job_id, limit=None)["outputs"], what="the marker")
    procs = scheduler.processes(job_id)
    scheduler.stop()
    assert procs and not any(p.is_alive() for p in procs)
    assert store.get_job(job_id)["status"] == "RUNNING"  # as after a kill -9 of the backend

    release.touch()
    store2, _ = make_scheduler()
    job = wait_status(store2, job_id, "COMPLETED", "FAILED")
    assert job["status"] == "COMPLETED", messages(store2, job_id)
    assert job["preemption_count"] == 1
    assert "Job preempted: local backend restarted" in messages(store2, job_id, "WARN")
    assert history(store2, job_id, 3) == ["ADMITTED", "RUNNING", "COMPLETED"]
    assert [i["status"] for i in inputs(store2, job_id)] == ["completed"]


def test_pipeline_bug_is_a_worker_crash(make_scheduler: Make) -> None:
    store, scheduler = make_scheduler()
    job_id = slow_job(store, scheduler, error="boom")
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    assert job["status"] == "FAILED"
    errors = messages(store, job_id, "ERROR")
    assert errors == ["Worker 0: RuntimeError: boom", "Container worker terminated: exit=1"]
    assert messages(store, job_id, "FAILED") == [f"Job failed: {BACKOFF_MESSAGE}"]


def test_retry_after_cancel_runs_again(make_scheduler: Make, tmp_path: Path) -> None:
    store, scheduler = make_scheduler()
    release = tmp_path / "release"  # made only after the cancel: the first run cannot finish
    job_id = slow_job(store, scheduler, seconds=0, release_file=str(release))
    wait_status(store, job_id, "RUNNING")
    store.cancel(job_id)
    scheduler.cancel(job_id)
    release.touch()
    store.retry(job_id)
    scheduler.wake()
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    assert (job["status"], job["retry_count"]) == ("COMPLETED", 1)
    assert [i["status"] for i in inputs(store, job_id)] == ["completed"]


def test_workers_of_a_cancelled_attempt_cannot_write_into_the_retry(
    make_scheduler: Make, tmp_path: Path
) -> None:
    """Cancel, then retry while the old worker still runs: that worker ignores SIGTERM and
    cancellation and keeps writing until the retry's launch kills it, yet nothing it writes
    after the cancel lands; the new attempt's worker processes the input."""
    store, scheduler = make_scheduler()
    store.add_file("stubborn.txt", "text/plain", b"payload")
    release = tmp_path / "release"  # made only after the cancel: the first run cannot finish
    pipeline = stubborn_pipeline.PIPELINE
    request = {
        "name": "stubborn",
        "pipeline_type": "batch",
        "pipeline_key": pipeline.key,
        "inputs": {stubborn_pipeline.DATA_PORT: [{"file_id": "stubborn.txt"}]},
        "parameters": {
            "worker": {"config": {"seconds": 1.5, "tick": 0.01, "release_file": str(release)}}
        },
    }
    job_id = str(store.create_job(request, pipeline.version, pipeline.inputs)["id"])
    scheduler.wake()
    wait_for(lambda: store.list_outputs(job_id)["total"] >= 1, what="the first tick")
    old_pids = {p.pid for p in scheduler.processes(job_id)}
    assert old_pids
    store.cancel(job_id)
    time.sleep(0.1)  # the old worker keeps running: only the retry's launch kills it
    release.touch()
    store.retry(job_id)
    job = wait_status(store, job_id, "COMPLETED", "FAILED")
    assert (job["status"], job["retry_count"]) == ("COMPLETED", 1), messages(store, job_id)

    def pid_of(text: str) -> int:
        return int(text.split("_")[1] if "_" in text else text.split()[1])

    log = events(store, job_id)
    cancelled = next(e for e in log if e["event_type"] == "job.cancelled")
    late_events = [
        e
        for e in log
        if e["event_type"] == "tick"
        and e["id"] > cancelled["id"]
        and pid_of(e["message"]) in old_pids
    ]
    assert late_events == []
    outputs = store.list_outputs(job_id, limit=None)["outputs"]
    late_outputs = [
        o["data"]["filename"]
        for o in outputs
        if pid_of(o["data"]["filename"]) in old_pids and o["created_at"] > cancelled["created_at"]
    ]
    assert late_outputs == []
    done = [o for o in outputs if o["data"]["filename"].startswith("done_")]
    (item,) = inputs(store, job_id)
    assert len(done) == 1 and pid_of(done[0]["data"]["filename"]) not in old_pids
    assert done[0]["input_id"] == item["id"] and item["status"] == "completed"
