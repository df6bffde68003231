"""The background watcher: one per kernel, keeping every live job's card moving.

It runs on a daemon thread with an event loop and an ``AsyncClient`` of its own, so cards
advance while the kernel runs, or blocks in, other cells. A tick costs one ``GET /batch/jobs``
page covering every watched job (matched by id; a job missing from the page is fetched on its
own). Detail calls (events and progress tailed by offset, outputs) are made only for a job
that changed or is RUNNING (not for one still queued that never ran: it has none), and once
more when it ends; then it is no longer watched.

The interval adapts: ``fast`` for the first seconds after a job is watched, ``interval`` while
anything runs, ``slow`` when every job has been queued for a while. On errors it backs off
(honouring ``Retry-After``) and every snapshot says ``reconnecting…``. Listeners receive an
immutable ``Snapshot``; the watcher never prints or displays, and a listener's exception is
logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .api import models as m
from .api.errors import NotFound, RateLimited

if TYPE_CHECKING:
    from .api.client import AsyncClient, Client
    from .jobs import Job

__all__ = ["Snapshot", "Watcher", "default_watcher"]

log = logging.getLogger(__name__)

EVENT_TAIL = 20
"""Events a snapshot keeps (the newest)."""
OUTPUT_SHOW = 20
"""Outputs a snapshot lists (the first page; ``output_total`` counts them all)."""
PAGE_LIMIT = 1000
DETAIL_CONCURRENCY = 4
"""Jobs whose details are fetched at once (the first tick after 200 submissions has 200)."""
MAX_EXTRA_PAGES = 2
"""Further list pages tried for watched jobs missing from the first, before fetching each."""

Listener = Callable[["Snapshot"], None]


@dataclass(frozen=True)
class Snapshot:
    """What is known about one job at one moment: the record and the tails the card shows."""

    record: m.JobRecord
    events: tuple[m.Event, ...] = ()
    event_total: int = 0
    failed_events: int = 0
    progress: m.ProgressEntry | None = None
    outputs: tuple[m.Output, ...] = ()
    output_total: int = 0
    reconnecting: str | None = None
    final: bool = False
    """The terminal state's last snapshot: the watcher has stopped watching the job."""

    @property
    def failures(self) -> tuple[str, ...]:
        """Why a COMPLETED job is not a plain success (reference §11.3)."""
        from .jobs import failure_reasons

        return failure_reasons(self.record, self.failed_events)


@dataclass
class _Watched:
    job: Job
    listeners: list[Listener]
    since: float
    snapshot: Snapshot
    event_offset: int = 0
    progress_offset: int = 0
    force_detail: bool = True
    watches: int = 0
    """How often `watch` asked for it: a tick that began before the last ask drops nothing."""


@dataclass
class _Stats:
    """Request counts, for tests and the benchmark."""

    ticks: int = 0
    status_requests: int = 0
    detail_requests: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, status: bool) -> None:
        if status:
            self.status_requests += 1
        else:
            self.detail_requests += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


