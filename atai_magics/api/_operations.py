"""Every endpoint of the Batch + Files API as a flow (see ``_steps``), written once.

Paths follow reference §2; ids are quoted as path segments (file ids are filenames).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from . import models as m
from ._steps import Call, Flow, RetryPolicy, Sleep, is_expired_url_error, parse
from .errors import (
    AmbiguousCreateError,
    AtaiError,
    ConfigError,
    CreateInterrupted,
    ServerError,
    TransportError,
)

JOBS = "/batch/jobs"
PIPELINES = "/batch/registry/pipelines"
FILES = "/files"
SHARD_SIZE = 1000
"""The most files one shard of ``GET /files/metadata`` holds (§10.6)."""
CREATE_LOOKUP_LIMIT = 50
"""Jobs listed when looking for the one an ambiguous create may have made."""


def seg(value: str) -> str:
    """A path segment: ``/``, ``..`` and spaces stay inside it; an empty id is refused."""
    if not value:
        raise ConfigError("An empty id was given where a job, file, upload or pipeline id goes")
    quoted = quote(value, safe="")
    # A bare "." or ".." would be removed by URL normalisation (RFC 3986 §5.2.4).
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _get(model: type[Any], path: str, **params: Any) -> Flow[Any]:
    response = yield Call("GET", path, params=params)
    return parse(model, response)


def _post(model: type[Any], path: str, body: Any = None) -> Flow[Any]:
    response = yield Call("POST", path, json=body)
    return parse(model, response)


# --- jobs ---------------------------------------------------------------------------------


def create_job(
    request: m.JobRequest, retry: RetryPolicy, clock: Callable[[], float] = time.time
) -> Flow[m.JobRecord]:
    """Create a job without ever creating it twice.

    The POST is repeated only when it surely did not reach the server (connection refused,
    429). After an ambiguous failure (timeout, dropped connection, 5xx) the flow first looks
    for a job with the same name and pipeline created since the attempt began, and returns it
    if there is one; only then does it try again. Ctrl-C while the POST is out (thrown in by
    the sync client) is answered the same way: `CreateInterrupted` says what it made.
    """
    body = request.to_body()
    for attempt in range(retry.max_retries + 1):
        started = clock()
        try:
            response = yield Call("POST", JOBS, json=body)
            created: m.JobRecord = parse(m.JobRecord, response)
            return created
        except (TransportError, ServerError) as exc:
            failure: Exception = exc
        except KeyboardInterrupt as interrupt:
            try:
                made = yield from _find_created_job(request, started, clock)
            except AmbiguousCreateError:
                raise interrupt from None
            raise CreateInterrupted(request.name, made) from None
        found = yield from _find_created_job(request, started, clock)
        if found is not None:
            return found
        if attempt < retry.max_retries:
            yield Sleep(retry.delay(attempt))
    raise AmbiguousCreateError(
        f"Could not create job {request.name!r} after {retry.max_retries + 1} attempts "
        f"({failure}); no job of that name was found on the server, so none was created."
    ) from failure


def _find_created_job(
    request: m.JobRequest, started: float, clock: Callable[[], float]
) -> Flow[m.JobRecord | None]:
    """The job this client's own ambiguous create made, if the server has it."""
    try:
        response = yield Call("GET", JOBS, params={"q": request.name, "limit": CREATE_LOOKUP_LIMIT})
    except (TransportError, ServerError) as exc:
        raise AmbiguousCreateError(
            f"Creating job {request.name!r} failed in a way that leaves unknown whether the "
            f"job exists, and the server could not be asked ({exc}). Look for it with "
            "list_jobs(q=...) before submitting again."
        ) from exc
    since = _server_time(response, clock) - timedelta(seconds=clock() - started + 2)
    matches = [
        job
        for job in parse(m.JobList, response).jobs
        if job.name == request.name
        and job.pipeline_key == request.pipeline_key
        and job.created_at is not None
        and job.created_at >= since
    ]
    return min(matches, key=lambda job: job.created_at or since) if matches else None


def _server_time(response: httpx.Response, clock: Callable[[], float]) -> datetime:
    """The server's clock from its ``Date`` header, so local clock skew does not matter."""
    try:
        return parsedate_to_datetime(response.headers["date"]).astimezone(timezone.utc)
    except (KeyError, TypeError, ValueError):
        return datetime.fromtimestamp(clock(), tz=timezone.utc)


