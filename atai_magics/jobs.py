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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
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
        self._takes = 0
        """Records taken so far (fetched here or brought by the watcher): ``wait`` polls only
        when none arrived while it slept."""
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
        self.update(self.client.get_job(self.id))
        return self

    def update(self, record: m.JobRecord) -> None:
        """Take a newer record fetched elsewhere (the background watcher)."""
        with self._lock:
            self.record = record
            self._takes += 1

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
        """One phrase for the state, as the card's badge says it: ``completed with failures``
        never reads as success; a queued job says its position."""
        return self.view().phrase

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

        Checks start every half second and slow down to every ``poll`` seconds. A check
        whose pause brought a record from elsewhere (a live card's watcher) uses it instead
        of asking again, so a watched job is not polled twice. ``on_change`` is called
        whenever the status or progress changed. Raises ``JobTimeout`` when ``timeout``
        seconds pass first; the job keeps running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(POLL_START, poll)
        seen: tuple[Any, ...] | None = None
        taken: int | None = None  # the first check always asks
        while True:
            if self._takes == taken or taken is None:
                self.refresh()
            taken = self._takes
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
        """Save every output into ``directory``; returns the paths in merge order.

        These are the files ``results()`` merges: a part written again by a later attempt
        replaces the earlier copy, and a file name that a second input also produced goes to
        a folder of its own (named after the output's id).
        """
        return [path for _, path in self._save_parts(Path(directory))]

    def _save_parts(self, target: Path) -> list[tuple[m.Output, Path]]:
        target.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        parts: list[tuple[m.Output, Path]] = []
        for output in _latest_parts(ordered_outputs(self.outputs())):
            name = output.data.filename.replace("\\", "/").rsplit("/", 1)[-1]
            folder = re.sub(r"[^A-Za-z0-9_-]", "_", output.id) or "output"
            dest = target if name not in taken else f"{target / folder}{os.sep}"
            taken.add(name)
            parts.append((output, self.client.download_output(output, dest)))
        return parts

    def results(self, directory: str | os.PathLike[str] | None = None) -> Any:
        """Every output part merged in order: a pandas DataFrame if pandas is installed, else
        a list of dicts (the parts are saved in ``directory``, by default a cache folder).

        - Parts are merged input by input, each input's parts in part-number order, whatever
          order the API lists them in (reference §7.6).
        - A part written again by a later attempt (same input and file name: a retried or
          preempted job writes its parts anew) replaces the earlier copy.
        - Machine-state CSV parts (a timestamp column and ``Prediction``, in either historical
          header order: ``DATE_TIME,Prediction`` or ``Prediction,TimePoint``) are keyed by
          their timestamp column: it comes first, its values are the text the pipeline wrote
          (so they match the input file's), and ``df.attrs["timestamp_column"]`` names it.
          When more than one input produced predictions, a leading ``file_id`` column says
          which, since a timestamp names a window only within its own file.
        - Other CSV parts keep one header; JSONL lines become records; any other file becomes
          one ``{"output": name, "text": text}`` record. Activity-detection lines are keyed by
          ``line_index``, a line number within their own input file, so they too get a leading
          ``file_id`` column when more than one input produced them.
        """
        target = Path(directory) if directory is not None else _cache_dir(self.id)
        records, timestamp_column = _merged_records(self._save_parts(target))
        try:
            import pandas as pd
        except ImportError:
            return records
        frame = pd.DataFrame.from_records(records)
        if timestamp_column is not None:
            frame.attrs["timestamp_column"] = timestamp_column
        return frame

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
    filename (``…_part_<n>.csv``) say the order, else creation time does. Outputs that name
    no input id are grouped by their input file id, else by their filename without the part
    number, so the parts of two inputs never interleave.
    """

    def key(output: m.Output) -> tuple[Any, ...]:
        match = _PART_NUMBER.search(output.data.filename)
        created = output.created_at.timestamp() if output.created_at else 0.0
        return (
            output.input_id is None,
            _input_of(output),
            int(match.group(1)) if match else -1,
            created,
            output.id,
        )

    return sorted(outputs, key=key)


def _input_of(output: m.Output) -> str:
    """What groups an output's parts: its input id, else its input file id, else its name
    without the part number."""
    if output.input_id or output.input_file_id:
        return output.input_id or output.input_file_id or ""
    name = output.data.filename
    match = _PART_NUMBER.search(name)
    return name[: match.start()] if match else name


def _latest_parts(ordered: list[m.Output]) -> list[m.Output]:
    """Drop every output that a later one of the same input and file name replaces (a
    retried or preempted attempt writes its parts again); the order is kept."""
    latest: dict[tuple[str, str], m.Output] = {}
    for output in ordered:  # within one (input, name), ordered is by creation time
        latest[_input_of(output), output.data.filename] = output
    keep = {o.id for o in latest.values()}
    return [o for o in ordered if o.id in keep]


_PREDICTION = "Prediction"
"""The class column of machine-state CSV parts; the other column is the timestamp."""
_LINE_INDEX = "line_index"
"""The key of activity-detection JSONL lines: the line's number in its own input file."""


def _records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of one output file, and the timestamp column of a machine-state part."""
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()], None
    if suffix != ".csv":
        return [{"output": path.name, "text": text}], None
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or [])
    if len(header) == 2 and _PREDICTION in header and header[0] != header[1]:
        # DATE_TIME,Prediction (v0.1.46 on) or Prediction,TimePoint (older): reference §9.1
        timestamp = header[1 - header.index(_PREDICTION)]
        return [{timestamp: r[timestamp], _PREDICTION: r[_PREDICTION]} for r in reader], timestamp
    return list(reader), None


def _merged_records(parts: list[tuple[m.Output, Path]]) -> tuple[list[dict[str, Any]], str | None]:
    """All parts' records in order, and the timestamp column if every machine-state part
    used the same one. Predictions get a leading ``file_id`` when several inputs made them."""
    pieces = [(output, *_records(path)) for output, path in parts]
    columns = {timestamp for _, _, timestamp in pieces if timestamp is not None}
    keyed = [_keyed_per_file(rows, timestamp) for _, rows, timestamp in pieces]
    inputs = {_input_of(output) for (output, _, _), k in zip(pieces, keyed, strict=True) if k}
    records: list[dict[str, Any]] = []
    for (output, rows, _), per_file in zip(pieces, keyed, strict=True):
        if per_file and len(inputs) > 1:
            file_id = output.input_file_id or output.input_id or _input_of(output)
            rows = [{"file_id": file_id, **row} for row in rows]
        records.extend(rows)
    return records, columns.pop() if len(columns) == 1 else None


def _keyed_per_file(rows: list[Any], timestamp: str | None) -> bool:
    """Whether a part's rows are keyed by something that means nothing outside their input
    file: a machine-state timestamp, or an activity-detection ``line_index``."""
    return timestamp is not None or any(isinstance(r, dict) and _LINE_INDEX in r for r in rows)


def _cache_dir(job_id: str) -> Path:
    from .config import data_dir

    return data_dir() / "outputs" / job_id


# --- the journal ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalEntry:
    """One submitted job, as recorded before its card was drawn. No secrets.

    A cell writes its entry twice: *pending* (``job_id`` empty) before the create request,
    then with the id from the answer, or ``REFUSED`` when the API answered with an error.
    A pending entry with no sequel is a create whose answer was lost (the kernel died, the
    connection broke): the job may exist, and is looked for by name around
    ``submitted_at`` (``Session.settle``)."""

    job_id: str
    name: str | None
    endpoint: str
    spec_hash: str
    notebook: str | None = None
    cell: str | None = None
    submitted_at: str = field(
        default_factory=lambda: m.format_timestamp(datetime.now(timezone.utc))
    )

    @property
    def pending(self) -> bool:
        return not self.job_id

    @property
    def refused(self) -> bool:
        return self.job_id == REFUSED


REFUSED = "-"
"""The job id of an entry whose create the API refused: no job exists."""


HEAD_BYTES = 1024
"""At most this much of the journal's first line identifies the file (with its inode): the
line holds its entry's ``submitted_at`` to the microsecond."""
_ENTRY_FIELDS = fields(JournalEntry)
_ENTRY_JSON = json.JSONEncoder(sort_keys=True)  # as json.dumps(..., sort_keys=True)


class Journal:
    """An append-only JSON-lines file of submitted jobs.

    Entries are read once and then only the new tail of the file, so a long journal costs
    nothing per cell. Other kernels may append to the same file at the same time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: list[JournalEntry] = []
        self._latest: dict[tuple[str, str], JournalEntry] = {}
        """(endpoint, spec hash) -> the newest entry, for `find`."""
        self._offset = 0
        self._inode: int | None = None
        self._head = b""
        """The file read so far, by inode and first bytes (a filesystem may give a new file a
        freed inode): another one in its place (removed, replaced) is read anew."""
        self._fsync: threading.Timer | None = None

    def record(self, entry: JournalEntry) -> None:
        """Append one entry. The write reaches the OS before this returns, so it survives the
        kernel dying; an fsync against a power cut follows within ``FSYNC_DELAY`` seconds,
        coalesced, so back-to-back cells never wait for the disk."""
        data = {f.name: getattr(entry, f.name) for f in _ENTRY_FIELDS}
        line = (_ENTRY_JSON.encode(data) + "\n").encode("utf-8")
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        with self._lock:
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:  # the first entry (or the folder was removed since)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, flags, 0o600)
            try:
                stat = os.fstat(fd)
                size = stat.st_size
                # (a file read up to its end ends with a whole line: no need to look)
                if size and size != self._offset and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a line torn by a crash must not swallow this one
                written = os.write(fd, line)
                while written < len(line):  # short on a full disk: the next write raises
                    written += os.write(fd, line[written:])
                # Nothing unread before it and nothing after it: the next read needs no I/O.
                known = (
                    size == self._offset
                    and (not size or stat.st_ino == self._inode)
                    and os.fstat(fd).st_size == size + len(line)
                )
            finally:
                os.close(fd)
            if known:
                if not size:  # a new file: what was read before belonged to another
                    self._new_file(stat.st_ino, _first_line(line))
                self._offset += len(line)
                self._take(entry)
            if self._fsync is None:
                self._fsync = threading.Timer(FSYNC_DELAY, self._sync)
                self._fsync.daemon = True
                self._fsync.start()

    def _sync(self) -> None:
        with self._lock:
            self._fsync = None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:  # removed since: nothing of it to keep
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_tail(self) -> bool:
        """Take in the entries appended since the last read (with the lock held); False when
        there is no journal file."""
        try:
            stat = self.path.stat()
            if stat.st_ino == self._inode and stat.st_size == self._offset:
                return True  # nothing new: a stat is cheaper than opening the file
            with self.path.open("rb", buffering=0) as file:
                stat = os.fstat(file.fileno())
                if (
                    stat.st_ino != self._inode
                    or stat.st_size < self._offset
                    or os.pread(file.fileno(), len(self._head), 0) != self._head
                ):
                    self._new_file(stat.st_ino, b"")
                file.seek(self._offset)
                tail = file.readall()
                if not self._head.endswith(b"\n") and len(self._head) < HEAD_BYTES:
                    self._head = _first_line(os.pread(file.fileno(), HEAD_BYTES, 0))
        except FileNotFoundError:
            return False
        complete = tail[: tail.rfind(b"\n") + 1]  # a line still being written waits
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                entry = JournalEntry(**json.loads(line))
            except (ValueError, TypeError):
                continue
            self._take(entry)
        return True

    def _new_file(self, inode: int, head: bytes) -> None:
        """Forget what was read: the journal is another file now."""
        self._entries, self._latest, self._offset = [], {}, 0
        self._inode, self._head = inode, head

    def _take(self, entry: JournalEntry) -> None:
        self._entries.append(entry)
        key = (entry.endpoint, entry.spec_hash)
        if isinstance(key[0], str) and isinstance(key[1], str):
            self._latest[key] = entry

    def entries(self) -> list[JournalEntry]:
        """Every entry, oldest first; a line torn by a crash is skipped."""
        with self._lock:
            return list(self._entries) if self._read_tail() else []

    def find(self, *, endpoint: str, spec_hash: str) -> JournalEntry | None:
        """The newest job submitted from the same spec to the same endpoint."""
        with self._lock:
            return self._latest.get((endpoint, spec_hash)) if self._read_tail() else None

    def for_notebook(self, notebook: str | None, *, endpoint: str) -> list[JournalEntry]:
        """This notebook's jobs on this endpoint, newest first (all of them if unknown); a
        pending entry only when no entry with its id (or its refusal) followed."""
        entries = [
            e
            for e in reversed(self.entries())
            if e.endpoint == endpoint and (notebook is None or e.notebook == notebook)
        ]
        known = {(e.spec_hash, e.submitted_at) for e in entries if not e.pending}
        return [
            e
            for e in entries
            if not e.refused and not (e.pending and (e.spec_hash, e.submitted_at) in known)
        ]


def _first_line(data: bytes) -> bytes:
    """``data`` up to its first newline (included), at most HEAD_BYTES."""
    end = data.find(b"\n", 0, HEAD_BYTES)
    return data[: end + 1] if end >= 0 else data[:HEAD_BYTES]
