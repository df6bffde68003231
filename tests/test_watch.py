"""The background watcher: request economy (MockTransport), and real jobs over a socket,
with and without the local backend's fault injection."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atai_magics.api import models as m
from atai_magics.api.client import AsyncClient, Client
from atai_magics.api.errors import AtaiError
from atai_magics.jobs import Job
from atai_magics.watch import Snapshot, Watcher
from tests.conftest import LocalBackend, job_lookups, plugin_backend

FAST = {"interval": 0.05, "fast": 0.05, "slow": 0.2, "max_backoff": 0.3}


class Recorder:
    """Every snapshot a job's listener received, and a way to wait for the final one."""

    def __init__(self) -> None:
        self.snaps: list[Snapshot] = []
        self.done = threading.Event()

    def __call__(self, snap: Snapshot) -> None:
        self.snaps.append(snap)
        if snap.final:
            self.done.set()

    @property
    def statuses(self) -> list[str]:
        seen: list[str] = []
        for snap in self.snaps:
            if not seen or seen[-1] != snap.record.status.value:
                seen.append(snap.record.status.value)
        return seen


def _wait_until(condition: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _insist(action: Callable[[], Any]) -> Any:
    """Repeat a POST the client does not retry on a 5xx (an upload, a cancel) under faults."""
    for attempt in range(20):
        try:
            return action()
        except AtaiError:
            assert attempt < 19


def _slow_job(client: Client, tag: str, **config: Any) -> Job:
    _insist(lambda: client.upload_bytes(b"x", f"w-{tag}.txt", "text/plain"))
    record = client.create_job(
        {
            "name": f"watch-{tag}",
            "pipeline_key": "slow-test",
            "inputs": {"worker.data": [{"file_id": f"w-{tag}.txt"}]},
            "parameters": {"worker": {"config": config}},
        }
    )
    return Job(record, client)


# --- request economy, against a fake API -------------------------------------------------------


def _record(job_id: str, status: str = "PENDING", **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "name": job_id,
        "pipeline_key": "p",
        "pipeline_version": "1",
        "status": status,
        "updated_at": "2026-11-29T10:00:00Z",
        **extra,
    }


class FakeApi:
    """Jobs in a dict; counts requests by path; can fail the next N requests."""

    def __init__(self, jobs: dict[str, dict[str, Any]], visible: int | None = None) -> None:
        self.jobs = jobs
        self.visible = visible  # jobs the list shows (the newest), to test the fallback
        self.requests: list[str] = []
        self.fail_next = 0
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v0.5")
        with self.lock:
            self.requests.append(path)
            if self.fail_next:
                self.fail_next -= 1
                raise httpx.ConnectError("refused", request=request)
        if path == "/batch/jobs":
            rows = list(self.jobs.values())[: self.visible]
            body = {"total": len(rows), "offset": 0, "limit": 1000, "jobs": rows}
            return httpx.Response(200, json=body)
        parts = path.split("/")
        job_id = parts[3]
        if len(parts) == 4:
            if job_id not in self.jobs:
                return httpx.Response(404, json={"errors": [{"code": "not_found"}]})
            return httpx.Response(200, json=self.jobs[job_id])
        kind = parts[4]
        field = {"events": "events", "progress": "entries", "outputs": "outputs"}[kind]
        return httpx.Response(200, json={"total": 0, "offset": 0, "limit": 100, field: []})

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(p == prefix for p in self.requests)


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[FakeApi, Watcher, list[Job]]]]:
    watchers: list[Watcher] = []

    def make(
        n: int, visible: int | None = None, **kwargs: Any
    ) -> tuple[FakeApi, Watcher, list[Job]]:
        api = FakeApi({f"job_{i:04d}": _record(f"job_{i:04d}") for i in range(n)}, visible)
        client = Client("http://127.0.0.1:9/v0.5", api_key="k")

        def factory(_: Client) -> AsyncClient:
            return AsyncClient(
                client.base_url, "k", max_retries=0, transport=httpx.MockTransport(api.handler)
            )

        watcher = Watcher(client_factory=factory, **{**FAST, **kwargs})
        watchers.append(watcher)
        jobs = [Job(m.JobRecord.model_validate(r), client) for r in api.jobs.values()]
        return api, watcher, jobs

    yield make
    for watcher in watchers:
        watcher.stop()