def list_jobs(**params: Any) -> Flow[m.JobList]:
    return _get(m.JobList, JOBS, **params)


def get_job(job_id: str) -> Flow[m.JobRecord]:
    return _get(m.JobRecord, f"{JOBS}/{seg(job_id)}")


def cancel_job(job_id: str) -> Flow[m.CancelResult]:
    return _post(m.CancelResult, f"{JOBS}/{seg(job_id)}/cancel")


def retry_job(job_id: str) -> Flow[m.RetryResult]:
    return _post(m.RetryResult, f"{JOBS}/{seg(job_id)}/retry")


def delete_job(job_id: str) -> Flow[m.DeleteResult]:
    response = yield Call("DELETE", f"{JOBS}/{seg(job_id)}")
    return parse(m.DeleteResult, response)  # type: ignore[no-any-return]


def get_queue() -> Flow[m.QueueDepths]:
    return _get(m.QueueDepths, f"{JOBS}/queue")


def list_events(job_id: str, **params: Any) -> Flow[m.EventList]:
    return _get(m.EventList, f"{JOBS}/{seg(job_id)}/events", **params)


def list_progress(job_id: str, **params: Any) -> Flow[m.ProgressList]:
    return _get(m.ProgressList, f"{JOBS}/{seg(job_id)}/progress", **params)


def list_inputs(job_id: str, **params: Any) -> Flow[m.InputList]:
    return _get(m.InputList, f"{JOBS}/{seg(job_id)}/inputs", **params)


def list_inputs_progress(job_id: str, **params: Any) -> Flow[m.InputProgressList]:
    return _get(m.InputProgressList, f"{JOBS}/{seg(job_id)}/inputs/progress", **params)


def get_inputs_progress_counts(job_id: str, **params: Any) -> Flow[m.InputProgressCounts]:
    return _get(m.InputProgressCounts, f"{JOBS}/{seg(job_id)}/inputs/progress/counts", **params)


def get_inputs_progress_traces(
    job_id: str, buckets: int | None, etag: str | None
) -> Flow[m.Traces | None]:
    """The traces, or ``None`` when they have not changed since ``etag`` (304)."""
    response = yield Call(
        "GET",
        f"{JOBS}/{seg(job_id)}/inputs/progress/traces",
        params={"buckets": buckets},
        headers={"If-None-Match": etag} if etag else None,
        accept=frozenset({304}),
    )
    if response.status_code == 304:
        return None
    traces: m.Traces = parse(m.Traces, response)
    traces.etag = response.headers.get("etag")
    return traces


def list_outputs(job_id: str, **params: Any) -> Flow[m.OutputList]:
    return _get(m.OutputList, f"{JOBS}/{seg(job_id)}/outputs", **params)


