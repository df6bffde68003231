"""Every public method of ``Client`` and ``AsyncClient`` against a recording mock transport.

For each endpoint (reference ``archetype-batch-api.md`` §2, §§4-10): the HTTP method, the path
under ``/v0.5``, the query (``None`` dropped, lists repeated), the JSON body, the headers, and
the parsed return value. Then pagination, base URL and key resolution, the status → error
mapping, secret hygiene, ETag/304 on traces, and streamed downloads. Every test that talks to
the API runs once with ``Client`` and once with ``AsyncClient`` (the ``api`` fixture).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest

from atai_magics import __version__
from atai_magics.api import models as m
from atai_magics.api.client import AsyncClient, Client
from atai_magics.api.errors import (
    ApiError,
    AtaiError,
    AuthError,
    ConfigError,
    Conflict,
    InvalidRequest,
    InvalidResponse,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)

KEY = "sk_canary_1234567890"
ROOT = "/v0.5"
JOB_ID = "job_2abc3def4ghi5jkl6mno7pqr"

# --- the API driver: one test body, both clients --------------------------------------------


class Api:
    """Calls a client method with ``Client`` (``kind="sync"``) or ``AsyncClient``."""

    def __init__(
        self,
        kind: str,
        make_client: Callable[..., Client],
        make_async_client: Callable[..., AsyncClient],
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self._make = make_client
        self._make_async = make_async_client
        self._client_kwargs = client_kwargs or {}

    def client(self, **client_kwargs: Any) -> Api:
        """The same driver, with other constructor arguments."""
        merged = {**self._client_kwargs, **client_kwargs}
        return Api(self.kind, self._make, self._make_async, merged)

    def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            with self._make(**self._client_kwargs) as client:
                return getattr(client, name)(*args, **kwargs)

        async def go() -> Any:
            async with self._make_async(**self._client_kwargs) as client:
                method = getattr(client, name)
                assert inspect.iscoroutinefunction(method), f"AsyncClient.{name} is not async"
                return await method(*args, **kwargs)

        return asyncio.run(go())

    def iterate(self, name: str, *args: Any, requests: list[Any], **kwargs: Any) -> list[Any]:
        """All items of an ``iter_*`` method; checks it is lazy (no request before the first)."""
        if self.kind == "sync":
            with self._make(**self._client_kwargs) as client:
                items = getattr(client, name)(*args, **kwargs)
                assert isinstance(items, Iterator)
                assert requests == [], "iter_* sent a request before it was iterated"
                return list(items)

        async def go() -> list[Any]:
            async with self._make_async(**self._client_kwargs) as client:
                items = getattr(client, name)(*args, **kwargs)
                assert inspect.isasyncgen(items), f"AsyncClient.{name} is not an async generator"
                assert isinstance(items, AsyncIterator)
                assert requests == [], "iter_* sent a request before it was iterated"
                return [item async for item in items]

        return asyncio.run(go())


@pytest.fixture(params=["sync", "async"])
def api(
    request: pytest.FixtureRequest,
    make_client: Callable[..., Client],
    make_async_client: Callable[..., AsyncClient],
) -> Api:
    return Api(request.param, make_client, make_async_client)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else None


def query_of(request: httpx.Request) -> list[tuple[str, str]]:
    return list(request.url.params.multi_items())


def assert_api_headers(request: httpx.Request, key: str = KEY) -> None:
    assert request.headers["Authorization"] == f"Bearer {key}"
    assert request.headers["User-Agent"] == f"atai-magics/{__version__}"
    assert request.url.scheme == "https"
    assert request.url.host == "api.test"


def dump(model: m.ApiModel) -> Any:
    return model.model_dump(mode="json", exclude_unset=True)


# --- example resources (reference §§4-10) ----------------------------------------------------

JOB = {
    "id": JOB_ID,
    "org_id": "org_1abc2def3ghi4jkl",
    "name": "image-classification-run",
    "pipeline_type": "batch",
    "pipeline_key": "image-classifier",
    "pipeline_version": "1.2.0",
    "status": "PENDING",
    "parameters": {"classifier": {"parallelism": 2, "config": {"model": "resnet50"}}},
    "retry_count": 0,
    "preemption_count": 0,
    "queue_position": 3,
    "queue_depth": 5,
    "created_at": "2026-04-14T10:00:00Z",
    "updated_at": "2026-04-14T10:00:00Z",
    "started_at": None,
    "completed_at": None,
    "failed_at": None,
    "cancelled_at": None,
    "error": None,
}
EVENT = {
    "id": 1001,
    "event_type": "inference.success",
    "level": "SUCCESS",
    "message": "Inference completed for input",
    "payload": {"duration_ms": 1250},
    "input_id": "inp_abc123def456",
    "index": 0,
    "created_at": "2026-04-14T10:05:00Z",
}
PROGRESS = {
    "id": 501,
    "kind": "inference",
    "step": 1,
    "message": "Processing input 1 of 10",
    "metrics": {"percent_complete": 10, "items_processed": 1, "items_total": 10},
    "payload": {},
    "input_id": "inp_abc123def456",
    "index": 0,
    "created_at": "2026-04-14T10:03:00Z",
}
DATA_REF = {
    "ref": "https://storage.example.com/files/tep_inference.csv",
    "filename": "tep_inference.csv",
    "file_type": "text/csv",
    "file_extension": ".csv",
    "num_bytes": 245760,
    "metadata": {},
    "file_tags": None,
    "file_attributes": None,
}
INPUT = {
    "id": "inp_abc123def456",
    "job_id": JOB_ID,
    "port_name": "worker.inference",
    "file_id": "tep_inference.csv",
    "data": DATA_REF,
    "status": "completed",
    "error_message": None,
    "created_at": "2026-04-14T10:00:00Z",
    "completed_at": "2026-04-14T10:05:00Z",
}
OUTPUT = {
    "id": "out_abc123def456",
    "job_id": JOB_ID,
    "port_name": "worker.results",
    "input_id": "inp_abc123def456",
    "input_file_id": "tep_inference.csv",
    "data": {
        "ref": "https://s3.example.com/bucket/pred_part_0.csv?X-Amz-Signature=abc",
        "filename": "pred_part_0.csv",
        "num_bytes": 147016,
    },
    "expires_at": "2026-04-10T00:21:12Z",
    "created_at": "2026-04-09T23:21:12Z",
}
PIPELINE = {
    "id": "ppl_abc123def456",
    "pipeline_key": "machine-state-classification",
    "pipeline_version": "1.1.1",
    "name": "Machine state classification",
    "pipeline_type": "batch",
    "components": {"worker": "cmp_xyz789"},
    "default_config": {"worker": {"parallelism": 1, "config": {}}},
    "inputs": {
        "worker.inference": {
            "name": "inference",
            "mode": "plain_file_list",
            "distribute": "scatter",
            "required": True,
            "tracked": True,
        }
    },
    "outputs": {"worker.results": {"name": "results"}},
    "visibility": "platform",
    "status": "published",
    "created_at": "2026-04-01T00:00:00Z",
}
SCHEMA = {
    "id": "ppl_abc123def456",
    "pipeline_key": "machine-state-classification",
    "pipeline_version": "1.1.1",
    "user_schema": {"type": "object", "properties": {"window_size": {"type": "integer"}}},
    "config_schema": {"type": "object"},
    "inputs": {"worker.inference": {"mode": "plain_file_list", "tracked": True}},
    "outputs": {"worker.results": {"name": "results"}},
}
FILE_META = {
    "file_id": "volve_inference.csv",
    "file_uid": "fil_32b6x7g3nt8q4vwmnf73rc9cqb",
    "is_valid": True,
    "file_type": "text/csv",
    "num_bytes": 1024,
    "file_status": "FILE_STATUS_INGESTED",
    "ingested": True,
    "file_index": 3,
    "file_tags": {},
    "file_attributes": {"num_rows": 10, "num_columns": 2, "column_headers": ["a", "b"]},
}
UPLOAD_PART = {
    "part_number": 1,
    "url": "https://storage.example.com/upl_1/1?X-Amz-Signature=sig",
    "offset": 0,
    "length": 5,
    "expires_at": "2026-04-28T15:32:18Z",
}
TRACES = {
    "job_id": JOB_ID,
    "bucket_seconds": 6.5,
    "latest_event_at": "2026-04-14T10:05:00Z",
    "points": [
        {
            "t": "2026-04-14T10:05:00Z",
            "step": 2,
            "files": {"completed": 1, "failed": 1},
            "items": {"inference": {"success": 10, "failed": 2}},
        }
    ],
}
UPLOAD_RESULT = {
    "is_valid": True,
    "file_id": "data.csv",
    "file_uid": "fil_5hx819ysp38n2rt1f5fv0wsxgh",
}


def page(items_key: str, items: list[Any], total: int | None = None, **extra: Any) -> Any:
    return {
        "total": len(items) if total is None else total,
        "offset": 0,
        "limit": 10,
        **extra,
        items_key: items,
    }


# --- the method table -------------------------------------------------------------------------

NO_BODY = object()
"""The request must have no body at all."""


@dataclass
class Spec:
    """One call of a client method and everything the request and the result must be."""

    name: str
    args: tuple[Any, ...]
    method: str
    path: str
    """The expected raw path (percent-encoded) under ``/v0.5``; ``{id}`` is ``args[0]``."""
    response: Any
    model: type[Any] | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    query: list[tuple[str, str]] = field(default_factory=list)
    body: Any = NO_BODY
    check: Callable[[Any], None] | None = None
    id: str | None = None
    """The id placed in ``{id}`` (and passed as ``args[0]``) by the quoting test."""

    def __post_init__(self) -> None:
        if self.id is not None:
            self.args = (self.id, *self.args)

    @property
    def label(self) -> str:
        return self.name + ("" if not self.kwargs else "+" + "+".join(self.kwargs))


def _check_job(job: m.JobRecord) -> None:
    assert job.status is m.JobStatus.PENDING
    assert job.created_at == datetime(2026, 4, 14, 10, tzinfo=timezone.utc)
    assert job.parameters["classifier"].config == {"model": "resnet50"}


def _check_traces(traces: m.Traces) -> None:
    assert traces.etag == '"v1"'
    assert traces.points[0].items["inference"].failed == 2


def _check_shard_page(result: m.FileMetaPage) -> None:
    assert result.style == "shard"
    assert result.has_more is False
    assert [f.file_id for f in result.data] == ["volve_inference.csv"]


def _check_cursor_page(result: m.FileMetaPage) -> None:
    assert result.style == "cursor"
    assert result.next_cursor == "cur_2"
    assert result.data[0].file_status is m.FileStatus.INGESTED


PARTS = [
    m.PartToken(part_number=1, part_token='"etag-1"'),
    m.PartToken(part_number=2, part_token='"etag-2"'),
]
PARTS_JSON = [
    {"part_number": 1, "part_token": '"etag-1"'},
    {"part_number": 2, "part_token": '"etag-2"'},
]

SPECS: list[Spec] = [
    # jobs (§4)
    Spec(
        "create_job",
        (
            {
                "name": "run",
                "pipeline_key": "machine-state-classification",
                "inputs": {"worker.inference": [{"file_id": "a.csv"}]},
                "parameters": {"worker": {"parallelism": 2, "config": {"window": 8}}},
            },
        ),
        "POST",
        "/batch/jobs",
        JOB,
        m.JobRecord,
        body={
            "name": "run",
            "pipeline_type": "batch",
            "pipeline_key": "machine-state-classification",
            "inputs": {"worker.inference": [{"file_id": "a.csv"}]},
            "parameters": {"worker": {"parallelism": 2, "config": {"window": 8}}},
        },
        check=_check_job,
    ),
    Spec(
        "create_job",
        (
            m.JobRequest(
                name="n-shot",
                pipeline_key="activity-detection",
                pipeline_version="2.0.0",
                inputs={
                    "worker.examples": [
                        m.FileInputItem(file_id="walk.csv", metadata={"class": "walk"})
                    ],
                    "worker.fine_tune_checkpoint": [
                        m.CheckpointInputItem(kind="checkpoint", checkpoint_id="ckp_1")
                    ],
                },
            ),
        ),
        "POST",
        "/batch/jobs",
        JOB,
        m.JobRecord,
        body={
            "name": "n-shot",
            "pipeline_type": "batch",
            "pipeline_key": "activity-detection",
            "pipeline_version": "2.0.0",
            "inputs": {
                "worker.examples": [{"file_id": "walk.csv", "metadata": {"class": "walk"}}],
                "worker.fine_tune_checkpoint": [{"kind": "checkpoint", "checkpoint_id": "ckp_1"}],
            },
            "parameters": {},
        },
    ),
    Spec(
        "list_jobs",
        (),
        "GET",
        "/batch/jobs",
        page("jobs", [JOB], total=31),
        m.JobList,
        kwargs={
            "pipeline_type": "batch",
            "status": "RUNNING",
            "q": "volve run",
            "offset": 10,
            "limit": 5,
        },
        query=[
            ("pipeline_type", "batch"),
            ("status", "RUNNING"),
            ("q", "volve run"),
            ("offset", "10"),
            ("limit", "5"),
        ],
        check=lambda r: (r.total == 31 and r.rows[0].id == JOB_ID) or pytest.fail(repr(r)),
    ),
    Spec("list_jobs", (), "GET", "/batch/jobs", page("jobs", []), m.JobList, kwargs={}),
    Spec(
        "list_jobs",
        (),
        "GET",
        "/batch/jobs",
        page("jobs", []),
        m.JobList,
        kwargs={"status": None, "q": "x", "limit": None},
        query=[("q", "x")],
    ),
    Spec("get_job", (), "GET", "/batch/jobs/{id}", JOB, m.JobRecord, id=JOB_ID, check=_check_job),
    Spec(
        "cancel_job",
        (),
        "POST",
        "/batch/jobs/{id}/cancel",
        {"id": JOB_ID, "status": "CANCELLED", "cancelled_at": "2026-04-14T10:10:00Z"},
        m.CancelResult,
        id=JOB_ID,
        check=lambda r: r.status is m.JobStatus.CANCELLED or pytest.fail(repr(r)),
    ),
    Spec(
        "retry_job",
        (),
        "POST",
        "/batch/jobs/{id}/retry",
        {"id": JOB_ID, "status": "PENDING", "retry_count": 1},
        m.RetryResult,
        id=JOB_ID,
    ),
    Spec(
        "delete_job",
        (),
        "DELETE",
        "/batch/jobs/{id}",
        {"id": JOB_ID, "deleted": True},
        m.DeleteResult,
        id=JOB_ID,
    ),
    Spec(
        "get_queue",
        (),
        "GET",
        "/batch/jobs/queue",
        {
            "queues": [
                {"pipeline_type": "batch", "depth": 12},
                {"pipeline_type": "training", "depth": 3},
            ]
        },
        m.QueueDepths,
        check=lambda r: [q.depth for q in r.queues] == [12, 3] or pytest.fail(repr(r)),
    ),
    # events, progress (§§5-6)
    Spec(
        "list_events",
        (),
        "GET",
        "/batch/jobs/{id}/events",
        page("events", [EVENT], job_id=JOB_ID),
        m.EventList,
        id=JOB_ID,
        kwargs={
            "level": "SUCCESS",
            "event_type": "inference.success",
            "input_id": "inp_1",
            "offset": 0,
            "limit": 2,
        },
        query=[
            ("level", "SUCCESS"),
            ("event_type", "inference.success"),
            ("input_id", "inp_1"),
            ("offset", "0"),
            ("limit", "2"),
        ],
        check=lambda r: r.events[0].level is m.EventLevel.SUCCESS or pytest.fail(repr(r)),
    ),
    Spec(
        "list_progress",
        (),
        "GET",
        "/batch/jobs/{id}/progress",
        page("entries", [PROGRESS], job_id=JOB_ID),
        m.ProgressList,
        id=JOB_ID,
        kwargs={"kind": "inference", "input_id": "inp_1", "offset": 5, "limit": 1},
        query=[("kind", "inference"), ("input_id", "inp_1"), ("offset", "5"), ("limit", "1")],
    ),
    # inputs and outputs (§7)
    Spec(
        "list_inputs",
        (),
        "GET",
        "/batch/jobs/{id}/inputs",
        page("inputs", [INPUT], job_id=JOB_ID),
        m.InputList,
        id=JOB_ID,
        kwargs={"port_name": "worker.inference", "status": "completed", "offset": 0, "limit": 10},
        query=[
            ("port_name", "worker.inference"),
            ("status", "completed"),
            ("offset", "0"),
            ("limit", "10"),
        ],
        check=lambda r: r.inputs[0].status is m.InputStatus.COMPLETED or pytest.fail(repr(r)),
    ),
    Spec(
        "list_inputs_progress",
        (),
        "GET",
        "/batch/jobs/{id}/inputs/progress",
        page(
            "items",
            [{"input": INPUT, "latest_progress": PROGRESS, "step": 1}],
            job_id=JOB_ID,
        ),
        m.InputProgressList,
        id=JOB_ID,
        kwargs={
            "port_name": "worker.inference",
            "status": ["processing", "pending"],
            "order": "desc",
            "offset": 0,
            "limit": 20,
        },
        query=[
            ("port_name", "worker.inference"),
            ("status", "processing"),
            ("status", "pending"),
            ("order", "desc"),
            ("offset", "0"),
            ("limit", "20"),
        ],
    ),
    Spec(
        "list_inputs_progress",
        (),
        "GET",
        "/batch/jobs/{id}/inputs/progress",
        page("items", [], job_id=JOB_ID),
        m.InputProgressList,
        id=JOB_ID,
        kwargs={"status": "failed"},
        query=[("status", "failed")],
    ),
    Spec(
        "get_inputs_progress_counts",
        (),
        "GET",
        "/batch/jobs/{id}/inputs/progress/counts",
        {"job_id": JOB_ID, "pending": 0, "processing": 1, "completed": 8, "failed": 1},
        m.InputProgressCounts,
        id=JOB_ID,
        kwargs={"port_name": "worker.inference"},
        query=[("port_name", "worker.inference")],
        check=lambda r: r.total == 10 or pytest.fail(repr(r)),
    ),
    Spec(
        "get_inputs_progress_traces",
        (),
        "GET",
        "/batch/jobs/{id}/inputs/progress/traces",
        httpx.Response(200, json=TRACES, headers={"ETag": '"v1"'}),
        m.Traces,
        id=JOB_ID,
        kwargs={"buckets": 50},
        query=[("buckets", "50")],
        check=_check_traces,
    ),
    Spec(
        "list_outputs",
        (),
        "GET",
        "/batch/jobs/{id}/outputs",
        page("outputs", [OUTPUT], total=1375, job_id=JOB_ID),
        m.OutputList,
        id=JOB_ID,
        kwargs={"port_name": "worker.results", "input_id": "inp_1", "offset": 50, "limit": 50},
        query=[
            ("port_name", "worker.results"),
            ("input_id", "inp_1"),
            ("offset", "50"),
            ("limit", "50"),
        ],
    ),
    # pipelines (§8)
    Spec(
        "list_pipelines",
        (),
        "GET",
        "/batch/registry/pipelines",
        page("pipelines", [PIPELINE]),
        m.PipelineList,
        kwargs={
            "pipeline_type": "batch",
            "visibility": "platform",
            "status": "published",
            "offset": 0,
            "limit": 20,
        },
        query=[
            ("pipeline_type", "batch"),
            ("visibility", "platform"),
            ("status", "published"),
            ("offset", "0"),
            ("limit", "20"),
        ],
    ),
    Spec(
        "get_pipeline",
        (),
        "GET",
        "/batch/registry/pipelines/{id}",
        PIPELINE,
        m.Pipeline,
        id="ppl_abc123def456",
        check=lambda r: r.inputs["worker.inference"].required is True or pytest.fail(repr(r)),
    ),
    Spec(
        "get_pipeline_schema",
        (),
        "GET",
        "/batch/registry/pipelines/{id}/schema",
        SCHEMA,
        m.PipelineSchema,
        id="ppl_abc123def456",
    ),
    # files (§10)
    Spec(
        "delete_file",
        (),
        "DELETE",
        "/files/delete/{id}",
        {"is_valid": True, "file_id": "volve.csv", "file_uid": "fil_1"},
        m.FileUploadResult,
        id="volve.csv",
    ),
    Spec(
        "get_files_info",
        (),
        "GET",
        "/files/info",
        {
            "num_files": 142,
            "num_bytes": 4831785472,
            "num_ingested": 138,
            "last_updated": 1745803938.214,
        },
        m.FilesInfo,
        check=lambda r: r.last_updated == 1745803938.214 or pytest.fail(repr(r)),
    ),
    Spec(
        "list_files",
        (),
        "GET",
        "/files/metadata",
        {"data": [FILE_META], "has_more": True, "next_cursor": "cur_2", "prev_cursor": None},
        m.FileMetaPage,
        kwargs={"limit": 10, "after": "cur_1", "file_type": "text/csv"},
        query=[("limit", "10"), ("after", "cur_1"), ("file_type", "text/csv")],
        check=_check_cursor_page,
    ),
    Spec(
        "list_files",
        (),
        "GET",
        "/files/metadata",
        [FILE_META],
        None,
        kwargs={"shard_index": 0, "max_items_per_shard": 1000, "before": None},
        query=[("shard_index", "0"), ("max_items_per_shard", "1000")],
        check=_check_shard_page,
    ),
    Spec(
        "get_file_metadata",
        (),
        "GET",
        "/files/metadata/{id}",
        FILE_META,
        m.FileMeta,
        id="volve_inference.csv",
    ),
    Spec(
        "initiate_upload",
        ("big.jsonl", "application/x-ndjson", 1073741824),
        "POST",
        "/files/uploads/initiate",
        {
            "upload_id": "upl_1mehceg8cn80qsekh46143whrx",
            "file_uid": "fil_1",
            "file_name": "big.jsonl",
            "num_parts": 1,
            "strategy": "multipart",
            "parts": [UPLOAD_PART],
        },
        m.InitiateUploadResponse,
        kwargs={"resume_if_started": True},
        body={
            "filename": "big.jsonl",
            "file_type": "application/x-ndjson",
            "num_bytes": 1073741824,
            "resume_if_started": True,
        },
    ),
    Spec(
        "initiate_upload",
        ("big.jsonl", "application/x-ndjson", 10),
        "POST",
        "/files/uploads/initiate",
        {"upload_id": "upl_1", "num_parts": 0, "parts": []},
        m.InitiateUploadResponse,
        body={
            "filename": "big.jsonl",
            "file_type": "application/x-ndjson",
            "num_bytes": 10,
            "resume_if_started": False,
        },
    ),
    Spec(
        "get_part_urls",
        ([42, 43],),
        "POST",
        "/files/uploads/{id}/parts/urls",
        {"parts": [UPLOAD_PART, {**UPLOAD_PART, "part_number": 2, "offset": 5}]},
        m.PartUrlsResponse,
        id="upl_1",
        body={"part_numbers": [42, 43]},
    ),
    Spec(
        "checkpoint_parts",
        (PARTS,),
        "POST",
        "/files/uploads/{id}/parts/checkpoint",
        {"num_checkpointed": 2},
        m.CheckpointPartsResponse,
        id="upl_1",
        body={"parts": PARTS_JSON},
    ),
    Spec(
        "complete_upload",
        (PARTS,),
        "POST",
        "/files/uploads/{id}/complete",
        {
            "file_uid": "fil_5hx819ysp38n2rt1f5fv0wsxgh",
            "file_name": "training-data.parquet",
            "num_bytes": 1073741824,
            "file_status": "Registered",
            "file_attributes": {"metadata_status": "not_extracted"},
        },
        m.CompleteUploadResponse,
        id="upl_1",
        kwargs={"integrity_checksum": "AAAAAA=="},
        body={"parts": PARTS_JSON, "integrity_checksum": "AAAAAA=="},
    ),
    Spec(
        "complete_upload",
        ([],),
        "POST",
        "/files/uploads/{id}/complete",
        {"file_name": "training-data.parquet"},
        m.CompleteUploadResponse,
        id="upl_1",
        body={"parts": []},
    ),
    Spec(
        "abort_upload",
        (),
        "POST",
        "/files/uploads/{id}/abort",
        httpx.Response(200),
        None,
        id="upl_1",
        body={},
    ),
]

SPECIAL_TESTS = {
    "upload_file": "test_upload_file_small_is_multipart",
    "upload_bytes": "test_upload_bytes_and_base64",
    "upload_base64": "test_upload_bytes_and_base64",
    "download_file": "test_download_file_streams_to_dest",
    "download_output": "test_download_output",
    "iter_jobs": "test_iter_offset_pagination",
    "iter_events": "test_iter_offset_pagination",
    "iter_progress": "test_iter_offset_pagination",
    "iter_outputs": "test_iter_offset_pagination",
    "iter_files": "test_iter_files_cursor_style",
    "close": "test_close",
    "aclose": "test_close",
    "async_twin": "test_async_twin_shares_the_endpoint_and_the_key",
}
"""Methods whose tests are not a row of ``SPECS``, and the test that covers each."""


def _public_methods(cls: type) -> set[str]:
    return {
        name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")
    }


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_every_public_method_is_covered(cls: type) -> None:
    only_other = {"aclose"} if cls is Client else {"close", "async_twin"}
    covered = ({spec.name for spec in SPECS} | set(SPECIAL_TESTS)) - only_other
    public = _public_methods(cls)
    assert not public - covered, f"{cls.__name__} methods without a test: {public - covered}"
    assert not covered - public, f"tests of methods {cls.__name__} lacks: {covered - public}"
    for test_name in set(SPECIAL_TESTS.values()):
        assert callable(globals().get(test_name)), f"{test_name} is not defined"


def test_both_clients_have_the_same_methods() -> None:
    sync_only = {"close", "async_twin"}
    assert _public_methods(Client) - sync_only == _public_methods(AsyncClient) - {"aclose"}
    for name in _public_methods(Client) - sync_only:
        sync_params = inspect.signature(getattr(Client, name)).parameters
        async_params = inspect.signature(getattr(AsyncClient, name)).parameters
        assert list(sync_params) == list(async_params), name
        is_async_gen = inspect.isasyncgenfunction(getattr(AsyncClient, name))
        is_coroutine = inspect.iscoroutinefunction(getattr(AsyncClient, name))
        if name.startswith("iter_"):
            assert not is_coroutine, name
        else:
            assert is_coroutine and not is_async_gen, name


def test_async_twin_shares_the_endpoint_and_the_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "job_1", "status": "RUNNING"})

    client = Client("http://127.0.0.1:9/v0.5", api_key="canary-key", max_retries=5)
    twin = client.async_twin(max_retries=0, transport=httpx.MockTransport(handler))
    assert isinstance(twin, AsyncClient) and twin.base_url == client.base_url
    assert twin.retry.max_retries == 0 and client.async_twin().retry.max_retries == 5
    assert asyncio.run(twin.get_job("job_1")).status.value == "RUNNING"
    assert seen[0].headers["Authorization"] == "Bearer canary-key"
    assert str(seen[0].url) == "http://127.0.0.1:9/v0.5/batch/jobs/job_1"
    assert "canary" not in repr(twin)


def _answer(response: Any) -> httpx.Response:
    if isinstance(response, httpx.Response):
        return response
    return httpx.Response(200, json=response)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_endpoint(spec: Spec, api: Api, mock_api: Any) -> None:
    answer = _answer(spec.response)
    mock_api.handler = lambda request: httpx.Response(
        answer.status_code, headers=answer.headers, content=answer.content
    )

    result = api.run(spec.name, *spec.args, **spec.kwargs)

    assert len(mock_api.requests) == 1
    request = mock_api.last
    assert request.method == spec.method
    path = spec.path.replace("{id}", spec.id or "")
    assert request.url.raw_path.split(b"?")[0].decode() == ROOT + path
    assert query_of(request) == spec.query
    assert_api_headers(request)
    if spec.body is NO_BODY:
        assert request.content == b""
        assert "content-type" not in request.headers
    else:
        assert request.headers["Content-Type"] == "application/json"
        assert body_of(request) == spec.body

    if spec.model is None and spec.name == "abort_upload":
        assert result is None
    else:
        expected_model = spec.model or m.FileMetaPage
        assert type(result) is expected_model
        if spec.model is not None:
            assert dump(result) == json.loads(answer.content)
    if spec.check is not None:
        spec.check(result)


ID_SPECS = [spec for spec in SPECS if spec.id is not None]
AWKWARD_IDS = [
    ("my file.csv", "my%20file.csv"),
    ("a/b.csv", "a%2Fb.csv"),
    ("..", "%2E%2E"),
    (".", "%2E"),
    ("../../files/info", "..%2F..%2Ffiles%2Finfo"),
    ("a?b#c&d=e", "a%3Fb%23c%26d%3De"),
    ("sensör 100%.csv", "sens%C3%B6r%20100%25.csv"),
]


@pytest.mark.parametrize(("raw", "quoted"), AWKWARD_IDS, ids=[q for _, q in AWKWARD_IDS])
@pytest.mark.parametrize("spec", ID_SPECS, ids=lambda s: s.label)
def test_ids_are_one_quoted_path_segment(
    spec: Spec, raw: str, quoted: str, make_client: Callable[..., Client], mock_api: Any
) -> None:
    answer = _answer(spec.response)
    mock_api.handler = lambda request: httpx.Response(
        answer.status_code, headers=answer.headers, content=answer.content
    )
    with make_client() as client:
        getattr(client, spec.name)(raw, *spec.args[1:], **spec.kwargs)
    raw_path = mock_api.last.url.raw_path.split(b"?")[0].decode()
    assert raw_path == ROOT + spec.path.replace("{id}", quoted)
    assert mock_api.last.url.params.get_list("status") == [
        v for k, v in spec.query if k == "status"
    ]


@pytest.mark.parametrize("spec", ID_SPECS, ids=lambda s: s.label)
def test_an_empty_id_is_refused_before_sending(
    spec: Spec, make_client: Callable[..., Client], mock_api: Any
) -> None:
    with make_client() as client, pytest.raises(ConfigError, match="empty id"):
        getattr(client, spec.name)("", *spec.args[1:], **spec.kwargs)
    assert mock_api.requests == []


# --- uploads and downloads ---------------------------------------------------------------------


def _multipart_file(request: httpx.Request) -> tuple[str, str, str, bytes]:
    """(field name, filename, content type, bytes) of the single file part of a form."""
    message = Message()
    message["Content-Type"] = request.headers["Content-Type"]
    boundary = message.get_param("boundary")
    assert isinstance(boundary, str)
    parts = request.content.split(b"--" + boundary.encode())
    files = [p for p in parts if b"Content-Disposition" in p]
    assert len(files) == 1, request.content[:500]
    head, _, content = files[0].partition(b"\r\n\r\n")
    assert content.endswith(b"\r\n")
    headers = Message()
    for line in head.decode().strip().splitlines():
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    disposition = headers["Content-Disposition"]
    info = Message()
    info["Content-Disposition"] = disposition
    return (
        str(info.get_param("name", header="Content-Disposition")),
        str(info.get_param("filename", header="Content-Disposition")),
        headers["Content-Type"],
        content[:-2],
    )


def test_upload_file_small_is_multipart(api: Api, mock_api: Any, tmp_path: Path) -> None:
    source = tmp_path / "readings.csv"
    source.write_bytes(b"t,x\n0,1.5\n1,2.5\n")
    mock_api.add("POST", f"{ROOT}/files", json={**UPLOAD_RESULT, "file_id": "renamed.csv"})
    progress: list[tuple[int, int]] = []

    result = api.run(
        "upload_file", source, "renamed.csv", on_progress=lambda a, b: progress.append((a, b))
    )

    assert type(result) is m.FileUploadResult
    assert dump(result) == {**UPLOAD_RESULT, "file_id": "renamed.csv"}
    request = mock_api.last
    assert (request.method, request.url.raw_path) == ("POST", b"/v0.5/files")
    assert_api_headers(request)
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert _multipart_file(request) == ("file", "renamed.csv", "text/csv", source.read_bytes())
    assert progress[-1] == (16, 16)

    mock_api.requests.clear()
    api.run("upload_file", str(source))  # file id and type from the path
    assert _multipart_file(mock_api.last)[:3] == ("file", "readings.csv", "text/csv")


def test_upload_bytes_and_base64(api: Api, mock_api: Any) -> None:
    data = b'{"a": [1, 2, 3]}\n\x00\xff'
    mock_api.add("POST", f"{ROOT}/files", json=UPLOAD_RESULT)
    mock_api.add("POST", f"{ROOT}/files/base64", json={**UPLOAD_RESULT, "file_uid": "fil_b64"})

    plain = api.run("upload_bytes", data, "data.json")
    encoded = api.run("upload_base64", data, "data.csv", "text/plain")

    assert dump(plain) == UPLOAD_RESULT
    assert type(encoded) is m.FileUploadResult
    assert encoded.file_uid == "fil_b64"
    first, second = mock_api.requests
    assert (first.method, first.url.raw_path) == ("POST", b"/v0.5/files")
    assert (second.method, second.url.raw_path) == ("POST", b"/v0.5/files/base64")
    for request in (first, second):
        assert_api_headers(request)
    assert _multipart_file(first) == ("file", "data.json", "application/json", data)
    assert _multipart_file(second) == ("file", "data.csv", "text/plain", base64.b64encode(data))


def test_upload_of_unknown_type_sends_nothing(api: Api, mock_api: Any) -> None:
    with pytest.raises(ConfigError, match="file_type="):
        api.run("upload_bytes", b"x", "data.xyz")
    assert mock_api.requests == []


def _download_handler(payload: bytes) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
        return httpx.Response(
            200,
            headers={"Content-Type": "application/octet-stream"},
            stream=httpx.ByteStream(b"".join(chunks)),
        )

    return handler


def test_download_file_streams_to_dest(api: Api, mock_api: Any, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 12289  # ~3 MB, not a multiple of any chunk size
    mock_api.handler = _download_handler(payload)
    dest_dir = tmp_path / "downloads"
    dest_dir.mkdir()

    into_dir = api.run("download_file", "my data.csv", dest_dir)
    to_path = api.run("download_file", "my data.csv", str(tmp_path / "renamed.bin"))

    assert into_dir == dest_dir / "my data.csv"
    assert to_path == tmp_path / "renamed.bin"
    assert into_dir.read_bytes() == payload
    assert to_path.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "downloads",
        "my data.csv",
        "renamed.bin",
    ]
    for request in mock_api.requests:
        assert (request.method, request.url.raw_path) == (
            "GET",
            b"/v0.5/files/download/my%20data.csv",
        )
        assert_api_headers(request)


def _body_stream(kind: str, chunks: list[bytes], between: Callable[[], None]) -> Any:
    """A response body for ``kind``'s client that calls ``between`` after the first chunk."""

    def chunks_sync() -> Iterator[bytes]:
        for number, chunk in enumerate(chunks):
            if number:
                between()
            yield chunk

    async def chunks_async() -> AsyncIterator[bytes]:
        for chunk in chunks_sync():
            yield chunk

    return chunks_sync() if kind == "sync" else chunks_async()


