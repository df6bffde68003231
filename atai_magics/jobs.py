"""The user-facing ``Job`` handle, and the journal of submitted jobs.

A ``Job`` wraps a client and the latest API record of one job::

    job = Job.attach("job_…", client)
    job.wait()                    # until COMPLETED, FAILED or CANCELLED
    job.summary                   # "completed with failures" when inputs or events failed
    df = job.results()            # every output part, merged in order

The ``Journal`` is an append-only JSON-lines file in which every submitted job is recorded
(id, name, endpoint, spec hash, notebook, cell, time) *before* anything is displayed, so a
job is never lost to a kernel restart. It never holds a key or token.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import models as m
from .api.errors import Conflict

if TYPE_CHECKING:
    from .api.client import Client
    from .ui.view import CardView

__all__ = ["Job", "JobTimeout", "Journal", "JournalEntry", "failure_reasons"]

FSYNC_DELAY = 1.0
"""Seconds within which a journal entry is fsynced (coalesced across entries)."""
POLL_START = 0.5
POLL_MAX = 5.0
_PART_NUMBER = re.compile(r"_part_(\d+)\.[^.]+$")


def failure_reasons(record: m.JobRecord, failed_events: int) -> tuple[str, ...]:
    """Why a COMPLETED record is not a plain success (reference §11.3); empty otherwise."""
    if record.status != m.JobStatus.COMPLETED:
        return ()
    reasons = []
    counts = record.input_progress
    if counts is not None and counts.failed:
        reasons.append(f"{counts.failed} of {counts.total} inputs failed")
    if failed_events:
        reasons.append(f"{failed_events} FAILED event{'s' * (failed_events != 1)}")
    return tuple(reasons)


class JobTimeout(TimeoutError):
    """``Job.wait(timeout=...)`` ran out before the job reached a terminal state."""


class Job:
    """A submitted job: its latest state, and what can be done with it."""

    def __init__(self, record: m.JobRecord, client: Client) -> None:
        self.record = record
        self.client = client
        self._lock = threading.Lock()
        self._failed_events: tuple[str | None, int] | None = None
        """(``updated_at`` it was counted at, count): fetched once per finished state."""

    @classmethod
    def attach(cls, job_id: str, client: Client) -> Job:
        """The handle of an existing job (after a restart, or created elsewhere)."""
        return cls(client.get_job(job_id), client)

    # --- state ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str | None:
        return self.record.name

    @property
    def status(self) -> m.JobStatus:
        return self.record.status

    @property
    def done(self) -> bool:
        return self.record.status.is_terminal

    def refresh(self) -> Job:
        """Fetch the latest record from the API."""
        record = self.client.get_job(self.id)
        with self._lock:
            self.record = record
        return self

    def update(self, record: m.JobRecord) -> None:
        """Take a newer record fetched elsewhere (the background watcher)."""
        with self._lock:
            self.record = record

    @property
    def failures(self) -> list[str]:
        """Why a COMPLETED job is not a plain success: failed inputs, FAILED-level events.

        On the platform COMPLETED only means the worker exited cleanly (reference §11.3).
        Empty for any other status, and when nothing failed.
        """
        if self.status != m.JobStatus.COMPLETED:
            return []
        return list(failure_reasons(self.record, self._failed_event_count()))

    def _failed_event_count(self) -> int:
        """FAILED-level events of a finished job, fetched once per state."""
        stamp = str(self.record.updated_at)
        if self._failed_events is None or self._failed_events[0] != stamp:
            total = self.client.list_events(self.id, level="FAILED", limit=1).total
            self._failed_events = (stamp, total)
        return self._failed_events[1]

    def note_failed_events(self, record: m.JobRecord, count: int) -> None:
        """Remember a FAILED-event count fetched elsewhere (the watcher), for ``failures``."""
        self._failed_events = (str(record.updated_at), count)

    @property
    def summary(self) -> str:
        """One phrase for the state: ``completed with failures`` never reads as success."""
        status = self.status
        if status == m.JobStatus.COMPLETED and self.failures:
            return "completed with failures"
        position, depth = self.record.queue_position, self.record.queue_depth
        if status in (m.JobStatus.PENDING, m.JobStatus.PREEMPTED) and position:
            return f"{status.value.lower()} (position {position} of {depth})"
        return status.value.lower()

    # --- actions ----------------------------------------------------------------------------

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll: float = POLL_MAX,
        on_change: Callable[[Job], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Job:
        """Poll until the job is COMPLETED, FAILED or CANCELLED (slower as time passes).

        Checks start every half second and slow down to every ``poll`` seconds.
        ``on_change`` is called whenever the status or progress changed. Raises
        ``JobTimeout`` when ``timeout`` seconds pass first; the job keeps running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(POLL_START, poll)
        seen: tuple[Any, ...] | None = None
        while True:
            self.refresh()
            state = (self.status, self.record.input_progress, self.record.queue_position)
            if state != seen and on_change is not None:
                on_change(self)
            seen = state
            if self.done:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"{self.id} is still {self.status.value} after {timeout} s")
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            sleep(max(0.0, pause))
            interval = min(poll, interval * 1.5)

    def cancel(self) -> str:
        """Cancel the job; says ``already finished`` instead of failing on a finished job."""
        try:
            self.client.cancel_job(self.id)
        except Conflict:
            self.refresh()
            return f"already finished ({self.status.value})"
        self.refresh()
        return "cancelled"

    def retry(self) -> Job:
        """Re-queue a FAILED or CANCELLED job (same id, ``retry_count`` + 1)."""
        self.client.retry_job(self.id)
        return self.refresh()

    # --- what it produced -------------------------------------------------------------------

    def events(self, **filters: Any) -> list[m.Event]:
        return list(self.client.iter_events(self.id, **filters))

    def progress(self, **filters: Any) -> list[m.ProgressEntry]:
        return list(self.client.iter_progress(self.id, **filters))

    def inputs(self, **filters: Any) -> list[m.JobInput]:
        return list(self.client.list_inputs(self.id, **filters).inputs)

    def outputs(self, **filters: Any) -> list[m.Output]:
        return list(self.client.iter_outputs(self.id, **filters))

    def download(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Save every output into ``directory``; returns the paths in merge order."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        return [self.client.download_output(o, target) for o in ordered_outputs(self.outputs())]

    def results(self, directory: str | os.PathLike[str] | None = None) -> Any:
        """Every output part merged in order: a pandas DataFrame if pandas is installed,
        else a list of dicts. CSV parts keep one header; JSONL lines become records."""
        records = list(_records(self.download(directory or _cache_dir(self.id))))
        try:
            import pandas as pd
        except ImportError:
            return records
        return pd.DataFrame.from_records(records)

    # --- display ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name!r} {self.status.value}>"

    def view(self) -> CardView:
        """What the card shows for the latest record (no events or outputs fetched)."""
        from .ui.view import CardView, backend_label
        from .watch import Snapshot

        failed = self._failed_event_count() if self.status == m.JobStatus.COMPLETED else 0
        snapshot = Snapshot(self.record, failed_events=failed)
        return CardView.of(snapshot, backend_label(self.client.base_url))

    def _repr_mimebundle_(self, **_: Any) -> dict[str, str]:
        return self.view().mimebundle()


def ordered_outputs(outputs: list[m.Output]) -> list[m.Output]:
    """Outputs grouped by input (inputs in id order, which is submission order for TypeIDs),
    parts in part-number order.

    The API lists outputs in no particular order (reference §7.6); part numbers in the
    filename (``…_part_<n>.csv``) say the order, else creation time does.
    """

    def key(output: m.Output) -> tuple[Any, ...]:
        match = _PART_NUMBER.search(output.data.filename)
        created = output.created_at.timestamp() if output.created_at else 0.0
        return (
            output.input_id is None,
            output.input_id or "",
            int(match.group(1)) if match else -1,
            created,
            output.id,
        )

    return sorted(outputs, key=key)


def _records(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            yield from (json.loads(line) for line in text.splitlines() if line.strip())
        elif path.suffix.lower() == ".csv":
            yield from csv.DictReader(io.StringIO(text))
        else:
            yield {"output": path.name, "text": text}


def _cache_dir(job_id: str) -> Path:
    from .config import data_dir

    return data_dir() / "outputs" / job_id


# --- the journal ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalEntry:
    """One submitted job, as recorded before its card was drawn. No secrets."""

    job_id: str
    name: str | None
    endpoint: str
    spec_hash: str
    notebook: str | None = None
    cell: str | None = None
    submitted_at: str = field(
        default_factory=lambda: m.format_timestamp(datetime.now(timezone.utc))
    )


class Journal:
    """An append-only JSON-lines file of submitted jobs.

    Entries are read once and then only the new tail of the file, so a long journal costs
    nothing per cell. Other kernels may append to the same file at the same time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: list[JournalEntry] = []
        self._offset = 0
        self._fsync: threading.Timer | None = None

    def record(self, entry: JournalEntry) -> None:
        """Append one entry. The write reaches the OS before this returns, so it survives the
        kernel dying; an fsync against a power cut follows within ``FSYNC_DELAY`` seconds,
        coalesced, so back-to-back cells never wait for the disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a line torn by a crash must not swallow this one
                os.write(fd, line)
            finally:
                os.close(fd)
            if self._fsync is None:
                self._fsync = threading.Timer(FSYNC_DELAY, self._sync)
                self._fsync.daemon = True
                self._fsync.start()

    def _sync(self) -> None:
        with self._lock:
            self._fsync = None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[JournalEntry]:
        """Every entry, oldest first; a line torn by a crash is skipped."""
        with self._lock:
            try:
                with self.path.open("rb") as file:
                    file.seek(self._offset)
                    tail = file.read()
            except FileNotFoundError:
                return []
            complete = tail[: tail.rfind(b"\n") + 1]  # a line still being written waits
            self._offset += len(complete)
            for line in complete.splitlines():
                try:
                    self._entries.append(JournalEntry(**json.loads(line)))
                except (ValueError, TypeError):
                    continue
            return list(self._entries)

    def find(self, *, endpoint: str, spec_hash: str) -> JournalEntry | None:
        """The newest job submitted from the same spec to the same endpoint."""
        matches = [e for e in self.entries() if (e.endpoint, e.spec_hash) == (endpoint, spec_hash)]
        return matches[-1] if matches else None

    def for_notebook(self, notebook: str | None, *, endpoint: str) -> list[JournalEntry]:
        """This notebook's jobs on this endpoint, newest first (all of them if unknown)."""
        return [
            e
            for e in reversed(self.entries())
            if e.endpoint == endpoint and (notebook is None or e.notebook == notebook)
        ]