def test_one_list_request_per_tick_covers_200_jobs(fake: Any) -> None:
    api, watcher, jobs = fake(200)
    for job in jobs[:100]:
        watcher.watch(job)
    for job in jobs[100:]:  # these ran once and were preempted: they have details
        api.jobs[job.id].update(status="PREEMPTED", started_at="2026-11-29T10:00:00Z")
        watcher.watch(job)
    # Details once for each job that has any (events, progress, outputs) ...
    _wait_until(lambda: watcher.stats.detail_requests >= 3 * 100)
    first = watcher.stats.ticks
    _wait_until(lambda: watcher.stats.ticks >= first + 5)
    watcher.stop()  # lets the current tick finish: the counts below are whole ticks
    # ... none for the 100 that never left the queue, none while nothing changes, and one
    # status request per tick for all 200.
    assert watcher.stats.detail_requests == 3 * 100
    assert api.count("/batch/jobs") == watcher.stats.status_requests == watcher.stats.ticks


def test_running_jobs_get_detail_calls_and_ended_jobs_stop_being_watched(fake: Any) -> None:
    api, watcher, jobs = fake(3)
    api.jobs["job_0001"]["status"] = "RUNNING"
    seen = Recorder()
    for job in jobs:
        watcher.watch(job, seen if job.id == "job_0002" else None)
    _wait_until(lambda: api.count("/batch/jobs/job_0001/events") >= 3)  # RUNNING: every tick
    assert api.count("/batch/jobs/job_0000/events") == 0  # queued, never ran: none
    api.jobs["job_0002"].update(status="COMPLETED", updated_at="2026-11-29T10:01:00Z")
    assert seen.done.wait(10)
    assert seen.snaps[-1].record.status == m.JobStatus.COMPLETED
    # the user's handle moves too, right after the cards (so whoever sees it move sees them)
    _wait_until(lambda: jobs[2].status == m.JobStatus.COMPLETED, timeout=10)
    assert "job_0002" not in watcher.watching()
    before = api.count("/batch/jobs/job_0002/events")
    _wait_until(lambda: watcher.stats.ticks >= 6)
    assert api.count("/batch/jobs/job_0002/events") == before


def test_a_failed_tick_lets_its_slow_updates_finish_before_the_next_tick(fake: Any) -> None:
    """One job's details fail while another's are slow: the next tick must not finish the slow
    job and then have the failed tick's late update put its old RUNNING state back."""
    api, watcher, jobs = fake(2)
    for record in api.jobs.values():
        record["status"] = "RUNNING"
    slow, failing = "/batch/jobs/job_0000/events", "/batch/jobs/job_0001/events"
    state = {"armed": False, "pending": False}
    sync_handler = api.handler

    async def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v0.5")
        if path == slow and state["armed"]:  # job_0000 ends while its details are on their way
            state["armed"], state["pending"] = False, True
            api.jobs["job_0000"].update(status="COMPLETED", updated_at="2026-11-29T10:01:00Z")
            await asyncio.sleep(0.5)
            state["pending"] = False
        elif path == failing and state["pending"]:  # ... and the same tick fails
            return httpx.Response(503, json={"errors": [{"code": "unavailable"}]})
        return sync_handler(request)

    api.handler = handler  # type: ignore[method-assign]
    seen = Recorder()
    watcher.watch(jobs[0], seen)
    watcher.watch(jobs[1])
    ticks = watcher.stats.ticks
    _wait_until(lambda: watcher.stats.ticks >= ticks + 2)  # ticks now take both jobs
    state["armed"] = True
    assert seen.done.wait(10)
    _wait_until(lambda: "job_0000" not in watcher.watching())
    _wait_until(lambda: not state["pending"], timeout=10)
    time.sleep(0.3)  # what the failed tick still had to do for job_0000, it has done
    assert watcher.stats.errors >= 1
    assert jobs[0].status == m.JobStatus.COMPLETED
    assert seen.snaps[-1].final and seen.snaps[-1].record.status == m.JobStatus.COMPLETED