def test_download_is_written_beside_then_renamed(api: Api, mock_api: Any, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    target.write_bytes(b"old")
    seen: list[list[str]] = []

    def between() -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        assert target.read_bytes() == b"old"  # the old file is untouched while streaming

    mock_api.handler = lambda request: httpx.Response(
        200, content=_body_stream(api.kind, [b"new,", b"data"], between)
    )
    assert api.run("download_file", "x.csv", tmp_path) == target
    assert seen == [["x.csv", "x.csv.part"]]
    assert target.read_bytes() == b"new,data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_download_failing_midway_keeps_old_file(api: Api, mock_api: Any, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    target.write_bytes(b"old")

    def between() -> None:
        raise httpx.ReadError("connection reset")

    mock_api.handler = lambda request: httpx.Response(
        200, content=_body_stream(api.kind, [b"new,", b"data"], between)
    )
    with pytest.raises(TransportError, match="ReadError: connection reset"):
        api.run("download_file", "x.csv", target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_download_file_error_leaves_nothing(api: Api, mock_api: Any, tmp_path: Path) -> None:
    mock_api.handler = lambda request: httpx.Response(
        400, json={"errors": [{"code": "file_not_ready", "message": "still uploading"}]}
    )
    with pytest.raises(InvalidRequest, match="still uploading"):
        api.run("download_file", "x.csv", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_output(api: Api, mock_api: Any, tmp_path: Path) -> None:
    mock_api.handler = _download_handler(b"a,b\n1,2\n")
    presigned = m.Output.model_validate(OUTPUT)
    relative = m.Output.model_validate(
        {**OUTPUT, "data": {"ref": "/v0.5/files/download/pred%201.csv", "filename": "pred 1.csv"}}
    )

    first = api.run("download_output", presigned, tmp_path)
    second = api.run("download_output", relative, tmp_path / "chosen.csv")

    assert first == tmp_path / "pred_part_0.csv"
    assert second == tmp_path / "chosen.csv"
    assert first.read_bytes() == second.read_bytes() == b"a,b\n1,2\n"
    assert not list(tmp_path.glob("*.part"))
    storage, api_call = mock_api.requests
    assert str(storage.url) == OUTPUT["data"]["ref"]  # type: ignore[index]
    assert "Authorization" not in storage.headers  # presigned: the key never goes to storage
    assert api_call.url.raw_path == b"/v0.5/files/download/pred%201.csv"
    assert_api_headers(api_call)


# --- traces: ETag / 304 (§7.5) -----------------------------------------------------------------


def test_traces_etag_round_trip(api: Api, mock_api: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return httpx.Response(304, headers={"ETag": '"v1"'})
        return httpx.Response(200, json=TRACES, headers={"ETag": '"v1"'})

    mock_api.handler = handler

    fresh = api.run("get_inputs_progress_traces", JOB_ID)
    unchanged = api.run("get_inputs_progress_traces", JOB_ID, buckets=10, etag='"v1"')
    changed = api.run("get_inputs_progress_traces", JOB_ID, etag='"v0"')

    assert type(fresh) is m.Traces
    assert fresh.etag == '"v1"'
    assert "etag" not in fresh.model_dump()
    assert unchanged is None
    assert type(changed) is m.Traces and changed.etag == '"v1"'
    first, second, third = mock_api.requests
    assert "If-None-Match" not in first.headers
    assert query_of(first) == []
    assert second.headers["If-None-Match"] == '"v1"'
    assert query_of(second) == [("buckets", "10")]
    assert third.headers["If-None-Match"] == '"v0"'


def test_traces_without_etag_header(api: Api, mock_api: Any) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json=TRACES)
    traces = api.run("get_inputs_progress_traces", JOB_ID)
    assert traces.etag is None
    assert traces.bucket_seconds == 6.5


# --- pagination (§1.5, §10.6) ------------------------------------------------------------------


def _offset_server(items_key: str, rows: list[Any], **extra: Any) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        limit = int(request.url.params["limit"])
        body = {"total": len(rows), "offset": offset, "limit": limit, **extra}
        body[items_key] = rows[offset : offset + limit]
        return httpx.Response(200, json=body)

    return handler


ITERATORS = [
    (
        "iter_jobs",
        (),
        {"status": "RUNNING", "q": "volve"},
        [("status", "RUNNING"), ("q", "volve")],
        "/batch/jobs",
        "jobs",
        lambda i: {**JOB, "id": f"job_{i}"},
        lambda row: row.id,
    ),
    (
        "iter_events",
        (JOB_ID,),
        {"level": "FAILED", "input_id": "inp_1"},
        [("level", "FAILED"), ("input_id", "inp_1")],
        f"/batch/jobs/{JOB_ID}/events",
        "events",
        lambda i: {**EVENT, "id": i},
        lambda row: f"job_{row.id}",
    ),
    (
        "iter_progress",
        (JOB_ID,),
        {"kind": "inference"},
        [("kind", "inference")],
        f"/batch/jobs/{JOB_ID}/progress",
        "entries",
        lambda i: {**PROGRESS, "id": i},
        lambda row: f"job_{row.id}",
    ),
    (
        "iter_outputs",
        (JOB_ID,),
        {"port_name": "worker.results", "input_id": None},
        [("port_name", "worker.results")],
        f"/batch/jobs/{JOB_ID}/outputs",
        "outputs",
        lambda i: {**OUTPUT, "id": f"job_{i}"},
        lambda row: row.id,
    ),
]


@pytest.mark.parametrize(
    ("name", "args", "filters", "filter_query", "path", "key", "row", "row_id"),
    ITERATORS,
    ids=[it[0] for it in ITERATORS],
)
def test_iter_offset_pagination(
    api: Api,
    mock_api: Any,
    name: str,
    args: tuple[Any, ...],
    filters: dict[str, Any],
    filter_query: list[tuple[str, str]],
    path: str,
    key: str,
    row: Callable[[int], Any],
    row_id: Callable[[Any], str],
) -> None:
    rows = [row(i) for i in range(1, 6)]
    mock_api.handler = _offset_server(key, rows, job_id=JOB_ID)

    items = api.iterate(name, *args, requests=mock_api.requests, page_size=2, **filters)

    assert [row_id(item) for item in items] == [f"job_{i}" for i in range(1, 6)]
    assert len({type(item) for item in items}) == 1
    assert [r.url.path for r in mock_api.requests] == [ROOT + path] * 3
    assert [query_of(r) for r in mock_api.requests] == [
        [*filter_query, ("offset", str(offset)), ("limit", "2")] for offset in (0, 2, 4)
    ]
    for request in mock_api.requests:
        assert_api_headers(request)


def test_iter_stops_on_exact_total_and_on_empty_page(api: Api, mock_api: Any) -> None:
    rows = [{**JOB, "id": f"job_{i}"} for i in range(4)]
    mock_api.handler = _offset_server("jobs", rows)
    assert len(api.iterate("iter_jobs", requests=mock_api.requests, page_size=2)) == 4
    assert [r.url.params["offset"] for r in mock_api.requests] == ["0", "2"]

    mock_api.requests.clear()
    # A server whose total promises more than it gives must not loop forever.
    mock_api.handler = lambda request: httpx.Response(
        200, json={"total": 99, "offset": 0, "limit": 100, "jobs": []}
    )
    assert api.iterate("iter_jobs", requests=mock_api.requests) == []
    assert len(mock_api.requests) == 1
    assert query_of(mock_api.last) == [("offset", "0"), ("limit", "100")]


def _file(i: int) -> dict[str, Any]:
    return {**FILE_META, "file_id": f"f{i:04d}.csv", "file_index": i}


def test_iter_files_cursor_style(api: Api, mock_api: Any) -> None:
    pages = {
        None: {"data": [_file(1), _file(2)], "has_more": True, "next_cursor": "c1"},
        "c1": {"data": [_file(3), _file(4)], "has_more": True, "next_cursor": "c2"},
        "c2": {"data": [_file(5)], "has_more": False, "next_cursor": None},
    }
    mock_api.handler = lambda request: httpx.Response(
        200, json=pages[request.url.params.get("after")]
    )

    items = api.iterate("iter_files", requests=mock_api.requests, file_type="text/csv", page_size=2)

    assert [f.file_id for f in items] == [f"f{i:04d}.csv" for i in range(1, 6)]
    assert all(type(f) is m.FileMeta for f in items)
    assert [r.url.path for r in mock_api.requests] == [f"{ROOT}/files/metadata"] * 3
    assert [sorted(query_of(r)) for r in mock_api.requests] == [
        [("file_type", "text/csv"), ("limit", "2")],
        [("after", "c1"), ("file_type", "text/csv"), ("limit", "2")],
        [("after", "c2"), ("file_type", "text/csv"), ("limit", "2")],
    ]


def test_iter_files_has_more_without_cursor_stops(api: Api, mock_api: Any) -> None:
    mock_api.handler = lambda request: httpx.Response(
        200, json={"data": [_file(1)], "has_more": True, "next_cursor": None}
    )
    assert len(api.iterate("iter_files", requests=mock_api.requests)) == 1
    assert len(mock_api.requests) == 1


@pytest.mark.parametrize(("count", "shards"), [(2500, 3), (2000, 3), (7, 1), (0, 1)])
def test_iter_files_shard_style(api: Api, mock_api: Any, count: int, shards: int) -> None:
    files = [_file(i) for i in range(count)]

    def handler(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        assert "limit" not in params or "shard_index" not in params
        index = int(params.get("shard_index", "-1"))
        size = int(params.get("max_items_per_shard", "-1"))
        if index < 0:  # the documented default: everything up to the 1000-file cap
            return httpx.Response(200, json=files[:1000])
        return httpx.Response(200, json=files[index * size : (index + 1) * size])

    mock_api.handler = handler

    items = api.iterate("iter_files", requests=mock_api.requests, file_type="text/csv")

    assert [f.file_id for f in items] == [f["file_id"] for f in files]  # probe not yielded
    assert [sorted(query_of(r)) for r in mock_api.requests] == [
        [("file_type", "text/csv"), ("limit", "100")],
        *(
            [("file_type", "text/csv"), ("max_items_per_shard", "1000"), ("shard_index", str(i))]
            for i in range(shards)
        ),
    ]


# --- base URL and key (§1.1, §1.2) -------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "https://h.test",
        "https://h.test/",
        "https://h.test/v0.5",
        "https://h.test/v0.5/",
        "  https://h.test/v0.5  ",
    ],
)
def test_base_url_forms(given: str, api: Api, mock_api: Any) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})
    client = Client(given, KEY)
    assert client.base_url == "https://h.test/v0.5"
    client.close()
    api.client(base_url=given).run("get_queue")
    assert str(mock_api.last.url) == "https://h.test/v0.5/batch/jobs/queue"