def target_path(dest: str | os.PathLike[str], filename: str) -> Path:
    """``dest`` itself, or ``dest/filename`` when it is a directory (or ends with a slash).

    Only the last component of a server-given name is used, so a name such as
    ``../../x`` can never write outside ``dest``.
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\x00" in name:
        raise ConfigError(f"Refusing to save a file named {filename!r}")
    path = Path(dest)
    if str(dest).endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
    return path / name if path.is_dir() else path


def download_output(
    output: m.Output, dest: str | os.PathLike[str], api_root_path: str
) -> Flow[Path]:
    """Stream an output to ``dest``; re-list once for a fresh URL when the old one expired."""
    target = target_path(dest, output.data.filename)
    for attempt in range(2):
        ref = output.data.ref
        relative = ref.startswith("/")
        if relative and ref.startswith(api_root_path + "/"):
            ref = ref[len(api_root_path) :]
        try:
            yield Call("GET", ref, authenticated=relative, stream_to=target)
            return target
        except AtaiError as exc:
            if attempt or relative or not output.job_id or not is_expired_url_error(exc):
                raise
        output = yield from _relist_output(output)
    raise AssertionError("unreachable")


def _relist_output(output: m.Output) -> Flow[m.Output]:
    """The same output with a freshly signed URL (URLs are re-signed on every list)."""
    assert output.job_id is not None
    offset = 0
    while True:
        page: m.OutputList = yield from list_outputs(
            output.job_id, input_id=output.input_id, offset=offset, limit=100
        )
        for fresh in page.outputs:
            if fresh.id == output.id:
                return fresh
        offset += len(page.outputs)
        if not page.outputs or offset >= page.total:
            raise FileNotFoundError(f"Output {output.id} is no longer listed by its job")


# --- pipelines ----------------------------------------------------------------------------


def list_pipelines(**params: Any) -> Flow[m.PipelineList]:
    return _get(m.PipelineList, PIPELINES, **params)


def get_pipeline(pipeline_id: str) -> Flow[m.Pipeline]:
    return _get(m.Pipeline, f"{PIPELINES}/{seg(pipeline_id)}")


def get_pipeline_schema(pipeline_id: str) -> Flow[m.PipelineSchema]:
    return _get(m.PipelineSchema, f"{PIPELINES}/{seg(pipeline_id)}/schema")


# --- files --------------------------------------------------------------------------------


def delete_file(file_id: str) -> Flow[m.FileUploadResult]:
    response = yield Call("DELETE", f"{FILES}/delete/{seg(file_id)}")
    return parse(m.FileUploadResult, response)  # type: ignore[no-any-return]


def download_file(file_id: str, dest: str | os.PathLike[str]) -> Flow[Path]:
    target = target_path(dest, file_id)
    yield Call("GET", f"{FILES}/download/{seg(file_id)}", stream_to=target)
    return target


def get_files_info() -> Flow[m.FilesInfo]:
    return _get(m.FilesInfo, f"{FILES}/info")


def list_files(**params: Any) -> Flow[m.FileMetaPage]:
    """One page of file metadata, in either list style (§10.6): a bare array is wrapped."""
    response = yield Call("GET", f"{FILES}/metadata", params=params)
    body = response.json()
    if isinstance(body, list):
        items = [m.FileMeta.model_validate(item) for item in body]
        return m.FileMetaPage(data=items, style="shard")
    return m.FileMetaPage.model_validate(body)


def next_files_query(page: m.FileMetaPage, query: dict[str, Any]) -> dict[str, Any] | None:
    """The query of the next page of files, or ``None`` after the last.

    A cursor-style server is followed by ``next_cursor``. A shard-style server (bare arrays)
    is walked shard by shard from 0, until a shard comes back short; the first answer of such
    a server, to a cursor query, is only used to learn its style.
    """
    if page.style == "cursor":
        if page.has_more and page.next_cursor:
            return {**query, "after": page.next_cursor}
        return None
    if "shard_index" not in query:
        return {
            "shard_index": 0,
            "max_items_per_shard": SHARD_SIZE,
            "file_type": query.get("file_type"),
        }
    if len(page.data) < query["max_items_per_shard"]:
        return None
    return {**query, "shard_index": query["shard_index"] + 1}


def next_offset(page: m.Page[Any], offset: int) -> int | None:
    """The offset of the next page of a Batch API list, or ``None`` after the last."""
    offset += len(page.rows)
    return None if not page.rows or offset >= page.total else offset


def get_file_metadata(file_id: str) -> Flow[m.FileMeta]:
    return _get(m.FileMeta, f"{FILES}/metadata/{seg(file_id)}")


def initiate_upload(request: m.InitiateUploadRequest) -> Flow[m.InitiateUploadResponse]:
    return _post(m.InitiateUploadResponse, f"{FILES}/uploads/initiate", request.to_json_dict())


def get_part_urls(upload_id: str, part_numbers: list[int]) -> Flow[m.PartUrlsResponse]:
    return _post(
        m.PartUrlsResponse,
        f"{FILES}/uploads/{seg(upload_id)}/parts/urls",
        {"part_numbers": part_numbers},
    )


def checkpoint_parts(upload_id: str, parts: list[m.PartToken]) -> Flow[m.CheckpointPartsResponse]:
    return _post(
        m.CheckpointPartsResponse,
        f"{FILES}/uploads/{seg(upload_id)}/parts/checkpoint",
        {"parts": [p.to_json_dict() for p in parts]},
    )


def complete_upload(
    upload_id: str, parts: list[m.PartToken], integrity_checksum: str | None = None
) -> Flow[m.CompleteUploadResponse]:
    body = m.CompleteUploadRequest(parts=parts, integrity_checksum=integrity_checksum)
    return _post(
        m.CompleteUploadResponse,
        f"{FILES}/uploads/{seg(upload_id)}/complete",
        body.model_dump(mode="json", exclude_none=True),
    )


def abort_upload(upload_id: str) -> Flow[None]:
    yield Call("POST", f"{FILES}/uploads/{seg(upload_id)}/abort", json={})