def test_watching_again_during_the_final_tick_keeps_watching(fake: Any) -> None:
    """Retry clicked while the tick that saw the job end is still fetching its details: the
    job must stay watched (and its card follow the retry), not be dropped as ended."""
    api, watcher, jobs = fake(1)
    api.jobs["job_0000"]["status"] = "RUNNING"
    state = {"armed": False, "fetching": False}
    sync_handler = api.handler

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/job_0000/events") and state["armed"]:
            state["armed"], state["fetching"] = False, True
            await asyncio.sleep(0.5)  # the final tick's details, while the user clicks Retry
            state["fetching"] = False
        return sync_handler(request)

    api.handler = handler  # type: ignore[method-assign]
    seen = Recorder()
    watcher.watch(jobs[0], seen)
    _wait_until(lambda: bool(seen.snaps) and seen.snaps[-1].record.status == m.JobStatus.RUNNING)
    api.jobs["job_0000"].update(status="CANCELLED", updated_at="2026-11-29T10:01:00Z")
    state["armed"] = True
    _wait_until(lambda: state["fetching"], timeout=10)
    api.jobs["job_0000"].update(status="PENDING", updated_at="2026-11-29T10:02:00Z", retry_count=1)
    watcher.watch(jobs[0], seen)  # what the card's Retry button does after the retry
    _wait_until(lambda: seen.snaps[-1].record.status == m.JobStatus.PENDING, timeout=10)
    assert "job_0000" in watcher.watching()
    _wait_until(lambda: jobs[0].status == m.JobStatus.PENDING, timeout=10)


def test_jobs_missing_from_the_list_are_fetched_one_by_one(fake: Any) -> None:
    api, watcher, jobs = fake(5, visible=3)
    seen = Recorder()
    del api.jobs["job_0004"]  # deleted on the server: its card ends with its last state
    for job in jobs:
        watcher.watch(job, seen if job.id == "job_0004" else None)
    assert seen.done.wait(10)
    _wait_until(lambda: watcher.stats.ticks >= 3)
    assert api.count("/batch/jobs/job_0003") >= 1  # not in the page: fetched itself
    assert watcher.watching() == ["job_0000", "job_0001", "job_0002", "job_0003"]


def test_errors_back_off_and_show_reconnecting(fake: Any) -> None:
    api, watcher, jobs = fake(1)
    seen = Recorder()
    api.fail_next = 3
    watcher.watch(jobs[0], seen)
    _wait_until(lambda: any(s.reconnecting for s in seen.snaps))
    _wait_until(lambda: api.fail_next == 0 and watcher.stats.ticks >= 5)
    assert seen.snaps[-1].reconnecting is None  # recovered
    notes = [s.reconnecting for s in seen.snaps if s.reconnecting]
    assert notes[0].startswith("reconnecting… (attempt 1, next in ")
    assert "refused" in notes[0]
    assert watcher.stats.errors == 3


def test_a_failing_listener_is_logged_not_raised(fake: Any, caplog: Any) -> None:
    api, watcher, jobs = fake(1)

    def broken(_: Snapshot) -> None:
        raise RuntimeError("card bug")

    seen = Recorder()
    watcher.watch(jobs[0], broken)
    watcher.watch(jobs[0], seen)
    api.jobs["job_0000"]["status"] = "CANCELLED"
    with caplog.at_level(logging.ERROR, logger="atai_magics.watch"):
        assert seen.done.wait(10)
    assert "card bug" in caplog.text


# --- real jobs over a socket -------------------------------------------------------------------


def test_real_jobs_reach_their_end_states(local_backend: LocalBackend, tmp_path: Path) -> None:
    client = local_backend.client()
    tag = uuid.uuid4().hex[:8]
    release = tmp_path / "release"
    jobs = {
        "done": _slow_job(client, f"d{tag}", seconds=0, release_file=str(release)),
        "fail": _slow_job(client, f"f{tag}", fail="the sensor file is empty"),
        "cancel": _slow_job(client, f"c{tag}", seconds=600),
    }
    watcher = Watcher(**FAST)
    seen = {key: Recorder() for key in jobs}
    try:
        for key, job in jobs.items():
            watcher.watch(job, seen[key])
        _wait_until(lambda: "RUNNING" in seen["done"].statuses)
        release.touch()
        _wait_until(lambda: seen["done"].done.is_set() and seen["fail"].done.is_set())
        jobs["cancel"].refresh()
        if not jobs["cancel"].done:
            assert jobs["cancel"].cancel() in ("cancelled", "already finished (CANCELLED)")
        assert seen["cancel"].done.wait(60)
    finally:
        watcher.stop()
    done = seen["done"].snaps[-1]
    assert seen["done"].statuses[-2:] == ["RUNNING", "COMPLETED"]
    assert done.output_total == 2 and {o.data.filename for o in done.outputs} >= {"started_0.txt"}
    assert any(e.event_type == "running_job" for e in done.events)
    failed = seen["fail"].snaps[-1]
    assert failed.record.status == m.JobStatus.FAILED
    assert "the sensor file is empty" in json.dumps(failed.record.error)
    assert seen["cancel"].snaps[-1].record.status == m.JobStatus.CANCELLED
    for key, job in jobs.items():  # the backend agrees with every card
        assert client.get_job(job.id).status == seen[key].snaps[-1].record.status