def test_base_url_with_a_prefix_path(api: Api, mock_api: Any) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})
    api.client(base_url="https://h.test/gateway/").run("get_queue")
    assert str(mock_api.last.url) == "https://h.test/gateway/v0.5/batch/jobs/queue"


def test_base_url_from_env_and_default(
    api: Api, mock_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})
    api.client(base_url=None).run("get_queue")
    assert str(mock_api.last.url) == "https://api.u1.archetypeai.app/v0.5/batch/jobs/queue"
    assert Client(api_key=KEY).base_url == "https://api.u1.archetypeai.app/v0.5"

    monkeypatch.setenv("ATAI_API_ENDPOINT", "https://api.stage.u1.archetypeai.app")
    api.client(base_url=None).run("get_queue")
    assert str(mock_api.last.url) == "https://api.stage.u1.archetypeai.app/v0.5/batch/jobs/queue"

    api.client(base_url="https://arg.test/v0.5").run("get_queue")  # the argument wins
    assert mock_api.last.url.host == "arg.test"


@pytest.mark.parametrize(
    "bad", ["not a url", "ftp://h.test/v0.5", "http://", "https://", "//h.test", "h.test/v0.5"]
)
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_invalid_base_url(bad: str, cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="Invalid API endpoint"):
        cls(bad, KEY)
    monkeypatch.setenv("ATAI_API_ENDPOINT", bad)
    with pytest.raises(ConfigError, match="Invalid API endpoint"):
        cls(api_key=KEY)