class Watcher:
    """Polls every watched job from one background thread; see the module docstring."""

    def __init__(
        self,
        *,
        interval: float = 1.0,
        fast: float = 0.5,
        slow: float = 5.0,
        fast_for: float = 10.0,
        slow_after: float = 60.0,
        max_backoff: float = 30.0,
        client_factory: Callable[[Client], AsyncClient] | None = None,
    ) -> None:
        self.interval = interval
        self.fast = fast
        self.slow = slow
        self.fast_for = fast_for
        self.slow_after = slow_after
        self.max_backoff = max_backoff
        self.stats = _Stats()
        self._client_factory = client_factory or _twin
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failures = 0

    # --- the kernel's side ------------------------------------------------------------------

    def watch(self, job: Job, listener: Listener | None = None) -> None:
        """Watch ``job`` until it ends (again, if it already ended: one final fetch)."""
        with self._lock:
            entry = self._watched.get(job.id)
            if entry is None:
                entry = _Watched(job, [], time.monotonic(), Snapshot(job.record))
                self._watched[job.id] = entry
            else:
                entry.job = job
                entry.since = time.monotonic()
                entry.force_detail = True
            entry.watches += 1
            if listener is not None and listener not in entry.listeners:
                entry.listeners.append(listener)
        self._ensure_thread()
        self.poke()

    def poke(self) -> None:
        """Tick now (after a button acted, or a job was added)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def watching(self) -> list[str]:
        """The ids of the jobs still watched. A job leaves this list when its last snapshot
        is taken, just before its cards and then its handle are given it."""
        with self._lock:
            return list(self._watched)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.poke()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._loop = self._wake = None
        self._stopping = False

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run_thread, args=(ready,), name="atai-watcher", daemon=True
            )
            self._thread.start()
        ready.wait(5)

    def _run_thread(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    # --- the loop ---------------------------------------------------------------------------

    async def _main(self) -> None:
        clients: dict[int, tuple[Client, AsyncClient]] = {}  # the Client kept: ids stay unique
        try:
            while not self._stopping:
                with self._lock:
                    idle = not self._watched
                if idle:
                    await self._sleep(None)
                    continue
                try:
                    await self._tick(clients)
                except Exception as exc:  # never escapes: the card shows it
                    delay = self._backoff(exc)
                else:
                    self._failures = 0
                    delay = self._next_delay()
                await self._sleep(delay)
        finally:
            for _, client in clients.values():
                try:
                    await client.aclose()
                except Exception:  # pragma: no cover - closing a broken connection
                    log.debug("closing the watcher's client failed", exc_info=True)

    async def _sleep(self, delay: float | None) -> None:
        assert self._wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        self._wake.clear()

    def _next_delay(self) -> float:
        now = time.monotonic()
        with self._lock:
            entries = list(self._watched.values())
        if not entries:
            return self.slow
        delays = []
        for entry in entries:
            age = now - entry.since
            status = entry.snapshot.record.status
            if age < self.fast_for:
                delays.append(self.fast)
            elif status in (m.JobStatus.PENDING, m.JobStatus.PREEMPTED) and age > self.slow_after:
                delays.append(self.slow)
            else:
                delays.append(self.interval)
        return min(delays)

    def _backoff(self, exc: Exception) -> float:
        self.stats.errors += 1
        self._failures += 1
        delay: float = min(self.max_backoff, self.interval * 2.0 ** (self._failures - 1))
        delay *= random.uniform(0.8, 1.2)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        note = f"reconnecting… (attempt {self._failures}, next in {delay:.1f} s): {reason}"
        log.debug("watcher tick failed: %s", exc)
        with self._lock:
            entries = list(self._watched.values())
        for entry in entries:
            self._publish(entry, replace(entry.snapshot, reconnecting=note))
        return delay

    async def _tick(self, clients: dict[int, tuple[Client, AsyncClient]]) -> None:
        self.stats.ticks += 1
        with self._lock:
            entries = list(self._watched.values())
        groups: dict[int, list[_Watched]] = {}
        for entry in entries:
            groups.setdefault(id(entry.job.client), []).append(entry)
        for key, group in groups.items():
            if key not in clients:
                source = group[0].job.client
                clients[key] = (source, self._client_factory(source))
            await self._tick_group(clients[key][1], group)

    async def _tick_group(self, client: AsyncClient, group: list[_Watched]) -> None:
        with self._lock:
            asked = {id(entry): entry.watches for entry in group}
        records = await self._records(client, {entry.job.id for entry in group})
        gate = asyncio.Semaphore(DETAIL_CONCURRENCY)

        async def update(entry: _Watched) -> None:
            record = records.get(entry.job.id)
            if record is None:  # deleted: show the last state, stop watching
                self._finish(
                    entry, replace(entry.snapshot, reconnecting=None, final=True), asked[id(entry)]
                )
                return
            changed = entry.force_detail or _state(record) != _state(entry.snapshot.record)
            snap = replace(entry.snapshot, record=record, reconnecting=None)
            final = record.status.is_terminal
            queued = record.status == m.JobStatus.PENDING and record.started_at is None
            if final or record.status == m.JobStatus.RUNNING or (changed and not queued):
                async with gate:
                    snap = await self._details(client, entry, snap, final=final)
            entry.force_detail = False
            if final:
                if not self._finish(entry, replace(snap, final=True), asked[id(entry)]):
                    return  # watched again since this tick began (a retry?): look again first
            elif changed or snap != entry.snapshot:  # first sight included: the card may lag
                self._publish(entry, snap)
            entry.job.update(record)  # after the cards: whoever sees the handle move sees them

        # Every update runs to its end before the tick fails on the first error: one left
        # running would overtake the next tick's (a finished job back to RUNNING).
        outcomes = await asyncio.gather(*(update(entry) for entry in group), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _records(self, client: AsyncClient, wanted: set[str]) -> dict[str, m.JobRecord]:
        """The watched jobs' records: one list page, a few more if needed, then one by one."""
        found: dict[str, m.JobRecord] = {}
        offset = 0
        limit = min(PAGE_LIMIT, max(50, 2 * len(wanted)))
        for _ in range(1 + MAX_EXTRA_PAGES):
            self.stats.count("list_jobs", status=True)
            page = await client.list_jobs(offset=offset, limit=limit)
            found.update((job.id, job) for job in page.jobs if job.id in wanted)
            offset += len(page.jobs)
            if len(found) == len(wanted) or not page.jobs or offset >= page.total:
                break
        for job_id in wanted - found.keys():
            self.stats.count("get_job", status=True)
            with contextlib.suppress(NotFound):
                found[job_id] = await client.get_job(job_id)
        return found

    async def _details(
        self, client: AsyncClient, entry: _Watched, snap: Snapshot, *, final: bool
    ) -> Snapshot:
        job_id = snap.record.id
        events = await client.list_events(job_id, offset=entry.event_offset, limit=100)
        self.stats.count("list_events", status=False)
        if events.total > entry.event_offset + len(events.events) and events.total > EVENT_TAIL:
            entry.event_offset = events.total - EVENT_TAIL  # too far behind: just the tail
            events = await client.list_events(job_id, offset=entry.event_offset, limit=100)
            self.stats.count("list_events", status=False)
        failed = snap.failed_events + sum(e.level == m.EventLevel.FAILED for e in events.events)
        entry.event_offset += len(events.events)
        tail = (snap.events + tuple(events.events))[-EVENT_TAIL:]
        progress = await client.list_progress(job_id, offset=entry.progress_offset, limit=100)
        self.stats.count("list_progress", status=False)
        entry.progress_offset += len(progress.entries)
        latest = progress.entries[-1] if progress.entries else snap.progress
        if progress.total > entry.progress_offset:  # more than a page behind: the newest
            entry.progress_offset = progress.total
            newest = await client.list_progress(job_id, offset=progress.total - 1, limit=1)
            self.stats.count("list_progress", status=False)
            latest = newest.entries[-1] if newest.entries else latest
        outputs = await client.list_outputs(job_id, limit=OUTPUT_SHOW)
        self.stats.count("list_outputs", status=False)
        if final and snap.record.status == m.JobStatus.COMPLETED:
            # Tailing may have skipped events: count FAILED ones exactly, once.
            counted = await client.list_events(job_id, level="FAILED", limit=1)
            self.stats.count("list_events", status=False)
            failed = counted.total
        return replace(
            snap,
            events=tail,
            event_total=events.total,
            failed_events=failed,
            progress=latest,
            outputs=tuple(outputs.outputs),
            output_total=outputs.total,
        )

    def _finish(self, entry: _Watched, snap: Snapshot, asked: int) -> bool:
        """Stop watching and publish the last snapshot; False (and nothing done) when `watch`
        asked for the job again since the tick began: what it saw may be out of date."""
        with self._lock:
            if entry.watches != asked:
                entry.force_detail = True
                return False
            if self._watched.get(entry.job.id) is entry:
                del self._watched[entry.job.id]
        entry.job.note_failed_events(snap.record, snap.failed_events)
        self._publish(entry, snap)
        return True

    def _publish(self, entry: _Watched, snap: Snapshot) -> None:
        entry.snapshot = snap
        for listener in list(entry.listeners):
            try:
                listener(snap)
            except Exception:
                log.exception("a job card failed to update")


def _state(record: m.JobRecord) -> tuple[Any, ...]:
    return (
        record.status,
        record.input_progress,
        record.queue_position,
        record.queue_depth,
        record.updated_at,
        record.retry_count,
    )


def _twin(client: Client) -> AsyncClient:
    return client.async_twin(max_retries=0)


_default: Watcher | None = None
_default_lock = threading.Lock()


def default_watcher() -> Watcher:
    """The kernel's watcher (one per process), made on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Watcher()
        return _default
