"""The durable state of the local backend: SQLite (WAL) plus directories of bytes.

Layout under ``home``::

    state.sqlite3        jobs, inputs, events, progress, outputs, files, uploads (WAL mode)
    files/<fil_…>        bytes of each registered file (named by file_uid, never by file_id)
    outputs/<job_…>/<out_…>   bytes of each job output
    uploads/<upl_…>/<n>  parts of a direct upload in progress

Durability rules, so a ``kill -9`` at any moment leaves a consistent store:

- every multi-row change is one SQLite transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); a
  COMMIT that fails (a deferred constraint, a full disk) is rolled back and its error raised;
- bytes are streamed to a temporary file (``.tmp-<pid>-<random>``), fsynced, and renamed to
  their final name *while the write transaction that inserts their row is open*. A final-named
  file without a row can therefore only come from a crash between rename and commit; opening the
  store sweeps those orphans and the temporary files of dead processes, holding the write lock.
  Outputs and upload parts are spooled in ``outputs/`` and ``uploads/`` themselves, and their
  ``<job>``/``<upl>`` directory is created inside that transaction, after checking the job or
  upload still exists: a late writer never recreates the directory of a deleted one;
- deleting commits the row removal first and unlinks the bytes afterwards (an orphan at worst).

Connections: a bounded pool (`Store.MAX_IDLE_CONNECTIONS` idle at most); a transaction borrows
one and gives it back, nested transactions of a thread join the outermost one (tracked by a
per-thread depth counter), so threads that come and go leak neither connections nor fds.

Input checks: every integer bound into SQL must fit SQLite's signed 64 bits (offsets, limits,
shard indexes, cursors, sizes), and every string must be encodable (no lone surrogates, which
JSON bodies can carry): anything else is an InvalidRequest (400), never an OverflowError or
UnicodeEncodeError (500).

Every dict returned validates with the matching model of ``atai_magics.api.models``. Where the
server must fill something in (signed ``data.ref`` URLs, ``expires_at``), the store gives a
relative API path (``/v0.5/...``) that the server may replace.

Choices for the questions the platform leaves open (reference §12):

- **Queue.** ``queue_position`` is 1-based among PENDING and PREEMPTED jobs of the same
  ``pipeline_type``, ordered by enqueue order; ``queue_depth`` is their count; both are null
  when the job is not queued. A preempted job keeps its enqueue order (it goes back ahead of jobs
  submitted after it); a retried job is enqueued at the back.
- **State machine.** PENDING→ADMITTED→RUNNING→COMPLETED|FAILED; ADMITTED→FAILED (a worker that
  cannot start); ADMITTED|RUNNING→PREEMPTED→PENDING; cancel from PENDING, ADMITTED, RUNNING or
  PREEMPTED; retry (→PENDING) from FAILED or CANCELLED. See ``LEGAL_TRANSITIONS``.
- **Attempts.** A job's attempt is ``retry_count + preemption_count`` (`Store.attempt_of`):
  every admission after the first follows a retry or a preemption, which bump one of them, so
  it names the admission uniquely (no extra column). Worker writes pass ``attempt=`` to
  `add_event`/`add_progress`/`set_input_status`/`add_output`; inside the write's transaction
  the job must be ADMITTED or RUNNING on that attempt, else `StaleAttempt` (409) and nothing is
  written: a worker of a cancelled, retried or preempted attempt cannot touch the job (nor the
  attempt after it). Writes without ``attempt`` (the scheduler's, the routes') are unguarded.
- **Retry** keeps the job id, increments ``retry_count``, clears the terminal timestamps,
  ``started_at`` (so it is the start of the current attempt) and ``error``, and resets tracked
  inputs to ``pending``. Outputs, events and progress of earlier attempts are *kept* (appended
  to, never reset), so ids stay stable for anyone tailing them.
- **Delete** is refused (StateConflict) while a job is ADMITTED or RUNNING: cancel it first.
- **Events and progress** are listed ascending by their integer id, so ``offset += len(page)``
  tailing is stable (the open question of §5). Outputs and inputs are listed in creation order.
- ``inputs_progress`` orders by submission order (``order`` = ``asc``/``desc``), which is
  stable while a job runs; item ``step`` is the 1-based rank in which the input finished
  (completed or failed).
- **Traces** count progress ``metrics.success``/``metrics.failed`` as per-row increments (what
  the local pipelines report), cumulated per progress ``kind``.
- **Files.** ``file_status`` is ``FILE_STATUS_INGESTED`` as soon as bytes are registered
  (the local backend ingests synchronously); the upload-complete response says ``Ingested``.
  ``file_index`` is a stable 0-based registration counter. The cursor list is newest first;
  shards are oldest first (stable as files are added); shard ``-1`` means "all", capped at 1000.
- **File ids** refuse path separators, leading dots, surrounding whitespace, over 255 UTF-8
  bytes, lone surrogates and characters of Unicode categories Cc, Cf (bidi overrides, zero
  width characters, BOM), Zl and Zp (see `validate_file_id`).
- **Direct uploads** number parts from **1**, like production (§10.8); part URLs are relative
  API paths for the server to sign; ``integrity_algorithm`` is ``none``. Completing first marks
  the upload *completing* (``<pid>-<token>`` of the completer, schema 2) in a write
  transaction; while it assembles the parts, abort, part PUTs, checkpoints and a second
  complete answer 409, and a failed assembly (a part file missing: 409) clears the mark, the
  upload staying in progress. A mark whose process is dead is void (``get_upload`` shows
  ``status`` ``completing`` while a live mark stands). The complete response's
  ``file_attributes`` are the CSV attributes for a CSV file and
  ``{"metadata_status": "not_extracted"}`` for any other (the stored FileMeta keeps ``{}``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import hashlib
import json
import mimetypes
import os
import queue
import secrets
import shutil
import sqlite3
import threading
import time
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from atai_magics.local._ids import error_uid, is_id, new_id

if TYPE_CHECKING:
    from atai_magics.api.models import JobRequest

__all__ = [
    "API_PREFIX",
    "DEFAULT_PART_SIZE",
    "LEGAL_TRANSITIONS",
    "SCHEMA_VERSION",
    "FileExists",
    "InvalidFileId",
    "InvalidRequest",
    "NotFound",
    "StaleAttempt",
    "StateConflict",
    "Store",
    "StoreError",
    "error_uid",
    "format_ts",
    "migrate",
    "parse_ts",
    "validate_file_id",
]

JSON = dict[str, Any]
Source = bytes | bytearray | memoryview | os.PathLike[str] | IO[bytes] | Iterable[bytes]
Clock = Callable[[], datetime]

SCHEMA_VERSION = 2
API_PREFIX = "/v0.5"
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
"""Parts a direct upload may have (S3's limit): the initiate answer signs a URL for each."""
MAX_PAGE = 1000
UPLOAD_TTL = timedelta(days=7)
_CHUNK = 1024 * 1024
_MAX_INT = 2**63 - 1  # SQLite integers are signed 64-bit
_MIN_INT = -(2**63)
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600.0  # where liveness of a pid cannot be checked (Windows)

PENDING, ADMITTED, RUNNING = "PENDING", "ADMITTED", "RUNNING"
COMPLETED, FAILED, PREEMPTED, CANCELLED = "COMPLETED", "FAILED", "PREEMPTED", "CANCELLED"
JOB_STATUSES = (PENDING, ADMITTED, RUNNING, COMPLETED, FAILED, PREEMPTED, CANCELLED)
QUEUED = (PENDING, PREEMPTED)
ACTIVE = (ADMITTED, RUNNING)
CANCELLABLE = (PENDING, ADMITTED, RUNNING, PREEMPTED)
RETRYABLE = (FAILED, CANCELLED)
LEGAL_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({ADMITTED, CANCELLED}),
    ADMITTED: frozenset({RUNNING, FAILED, PREEMPTED, CANCELLED}),
    RUNNING: frozenset({COMPLETED, FAILED, PREEMPTED, CANCELLED}),
    PREEMPTED: frozenset({PENDING, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset({PENDING}),
    CANCELLED: frozenset({PENDING}),
}
"""to-statuses allowed from each status; FAILED/CANCELLED→PENDING is a retry."""

LEVELS = ("INFO", "WARN", "ERROR", "SUCCESS", "FAILED")
TRACKED_STATUSES = ("pending", "processing", "completed", "failed")
INPUT_FINAL = ("completed", "failed")
FILE_STATUS_INGESTED = "FILE_STATUS_INGESTED"

_Q_IN = "('PENDING','PREEMPTED')"  # SQL literal of QUEUED (kept literal so indexes apply)
_QUEUE_HEAD_SQL = f"""SELECT pt, NULL, depth, after_shorter,
    CASE after_shorter
      WHEN 0 THEN (SELECT COUNT(*) FROM jobs WHERE status IN {_Q_IN} AND pipeline_type = pt
                   AND queue_key < lo)
      ELSE (SELECT COUNT(*) FROM jobs WHERE status IN {_Q_IN} AND pipeline_type = pt
            AND queue_key > hi)
    END
  FROM (SELECT pt, lo, hi, depth, (last_key - hi) < (lo - first_key) AS after_shorter
    FROM (SELECT ? AS pt, ? AS lo, ? AS hi,
      COALESCE((SELECT depth FROM queue_counts WHERE pipeline_type = ?), 0) AS depth,
      min(COALESCE((SELECT MIN(queue_key) FROM jobs WHERE status = 'PENDING'
                    AND pipeline_type = ?), ?),
          COALESCE((SELECT MIN(queue_key) FROM jobs WHERE status = 'PREEMPTED'
                    AND pipeline_type = ?), ?)) AS first_key,
      max(COALESCE((SELECT MAX(queue_key) FROM jobs WHERE status = 'PENDING'
                    AND pipeline_type = ?), ?),
          COALESCE((SELECT MAX(queue_key) FROM jobs WHERE status = 'PREEMPTED'
                    AND pipeline_type = ?), ?)) AS last_key))"""
"""Per pipeline type: depth, which side of the page's key span is shorter, and its count."""
_JOB_PRE_SQL = """'{"id":' || json_quote(id) || ',"org_id":' || json_quote(org_id)
    || ',"name":' || json_quote(name) || ',"pipeline_type":' || json_quote(pipeline_type)
    || ',"pipeline_key":' || json_quote(pipeline_key)
    || ',"pipeline_version":' || json_quote(pipeline_version)
    || ',"status":' || json_quote(status) || ',"parameters":' || parameters
    || ',"retry_count":' || retry_count || ',"preemption_count":' || preemption_count || ','"""
"""SQL: a job's JSON up to ``queue_position`` (keys in the order of ``JobRecord``)."""
_JOB_POST_TAIL_SQL = """',"created_at":' || json_quote(created_at)
    || ',"updated_at":' || json_quote(updated_at) || ',"started_at":' || json_quote(started_at)
    || ',"completed_at":' || json_quote(completed_at) || ',"failed_at":' || json_quote(failed_at)
    || ',"cancelled_at":' || json_quote(cancelled_at) || ',"error":' || COALESCE(error, 'null')
    || '}'"""
_JOB_POST_NULL_SQL = f"""'"input_progress":null' || {_JOB_POST_TAIL_SQL}"""
"""SQL: a job's JSON from ``input_progress`` (null, as write paths show it) to the end."""
_JOB_POST_PROGRESS_SQL = f"""'"input_progress":' || (SELECT
      '{{"pending":' || count(*) FILTER (WHERE status = 'pending')
      || ',"processing":' || count(*) FILTER (WHERE status = 'processing')
      || ',"completed":' || count(*) FILTER (WHERE status = 'completed')
      || ',"failed":' || count(*) FILTER (WHERE status = 'failed') || '}}'
    FROM inputs WHERE job_id = jobs.id) || {_JOB_POST_TAIL_SQL}"""
"""SQL: the same with the job's tracked input counts (index ``inputs_job_status``)."""
_NOT_QUEUED = '"queue_position":null,"queue_depth":null,'
_EXTRA_MIME = {".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson"}


# --- errors -------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of store errors; ``status``/``code`` tell the server which HTTP answer to give."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestion = suggestion


class NotFound(StoreError):
    status = 404
    code = "not_found"


class UploadNotFound(NotFound):
    code = "upload_not_found"


class StateConflict(StoreError):
    """The request conflicts with the resource's current state (HTTP 409)."""

    status = 409
    code = "conflict"


class StaleAttempt(StateConflict):
    """A worker write for an attempt that is over (job cancelled, retried, preempted, gone).

    The worker that gets it must stop: nothing it writes can belong to the job any more.
    """

    code = "stale_attempt"


class FileExists(StateConflict):
    """A file_id is taken: file ids are unique and immutable (reference §1.3)."""


class InvalidRequest(StoreError, ValueError):
    status = 400
    code = "invalid_parameter"


class InvalidFileId(InvalidRequest):
    code = "invalid_file_id"


class UnresolvedInputs(InvalidRequest):
    """An input names a file that does not exist (platform: "Failed to resolve file inputs")."""

    code = "invalid_inputs"


# --- small helpers --------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def format_ts(value: datetime) -> str:
    """RFC 3339 UTC with ``Z`` and always microseconds, so strings sort like the times."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def validate_file_id(name: object) -> str:
    """Return ``name`` if it is safe as a file id, else raise InvalidFileId.

    File ids are user-chosen filenames that end up in URLs, listings and local paths of
    whoever downloads them, so anything that could act as a path (separators, ``..``, hidden
    or dot-only names), break a protocol (NUL, control characters), disguise itself (bidi
    overrides and other invisible format characters: Unicode categories Cc, Cf, Zl, Zp) or
    break a filesystem (over 255 bytes, unencodable text such as lone surrogates) is refused.
    """
    if not isinstance(name, str) or not name:
        raise InvalidFileId("File id must be a non-empty string")
    _require_text(name, "File id", InvalidFileId)
    if len(name.encode("utf-8")) > 255:
        raise InvalidFileId("File id must be at most 255 bytes long")
    if "/" in name or "\\" in name:
        raise InvalidFileId(f"File id must not contain a path separator: {name!r}")
    categories = {unicodedata.category(ch) for ch in name}
    if "Cc" in categories:
        raise InvalidFileId(f"File id must not contain control characters: {name!r}")
    if categories & {"Cf", "Zl", "Zp"}:
        raise InvalidFileId(
            f"File id must not contain invisible format or line separator characters: {name!r}"
        )
    if name.startswith("."):
        raise InvalidFileId(f"File id must not start with a dot: {name!r}")
    if name.strip() != name:
        raise InvalidFileId(f"File id must not start or end with whitespace: {name!r}")
    return name


def _require_text(value: Any, what: str, error: type[InvalidRequest] = InvalidRequest) -> None:
    """Refuse strings SQLite cannot store (lone surrogates such as ``"\\ud800"``, which JSON
    bodies can carry), anywhere inside ``value`` (mapping keys and values, lists, tuples)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise error(f"{what} must be valid Unicode text (no lone surrogates)") from None
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _int_arg(value: Any, what: str, minimum: int = 0, maximum: int = _MAX_INT) -> int:
    """``value`` if it is an integer in ``minimum..maximum`` (within SQLite's 64-bit range),
    else InvalidRequest (400) rather than an OverflowError (500) when binding it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be an integer")
    if not minimum <= value <= maximum:
        if value < minimum and minimum == 0:
            raise InvalidRequest(f"{what} must not be negative")
        raise InvalidRequest(f"{what} must be between {minimum} and {maximum}")
    return value


def _opt_sql_int(value: Any, what: str) -> int | None:
    """An optional integer column value: None, or an integer SQLite can store."""
    return None if value is None else _int_arg(value, what, _MIN_INT)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _guess_type(filename: str) -> str | None:
    ext = PurePath(filename).suffix.lower()
    return _EXTRA_MIME.get(ext) or mimetypes.guess_type(filename, strict=False)[0]


def _extension(filename: str) -> str | None:
    return PurePath(filename).suffix or None


def _page_limit(limit: int | None) -> int:
    """SQL LIMIT for an API limit: None means all rows."""
    if limit is None:
        return -1
    return _int_arg(limit, "limit")


def _check_offset(offset: int) -> int:
    return _int_arg(offset, "offset")


def _strip_token(token: str) -> str:
    """An ETag compared the way clients send it: with or without quotes (and ``W/``)."""
    token = token.strip()
    if token.startswith("W/"):
        token = token[2:]
    return token.strip('"').lower()


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_is_stale(path: Path) -> bool:
    """A temp file left by a process that is gone (its pid is in the name)."""
    try:
        pid = int(path.name[len(_TMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return True
    if os.name == "nt":
        try:
            return time.time() - path.stat().st_mtime > _STALE_TMP_SECONDS
        except FileNotFoundError:
            return False
    return not _pid_alive(pid)


def _chunks(source: Source) -> Iterator[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif isinstance(source, os.PathLike):
        with Path(os.fspath(source)).open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk
    elif hasattr(source, "read"):
        reader: IO[bytes] = source  # type: ignore[assignment]
        while chunk := reader.read(_CHUNK):
            yield bytes(chunk)
    else:
        for chunk in source:
            yield bytes(chunk)


class _CsvProbe:
    """CSV attributes computed while bytes stream past: header from the head, rows by newlines."""

    _HEAD = 64 * 1024

    def __init__(self) -> None:
        self.head = bytearray()
        self.newlines = 0
        self.size = 0
        self.last = b""

    def feed(self, chunk: bytes) -> None:
        if chunk:
            if len(self.head) < self._HEAD and b"\n" not in self.head:
                self.head += chunk[: self._HEAD - len(self.head)]
            self.newlines += chunk.count(b"\n")
            self.size += len(chunk)
            self.last = chunk[-1:]

    def attributes(self) -> JSON:
        lines = self.newlines + (1 if self.size and self.last != b"\n" else 0)
        first = bytes(self.head).split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
        headers = next(csv.reader([first.rstrip("\r")]), []) if first else []
        return {
            "num_rows": max(lines - 1, 0),
            "num_columns": len(headers),
            "column_headers": headers,
        }


def _is_csv(file_id: str, file_type: str | None) -> bool:
    return file_type == "text/csv" or PurePath(file_id).suffix.lower() == ".csv"


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"f{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("f") or not raw[1:].isdigit():
            raise ValueError(raw)
        seq = int(raw[1:])
        if seq > _MAX_INT:
            raise ValueError(raw)
        return seq
    except (ValueError, binascii.Error, UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidRequest(f"Invalid cursor: {cursor!r}") from None


def _chunked(values: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# --- schema ---------------------------------------------------------------------------------

_SCHEMA_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    f"""CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        org_id TEXT NOT NULL,
        name TEXT NOT NULL,
        name_fold TEXT NOT NULL,
        pipeline_type TEXT NOT NULL,
        pipeline_key TEXT NOT NULL,
        pipeline_version TEXT,
        status TEXT NOT NULL CHECK (status IN {JOB_STATUSES!r}),
        parameters TEXT NOT NULL,
        retry_count INTEGER NOT NULL DEFAULT 0,
        preemption_count INTEGER NOT NULL DEFAULT 0,
        queue_key INTEGER NOT NULL,
        enqueued_at TEXT NOT NULL,
        num_inputs INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        failed_at TEXT,
        cancelled_at TEXT,
        error TEXT
    )""",
    "CREATE INDEX jobs_status ON jobs(status, seq)",
    "CREATE INDEX jobs_type ON jobs(pipeline_type, seq)",
    "CREATE INDEX jobs_queue ON jobs(status, pipeline_type, queue_key)",
    "CREATE INDEX jobs_admit ON jobs(status, queue_key)",
    """CREATE TABLE queue_counts (
        pipeline_type TEXT PRIMARY KEY,
        depth INTEGER NOT NULL CHECK (depth >= 0)
    ) WITHOUT ROWID""",
    """CREATE TABLE inputs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        port_name TEXT NOT NULL,
        item_index INTEGER NOT NULL,
        file_id TEXT,
        tracked INTEGER NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending','processing','completed','failed','reference')),
        error_message TEXT,
        data TEXT,
        extra TEXT,
        created_at TEXT NOT NULL,
        completed_at TEXT,
        finished_at TEXT,
        finish_rank INTEGER
    )""",
    "CREATE INDEX inputs_job_status ON inputs(job_id, status)",
    "CREATE INDEX inputs_job_port ON inputs(job_id, port_name, status)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        level TEXT NOT NULL,
        event_type TEXT,
        message TEXT,
        payload TEXT NOT NULL,
        input_id TEXT,
        idx INTEGER,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX events_job ON events(job_id, id)",
    "CREATE INDEX events_input ON events(job_id, input_id, id)",
    """CREATE TABLE progress (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        step INTEGER,
        message TEXT,
        metrics TEXT NOT NULL,
        payload TEXT NOT NULL,
        input_id TEXT,
        idx INTEGER,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX progress_job ON progress(job_id, id)",
    "CREATE INDEX progress_input ON progress(input_id, id)",
    """CREATE TABLE outputs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        port_name TEXT NOT NULL,
        input_id TEXT,
        input_file_id TEXT,
        filename TEXT NOT NULL,
        file_type TEXT,
        num_bytes INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX outputs_job ON outputs(job_id, seq)",
    """CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        file_id TEXT NOT NULL UNIQUE,
        file_uid TEXT NOT NULL UNIQUE,
        file_type TEXT,
        num_bytes INTEGER NOT NULL,
        md5 TEXT NOT NULL,
        file_status TEXT NOT NULL,
        file_tags TEXT NOT NULL,
        file_attributes TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX files_type ON files(file_type, seq)",
    """CREATE TABLE uploads (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        filename TEXT NOT NULL,
        file_type TEXT NOT NULL,
        num_bytes INTEGER NOT NULL,
        part_size INTEGER NOT NULL,
        num_parts INTEGER NOT NULL,
        file_uid TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active','completed')),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        completed_at TEXT
    )""",
    "CREATE INDEX uploads_filename ON uploads(filename, status, seq)",
    """CREATE TABLE upload_parts (
        upload_id TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
        part_number INTEGER NOT NULL,
        etag TEXT NOT NULL,
        num_bytes INTEGER NOT NULL,
        checkpointed INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        PRIMARY KEY (upload_id, part_number)
    ) WITHOUT ROWID""",
)


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?)",
        [("org_id", new_id("org")), ("queue_seq", "0"), ("files_updated", "")],
    )


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Uploads get a ``completing`` marker (``<pid>-<token>`` of the completer, and when)."""
    conn.execute("ALTER TABLE uploads ADD COLUMN completing TEXT")
    conn.execute("ALTER TABLE uploads ADD COLUMN completing_at TEXT")


_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_0_to_1, _migrate_1_to_2)
"""``_MIGRATIONS[v]`` brings a store at ``user_version`` v to v + 1."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``, one transaction per step; returns the version.

    Each step re-reads ``user_version`` under the write lock, so two processes opening the same
    store at once cannot both apply a step.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The store was written by a newer version (schema {version}; "
                    f"this code knows {SCHEMA_VERSION})"
                )
            if version == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return version
            _MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# --- the store ------------------------------------------------------------------------------