def test_key_is_read_from_env_at_request_time(
    mock_api: Any, monkeypatch: pytest.MonkeyPatch, make_client: Callable[..., Client]
) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})
    client = make_client(api_key=None)
    monkeypatch.setenv("ATAI_API_KEY", "sk_first")
    client.get_queue()
    monkeypatch.setenv("ATAI_API_KEY", "sk_second")
    client.get_queue()
    assert [r.headers["Authorization"] for r in mock_api.requests] == [
        "Bearer sk_first",
        "Bearer sk_second",
    ]
    assert "from ATAI_API_KEY" in repr(client)


def test_async_key_is_read_from_env_at_request_time(
    mock_api: Any, monkeypatch: pytest.MonkeyPatch, make_async_client: Callable[..., AsyncClient]
) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})

    async def go() -> None:
        async with make_async_client(api_key=None) as client:
            monkeypatch.setenv("ATAI_API_KEY", "sk_first")
            await client.get_queue()
            monkeypatch.setenv("ATAI_API_KEY", "sk_second")
            await client.get_queue()

    asyncio.run(go())
    assert [r.headers["Authorization"] for r in mock_api.requests] == [
        "Bearer sk_first",
        "Bearer sk_second",
    ]


def test_key_argument_beats_env(api: Api, mock_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATAI_API_KEY", "sk_env")
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})
    api.run("get_queue")
    assert mock_api.last.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("empty", [None, ""])
