"""Uploading a local file: simple multipart for small files, the direct flow for large ones.

Bytes are always streamed from disk in chunks, so memory stays bounded whatever the file's
size. The direct flow (reference §10.8) is initiate → part PUTs in parallel → checkpoint each
wave → complete. A server refusal aborts the upload; a network failure or an interrupt leaves
the checkpointed parts (so does a 5xx), and the next ``upload_file`` of the same file resumes them
(``resume_if_started``). Expired part URLs are re-issued and the part is sent again.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from . import _operations as ops
from . import models as m
from ._steps import Call, Flow, Parallel, RetryPolicy, Sleep, is_expired_url_error
from .errors import (
    ApiError,
    AtaiError,
    ConfigError,
    Conflict,
    NotFound,
    ServerError,
    TransportError,
)

T = TypeVar("T")

CHUNK_SIZE = 256 * 1024
"""Bytes read from disk at a time: an upload holds a few of these per part in flight (4 parts
by default), so its memory stays near 3 MB whatever the file's size (docs/performance.md, 9)."""
SIMPLE_UPLOAD_LIMIT = 32 * 1024 * 1024
"""Files up to this size go through ``POST /files`` (the server allows 512 MB)."""

MIME_BY_SUFFIX = {
    ".csv": "text/csv",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".json": "application/json",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".mp4": "video/mp4",
    ".parquet": "application/x-parquet",
}
SIMPLE_TYPES = frozenset(
    {"text/csv", "text/plain", "application/json", "image/jpeg", "image/png", "video/mp4"}
)
"""Types ``POST /files`` accepts; others (JSONL) must use the direct flow."""

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes sent, total bytes)."""


def guess_file_type(path: Path) -> str:
    """The MIME type the platform expects for a file, from its extension (§10)."""
    try:
        return MIME_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(MIME_BY_SUFFIX))
        raise ConfigError(
            f"Cannot tell the file type of {path.name!r} from its extension; "
            f"pass file_type= (known extensions: {known})"
        ) from None


class _Progress:
    """Bytes sent per part, summed for the callback; a part sent again starts from zero."""

    def __init__(self, total: int, done: int, callback: ProgressCallback | None) -> None:
        self._total = total
        self._base = done
        self._parts: dict[int, int] = {}
        self._callback = callback
        self._lock = threading.Lock()

    def restart(self, part: int) -> None:
        with self._lock:
            self._parts[part] = 0

    def add(self, part: int, count: int) -> None:
        with self._lock:
            self._parts[part] = self._parts.get(part, 0) + count
            if self._callback is not None:
                self._callback(
                    min(self._total, self._base + sum(self._parts.values())), self._total
                )


class _CountingReader:
    """A read-only file that reports what is read from it (for the simple upload)."""

    def __init__(self, file: IO[bytes], progress: _Progress) -> None:
        self._file = file
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._progress.add(0, len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            self._progress.restart(0)
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


def _read_range(
    source: Path | bytes, offset: int, length: int, progress: _Progress, part: int
) -> Iterator[bytes]:
    """Bytes ``[offset, offset + length)`` of a file (read in chunks) or of bytes in memory."""
    progress.restart(part)
    if isinstance(source, bytes):
        view = memoryview(source)[offset : offset + length]
        for start in range(0, len(view), CHUNK_SIZE):
            chunk = view[start : start + CHUNK_SIZE].tobytes()
            progress.add(part, len(chunk))
            yield chunk
        return
    path = source
    with path.open("rb") as file:
        file.seek(offset)
        remaining = length
        while remaining:
            data = file.read(min(CHUNK_SIZE, remaining))
            if not data:
                raise ConfigError(f"{path.name} became shorter while it was being uploaded")
            remaining -= len(data)
            progress.add(part, len(data))
            yield data


def upload_file(
    path: Path,
    file_id: str,
    file_type: str,
    on_progress: ProgressCallback | None,
    *,
    simple_limit: int,
    concurrency: int,
    retry: RetryPolicy,
) -> Flow[m.FileUploadResult]:
    size = path.stat().st_size
    if file_type in SIMPLE_TYPES and size <= simple_limit:
        progress = _Progress(size, 0, on_progress)

        def body() -> dict[str, Any]:
            reader = _CountingReader(path.open("rb"), progress)
            return {"files": {"file": (file_id, reader, file_type)}}

        return (yield from _simple_upload(Call("POST", ops.FILES, body=body), file_id, size, retry))
    return (
        yield from _direct_upload(path, file_id, file_type, size, on_progress, concurrency, retry)
    )


def upload_bytes(
    data: bytes,
    file_id: str,
    file_type: str,
    *,
    encode: bool = False,
    simple_limit: int = SIMPLE_UPLOAD_LIMIT,
    concurrency: int = 4,
    retry: RetryPolicy,
) -> Flow[m.FileUploadResult]:
    """``POST /files``, or ``POST /files/base64`` with the content Base64-encoded; bytes that
    ``POST /files`` would refuse (JSONL, or over ``simple_limit``) take the direct flow."""
    if not encode and (file_type not in SIMPLE_TYPES or len(data) > simple_limit):
        return (
            yield from _direct_upload(data, file_id, file_type, len(data), None, concurrency, retry)
        )
    content = base64.b64encode(data) if encode else data
    path = f"{ops.FILES}/base64" if encode else ops.FILES
    call = Call("POST", path, body=lambda: {"files": {"file": (file_id, content, file_type)}})
    return (yield from _simple_upload(call, file_id, len(data), retry))


def _simple_upload(
    call: Call, file_id: str, size: int, retry: RetryPolicy
) -> Flow[m.FileUploadResult]:
    def send() -> Flow[m.FileUploadResult]:
        response = yield call
        result: m.FileUploadResult = m.FileUploadResult.model_validate_json(response.content)
        return result

    result = yield from _store(send, file_id, size, retry)
    if not result.is_valid:
        raise ConfigError(f"The server did not accept {file_id!r} (is_valid is false)")
    return result


def _repeat(send: Callable[[], Flow[T]], retry: RetryPolicy) -> Flow[T]:
    """Run ``send`` (a POST) again after a 5xx or a lost connection, which may or may not have
    done the work: for requests whose repetition does no harm (a part checkpoint, new part
    URLs, an initiate) or whose repetition is detected (``_store``)."""
    for attempt in itertools.count():
        try:
            return (yield from send())
        except (TransportError, ServerError):
            if attempt >= retry.max_retries:
                raise
        yield Sleep(retry.delay(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def _store(
    send: Callable[[], Flow[T]], file_id: str, size: int, retry: RetryPolicy
) -> Flow[T | m.FileUploadResult]:
    """``_repeat`` for a request that stores file ``file_id``: a 409 on a repeat means an
    earlier attempt stored it, and that file is the result if its size is ``size``."""
    attempts = 0

    def once() -> Flow[T | m.FileUploadResult]:
        nonlocal attempts
        attempts += 1
        try:
            return (yield from send())
        except Conflict:
            if attempts == 1:
                raise
            stored = yield from _stored(file_id, size)
            if stored is None:
                raise
            return stored

    return (yield from _repeat(once, retry))


def _stored(file_id: str, size: int) -> Flow[m.FileUploadResult | None]:
    try:
        meta = yield from ops.get_file_metadata(file_id)
    except NotFound:
        return None
    if meta.num_bytes != size:
        return None
    return m.FileUploadResult(is_valid=True, file_id=meta.file_id, file_uid=meta.file_uid)


def _direct_upload(
    source: Path | bytes,
    file_id: str,
    file_type: str,
    size: int,
    on_progress: ProgressCallback | None,
    concurrency: int,
    retry: RetryPolicy,
) -> Flow[m.FileUploadResult]:
    """Resumes the checkpointed parts of an interrupted upload of the same file, only when
    ``source`` is a file: bytes in memory are whole, and their earlier parts may differ."""
    request = m.InitiateUploadRequest(
        filename=file_id,
        file_type=file_type,
        num_bytes=size,
        resume_if_started=isinstance(source, Path),
    )
    upload = yield from _repeat(functools.partial(ops.initiate_upload, request), retry)
    progress = _Progress(size, size - sum(p.length for p in upload.parts), on_progress)
    pending = list(upload.parts)
    unsaved: list[m.PartToken] = []
    wave_size = max(1, concurrency) * 2
    try:
        while pending:
            wave, pending = pending[:wave_size], pending[wave_size:]
            tokens = yield from _put_parts(
                source, upload.upload_id, wave, progress, concurrency, retry
            )
            if pending:
                checkpoint = functools.partial(ops.checkpoint_parts, upload.upload_id, tokens)
                yield from _repeat(checkpoint, retry)
            else:
                unsaved = tokens
        complete = functools.partial(ops.complete_upload, upload.upload_id, unsaved)
        done = yield from _store(complete, file_id, size, retry)
    except ApiError as exc:
        if not isinstance(exc, ServerError):  # a refusal; a 5xx may pass, so keep the parts
            with contextlib.suppress(AtaiError):  # the original error is the one worth showing
                yield from ops.abort_upload(upload.upload_id)
        raise
    if isinstance(done, m.FileUploadResult):  # an earlier attempt completed it
        return done
    return m.FileUploadResult(is_valid=True, file_id=done.file_name, file_uid=done.file_uid)


def _put_parts(
    source: Path | bytes,
    upload_id: str,
    parts: list[m.UploadPart],
    progress: _Progress,
    concurrency: int,
    retry: RetryPolicy,
) -> Flow[list[m.PartToken]]:
    """PUT parts in parallel; parts whose URL expired get a fresh URL and go again (once)."""
    tokens: dict[int, str] = {}
    for refreshed in (False, True):
        outcomes = yield Parallel([_part_call(source, p, progress) for p in parts], concurrency)
        expired: list[int] = []
        for part, outcome in zip(parts, outcomes, strict=True):
            if isinstance(outcome, AtaiError):
                if refreshed or not is_expired_url_error(outcome):
                    raise outcome
                expired.append(part.part_number)
            else:
                tokens[part.part_number] = outcome.headers.get("etag", "")
        if not expired:
            break
        fresh = yield from _repeat(functools.partial(ops.get_part_urls, upload_id, expired), retry)
        parts = fresh.parts
    return [m.PartToken(part_number=n, part_token=t) for n, t in sorted(tokens.items())]


def _part_call(source: Path | bytes, part: m.UploadPart, progress: _Progress) -> Call:
    def body() -> dict[str, Any]:
        return {
            "content": _read_range(source, part.offset, part.length, progress, part.part_number),
            "headers": {"Content-Length": str(part.length)},
        }

    return Call("PUT", part.url, body=body, authenticated=False)