def test_waiting_on_a_watched_job_takes_the_watchers_records(
    local_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`%%atai_job --wait` with a live card: the wait does not poll beside the watcher."""
    client = local_backend.client()
    release = tmp_path / "release"
    job = _slow_job(client, uuid.uuid4().hex[:8], seconds=0, release_file=str(release))
    asked = job_lookups(monkeypatch, client)
    pauses: list[float] = []

    def until_the_watcher_brings_a_record(seconds: float) -> None:
        pauses.append(seconds)
        if job.status == m.JobStatus.RUNNING:
            release.touch()
        taken = job._takes
        _wait_until(lambda: job._takes != taken)

    watcher = Watcher(**FAST)
    seen = Recorder()
    try:
        watcher.watch(job, seen)
        job.wait(sleep=until_the_watcher_brings_a_record)
        assert seen.done.wait(60)
    finally:
        watcher.stop()
    assert job.status == m.JobStatus.COMPLETED and seen.statuses[-1] == "COMPLETED"
    assert pauses and asked == [job.id]  # the wait's first check only; the watcher did the rest


@pytest.fixture(scope="module")
def faulty_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """A backend of its own whose API answers 5xx, 429, slowly, or drops the connection."""
    faults = "error_rate=0.15,rate_limit_rate=0.1,retry_after=1,latency_ms=20,drop_rate=0.1"
    with plugin_backend(tmp_path_factory, "faulty", concurrency=2, faults=faults) as backend:
        yield backend


def test_every_card_ends_right_under_faults(faulty_backend: LocalBackend, caplog: Any) -> None:
    info = faulty_backend.info
    client = Client(info.url, api_key=info.token(), max_retries=8)
    tag = uuid.uuid4().hex[:8]
    jobs = [_slow_job(client, f"q{tag}{i}", seconds=0.2) for i in range(4)]
    jobs.append(_slow_job(client, f"x{tag}", fail="boom"))
    long = _slow_job(client, f"l{tag}", seconds=600)
    jobs.append(long)
    watcher = Watcher(**FAST)
    seen = {job.id: Recorder() for job in jobs}
    with caplog.at_level(logging.ERROR, logger="atai_magics"):
        try:
            for job in jobs:
                watcher.watch(job, seen[job.id])
            _wait_until(lambda: "RUNNING" in seen[long.id].statuses, timeout=120)
            _insist(long.cancel)
            for job in jobs:
                assert seen[job.id].done.wait(120), job.id
        finally:
            watcher.stop()
    assert watcher.stats.errors > 0  # the faults really happened
    assert "Traceback" not in caplog.text
    for job in jobs:
        final = seen[job.id].snaps[-1]
        assert final.reconnecting is None
        assert final.record.status == client.get_job(job.id).status
    expected = ["COMPLETED"] * 4 + ["FAILED", "CANCELLED"]
    assert [seen[j.id].snaps[-1].record.status.value for j in jobs] == expected


def test_a_retried_job_is_shown_again_even_while_queued(fake: Any) -> None:
    api, watcher, jobs = fake(1)
    seen = Recorder()
    api.jobs["job_0000"]["status"] = "CANCELLED"
    watcher.watch(jobs[0], seen)
    assert seen.done.wait(10)
    api.jobs["job_0000"].update(status="PENDING", retry_count=1)  # retried: queued, never ran
    jobs[0].update(m.JobRecord.model_validate(api.jobs["job_0000"]))
    again = Recorder()
    watcher.watch(jobs[0], again)
    _wait_until(lambda: bool(again.snaps))
    assert again.snaps[0].record.status == m.JobStatus.PENDING