def test_no_key_sends_nothing(
    api: Api, mock_api: Any, monkeypatch: pytest.MonkeyPatch, empty: str | None
) -> None:
    if empty is not None:
        monkeypatch.setenv("ATAI_API_KEY", empty)
    with pytest.raises(ConfigError, match="ATAI_API_KEY"):
        api.client(api_key=None).run("get_job", JOB_ID)
    with pytest.raises(ConfigError, match="ATAI_API_KEY"):
        api.client(api_key=None).run("create_job", {"name": "n", "pipeline_key": "k"})
    assert mock_api.requests == []


@pytest.mark.parametrize(
    "url", ["http://example.test", "http://10.0.0.5:8000/v0.5", "http://127.example.test"]
)
def test_plain_http_to_remote_host_sends_nothing(api: Api, mock_api: Any, url: str) -> None:
    with pytest.raises(ConfigError, match="plain HTTP"):
        api.client(base_url=url).run("get_queue")
    with pytest.raises(ConfigError, match="plain HTTP"):
        api.client(base_url=url).run("delete_file", "x.csv")
    assert mock_api.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765",
        "http://localhost:8765/v0.5",
        "http://[::1]:8765",
        "http://127.0.0.2",
    ],
)
def test_plain_http_to_loopback_is_allowed(api: Api, mock_api: Any, url: str) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})
    api.client(base_url=url).run("get_queue")
    assert mock_api.last.url.scheme == "http"
    assert mock_api.last.headers["Authorization"] == f"Bearer {KEY}"


