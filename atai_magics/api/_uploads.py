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
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from . import _operations as ops
from . import models as m
from ._steps import Call, Flow, Parallel, is_expired_url_error
from .errors import ApiError, AtaiError, ConfigError, ServerError

CHUNK_SIZE = 1024 * 1024
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
    path: Path, offset: int, length: int, progress: _Progress, part: int
) -> Iterator[bytes]:
    progress.restart(part)
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
) -> Flow[m.FileUploadResult]:
    size = path.stat().st_size
    if file_type in SIMPLE_TYPES and size <= simple_limit:
        progress = _Progress(size, 0, on_progress)

        def body() -> dict[str, Any]:
            reader = _CountingReader(path.open("rb"), progress)
            return {"files": {"file": (file_id, reader, file_type)}}

        response = yield Call("POST", ops.FILES, body=body)
        result: m.FileUploadResult = m.FileUploadResult.model_validate_json(response.content)
        if not result.is_valid:
            raise ConfigError(f"The server did not accept {file_id!r} (is_valid is false)")
        return result
    return (yield from _direct_upload(path, file_id, file_type, size, on_progress, concurrency))


def _direct_upload(
    path: Path,
    file_id: str,
    file_type: str,
    size: int,
    on_progress: ProgressCallback | None,
    concurrency: int,
) -> Flow[m.FileUploadResult]:
    request = m.InitiateUploadRequest(
        filename=file_id, file_type=file_type, num_bytes=size, resume_if_started=True
    )
    upload: m.InitiateUploadResponse = yield from ops.initiate_upload(request)
    progress = _Progress(size, size - sum(p.length for p in upload.parts), on_progress)
    pending = list(upload.parts)
    unsaved: list[m.PartToken] = []
    wave_size = max(1, concurrency) * 2
    try:
        while pending:
            wave, pending = pending[:wave_size], pending[wave_size:]
            tokens = yield from _put_parts(path, upload.upload_id, wave, progress, concurrency)
            if pending:
                yield from ops.checkpoint_parts(upload.upload_id, tokens)
            else:
                unsaved = tokens
        done: m.CompleteUploadResponse = yield from ops.complete_upload(upload.upload_id, unsaved)
    except ApiError as exc:
        if not isinstance(exc, ServerError):  # a refusal; a 5xx may pass, so keep the parts
            with contextlib.suppress(AtaiError):  # the original error is the one worth showing
                yield from ops.abort_upload(upload.upload_id)
        raise
    return m.FileUploadResult(is_valid=True, file_id=done.file_name, file_uid=done.file_uid)


def _put_parts(
    path: Path,
    upload_id: str,
    parts: list[m.UploadPart],
    progress: _Progress,
    concurrency: int,
) -> Flow[list[m.PartToken]]:
    """PUT parts in parallel; parts whose URL expired get a fresh URL and go again (once)."""
    tokens: dict[int, str] = {}
    for refreshed in (False, True):
        outcomes = yield Parallel([_part_call(path, p, progress) for p in parts], concurrency)
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
        fresh: m.PartUrlsResponse = yield from ops.get_part_urls(upload_id, expired)
        parts = fresh.parts
    return [m.PartToken(part_number=n, part_token=t) for n, t in sorted(tokens.items())]


def _part_call(path: Path, part: m.UploadPart, progress: _Progress) -> Call:
    def body() -> dict[str, Any]:
        return {
            "content": _read_range(path, part.offset, part.length, progress, part.part_number),
            "headers": {"Content-Length": str(part.length)},
        }

    return Call("PUT", part.url, body=body, authenticated=False)


def upload_bytes(
    data: bytes, file_id: str, file_type: str, *, encode: bool = False
) -> Flow[m.FileUploadResult]:
    """``POST /files``, or ``POST /files/base64`` with the content Base64-encoded."""
    if encode:
        data = base64.b64encode(data)
    path = f"{ops.FILES}/base64" if encode else ops.FILES
    response = yield Call(
        "POST", path, body=lambda: {"files": {"file": (file_id, data, file_type)}}
    )
    result: m.FileUploadResult = m.FileUploadResult.model_validate_json(response.content)
    return result