class Store:
    """The local backend's state. Thread-safe: a bounded pool of SQLite connections.

    A transaction borrows a connection from the pool for its duration (nested ``_tx`` calls on
    the same thread join it) and gives it back at the end; at most ``MAX_IDLE_CONNECTIONS``
    idle connections are kept, extras are closed, so threads that come and go (an ASGI thread
    pool) never leak connections or file descriptors. Writes from threads of one process are
    serialised by a lock (no busy-waiting); writes from other processes wait on SQLite's lock
    (``busy_timeout``). Several processes may open the same home; opening sweeps only what
    crashed writers left behind.
    """

    MAX_IDLE_CONNECTIONS = 16

    def __init__(self, home: Path | str, *, clock: Clock | None = None) -> None:
        self.home = Path(home)
        self.db_path = self.home / "state.sqlite3"
        self.files_dir = self.home / "files"
        self.outputs_dir = self.home / "outputs"
        self.uploads_dir = self.home / "uploads"
        for directory in (self.home, self.files_dir, self.outputs_dir, self.uploads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._clock: Clock = clock or _utcnow
        self._local = threading.local()
        self._wlock = threading.RLock()
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._open = 0  # connections open: idle in the pool plus borrowed
        self._pool_lock = threading.Lock()
        self._closed = False
        try:
            conn = self._borrow()
            try:
                migrate(conn)  # its own transactions, one per step
                org = conn.execute("SELECT value FROM meta WHERE key='org_id'").fetchone()
            finally:
                self._give_back(conn)
            self.org_id: str = org[0]
            self._sweep()
        except BaseException:
            self.close()
            raise

    # --- connections and transactions ---

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, isolation_level=None, check_same_thread=False, timeout=60.0
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
        except BaseException:
            conn.close()
            raise
        return conn

    def _borrow(self) -> sqlite3.Connection:
        """An idle connection from the pool, or a new one."""
        if self._closed:
            raise StoreError("The store is closed")
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        conn = self._connect()
        with self._pool_lock:
            self._open += 1
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """Return a borrowed connection; closed instead if the pool is full, the store closed,
        or the connection is still inside a transaction (it could not be rolled back)."""
        with self._pool_lock:
            keep = (
                not self._closed
                and not conn.in_transaction
                and self._pool.qsize() < self.MAX_IDLE_CONNECTIONS
            )
            if keep:
                self._pool.put_nowait(conn)
                return
            self._open -= 1
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def connection_count(self) -> int:
        """How many SQLite connections this store has open (idle in the pool or borrowed)."""
        with self._pool_lock:
            return self._open

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: all or nothing. Nested use (same thread) joins the outer one.

        Nesting is tracked by a per-thread depth counter, never by ``in_transaction``: a
        connection is only ever shared by the frames of one outermost transaction. If COMMIT
        fails (a deferred constraint, a full disk), the transaction is rolled back and the
        error re-raised, so nothing later can silently join a transaction that stayed open.
        """
        local = self._local
        depth: int = getattr(local, "depth", 0)
        if depth:
            local.depth = depth + 1
            try:
                yield local.conn
            finally:
                local.depth = depth
            return
        conn = self._borrow()
        local.conn, local.depth = conn, 1
        try:
            lock: contextlib.AbstractContextManager[Any] = (
                self._wlock if write else contextlib.nullcontext()
            )
            with lock:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
        finally:
            local.conn, local.depth = None, 0
            self._give_back(conn)

    def close(self) -> None:
        """Close the idle connections; borrowed ones are closed when given back."""
        with self._pool_lock:
            self._closed = True
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            with self._pool_lock:
                self._open -= 1
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo else now.replace(tzinfo=timezone.utc)

    def _new_id(self, prefix: str) -> str:
        return new_id(prefix, int(self._now().timestamp() * 1000))

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` plus a foreign key check: ``"ok"`` when healthy."""
        with self._tx(write=False) as conn:
            result = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
            if result == "ok" and conn.execute("PRAGMA foreign_key_check").fetchone():
                return "foreign key violations"
        return result

    # --- crash recovery of bytes ---

    def _sweep(self) -> None:
        """Remove temp files of dead processes, bytes whose row never committed, and direct
        uploads abandoned past their ``expires_at`` (``UPLOAD_TTL`` after they began).

        Runs holding the write lock: final names are only created inside a write transaction,
        so an orphan seen now cannot belong to a writer that is still going to commit.
        """
        with self._tx() as conn:
            uids = {r[0] for r in conn.execute("SELECT file_uid FROM files")}
            self._sweep_dir(self.files_dir, uids)
            jobs = {r[0] for r in conn.execute("SELECT id FROM jobs")}
            out_ids: dict[str, set[str]] = {}
            for job_id, out_id in conn.execute("SELECT job_id, id FROM outputs"):
                out_ids.setdefault(job_id, set()).add(out_id)
            for directory in self.outputs_dir.iterdir():
                if directory.is_dir() and directory.name in jobs:
                    self._sweep_dir(directory, out_ids.get(directory.name, set()))
                elif directory.is_dir():
                    shutil.rmtree(directory, ignore_errors=True)
                elif not directory.name.startswith(_TMP_PREFIX) or _tmp_is_stale(directory):
                    directory.unlink(missing_ok=True)  # outputs are spooled here
            now = self._now()
            expired = [
                upload_id
                for upload_id, expires_at in conn.execute(
                    "SELECT id, expires_at FROM uploads WHERE status = 'active'"
                )
                if parse_ts(expires_at) < now
            ]
            for upload_id in expired:  # abandoned: nobody resumes it now; parts go below
                conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            parts: dict[str, set[str]] = {}
            for upload_id, number in conn.execute(
                "SELECT p.upload_id, p.part_number FROM upload_parts p "
                "JOIN uploads u ON u.id = p.upload_id WHERE u.status = 'active'"
            ):
                parts.setdefault(upload_id, set()).add(f"{number:06d}")
            active = {r[0] for r in conn.execute("SELECT id FROM uploads WHERE status='active'")}
            for directory in self.uploads_dir.iterdir():
                if directory.is_dir() and directory.name in active:
                    self._sweep_dir(directory, parts.get(directory.name, set()))
                elif directory.is_dir():
                    shutil.rmtree(directory, ignore_errors=True)
                elif not directory.name.startswith(_TMP_PREFIX) or _tmp_is_stale(directory):
                    directory.unlink(missing_ok=True)  # parts are spooled here

    @staticmethod
    def _sweep_dir(directory: Path, keep: set[str]) -> None:
        for path in directory.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                if _tmp_is_stale(path):
                    path.unlink(missing_ok=True)
            elif path.name not in keep:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _spool(
        self, directory: Path, source: Source, probe: _CsvProbe | None = None
    ) -> tuple[Path, int, str]:
        """Stream ``source`` into a fsynced temp file in ``directory``: (path, size, md5 hex)."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with tmp.open("wb") as out:
                for chunk in _chunks(source):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if probe is not None:
                        probe.feed(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size, digest.hexdigest()

    # --- jobs: rows to dicts ---

    def _job_texts(
        self, conn: sqlite3.Connection, tail: str, params: Sequence[Any], *, with_progress: bool
    ) -> list[str]:
        """Job JSON texts for the rows of ``SELECT … FROM jobs{tail}``, in its order.

        SQLite writes each job's JSON itself (`_JOB_JSON_SQL`; ``parameters`` and ``error`` are
        stored as JSON text and spliced in as they are), so a page costs one statement plus, only
        when it holds queued jobs, one more for their positions (`_queue_info`); Python merely
        joins strings. ``input_progress`` counts are per-job index lookups in the same statement.
        """
        post = _JOB_POST_PROGRESS_SQL if with_progress else _JOB_POST_NULL_SQL
        rows = conn.execute(
            f"SELECT status IN {_Q_IN}, id, pipeline_type, queue_key, {_JOB_PRE_SQL}, {post} "
            f"FROM jobs{tail}",
            params,
        ).fetchall()
        queued = [(job_id, pt, key) for q, job_id, pt, key, _, _ in rows if q]
        if not queued:
            return [pre + _NOT_QUEUED + post for _, _, _, _, pre, post in rows]
        queue = self._queue_info(conn, queued)
        out = []
        for q, job_id, _, _, pre, post in rows:
            if q:
                position, depth = queue[job_id]
                out.append(f'{pre}"queue_position":{position},"queue_depth":{depth},{post}')
            else:
                out.append(pre + _NOT_QUEUED + post)
        return out

    def _job_dict(self, conn: sqlite3.Connection, job_id: str, *, with_progress: bool) -> JSON:
        """One job as a dict (the parsed `_job_texts`); NotFound if there is no such job."""
        texts = self._job_texts(conn, " WHERE id = ?", (job_id,), with_progress=with_progress)
        if not texts:
            raise NotFound(f"Job {job_id} not found")
        job: JSON = json.loads(texts[0])
        return job

    @staticmethod
    def _queue_info(
        conn: sqlite3.Connection, queued: Sequence[tuple[str, str, int]]
    ) -> dict[str, tuple[int, int]]:
        """(queue_position, queue_depth) of queued jobs, given as (id, pipeline_type,
        queue_key): one SQL statement.

        Depth per pipeline type is a counter kept in step with every status change. The
        position of a job is the number of queued jobs before the page's span of queue keys
        plus its rank inside the span; the jobs before the span are counted directly, or as
        depth minus those after it, whichever side the key range says is shorter. A newest-first
        page of a deep queue therefore costs about its own size, never one query per job.
        """
        spans: dict[str, list[int]] = {}
        for _, pipeline_type, key in queued:
            spans.setdefault(pipeline_type, []).append(key)
        if not spans:
            return {}
        parts: list[str] = []
        params: list[Any] = []
        for pipeline_type, keys in spans.items():
            lo, hi = min(keys), max(keys)
            parts.append(_QUEUE_HEAD_SQL)
            pt = pipeline_type
            params += [pt, lo, hi, pt, pt, lo, pt, lo, pt, hi, pt, hi]
            parts.append(
                f"SELECT pipeline_type, queue_key, NULL, NULL, NULL FROM jobs WHERE status IN "
                f"{_Q_IN} AND pipeline_type = ? AND queue_key BETWEEN ? AND ?"
            )
            params += [pipeline_type, lo, hi]
        heads: dict[str, tuple[int, int, int]] = {}
        span_keys: dict[str, list[int]] = {}
        for pt, key, depth, count_after, count in conn.execute(" UNION ALL ".join(parts), params):
            if key is None:
                heads[pt] = (int(depth), int(count_after), int(count))
            else:
                span_keys.setdefault(pt, []).append(key)
        before: dict[str, int] = {}
        for pt, (depth, count_after, count) in heads.items():
            span_keys.setdefault(pt, []).sort()
            before[pt] = depth - count - len(span_keys[pt]) if count_after else count
        return {
            job_id: (before[pt] + bisect_right(span_keys[pt], key), heads[pt][0])
            for job_id, pt, key in queued
        }

    @staticmethod
    def _bump_queue(conn: sqlite3.Connection, pipeline_type: str, delta: int) -> None:
        """Keep ``queue_counts`` (the depth per pipeline type) in step, in the caller's tx."""
        if delta:
            conn.execute(
                "INSERT OR IGNORE INTO queue_counts (pipeline_type, depth) VALUES (?, 0)",
                (pipeline_type,),
            )
            conn.execute(
                "UPDATE queue_counts SET depth = depth + ? WHERE pipeline_type = ?",
                (delta, pipeline_type),
            )

    @staticmethod
    def _job_row(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"Job {job_id} not found")
        return row

    @staticmethod
    def _next_queue_key(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'queue_seq'")
        return int(conn.execute("SELECT value FROM meta WHERE key = 'queue_seq'").fetchone()[0])

    # --- jobs: public API ---

    def create_job(
        self,
        request: Mapping[str, Any] | JobRequest,
        pipeline_version: str | None,
        port_defs: Mapping[str, Mapping[str, Any]],
        file_lookup: Callable[[str], Mapping[str, Any] | None] | None = None,
    ) -> JSON:
        """Insert a PENDING job and one input row per input item, in one transaction.

        ``request`` is the create body (a JobRequest-like dict); ``port_defs`` tells which ports
        are tracked (unknown ports count as tracked); ``file_lookup`` maps a file_id to its
        metadata (FileMeta dict) and defaults to this store's files, resolved in bulk.
        Returns the job as the create response shows it (``input_progress`` null).
        """
        if not isinstance(request, Mapping):  # a JobRequest model: use its JSON form
            request = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        _require_text(request, "The job request")
        try:
            name = str(request["name"])
            pipeline_key = str(request["pipeline_key"])
        except KeyError as exc:
            raise InvalidRequest(f"Missing field: {exc.args[0]}") from None
        pipeline_type = str(request.get("pipeline_type") or "batch")
        parameters = request.get("parameters") or {}
        inputs = request.get("inputs") or {}
        if not isinstance(inputs, Mapping) or not isinstance(parameters, Mapping):
            raise InvalidRequest("inputs and parameters must be objects")
        items: list[tuple[str, int, Mapping[str, Any]]] = []
        for port_name, port_items in inputs.items():
            if not isinstance(port_items, list):
                raise InvalidRequest(f"inputs.{port_name} must be an array")
            for index, item in enumerate(port_items):
                if not isinstance(item, Mapping):
                    raise InvalidRequest(f"inputs.{port_name}[{index}] must be an object")
                items.append((str(port_name), index, item))
        try:  # stored as JSON text and sent as it is: NaN and Infinity are not JSON
            parameters_json = json.dumps(
                parameters, separators=(",", ":"), sort_keys=True, allow_nan=False
            )
        except ValueError:
            raise InvalidRequest("parameters must not contain NaN or Infinity") from None
        now = format_ts(self._now())
        job_id = self._new_id("job")
        with self._tx() as conn:
            files = self._resolve_files(conn, items, file_lookup)
            rows = []
            for port_name, index, item in items:
                tracked = bool(port_defs.get(port_name, {}).get("tracked", True))
                status = "pending" if tracked else "reference"
                metadata = item.get("metadata")
                if item.get("kind") == "checkpoint":
                    file_id, data = None, None
                    extra = {"kind": "checkpoint", "checkpoint_id": item.get("checkpoint_id")}
                else:
                    file_id = str(item["file_id"])
                    meta = files[file_id]
                    data = {
                        "filename": file_id,
                        "file_type": meta.get("file_type"),
                        "file_extension": _extension(file_id),
                        "num_bytes": meta.get("num_bytes"),
                        "metadata": dict(metadata) if isinstance(metadata, Mapping) else {},
                        "file_tags": meta.get("file_tags") or None,
                        "file_attributes": meta.get("file_attributes") or None,
                    }
                    extra = None
                rows.append(
                    (
                        self._new_id("inp"),
                        job_id,
                        port_name,
                        index,
                        file_id,
                        int(tracked),
                        status,
                        None if data is None else _dumps(data),
                        None if extra is None else _dumps(extra),
                        now,
                    )
                )
            conn.execute(
                "INSERT INTO jobs (id, org_id, name, name_fold, pipeline_type, pipeline_key, "
                "pipeline_version, status, parameters, queue_key, enqueued_at, num_inputs, "
                "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    self.org_id,
                    name,
                    name.casefold(),
                    pipeline_type,
                    pipeline_key,
                    pipeline_version,
                    PENDING,
                    parameters_json,
                    self._next_queue_key(conn),
                    now,
                    len(rows),
                    now,
                    now,
                ),
            )
            conn.executemany(
                "INSERT INTO inputs (id, job_id, port_name, item_index, file_id, tracked, "
                "status, data, extra, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            self._bump_queue(conn, pipeline_type, 1)
            return self._job_dict(conn, job_id, with_progress=False)

    def _resolve_files(
        self,
        conn: sqlite3.Connection,
        items: Sequence[tuple[str, int, Mapping[str, Any]]],
        file_lookup: Callable[[str], Mapping[str, Any] | None] | None,
    ) -> dict[str, Mapping[str, Any]]:
        wanted: list[str] = []
        for port_name, index, item in items:
            if item.get("kind") == "checkpoint":
                continue
            file_id = item.get("file_id")
            if not isinstance(file_id, str) or not file_id:
                raise InvalidRequest(f"inputs.{port_name}[{index}].file_id is required")
            wanted.append(file_id)
        unique = list(dict.fromkeys(wanted))
        found: dict[str, Mapping[str, Any]] = {}
        if file_lookup is None:
            for chunk in _chunked(unique):
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT * FROM files WHERE file_id IN ({marks})", list(chunk)
                ):
                    found[row["file_id"]] = self._file_dict(row)
        else:
            for file_id in unique:
                meta = file_lookup(file_id)
                if meta is not None:
                    found[file_id] = meta
        missing = [f for f in unique if f not in found]
        if missing:
            shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
            raise UnresolvedInputs(f"Failed to resolve file inputs: {shown}")
        return found

    def get_job(self, job_id: str) -> JSON:
        """The job as ``GET /batch/jobs/{id}`` shows it: all 20 fields, computed parts fresh."""
        with self._tx(write=False) as conn:
            return self._job_dict(conn, job_id, with_progress=True)

    def list_jobs(
        self,
        pipeline_type: str | None = None,
        status: str | None = None,
        q: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> JSON:
        """A JobList page, newest first; ``q`` is a case-insensitive substring of the name."""
        page: JSON = json.loads(self.list_jobs_json(pipeline_type, status, q, offset, limit))
        return page

    def list_jobs_json(
        self,
        pipeline_type: str | None = None,
        status: str | None = None,
        q: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> str:
        """`list_jobs` as JSON text, what ``GET /batch/jobs`` sends (no dicts are built)."""
        _require_text([pipeline_type, status, q], "Job filters")
        limit_sql, offset = _page_limit(limit), _check_offset(offset)
        where: list[str] = []
        params: list[Any] = []
        if pipeline_type:
            where.append("pipeline_type = ?")
            params.append(pipeline_type)
        if status:
            where.append("status = ?")
            params.append(status.upper())
        if q:
            where.append("instr(name_fold, ?) > 0")
            params.append(q.casefold())
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._tx(write=False) as conn:
            total = conn.execute(f"SELECT COUNT(*) FROM jobs{clause}", params).fetchone()[0]
            jobs = self._job_texts(
                conn,
                f"{clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*params, limit_sql, offset],
                with_progress=True,
            )
        shown = "null" if limit is None else int(limit)
        return (
            f'{{"total":{int(total)},"offset":{offset},"limit":{shown},"jobs":['
            + ",".join(jobs)
            + "]}"
        )

    def transition(
        self,
        job_id: str,
        to_status: str,
        *,
        error: JSON | str | None = None,
        event: tuple[str, str, str] | None = None,
    ) -> JSON:
        """Move a job along the state machine (``LEGAL_TRANSITIONS``), with its side effects.

        Raises StateConflict for an illegal move. ``event`` = (level, event_type, message) is
        recorded in the same transaction. Returns the job as write paths show it.
        """
        with self._tx() as conn:
            row = self._job_row(conn, job_id)
            self._transition(conn, row, to_status, error=error, event=event)
            return self._job_dict(conn, job_id, with_progress=False)

    def _transition(
        self,
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        to_status: str,
        *,
        error: JSON | str | None = None,
        event: tuple[str, str, str] | None = None,
    ) -> None:
        job_id, current = row["id"], row["status"]
        to_status = str(to_status).upper()
        if to_status not in LEGAL_TRANSITIONS:
            raise InvalidRequest(f"Unknown job status {to_status!r}")
        if to_status not in LEGAL_TRANSITIONS[current]:
            if to_status == CANCELLED:
                msg = (
                    f"only {', '.join(CANCELLABLE[:-1])} or {CANCELLABLE[-1]} jobs can be cancelled"
                )
            elif to_status == PENDING:
                msg = "only FAILED or CANCELLED jobs can be retried"
            else:
                msg = f"it cannot move to {to_status}"
            raise StateConflict(f"Job {job_id} is {current}; {msg}")
        now = format_ts(self._now())
        sets: dict[str, Any] = {"status": to_status, "updated_at": now}
        if to_status == RUNNING and row["started_at"] is None:
            sets["started_at"] = now
        elif to_status == COMPLETED:
            sets["completed_at"] = now
        elif to_status == FAILED:
            sets["failed_at"] = now
            sets["error"] = None if error is None else _dumps(error)
        elif to_status == CANCELLED:
            sets["cancelled_at"] = now
        elif to_status == PREEMPTED:
            sets["preemption_count"] = row["preemption_count"] + 1
            conn.execute(
                "UPDATE inputs SET status = 'pending' WHERE job_id = ? AND status = 'processing'",
                (job_id,),
            )
        elif to_status == PENDING and current in RETRYABLE:
            sets.update(
                retry_count=row["retry_count"] + 1,
                queue_key=self._next_queue_key(conn),
                enqueued_at=now,
                started_at=None,
                completed_at=None,
                failed_at=None,
                cancelled_at=None,
                error=None,
            )
            conn.execute(
                "UPDATE inputs SET status = 'pending', error_message = NULL, completed_at = NULL, "
                "finished_at = NULL, finish_rank = NULL WHERE job_id = ? AND tracked = 1",
                (job_id,),
            )
        if error is not None and to_status != FAILED:
            sets["error"] = _dumps(error)
        assignments = ", ".join(f"{column} = ?" for column in sets)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*sets.values(), job_id])
        self._bump_queue(conn, row["pipeline_type"], (to_status in QUEUED) - (current in QUEUED))
        if event is not None:
            level, event_type, message = event
            self._insert_event(conn, job_id, level, event_type, message, None, None, None)

    @staticmethod
    def attempt_of(job: Mapping[str, Any]) -> int:
        """The attempt a job (dict or row) is on: ``retry_count + preemption_count``.

        Every admission after the first follows a retry or a preemption, each of which bumps
        one of the two counters, so the sum names the current admission uniquely and only grows.
        """
        return int(job["retry_count"]) + int(job["preemption_count"])

    def _check_attempt(self, conn: sqlite3.Connection, job_id: str, attempt: int | None) -> None:
        """For a worker write (``attempt`` given): the job must be ADMITTED or RUNNING on that
        attempt, else StaleAttempt. Runs inside the write's transaction."""
        if attempt is None:
            return
        row = conn.execute(
            "SELECT status, retry_count, preemption_count FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise StaleAttempt(f"Job {job_id} no longer exists")
        if row["status"] not in ACTIVE:
            raise StaleAttempt(f"Job {job_id} is {row['status']}; attempt {attempt} is over")
        current = self.attempt_of(row)
        if current != attempt:
            raise StaleAttempt(f"Job {job_id} is on attempt {current}, not {attempt}")

    def cancel(self, job_id: str) -> JSON:
        """``POST /batch/jobs/{id}/cancel``: a CancelResult dict (409 StateConflict if final)."""
        job = self.transition(job_id, CANCELLED, event=("INFO", "job.cancelled", "Job cancelled"))
        return {"id": job["id"], "status": job["status"], "cancelled_at": job["cancelled_at"]}

    def retry(self, job_id: str) -> JSON:
        """``POST /batch/jobs/{id}/retry``: a RetryResult dict (409 unless FAILED/CANCELLED)."""
        with self._tx() as conn:
            row = self._job_row(conn, job_id)
            if row["status"] not in RETRYABLE:
                raise StateConflict(
                    f"Job {job_id} is {row['status']}; only FAILED or CANCELLED jobs can be retried"
                )
            self._transition(
                conn, row, PENDING, event=("INFO", "job.retried", "Job re-queued for retry")
            )
            row = self._job_row(conn, job_id)
        return {"id": row["id"], "status": row["status"], "retry_count": row["retry_count"]}

    def delete_job(self, job_id: str) -> JSON:
        """Remove a job with its inputs, events, progress, outputs and output bytes."""
        with self._tx() as conn:
            row = self._job_row(conn, job_id)
            if row["status"] in ACTIVE:
                raise StateConflict(
                    f"Job {job_id} is {row['status']}; cancel it before deleting it"
                )
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._bump_queue(conn, row["pipeline_type"], -(row["status"] in QUEUED))
        if is_id(job_id, "job"):
            shutil.rmtree(self.outputs_dir / job_id, ignore_errors=True)
        return {"id": job_id, "deleted": True}

    def recover_after_restart(self) -> list[str]:
        """After a backend restart: ADMITTED/RUNNING jobs are preempted and re-queued.

        Each such job goes through PREEMPTED (``preemption_count`` + 1, a WARN event) back to
        PENDING keeping its place in the queue, and its ``processing`` inputs become
        ``pending`` again; all in one transaction. Returns the ids of the jobs recovered.
        """
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE status IN ('ADMITTED','RUNNING') ORDER BY queue_key"
            ).fetchall()
            for row in rows:
                self._transition(
                    conn,
                    row,
                    PREEMPTED,
                    event=("WARN", "job.preempted", "Job preempted: local backend restarted"),
                )
                self._transition(
                    conn,
                    self._job_row(conn, row["id"]),
                    PENDING,
                    event=("INFO", "job.requeued", "Job re-queued after preemption"),
                )
        return [row["id"] for row in rows]

    def next_admissible(self, limit_running: int) -> JSON | None:
        """The oldest PENDING job, if fewer than ``limit_running`` jobs are ADMITTED/RUNNING."""
        with self._tx(write=False) as conn:
            return self._next_admissible(conn, limit_running)

    def _next_admissible(self, conn: sqlite3.Connection, limit_running: int) -> JSON | None:
        active = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('ADMITTED','RUNNING')"
        ).fetchone()[0]
        if active >= limit_running:
            return None
        row = conn.execute(
            "SELECT id FROM jobs WHERE status = 'PENDING' ORDER BY queue_key LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return self._job_dict(conn, row[0], with_progress=False)

    def admit_next(self, limit_running: int) -> JSON | None:
        """Atomically pick ``next_admissible`` and move it to ADMITTED (for the scheduler).

        The scheduler asks after every create; most of the time nothing is admissible (all
        slots busy), which a read transaction answers without taking the write lock that
        creates and workers need. Only then is the pick repeated under the write lock.
        """
        with self._tx(write=False) as conn:
            if not conn.execute(
                "SELECT 1 FROM jobs WHERE status = 'PENDING' AND "
                "(SELECT COUNT(*) FROM jobs WHERE status IN ('ADMITTED','RUNNING')) < ? LIMIT 1",
                (limit_running,),
            ).fetchone():
                return None
        with self._tx() as conn:
            job = self._next_admissible(conn, limit_running)
            if job is None:
                return None
            self._transition(conn, self._job_row(conn, job["id"]), ADMITTED)
            return self._job_dict(conn, job["id"], with_progress=False)

    def queue_depths(self) -> JSON:
        """``GET /batch/jobs/queue``: waiting jobs per pipeline type (``batch`` always listed)."""
        with self._tx(write=False) as conn:
            depths = dict(
                conn.execute(
                    "SELECT pipeline_type, depth FROM queue_counts WHERE depth > 0"
                ).fetchall()
            )
        depths.setdefault("batch", 0)
        return {"queues": [{"pipeline_type": k, "depth": depths[k]} for k in sorted(depths)]}

    def counts_by_status(self) -> dict[str, int]:
        """How many jobs are in each of the seven statuses (zeros included)."""
        with self._tx(write=False) as conn:
            counts = dict(
                conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            )
        return {status: counts.get(status, 0) for status in JOB_STATUSES}

    # --- events and progress ---

    @staticmethod
    def _fk_guard(exc: sqlite3.IntegrityError, job_id: str) -> StoreError:
        if "FOREIGN KEY" in str(exc):
            return NotFound(f"Job {job_id} not found")
        return StoreError(str(exc))

    def _insert_event(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        level: str,
        event_type: str | None,
        message: str | None,
        payload: Mapping[str, Any] | None,
        input_id: str | None,
        index: int | None,
    ) -> int:
        if level not in LEVELS:
            raise InvalidRequest(f"Unknown event level {level!r}; expected one of {LEVELS}")
        _require_text([event_type, message, payload, input_id], "An event")
        index = _opt_sql_int(index, "index")
        try:
            cursor = conn.execute(
                "INSERT INTO events (job_id, level, event_type, message, payload, input_id, idx, "
                "created_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    level,
                    event_type,
                    message,
                    _dumps(dict(payload or {})),
                    input_id,
                    index,
                    format_ts(self._now()),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise self._fk_guard(exc, job_id) from None
        return int(cursor.lastrowid or 0)

    @staticmethod
    def _event_dict(row: sqlite3.Row) -> JSON:
        return {
            "id": row["id"],
            "event_type": row["event_type"],
            "level": row["level"],
            "message": row["message"],
            "payload": json.loads(row["payload"]),
            "input_id": row["input_id"],
            "index": row["idx"],
            "created_at": row["created_at"],
        }

    def add_event(
        self,
        job_id: str,
        level: str,
        event_type: str | None,
        message: str | None,
        payload: Mapping[str, Any] | None = None,
        input_id: str | None = None,
        index: int | None = None,
        *,
        attempt: int | None = None,
    ) -> JSON:
        """Append an event to a job's log; returns it as an Event dict.

        ``attempt`` (worker writes): refused with StaleAttempt unless the job is ADMITTED or
        RUNNING on that attempt (see `attempt_of`), checked in the insert's transaction.
        """
        with self._tx() as conn:
            self._check_attempt(conn, job_id, attempt)
            event_id = self._insert_event(
                conn, job_id, level, event_type, message, payload, input_id, index
            )
            row = conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
            return self._event_dict(row)

    def _job_page(
        self,
        table: str,
        job_id: str,
        filters: Mapping[str, Any],
        order: str,
        offset: int,
        limit: int | None,
    ) -> tuple[int, list[sqlite3.Row]]:
        _require_text([job_id, *filters.values()], "Filters")
        limit_sql, offset = _page_limit(limit), _check_offset(offset)
        where = ["job_id = ?"]
        params: list[Any] = [job_id]
        for column, value in filters.items():
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = " AND ".join(where)
        with self._tx(write=False) as conn:
            self._job_row(conn, job_id)
            total = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {clause}", params).fetchone()
            rows = conn.execute(
                f"SELECT * FROM {table} WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, limit_sql, offset],
            ).fetchall()
        return int(total[0]), rows

    def list_events(
        self,
        job_id: str,
        level: str | None = None,
        event_type: str | None = None,
        input_id: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> JSON:
        """An EventList page, ascending by id (stable under ``offset += len(page)`` tailing)."""
        total, rows = self._job_page(
            "events",
            job_id,
            {"level": level, "event_type": event_type, "input_id": input_id},
            "id",
            offset,
            limit,
        )
        rows_json = [self._event_dict(r) for r in rows]
        return _job_list(job_id, total, offset, limit, "events", rows_json)

    @staticmethod
    def _progress_dict(row: sqlite3.Row) -> JSON:
        return {
            "id": row["id"],
            "kind": row["kind"],
            "step": row["step"],
            "message": row["message"],
            "metrics": json.loads(row["metrics"]),
            "payload": json.loads(row["payload"]),
            "input_id": row["input_id"],
            "index": row["idx"],
            "created_at": row["created_at"],
        }

    def add_progress(
        self,
        job_id: str,
        kind: str,
        step: int | None,
        message: str | None,
        metrics: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
        input_id: str | None = None,
        index: int | None = None,
        *,
        attempt: int | None = None,
    ) -> JSON:
        """Append a progress entry; returns it as a ProgressEntry dict.

        ``attempt``: a guarded worker write, as for `add_event`.
        """
        _require_text([kind, message, metrics, payload, input_id], "A progress entry")
        step, index = _opt_sql_int(step, "step"), _opt_sql_int(index, "index")
        with self._tx() as conn:
            self._check_attempt(conn, job_id, attempt)
            try:
                cursor = conn.execute(
                    "INSERT INTO progress (job_id, kind, step, message, metrics, payload, "
                    "input_id, idx, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        job_id,
                        kind,
                        step,
                        message,
                        _dumps(dict(metrics or {})),
                        _dumps(dict(payload or {})),
                        input_id,
                        index,
                        format_ts(self._now()),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise self._fk_guard(exc, job_id) from None
            row = conn.execute("SELECT * FROM progress WHERE id = ?", (cursor.lastrowid,))
            return self._progress_dict(row.fetchone())

    def list_progress(
        self,
        job_id: str,
        kind: str | None = None,
        input_id: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> JSON:
        """A ProgressList page, ascending by id."""
        total, rows = self._job_page(
            "progress", job_id, {"kind": kind, "input_id": input_id}, "id", offset, limit
        )
        rows_json = [self._progress_dict(r) for r in rows]
        return _job_list(job_id, total, offset, limit, "entries", rows_json)

    # --- inputs ---

    @staticmethod
    def _input_dict(row: sqlite3.Row) -> JSON:
        data = _loads(row["data"])
        if data is not None:
            data = {"ref": f"{API_PREFIX}/files/download/{quote(row['file_id'], safe='')}", **data}
        out: JSON = {
            "id": row["id"],
            "job_id": row["job_id"],
            "port_name": row["port_name"],
            "file_id": row["file_id"],
            "data": data,
            "status": row["status"],
            "error_message": row["error_message"],
            "created_at": row["created_at"],
            "completed_at": row["completed_at"],
        }
        extra = _loads(row["extra"])
        if extra:
            out.update(extra)
        return out

    def list_inputs(
        self,
        job_id: str,
        port_name: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> JSON:
        """An InputList page in submission order (``limit=None``: all, for the scheduler)."""
        total, rows = self._job_page(
            "inputs", job_id, {"port_name": port_name, "status": status}, "seq", offset, limit
        )
        rows_json = [self._input_dict(r) for r in rows]
        return _job_list(job_id, total, offset, limit, "inputs", rows_json)

    def get_input(self, input_id: str) -> JSON:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM inputs WHERE id = ?", (input_id,)).fetchone()
        if row is None:
            raise NotFound(f"Input {input_id} not found")
        return self._input_dict(row)

    def set_input_status(
        self,
        input_id: str,
        status: str,
        error_message: str | None = None,
        *,
        attempt: int | None = None,
    ) -> JSON:
        """Move a tracked input: pending→processing→completed|failed (final until a retry).

        ``completed_at`` is set on completed; a finished input gets its completion rank.
        ``attempt``: a guarded worker write, as for `add_event`.
        """
        if status not in TRACKED_STATUSES:
            raise InvalidRequest(f"Unknown input status {status!r}")
        _require_text([input_id, error_message], "An input status")
        now = format_ts(self._now())
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM inputs WHERE id = ?", (input_id,)).fetchone()
            if row is None:
                raise NotFound(f"Input {input_id} not found")
            self._check_attempt(conn, row["job_id"], attempt)
            if row["status"] == "reference":
                raise StateConflict(f"Input {input_id} is a reference input; it has no status")
            if row["status"] in INPUT_FINAL:
                raise StateConflict(f"Input {input_id} is already {row['status']}")
            rank = None
            if status in INPUT_FINAL:
                rank = (
                    conn.execute(
                        "SELECT COALESCE(MAX(finish_rank), 0) FROM inputs WHERE job_id = ?",
                        (row["job_id"],),
                    ).fetchone()[0]
                    + 1
                )
            conn.execute(
                "UPDATE inputs SET status = ?, error_message = ?, completed_at = ?, "
                "finished_at = ?, finish_rank = ? WHERE id = ?",
                (
                    status,
                    error_message if status == "failed" else None,
                    now if status == "completed" else None,
                    now if status in INPUT_FINAL else None,
                    rank,
                    input_id,
                ),
            )
            row = conn.execute("SELECT * FROM inputs WHERE id = ?", (input_id,)).fetchone()
            return self._input_dict(row)

    def input_counts(self, job_id: str, port_name: str | None = None) -> JSON:
        """``/inputs/progress/counts``: per-status counts of tracked inputs."""
        clause, params = "job_id = ?", [job_id]
        if port_name is not None:
            clause += " AND port_name = ?"
            params.append(port_name)
        with self._tx(write=False) as conn:
            self._job_row(conn, job_id)
            counts = dict(
                conn.execute(
                    f"SELECT status, COUNT(*) FROM inputs WHERE {clause} GROUP BY status", params
                ).fetchall()
            )
        return {"job_id": job_id, **{s: counts.get(s, 0) for s in TRACKED_STATUSES}}

    def inputs_progress(
        self,
        job_id: str,
        port_name: str | None = None,
        statuses: Sequence[str] | None = None,
        order: str = "asc",
        offset: int = 0,
        limit: int | None = 100,
    ) -> JSON:
        """``/inputs/progress``: tracked inputs (submission order) with their latest progress."""
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'")
        _require_text([job_id, port_name, statuses], "Filters")
        where = ["i.job_id = ?", "i.tracked = 1"]
        params: list[Any] = [job_id]
        if port_name is not None:
            where.append("i.port_name = ?")
            params.append(port_name)
        if statuses:
            where.append(f"i.status IN ({','.join('?' * len(statuses))})")
            params += list(statuses)
        clause = " AND ".join(where)
        with self._tx(write=False) as conn:
            self._job_row(conn, job_id)
            total = conn.execute(f"SELECT COUNT(*) FROM inputs i WHERE {clause}", params)
            total_n = int(total.fetchone()[0])
            rows = conn.execute(
                f"SELECT i.* FROM inputs i WHERE {clause} ORDER BY i.seq {order.upper()} "
                "LIMIT ? OFFSET ?",
                [*params, _page_limit(limit), _check_offset(offset)],
            ).fetchall()
            latest: dict[str, JSON] = {}
            ids = [r["id"] for r in rows]
            for chunk in _chunked(ids):
                marks = ",".join("?" * len(chunk))
                for prow in conn.execute(
                    "SELECT p.* FROM progress p JOIN (SELECT input_id, MAX(id) AS id FROM progress "
                    f"WHERE input_id IN ({marks}) GROUP BY input_id) m ON m.id = p.id",
                    list(chunk),
                ):
                    latest[prow["input_id"]] = self._progress_dict(prow)
        items = [
            {
                "input": self._input_dict(r),
                "latest_progress": latest.get(r["id"]),
                "step": r["finish_rank"],
            }
            for r in rows
        ]
        return _job_list(job_id, total_n, offset, limit, "items", items)

    # --- traces ---

    @staticmethod
    def _traces_etag(conn: sqlite3.Connection, job: sqlite3.Row, buckets: int) -> str:
        stamp = conn.execute(
            "SELECT (SELECT MAX(id) FROM progress WHERE job_id = ?), "
            "(SELECT COUNT(*) FROM progress WHERE job_id = ?), "
            "(SELECT MAX(finished_at) FROM inputs WHERE job_id = ?), "
            "(SELECT COUNT(*) FROM inputs WHERE job_id = ? AND finished_at IS NOT NULL)",
            (job["id"],) * 4,
        ).fetchone()
        basis = _dumps([job["id"], job["updated_at"], job["status"], buckets, *stamp])
        return '"' + hashlib.sha256(basis.encode()).hexdigest()[:32] + '"'

    def traces_etag(self, job_id: str, buckets: int = 100) -> str:
        """The ETag ``traces`` would carry, cheaply (for ``If-None-Match`` → 304)."""
        buckets = min(max(int(buckets), 10), 1000)
        with self._tx(write=False) as conn:
            return self._traces_etag(conn, self._job_row(conn, job_id), buckets)

    def traces(self, job_id: str, buckets: int = 100) -> JSON:
        """``/inputs/progress/traces``: cumulative file and item counts in ``buckets`` buckets.

        The time axis runs from the start of the current attempt (``started_at``, else when it
        was enqueued) to the terminal time, or now for a live job. Only progress of the current
        attempt is counted. The returned ``etag`` changes whenever the underlying data does.
        """
        buckets = min(max(int(buckets), 10), 1000)
        with self._tx(write=False) as conn:
            job = self._job_row(conn, job_id)
            etag = self._traces_etag(conn, job, buckets)
            since = job["enqueued_at"]
            progress = conn.execute(
                "SELECT kind, metrics, created_at FROM progress WHERE job_id = ? "
                "AND created_at >= ? ORDER BY id",
                (job_id, since),
            ).fetchall()
            finished = conn.execute(
                "SELECT status, finished_at FROM inputs WHERE job_id = ? AND tracked = 1 "
                "AND finished_at IS NOT NULL ORDER BY finished_at",
                (job_id,),
            ).fetchall()
            latest = conn.execute(
                "SELECT MAX(t) FROM (SELECT MAX(created_at) AS t FROM progress WHERE job_id = ? "
                "UNION ALL SELECT MAX(finished_at) FROM inputs WHERE job_id = ?)",
                (job_id, job_id),
            ).fetchone()[0]
        start = parse_ts(job["started_at"] or job["enqueued_at"])
        terminal = job["completed_at"] or job["failed_at"] or job["cancelled_at"]
        end = parse_ts(terminal) if terminal else max(self._now(), start)
        span = max((end - start).total_seconds(), 0.0)
        width = span / buckets
        ends = [start + timedelta(seconds=width * (i + 1)) for i in range(buckets)]
        ends[-1] = end
        points: list[JSON] = []
        files = {"completed": 0, "failed": 0}
        items: dict[str, dict[str, int]] = {}
        p_i = f_i = 0
        for t in ends:
            stamp = format_ts(t)
            while f_i < len(finished) and finished[f_i]["finished_at"] <= stamp:
                files[finished[f_i]["status"]] += 1
                f_i += 1
            while p_i < len(progress) and progress[p_i]["created_at"] <= stamp:
                metrics = json.loads(progress[p_i]["metrics"])
                counter = items.setdefault(progress[p_i]["kind"], {"success": 0, "failed": 0})
                for key in ("success", "failed"):
                    value = metrics.get(key)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        counter[key] += int(value)
                p_i += 1
            points.append(
                {
                    "t": stamp,
                    "step": files["completed"] + files["failed"],
                    "files": dict(files),
                    "items": {k: dict(v) for k, v in items.items()},
                }
            )
        return {
            "job_id": job_id,
            "bucket_seconds": width,
            "latest_event_at": latest,
            "points": points,
            "etag": etag,
        }

    # --- outputs ---

    @staticmethod
    def _output_dict(row: sqlite3.Row) -> JSON:
        return {
            "id": row["id"],
            "job_id": row["job_id"],
            "port_name": row["port_name"],
            "input_id": row["input_id"],
            "input_file_id": row["input_file_id"],
            "data": {
                "ref": f"{API_PREFIX}/batch/jobs/{row['job_id']}/outputs/{row['id']}/download",
                "filename": row["filename"],
                "file_type": row["file_type"],
                "file_extension": _extension(row["filename"]),
                "num_bytes": row["num_bytes"],
                "metadata": {},
                "file_tags": None,
                "file_attributes": None,
            },
            "expires_at": None,
            "created_at": row["created_at"],
        }

    def add_output(
        self,
        job_id: str,
        port_name: str,
        filename: str,
        data: Source,
        input_id: str | None = None,
        input_file_id: str | None = None,
        file_type: str | None = None,
        *,
        attempt: int | None = None,
    ) -> JSON:
        """Store an output durably (temp, fsync, rename inside the insert's transaction).

        ``input_file_id`` defaults to the file of ``input_id``; ``file_type`` is guessed from
        the filename. Returns the Output dict. The bytes are spooled in ``outputs/`` itself;
        ``outputs/<job>/`` is only created inside the transaction that has checked the job
        exists, so a late write for a deleted job (NotFound) never leaves a directory behind.
        ``attempt``: a guarded worker write, as for `add_event`.
        """
        validate_file_id(filename)
        _require_text([port_name, input_id, input_file_id, file_type], "An output")
        if not is_id(job_id, "job"):
            raise NotFound(f"Job {job_id} not found")
        with self._tx(write=False) as conn:  # fail fast, before reading the bytes
            self._job_row(conn, job_id)
            self._check_attempt(conn, job_id, attempt)
        directory = self.outputs_dir / job_id
        tmp, size, _ = self._spool(self.outputs_dir, data)
        output_id = self._new_id("out")
        try:
            with self._tx() as conn:
                self._job_row(conn, job_id)
                self._check_attempt(conn, job_id, attempt)
                directory.mkdir(exist_ok=True)
                if input_id is not None and input_file_id is None:
                    found = conn.execute(
                        "SELECT file_id FROM inputs WHERE id = ? AND job_id = ?",
                        (input_id, job_id),
                    ).fetchone()
                    input_file_id = found[0] if found else None
                conn.execute(
                    "INSERT INTO outputs (id, job_id, port_name, input_id, input_file_id, "
                    "filename, file_type, num_bytes, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        output_id,
                        job_id,
                        port_name,
                        input_id,
                        input_file_id,
                        filename,
                        file_type or _guess_type(filename),
                        size,
                        format_ts(self._now()),
                    ),
                )
                tmp.replace(directory / output_id)
                row = conn.execute("SELECT * FROM outputs WHERE id = ?", (output_id,)).fetchone()
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(directory)
        _fsync_dir(self.outputs_dir)  # the rename's source, and a new job directory
        return self._output_dict(row)

    def list_outputs(
        self,
        job_id: str,
        port_name: str | None = None,
        input_id: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> JSON:
        """An OutputList page in creation order."""
        total, rows = self._job_page(
            "outputs", job_id, {"port_name": port_name, "input_id": input_id}, "seq", offset, limit
        )
        rows_json = [self._output_dict(r) for r in rows]
        return _job_list(job_id, total, offset, limit, "outputs", rows_json)

    def get_output(self, output_id: str) -> JSON:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM outputs WHERE id = ?", (output_id,)).fetchone()
        if row is None:
            raise NotFound(f"Output {output_id} not found")
        return self._output_dict(row)

    def output_path(self, output_id: str) -> Path:
        """Where an output's bytes are on disk."""
        output = self.get_output(output_id)
        return self.outputs_dir / str(output["job_id"]) / str(output["id"])

    # --- files ---

    @staticmethod
    def _file_dict(row: sqlite3.Row) -> JSON:
        return {
            "file_id": row["file_id"],
            "file_uid": row["file_uid"],
            "is_valid": True,
            "file_type": row["file_type"],
            "num_bytes": row["num_bytes"],
            "file_status": row["file_status"],
            "ingested": row["file_status"] == FILE_STATUS_INGESTED,
            "file_index": row["seq"] - 1,
            "file_tags": json.loads(row["file_tags"]),
            "file_attributes": json.loads(row["file_attributes"]),
        }

    def _touch_files(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'files_updated'",
            (repr(self._now().timestamp()),),
        )

    def _register_file(
        self,
        conn: sqlite3.Connection,
        tmp: Path,
        file_id: str,
        file_uid: str,
        file_type: str | None,
        size: int,
        md5: str,
        attributes: JSON,
        tags: Mapping[str, Any] | None,
    ) -> sqlite3.Row:
        """Insert the file row and move the bytes in place (inside the caller's transaction)."""
        if conn.execute("SELECT 1 FROM files WHERE file_id = ?", (file_id,)).fetchone():
            raise FileExists(
                f"File already exists: {file_id}",
                "File ids are immutable: upload the new content under another name",
            )
        conn.execute(
            "INSERT INTO files (file_id, file_uid, file_type, num_bytes, md5, file_status, "
            "file_tags, file_attributes, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                file_id,
                file_uid,
                file_type,
                size,
                md5,
                FILE_STATUS_INGESTED,
                _dumps(dict(tags or {})),
                _dumps(attributes),
                format_ts(self._now()),
            ),
        )
        self._touch_files(conn)
        tmp.replace(self.files_dir / file_uid)
        row: sqlite3.Row = conn.execute(
            "SELECT * FROM files WHERE file_id = ?", (file_id,)
        ).fetchone()
        return row

    def add_file(
        self,
        file_id: str,
        file_type: str | None,
        source: Source,
        file_tags: Mapping[str, Any] | None = None,
    ) -> JSON:
        """Register a file from a stream, bytes or path (streamed copy, temp + rename).

        Raises InvalidFileId for an unsafe name and FileExists (409) if the id is taken.
        Returns the FileMeta dict; CSV files get num_rows/num_columns/column_headers.
        """
        validate_file_id(file_id)
        _require_text([file_type, file_tags], "File metadata")
        if self.find_file(file_id) is not None:  # fail fast, before reading the body
            raise FileExists(f"File already exists: {file_id}")
        probe = _CsvProbe() if _is_csv(file_id, file_type) else None
        tmp, size, md5 = self._spool(self.files_dir, source, probe)
        try:
            with self._tx() as conn:
                row = self._register_file(
                    conn,
                    tmp,
                    file_id,
                    self._new_id("fil"),
                    file_type,
                    size,
                    md5,
                    probe.attributes() if probe else {},
                    file_tags,
                )
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.files_dir)
        return self._file_dict(row)

    def find_file(self, file_id: str) -> JSON | None:
        """FileMeta dict, or None if there is no such file."""
        _require_text(file_id, "File id", InvalidFileId)
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM files WHERE file_id = ?", (file_id,)).fetchone()
        return None if row is None else self._file_dict(row)

    def get_file(self, file_id: str) -> JSON:
        """FileMeta dict; NotFound if absent."""
        meta = self.find_file(file_id)
        if meta is None:
            raise NotFound(f"File {file_id} not found")
        return meta

    def file_path(self, file_id: str) -> Path:
        """Where a file's bytes are on disk."""
        return self.files_dir / str(self.get_file(file_id)["file_uid"])

    def delete_file(self, file_id: str) -> JSON:
        """Unregister a file, then remove its bytes; a FileUploadResult-shaped dict."""
        _require_text(file_id, "File id", InvalidFileId)
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM files WHERE file_id = ?", (file_id,)).fetchone()
            if row is None:
                raise NotFound(f"File {file_id} not found")
            conn.execute("DELETE FROM files WHERE file_id = ?", (file_id,))
            self._touch_files(conn)
        (self.files_dir / row["file_uid"]).unlink(missing_ok=True)
        return {"is_valid": True, "file_id": file_id, "file_uid": row["file_uid"]}

    def list_files_cursor(
        self,
        limit: int = 100,
        after: str | None = None,
        before: str | None = None,
        file_type: str | None = None,
    ) -> JSON:
        """Cursor-style metadata list (client 26.10), newest first: a FileMetaPage dict.

        ``after`` pages towards older files, ``before`` towards newer ones; ``has_more`` says
        whether more exist in the direction of travel.
        """
        if after and before:
            raise InvalidRequest("after and before are mutually exclusive")
        _require_text(file_type, "file_type")
        limit = min(max(int(limit), 1), MAX_PAGE)
        where: list[str] = []
        params: list[Any] = []
        if file_type:
            where.append("file_type = ?")
            params.append(file_type)
        if after:
            where.append("seq < ?")
            params.append(_decode_cursor(after))
        if before:
            where.append("seq > ?")
            params.append(_decode_cursor(before))
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        direction = "ASC" if before else "DESC"
        with self._tx(write=False) as conn:
            rows = conn.execute(
                f"SELECT * FROM files{clause} ORDER BY seq {direction} LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
        has_more = len(rows) > limit
        rows = rows[:limit]
        if before:
            rows.reverse()
        data = [self._file_dict(r) for r in rows]
        next_cursor = prev_cursor = None
        if rows:
            first, last = _encode_cursor(rows[0]["seq"]), _encode_cursor(rows[-1]["seq"])
            if before:
                prev_cursor, next_cursor = (first if has_more else None), last
            else:
                next_cursor, prev_cursor = (last if has_more else None), (first if after else None)
        return {
            "data": data,
            "has_more": has_more,
            "next_cursor": next_cursor,
            "prev_cursor": prev_cursor,
        }

    def list_files_shard(
        self, shard_index: int = -1, max_items_per_shard: int = -1, file_type: str | None = None
    ) -> list[JSON]:
        """Shard-style metadata list (documented form): a bare list, oldest first, ≤ 1000.

        ``max_items_per_shard`` ≤ 0 means the maximum (1000); ``shard_index`` -1 means all
        files, still capped at 1000 per answer. A ``shard_index`` beyond SQLite's 64-bit range
        is an InvalidRequest; one whose offset is beyond it is simply past the end (empty).
        """
        _require_text(file_type, "file_type")
        shard_index = _int_arg(shard_index, "shard_index", _MIN_INT)
        max_items_per_shard = _int_arg(max_items_per_shard, "max_items_per_shard", _MIN_INT)
        size = MAX_PAGE if max_items_per_shard <= 0 else min(max_items_per_shard, MAX_PAGE)
        offset = 0 if shard_index < 0 else min(shard_index * size, _MAX_INT)
        clause, params = "", []
        if file_type:
            clause, params = " WHERE file_type = ?", [file_type]
        with self._tx(write=False) as conn:
            rows = conn.execute(
                f"SELECT * FROM files{clause} ORDER BY seq LIMIT ? OFFSET ?",
                [*params, size, offset],
            ).fetchall()
        return [self._file_dict(r) for r in rows]

    def files_info(self) -> JSON:
        """``GET /files/info``; ``last_updated`` is a Unix epoch float (null if never)."""
        with self._tx(write=False) as conn:
            n, total, ingested = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(num_bytes), 0), "
                "COALESCE(SUM(file_status = ?), 0) FROM files",
                (FILE_STATUS_INGESTED,),
            ).fetchone()
            updated = conn.execute("SELECT value FROM meta WHERE key = 'files_updated'")
            stamp = updated.fetchone()[0]
        return {
            "num_files": n,
            "num_bytes": total,
            "num_ingested": ingested,
            "last_updated": float(stamp) if stamp else None,
        }

    # --- direct uploads ---

    def _upload_row(self, conn: sqlite3.Connection, upload_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM uploads WHERE id = ?", (upload_id,)
        ).fetchone()
        if row is None:
            raise UploadNotFound(f"Upload {upload_id} not found")
        return row

    @staticmethod
    def _completing(upload: sqlite3.Row) -> bool:
        """Whether a live process is completing ``upload`` (a crashed completer's mark is void:
        its pid is in the mark; where liveness cannot be checked, the mark's age decides)."""
        mark = upload["completing"]
        if mark is None:
            return False
        try:
            pid = int(str(mark).split("-", 1)[0])
        except ValueError:
            return False
        if pid == os.getpid():
            return True
        if os.name == "nt":
            try:
                since = parse_ts(upload["completing_at"])
            except (TypeError, ValueError):
                return False
            return (_utcnow() - since).total_seconds() < _STALE_TMP_SECONDS
        return _pid_alive(pid)

    def _active_upload(self, conn: sqlite3.Connection, upload_id: str) -> sqlite3.Row:
        """An upload still taking parts: 404 if unknown, 409 if completed or being completed."""
        row = self._upload_row(conn, upload_id)
        if row["status"] != "active":
            raise StateConflict(f"Upload {upload_id} is already completed")
        if self._completing(row):
            raise StateConflict(
                f"Upload {upload_id} is being completed",
                "Wait for the complete request to finish",
            )
        return row

    @staticmethod
    def _part(upload: sqlite3.Row, number: int) -> JSON:
        offset = (number - 1) * upload["part_size"]
        return {
            "part_number": number,
            "url": f"{API_PREFIX}/files/uploads/{upload['id']}/parts/{number}",
            "offset": offset,
            "length": max(min(upload["part_size"], upload["num_bytes"] - offset), 0),
            "expires_at": None,
        }

    def _initiate_response(
        self, conn: sqlite3.Connection, upload: sqlite3.Row, is_resume: bool
    ) -> JSON:
        done = {
            r[0]
            for r in conn.execute(
                "SELECT part_number FROM upload_parts WHERE upload_id = ? AND checkpointed = 1",
                (upload["id"],),
            )
        }
        parts = [self._part(upload, n) for n in range(1, upload["num_parts"] + 1) if n not in done]
        return {
            "upload_id": upload["id"],
            "file_uid": upload["file_uid"],
            "file_name": upload["filename"],
            "total_bytes": upload["num_bytes"],
            "num_parts": upload["num_parts"],
            "part_size": upload["part_size"],
            "is_resume": is_resume,
            "integrity_algorithm": "none",
            "strategy": "simple" if upload["num_parts"] == 1 else "multipart",
            "expires_at": upload["expires_at"],
            "parts": parts,
        }

    def initiate_upload(
        self,
        filename: str,
        file_type: str,
        num_bytes: int,
        resume_if_started: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> JSON:
        """Start (or resume) a direct upload: an InitiateUploadResponse dict, parts 1-based.

        409 FileExists if the filename is registered; on resume, a different type or size for
        the in-progress upload is a StateConflict.
        """
        validate_file_id(filename)
        if isinstance(num_bytes, bool) or not isinstance(num_bytes, int) or num_bytes < 0:
            raise InvalidRequest("num_bytes must be a non-negative integer")
        _int_arg(num_bytes, "num_bytes")
        if not file_type:
            raise InvalidRequest("file_type is required")
        _require_text(file_type, "file_type")
        if _int_arg(part_size, "part_size") < 1:
            raise InvalidRequest("part_size must be positive")
        if -(-num_bytes // part_size) > MAX_PARTS:
            raise InvalidRequest(
                f"num_bytes {num_bytes} is larger than a direct upload can be here: "
                f"{MAX_PARTS} parts of {part_size} bytes ({MAX_PARTS * part_size} bytes)"
            )
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM files WHERE file_id = ?", (filename,)).fetchone():
                raise FileExists(f"File already exists: {filename}")
            if resume_if_started:
                existing = conn.execute(
                    "SELECT * FROM uploads WHERE filename = ? AND status = 'active' "
                    "ORDER BY seq DESC LIMIT 1",
                    (filename,),
                ).fetchone()
                if existing is not None:
                    if existing["file_type"] != file_type or existing["num_bytes"] != num_bytes:
                        raise StateConflict(
                            f"An upload of {filename} is in progress with file_type "
                            f"{existing['file_type']} and num_bytes {existing['num_bytes']}",
                            "Resume with the same file_type and num_bytes, or abort it first",
                        )
                    return self._initiate_response(conn, existing, is_resume=True)
            now = self._now()
            upload_id = self._new_id("upl")
            conn.execute(
                "INSERT INTO uploads (id, filename, file_type, num_bytes, part_size, num_parts, "
                "file_uid, status, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    upload_id,
                    filename,
                    file_type,
                    num_bytes,
                    part_size,
                    max(1, -(-num_bytes // part_size)),
                    self._new_id("fil"),
                    "active",
                    format_ts(now),
                    format_ts(now + UPLOAD_TTL),
                ),
            )
            return self._initiate_response(conn, self._upload_row(conn, upload_id), False)

    def get_upload(self, upload_id: str) -> JSON:
        """An upload's state (for the server): its fields plus its recorded parts."""
        with self._tx(write=False) as conn:
            row = self._upload_row(conn, upload_id)
            parts = conn.execute(
                "SELECT part_number, etag, num_bytes, checkpointed FROM upload_parts "
                "WHERE upload_id = ? ORDER BY part_number",
                (upload_id,),
            ).fetchall()
        hidden = ("seq", "completing", "completing_at")
        out = {k: row[k] for k in row.keys() if k not in hidden}  # noqa: SIM118
        if out["status"] == "active" and self._completing(row):
            out["status"] = "completing"
        out["parts"] = [
            {
                "part_number": p["part_number"],
                "part_token": p["etag"],
                "num_bytes": p["num_bytes"],
                "checkpointed": bool(p["checkpointed"]),
            }
            for p in parts
        ]
        return out

    def part_urls(self, upload_id: str, part_numbers: Sequence[int]) -> JSON:
        """``parts/urls``: a PartUrlsResponse dict, in request order, each part once."""
        wanted = list(dict.fromkeys(part_numbers))
        if len(wanted) > MAX_PARTS:
            raise InvalidRequest(f"At most {MAX_PARTS} part numbers at a time")
        with self._tx(write=False) as conn:
            upload = self._active_upload(conn, upload_id)
        for n in wanted:
            self._check_part_number(upload, n)
        return {"parts": [self._part(upload, n) for n in wanted]}

    @staticmethod
    def _check_part_number(upload: sqlite3.Row, number: int) -> None:
        if not isinstance(number, int) or not 1 <= number <= upload["num_parts"]:
            raise InvalidRequest(
                f"Part number {number} is out of range 1..{upload['num_parts']} "
                f"for upload {upload['id']}"
            )

    def record_part(self, upload_id: str, part_number: int, source: Source) -> str:
        """Store one part's bytes (the presigned PUT); returns its ETag, quoted like S3.

        The part must have exactly the length the initiate response announced. The bytes are
        spooled in ``uploads/`` itself; ``uploads/<upl>/`` is only created inside the write
        transaction that has checked the upload is still taking parts, so a PUT racing an
        abort never leaves a directory behind.
        """
        with self._tx(write=False) as conn:
            upload = self._active_upload(conn, upload_id)
        self._check_part_number(upload, part_number)
        expected = self._part(upload, part_number)["length"]
        directory = self.uploads_dir / upload_id
        tmp, size, md5 = self._spool(self.uploads_dir, source)
        try:
            if size != expected:
                raise InvalidRequest(
                    f"Part {part_number} must be {expected} bytes long, got {size}"
                )
            with self._tx() as conn:
                self._active_upload(conn, upload_id)
                directory.mkdir(exist_ok=True)
                conn.execute(
                    "INSERT OR REPLACE INTO upload_parts (upload_id, part_number, etag, num_bytes, "
                    "checkpointed, created_at) VALUES (?,?,?,?,0,?)",
                    (upload_id, part_number, f'"{md5}"', size, format_ts(self._now())),
                )
                tmp.replace(directory / f"{part_number:06d}")
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(directory)
        _fsync_dir(self.uploads_dir)  # the rename's source, and a new upload directory
        return f'"{md5}"'

    @staticmethod
    def _token_pairs(parts: Iterable[Mapping[str, Any] | Any]) -> list[tuple[int, str]]:
        pairs = []
        for part in parts:
            if isinstance(part, Mapping):
                number, token = part.get("part_number"), part.get("part_token")
            else:
                number, token = (
                    getattr(part, "part_number", None),
                    getattr(part, "part_token", None),
                )
            if not isinstance(number, int) or not isinstance(token, str):
                raise InvalidRequest("Each part needs an integer part_number and a part_token")
            pairs.append((number, token))
        return pairs

    def _verify_tokens(
        self, conn: sqlite3.Connection, upload: sqlite3.Row, pairs: Sequence[tuple[int, str]]
    ) -> None:
        stored = {
            r["part_number"]: r["etag"]
            for r in conn.execute(
                "SELECT part_number, etag FROM upload_parts WHERE upload_id = ?", (upload["id"],)
            )
        }
        for number, token in pairs:
            self._check_part_number(upload, number)
            if number not in stored:
                raise InvalidRequest(f"Part {number} of upload {upload['id']} was not uploaded")
            if _strip_token(token) != _strip_token(stored[number]):
                raise InvalidRequest(f"Part token mismatch for part {number}")

    def checkpoint_parts(self, upload_id: str, parts: Iterable[Mapping[str, Any] | Any]) -> JSON:
        """Persist part tokens so a resumed upload skips these parts: CheckpointPartsResponse."""
        pairs = self._token_pairs(parts)
        with self._tx() as conn:
            upload = self._active_upload(conn, upload_id)
            self._verify_tokens(conn, upload, pairs)
            conn.executemany(
                "UPDATE upload_parts SET checkpointed = 1 WHERE upload_id = ? AND part_number = ?",
                [(upload_id, n) for n, _ in pairs],
            )
        return {"num_checkpointed": len({n for n, _ in pairs})}

    def complete_upload(
        self,
        upload_id: str,
        parts: Iterable[Mapping[str, Any] | Any] = (),
        integrity_checksum: str | None = None,
    ) -> JSON:
        """Assemble the parts in order into the file and register it: CompleteUploadResponse.

        ``parts`` lists the parts not already checkpointed (tokens with or without quotes).
        Already completed, or being completed → StateConflict (409); file id taken meanwhile →
        FileExists. The upload is first marked *completing* in a write transaction, so while
        the parts are assembled ``abort_upload``, ``record_part`` and a second complete answer
        409; if assembly fails (a part file missing: 409) the mark is removed again, leaving
        the upload in progress. ``file_attributes`` are the CSV attributes for a CSV file and
        ``{"metadata_status": "not_extracted"}`` for any other file.
        """
        pairs = self._token_pairs(parts)
        mark = f"{os.getpid()}-{secrets.token_hex(8)}"
        with self._tx() as conn:
            upload = self._active_upload(conn, upload_id)
            if integrity_checksum:
                raise InvalidRequest(
                    "This upload has integrity_algorithm 'none'; omit integrity_checksum"
                )
            self._verify_tokens(conn, upload, pairs)
            recorded = {
                r["part_number"]: bool(r["checkpointed"])
                for r in conn.execute(
                    "SELECT part_number, checkpointed FROM upload_parts WHERE upload_id = ?",
                    (upload_id,),
                )
            }
            given = {n for n, _ in pairs}
            for number in range(1, upload["num_parts"] + 1):
                if number not in recorded:
                    raise InvalidRequest(f"Part {number} of upload {upload_id} was not uploaded")
                if not recorded[number] and number not in given:
                    raise InvalidRequest(f"Missing part_token for part {number}")
            conn.execute(
                "UPDATE uploads SET completing = ?, completing_at = ? WHERE id = ?",
                (mark, format_ts(_utcnow()), upload_id),  # real time: see _completing
            )
        try:
            row = self._assemble_upload(upload, mark)
        except BaseException:
            with contextlib.suppress(StoreError, sqlite3.Error), self._tx() as conn:
                conn.execute(
                    "UPDATE uploads SET completing = NULL, completing_at = NULL "
                    "WHERE id = ? AND completing = ?",
                    (upload_id, mark),
                )
            raise
        shutil.rmtree(self.uploads_dir / upload_id, ignore_errors=True)
        filename, file_type = upload["filename"], upload["file_type"]
        attributes = json.loads(row["file_attributes"])
        if not _is_csv(filename, file_type):
            attributes = {"metadata_status": "not_extracted", **attributes}
        return {
            "file_uid": row["file_uid"],
            "file_name": row["file_id"],
            "num_bytes": row["num_bytes"],
            "file_status": "Ingested",
            "file_attributes": attributes,
        }

    def _assemble_upload(self, upload: sqlite3.Row, mark: str) -> sqlite3.Row:
        """Concatenate the parts of an upload marked ``mark`` and register the file."""
        upload_id = upload["id"]
        directory = self.uploads_dir / upload_id

        def assembled() -> Iterator[bytes]:
            for number in range(1, upload["num_parts"] + 1):
                try:
                    fh = (directory / f"{number:06d}").open("rb")
                except FileNotFoundError:
                    raise StateConflict(
                        f"Part {number} of upload {upload_id} is missing",
                        "Upload that part again, then complete the upload",
                    ) from None
                with fh:
                    while chunk := fh.read(_CHUNK):
                        yield chunk

        filename, file_type = upload["filename"], upload["file_type"]
        probe = _CsvProbe() if _is_csv(filename, file_type) else None
        tmp, size, md5 = self._spool(self.files_dir, assembled(), probe)
        try:
            if size != upload["num_bytes"]:
                raise InvalidRequest(
                    f"Upload {upload_id} has {size} bytes, expected {upload['num_bytes']}"
                )
            with self._tx() as conn:
                current = self._upload_row(conn, upload_id)
                if current["status"] != "active" or current["completing"] != mark:
                    raise StateConflict(f"Upload {upload_id} changed while being completed")
                row = self._register_file(
                    conn,
                    tmp,
                    filename,
                    upload["file_uid"],
                    file_type,
                    size,
                    md5,
                    probe.attributes() if probe else {},
                    None,
                )
                conn.execute(
                    "UPDATE uploads SET status = 'completed', completed_at = ?, "
                    "completing = NULL, completing_at = NULL WHERE id = ?",
                    (format_ts(self._now()), upload_id),
                )
                conn.execute("DELETE FROM upload_parts WHERE upload_id = ?", (upload_id,))
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.files_dir)
        return row

    def abort_upload(self, upload_id: str) -> None:
        """Discard an upload in progress and its parts (409 if completed or being completed)."""
        with self._tx() as conn:
            self._active_upload(conn, upload_id)
            conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        if is_id(upload_id, "upl"):
            shutil.rmtree(self.uploads_dir / upload_id, ignore_errors=True)


def _job_list(
    job_id: str, total: int, offset: int, limit: int | None, key: str, rows: list[JSON]
) -> JSON:
    """The envelope of the job-scoped lists: ``{job_id, total, offset, limit, <key>}``."""
    return {"job_id": job_id, "total": total, "offset": offset, "limit": limit, key: rows}