# --- status → error (§1.6) ---------------------------------------------------------------------

STATUS_ERRORS = [
    (400, InvalidRequest),
    (413, InvalidRequest),
    (422, InvalidRequest),
    (401, AuthError),
    (403, AuthError),
    (404, NotFound),
    (409, Conflict),
    (429, RateLimited),
    (500, ServerError),
    (502, ServerError),
    (503, ServerError),
    (418, ApiError),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_ERRORS, ids=[str(s) for s, _ in STATUS_ERRORS])
def test_status_maps_to_error(api: Api, mock_api: Any, status: int, cls: type[ApiError]) -> None:
    envelope = {
        "errors": [
            {
                "code": "invalid_file_type",
                "message": "Unsupported file type: application/octet-stream",
                "suggestion": "Supported types: text/csv",
                "error_uid": "err-bfa600db-c703-4061-ad9c-c14628b3554c",
            }
        ]
    }
    mock_api.handler = lambda request: httpx.Response(status, json=envelope)

    with pytest.raises(ApiError) as caught:
        api.run("get_file_metadata", "x.csv")

    error = caught.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.code == "invalid_file_type"
    assert error.message == "Unsupported file type: application/octet-stream"
    assert error.suggestion == "Supported types: text/csv"
    assert error.error_uid == "err-bfa600db-c703-4061-ad9c-c14628b3554c"
    assert error.errors == envelope["errors"]
    assert error.method == "GET"
    assert error.url == "https://api.test/v0.5/files/metadata/x.csv"
    assert str(error) == (
        f"{status} invalid_file_type: Unsupported file type: application/octet-stream "
        "(GET https://api.test/v0.5/files/metadata/x.csv)\n"
        "Suggestion: Supported types: text/csv\n"
        "Error id: err-bfa600db-c703-4061-ad9c-c14628b3554c"
    )
    assert error._render_traceback_()[0] == f"{cls.__name__}: {str(error).splitlines()[0]}"
    assert len(mock_api.requests) == 1  # max_retries=0: asked once


def test_multiple_errors_are_kept(api: Api, mock_api: Any) -> None:
    errors = [
        {"code": "missing_parameter", "message": "name is required"},
        {"code": "missing_parameter", "message": "pipeline_key is required", "suggestion": "s"},
    ]
    mock_api.handler = lambda request: httpx.Response(422, json={"errors": errors})
    with pytest.raises(InvalidRequest) as caught:
        api.run("create_job", {"name": "n", "pipeline_key": "k"})
    assert caught.value.errors == errors
    assert caught.value.message == "name is required"
    assert caught.value.suggestion is None
    assert len(mock_api.requests) == 1


def test_legacy_detail_envelope(api: Api, mock_api: Any) -> None:
    mock_api.handler = lambda request: httpx.Response(401, json={"detail": "Invalid API key"})
    with pytest.raises(AuthError) as caught:
        api.run("get_queue")
    assert caught.value.message == "Invalid API key"
    assert caught.value.code is None
    assert caught.value.errors == []
    assert str(caught.value).startswith("401: Invalid API key (GET https://api.test/")


def test_legacy_detail_list(api: Api, mock_api: Any) -> None:
    detail = [{"loc": ["query", "limit"], "msg": "must be >= 1"}]
    mock_api.handler = lambda request: httpx.Response(422, json={"detail": detail})
    with pytest.raises(InvalidRequest) as caught:
        api.run("list_jobs", limit=0)
    assert caught.value.message == json.dumps(detail)


def test_non_json_and_empty_error_bodies(api: Api, mock_api: Any) -> None:
    mock_api.add("GET", f"{ROOT}/files/info", status_code=502, content=b"<html>Bad Gateway</html>")
    mock_api.add("GET", f"{ROOT}/batch/jobs/queue", status_code=503, content=b"")
    with pytest.raises(ServerError) as html:
        api.run("get_files_info")
    with pytest.raises(ServerError) as empty:
        api.run("get_queue")
    assert html.value.message == "<html>Bad Gateway</html>"
    assert html.value.status_code == 502
    assert empty.value.message == "Service Unavailable"
    assert empty.value.errors == []


@pytest.mark.parametrize(
    ("header", "expected"), [("7", 7.0), ("0.5", 0.5), (None, None), ("soon", None)]
)
def test_rate_limited_retry_after(
    api: Api, mock_api: Any, header: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    mock_api.handler = lambda request: httpx.Response(
        429, json={"errors": [{"code": "rate_limited", "message": "slow down"}]}, headers=headers
    )
    with pytest.raises(RateLimited) as caught:
        api.run("get_queue")
    assert caught.value.retry_after == expected


def test_transport_error(api: Api, mock_api: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    mock_api.handler = handler
    with pytest.raises(TransportError) as caught:
        api.run("list_jobs", q="x")
    assert str(caught.value) == ("GET /batch/jobs failed: ReadTimeout: timed out")
    assert caught.value.__cause__ is None


# --- secrets -----------------------------------------------------------------------------------


def _texts_of_error(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
    if isinstance(error, AtaiError):
        texts += error._render_traceback_()
    texts += [repr(value) for value in vars(error).values()]
    return texts


def test_key_not_in_client_or_traffic_reprs(
    api: Api, mock_api: Any, make_client: Callable[..., Client]
) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json=JOB)
    client = make_client()
    assert KEY not in repr(client)
    assert KEY not in str(client)
    assert repr(client) == "Client(base_url='https://api.test/v0.5', api_key=<given>)"
    for name, value in vars(client).items():
        assert KEY not in repr(value), name
    client.get_job(JOB_ID)
    api.run("get_job", JOB_ID)
    assert len(mock_api.requests) == 2
    for request in mock_api.requests:
        assert request.headers["Authorization"] == f"Bearer {KEY}"  # it was sent ...
        for text in (repr(request), str(request), repr(request.headers), str(request.url)):
            assert KEY not in text  # ... but shows nowhere
    for response in mock_api.responses:
        assert KEY not in repr(response)
        assert KEY not in str(response)


def test_async_client_repr_hides_key(make_async_client: Callable[..., AsyncClient]) -> None:
    client = make_async_client()
    assert repr(client) == "AsyncClient(base_url='https://api.test/v0.5', api_key=<given>)"
    for name, value in vars(client).items():
        assert KEY not in repr(value), name
    asyncio.run(client.aclose())


ECHOING_BODIES = [
    pytest.param(
        401,
        {
            "errors": [
                {
                    "code": f"bad_key_{KEY}",
                    "message": f"Key {KEY} is not valid here",
                    "suggestion": f"Check {KEY}",
                    "error_uid": f"err-{KEY}",
                    "context": {"key": KEY, "keys": [KEY], KEY: 1},
                },
                {"code": "x", "message": f"again {KEY}"},
            ]
        },
        id="errors-envelope",
    ),
    pytest.param(401, {"detail": f"Invalid key {KEY}"}, id="legacy-detail"),
    pytest.param(422, {"detail": [{"msg": f"bad {KEY}"}]}, id="legacy-detail-list"),
    pytest.param(500, f"Traceback: key={KEY}".encode(), id="non-json"),
]


@pytest.mark.parametrize(("status", "body"), ECHOING_BODIES)
def test_key_scrubbed_from_echoing_errors(api: Api, mock_api: Any, status: int, body: Any) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    mock_api.handler = lambda request: httpx.Response(status, content=content)
    with pytest.raises(ApiError) as caught:
        api.run("get_job", KEY)  # the key even in the URL
    texts = _texts_of_error(caught.value)
    for text in texts:
        assert KEY not in text
    assert "***" in str(caught.value)
    assert caught.value.url == "https://api.test/v0.5/batch/jobs/***"


def test_key_scrubbed_from_errors_of_env_key(
    api: Api, mock_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATAI_API_KEY", KEY)
    mock_api.handler = lambda request: httpx.Response(403, json={"detail": f"no: {KEY}"})
    with pytest.raises(AuthError) as caught:
        api.client(api_key=None).run("get_queue")
    assert str(caught.value).startswith("403: no: *** (GET")


def test_key_scrubbed_from_transport_error(api: Api, mock_api: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            f"proxy refused {request.headers['Authorization']}", request=request
        )

    mock_api.handler = handler
    with pytest.raises(TransportError) as caught:
        api.run("get_queue")
    for text in _texts_of_error(caught.value):
        assert KEY not in text
    assert (
        str(caught.value) == "GET /batch/jobs/queue failed: ConnectError: proxy refused Bearer ***"
    )


def test_transport_error_chains_nothing_that_holds_the_request(api: Api, mock_api: Any) -> None:
    """``from None`` only hides a chained exception: httpx's, with the request and its
    Authorization header, must not be reachable from the error at all."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    mock_api.handler = handler
    with pytest.raises(TransportError) as caught:
        api.run("get_queue")
    assert caught.value.__context__ is None and caught.value.__cause__ is None


@pytest.mark.parametrize("spaced", [f"  {KEY}\n", f"{KEY}\r\n", f"\t{KEY} "])
def test_whitespace_around_the_key_is_dropped(
    api: Api, mock_api: Any, monkeypatch: pytest.MonkeyPatch, spaced: str
) -> None:
    mock_api.handler = lambda request: httpx.Response(200, json={"queues": []})
    api.client(api_key=spaced).run("get_queue")
    monkeypatch.setenv("ATAI_API_KEY", spaced)
    api.client(api_key=None).run("get_queue")
    assert [r.headers["Authorization"] for r in mock_api.requests] == [f"Bearer {KEY}"] * 2


@pytest.mark.parametrize("bad", [f"{KEY}\nX", f"sk {KEY}", f"{KEY}\x00", f"{KEY}é"])
def test_a_key_a_header_cannot_carry_sends_nothing_and_is_not_quoted(
    api: Api, mock_api: Any, bad: str
) -> None:
    with pytest.raises(ConfigError, match="header cannot carry") as caught:
        api.client(api_key=bad).run("get_queue")
    assert mock_api.requests == []
    for text in _texts_of_error(caught.value):
        assert KEY not in text


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(("x" * 290 + f" {KEY}").encode(), id="text-cut-at-300"),
        pytest.param(json.dumps({"detail": [{"msg": "y" * 480 + KEY}]}).encode(), id="detail-500"),
    ],
)
def test_an_error_text_is_scrubbed_before_it_is_cut(api: Api, mock_api: Any, body: bytes) -> None:
    mock_api.handler = lambda request: httpx.Response(500, content=body)
    with pytest.raises(ServerError) as caught:
        api.client(max_retries=0).run("get_queue")
    for text in _texts_of_error(caught.value):
        assert KEY[:8] not in text  # not even the part left before the cut


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({**JOB, "retry_count": f"Bearer {KEY}"}, id="echo-in-a-value"),
        pytest.param({**JOB, "parameters": {KEY: 5}}, id="echo-as-a-field-name"),
        pytest.param(f"<html>{KEY}</html>", id="not-json"),
    ],
)
def test_a_success_of_another_shape_is_invalid_response_without_the_body(
    api: Api, mock_api: Any, body: Any
) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    mock_api.handler = lambda request: httpx.Response(200, content=content)
    with pytest.raises(InvalidResponse) as caught:
        api.run("get_job", JOB_ID)
    error = caught.value
    assert error.status_code == 200 and error.url == f"https://api.test/v0.5/batch/jobs/{JOB_ID}"
    assert str(error).startswith("200: the answer is not a valid JobRecord: "), str(error)
    assert error.__context__ is None  # pydantic's error, which holds the body, is gone
    for text in _texts_of_error(error):
        assert KEY not in text


def test_a_redirect_is_an_error_not_an_answer(api: Api, mock_api: Any) -> None:
    mock_api.handler = lambda request: httpx.Response(
        302, headers={"Location": "https://elsewhere.test/"}, content=b"moved"
    )
    with pytest.raises(InvalidResponse) as caught:
        api.run("get_job", JOB_ID)
    assert caught.value.status_code == 302 and len(mock_api.requests) == 1  # never followed


def test_key_not_in_config_errors(api: Api, mock_api: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        api.client(base_url="http://example.test").run("get_queue")
    for text in _texts_of_error(caught.value):
        assert KEY not in text
    assert "'example.test'" in str(caught.value)


# --- lifecycle ---------------------------------------------------------------------------------


def test_close(mock_api: Any, make_client: Callable[..., Client], make_async_client: Any) -> None:
    client = make_client()
    with client as entered:
        assert entered is client
        assert not client._http.is_closed
    assert client._http.is_closed
    client = make_client()
    client.close()
    assert client._http.is_closed
    with pytest.raises(RuntimeError):
        client.get_queue()
    assert mock_api.requests == []

    async def go() -> AsyncClient:
        async with make_async_client() as client:
            assert not client._http.is_closed
        assert client._http.is_closed
        other = make_async_client()
        await other.aclose()
        return other

    assert asyncio.run(go())._http.is_closed
