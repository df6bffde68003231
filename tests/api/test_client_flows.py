"""The client's multi-request flows against stateful fake servers (``httpx.MockTransport``).

Covers retries and backoff (with a fake clock: nothing here sleeps for real), the
no-duplicate rule of ``create_job`` (reference §4.1), uploads (§10.1, §10.2 and the
direct-to-cloud flow of §10.8), and ``download_output`` with presigned and relative refs
(§7.6), through the sync ``Client`` and, where the shared flows matter, the ``AsyncClient``.

Every fake server counts what it receives, so each test asserts exact numbers of requests,
jobs created and bytes stored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from atai_magics.api import models as m
from atai_magics.api.client import AsyncClient, Client, RetryPolicy
from atai_magics.api.errors import (
    AmbiguousCreateError,
    ApiError,
    AuthError,
    ConfigError,
    Conflict,
    CreateInterrupted,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)

BASE = "https://api.test/v0.5"
KEY = "sk-test-0123456789"
STORAGE = "http://storage.test"
Handler = Callable[[httpx.Request], httpx.Response]


# --- helpers ------------------------------------------------------------------------------


class FakeClock:
    """Records every delay the client asks for, and never sleeps."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.delays.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def make_policy(
    clock: FakeClock, *, max_retries: int = 3, backoff_max: float = 30.0, jitter: float = 1.0
) -> RetryPolicy:
    return RetryPolicy(
        max_retries=max_retries,
        backoff=0.5,
        backoff_max=backoff_max,
        jitter=lambda: jitter,
        sleep=clock.sleep,
        async_sleep=clock.async_sleep,
    )


def flow_client(
    handler: Handler, clock: FakeClock, *, retry: RetryPolicy | None = None, **kwargs: Any
) -> Client:
    return Client(
        BASE,
        KEY,
        transport=httpx.MockTransport(handler),
        retry=retry or make_policy(clock),
        **kwargs,
    )


def flow_async_client(
    handler: Handler, clock: FakeClock, *, retry: RetryPolicy | None = None, **kwargs: Any
) -> AsyncClient:
    return AsyncClient(
        BASE,
        KEY,
        transport=httpx.MockTransport(handler),
        retry=retry or make_policy(clock),
        **kwargs,
    )


def error_body(code: str = "error", message: str = "failed") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


def api_path(request: httpx.Request) -> str:
    """The request's path below the API root (``/v0.5``)."""
    path = request.url.path
    assert path.startswith("/v0.5/"), path
    return path[len("/v0.5") :]


def iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"


@dataclass
class Multipart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(request: httpx.Request) -> list[Multipart]:
    ctype = request.headers["content-type"]
    assert ctype.startswith("multipart/form-data"), ctype
    boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
    chunks = request.content.split(b"--" + boundary)
    assert chunks[-1].strip() == b"--", "the multipart body must end with the closing boundary"
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers["content-disposition"]
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        assert name is not None
        parts.append(
            Multipart(
                name=name.group(1),
                filename=filename.group(1) if filename else None,
                content_type=headers.get("content-type"),
                data=data,
            )
        )
    return parts


def scripted(*actions: Any, final: Any) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering the n-th request with ``actions[n]`` (then ``final`` forever).

    An action is a status code (an error envelope), an exception class (raised), a
    ``(status, headers)`` pair, or a callable building the response.
    """
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(seen) - 1
        action = actions[n] if n < len(actions) else final
        if isinstance(action, type) and issubclass(action, Exception):
            raise action("simulated failure", request=request)
        if isinstance(action, int):
            return httpx.Response(action, json=error_body(f"status_{action}"))
        if isinstance(action, tuple):
            status, headers = action
            return httpx.Response(status, json=error_body(f"status_{status}"), headers=headers)
        return action(request)  # type: ignore[no-any-return]

    return handler, seen


def job_json(job_id: str = "job_1", status: str = "PENDING") -> Callable[..., httpx.Response]:
    def build(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "id": job_id,
                "name": "run",
                "pipeline_type": "batch",
                "pipeline_key": "machine-state-classification",
                "status": status,
            },
        )

    return build


def cancel_json(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"id": "job_1", "status": "CANCELLED"})


# --- 1. retries and backoff -------------------------------------------------------------


def test_get_backoff_is_exponential_then_server_error_after_max_retries() -> None:
    clock = FakeClock()
    handler, seen = scripted(final=503)
    with flow_client(handler, clock) as client, pytest.raises(ServerError) as info:
        client.get_job("job_1")
    assert info.value.status_code == 503
    assert len(seen) == 4  # the first try + max_retries
    assert clock.delays == [0.5, 1.0, 2.0]
    assert {r.url.path for r in seen} == {"/v0.5/batch/jobs/job_1"}


def test_backoff_is_capped_at_backoff_max() -> None:
    clock = FakeClock()
    handler, seen = scripted(final=502)
    policy = make_policy(clock, max_retries=7, backoff_max=3.0)
    with flow_client(handler, clock, retry=policy) as client, pytest.raises(ServerError):
        client.get_job("job_1")
    assert len(seen) == 8
    assert clock.delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_jitter_zero_halves_each_delay() -> None:
    clock = FakeClock()
    handler, seen = scripted(final=504)
    policy = make_policy(clock, jitter=0.0)
    with flow_client(handler, clock, retry=policy) as client, pytest.raises(ServerError):
        client.get_job("job_1")
    assert len(seen) == 4
    assert clock.delays == [0.25, 0.5, 1.0]


def test_retry_after_is_honoured_on_429() -> None:
    clock = FakeClock()
    handler, seen = scripted((429, {"Retry-After": "7"}), final=job_json())
    with flow_client(handler, clock) as client:
        job = client.get_job("job_1")
    assert job.id == "job_1"
    assert len(seen) == 2
    assert clock.delays == [7.0]


def test_429_without_retry_after_uses_backoff_and_gives_up_as_rate_limited() -> None:
    clock = FakeClock()
    handler, seen = scripted(final=429)
    with flow_client(handler, clock) as client, pytest.raises(RateLimited) as info:
        client.get_job("job_1")
    assert info.value.retry_after is None
    assert len(seen) == 4
    assert clock.delays == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_get_is_retried_on_transient_statuses(status: int) -> None:
    clock = FakeClock()
    handler, seen = scripted(status, status, final=job_json())
    with flow_client(handler, clock) as client:
        job = client.get_job("job_1")
    assert job.id == "job_1"
    assert len(seen) == 3
    assert clock.delays == [0.5, 1.0]


def test_408_is_raised_as_api_error_after_max_retries() -> None:
    clock = FakeClock()
    handler, seen = scripted(final=408)
    with flow_client(handler, clock) as client, pytest.raises(ApiError) as info:
        client.get_job("job_1")
    assert info.value.status_code == 408
    assert len(seen) == 4


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError, httpx.ReadTimeout, httpx.ConnectTimeout, httpx.RemoteProtocolError]
)
def test_get_is_retried_on_transport_errors(exc: type[Exception]) -> None:
    clock = FakeClock()
    handler, seen = scripted(exc, exc, final=job_json())
    with flow_client(handler, clock) as client:
        assert client.get_job("job_1").id == "job_1"
    assert len(seen) == 3
    assert clock.delays == [0.5, 1.0]


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ReadTimeout])
def test_transport_error_raised_after_max_retries(exc: type[Exception]) -> None:
    clock = FakeClock()
    handler, seen = scripted(final=exc)
    with flow_client(handler, clock) as client, pytest.raises(TransportError) as info:
        client.get_job("job_1")
    assert not isinstance(info.value, AmbiguousCreateError)
    assert len(seen) == 4
    assert clock.delays == [0.5, 1.0, 2.0]
    message = str(info.value)
    assert "GET /batch/jobs/job_1" in message
    assert exc.__name__ in message
    assert KEY not in message


@pytest.mark.parametrize(
    ("status", "error"), [(400, InvalidRequest), (404, NotFound), (401, AuthError), (409, Conflict)]
)
def test_client_errors_are_never_retried(status: int, error: type[ApiError]) -> None:
    clock = FakeClock()
    handler, seen = scripted(final=status)
    with flow_client(handler, clock) as client, pytest.raises(error) as info:
        client.get_job("job_1")
    assert info.value.status_code == status
    assert info.value.code == f"status_{status}"
    assert len(seen) == 1
    assert clock.delays == []


def test_delete_is_retried_like_get() -> None:
    clock = FakeClock()
    deleted = lambda request: httpx.Response(200, json={"id": "job_1", "deleted": True})  # noqa: E731
    handler, seen = scripted(503, httpx.ReadTimeout, final=deleted)
    with flow_client(handler, clock) as client:
        assert client.delete_job("job_1").deleted is True
    assert [r.method for r in seen] == ["DELETE"] * 3
    assert clock.delays == [0.5, 1.0]


@pytest.mark.parametrize("status", [500, 503])
def test_post_is_not_retried_on_server_error(status: int) -> None:
    clock = FakeClock()
    handler, seen = scripted(status, final=cancel_json)
    with flow_client(handler, clock) as client, pytest.raises(ServerError):
        client.cancel_job("job_1")
    assert len(seen) == 1
    assert clock.delays == []


def test_post_is_not_retried_on_read_timeout() -> None:
    clock = FakeClock()
    handler, seen = scripted(httpx.ReadTimeout, final=cancel_json)
    with flow_client(handler, clock) as client, pytest.raises(TransportError) as info:
        client.cancel_job("job_1")
    assert "POST /batch/jobs/job_1/cancel" in str(info.value)
    assert len(seen) == 1
    assert clock.delays == []


def test_post_is_retried_on_connect_error() -> None:
    clock = FakeClock()
    handler, seen = scripted(httpx.ConnectError, httpx.ConnectError, final=cancel_json)
    with flow_client(handler, clock) as client:
        assert client.cancel_job("job_1").status == "CANCELLED"
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/v0.5/batch/jobs/job_1/cancel")] * 3
    assert clock.delays == [0.5, 1.0]


def test_post_is_retried_on_429_honouring_retry_after() -> None:
    clock = FakeClock()
    handler, seen = scripted((429, {"Retry-After": "7"}), final=cancel_json)
    with flow_client(handler, clock) as client:
        assert client.cancel_job("job_1").status == "CANCELLED"
    assert len(seen) == 2
    assert clock.delays == [7.0]


def test_async_client_retries_with_async_sleep() -> None:
    clock = FakeClock()
    handler, seen = scripted(503, httpx.ConnectError, (429, {"Retry-After": "7"}), final=job_json())

    async def main() -> m.JobRecord:
        async with flow_async_client(handler, clock) as client:
            return await client.get_job("job_1")

    assert asyncio.run(main()).id == "job_1"
    assert len(seen) == 4
    assert clock.delays == [0.5, 1.0, 7.0]


def test_async_post_is_not_retried_on_server_error() -> None:
    clock = FakeClock()
    handler, seen = scripted(503, final=cancel_json)

    async def main() -> None:
        async with flow_async_client(handler, clock) as client:
            await client.cancel_job("job_1")

    with pytest.raises(ServerError):
        asyncio.run(main())
    assert len(seen) == 1
    assert clock.delays == []


# --- 2. create_job never creates twice ------------------------------------------------------

PIPELINE = "machine-state-classification"
JOB_BODY = {
    "name": "volve-run",
    "pipeline_key": PIPELINE,
    "inputs": {"worker.inputs": [{"file_id": "volve.csv"}]},
    "parameters": {"worker": {"parallelism": 2, "config": {}}},
}


class JobServer:
    """A fake ``/batch/jobs``: stores jobs, answers ``q`` lookups with a ``Date`` header.

    ``post_script`` and ``list_script`` say how successive POSTs and lookups behave
    (default ``"ok"``). The server's clock is the real clock shifted by ``skew``.
    """

    def __init__(self, *, skew: timedelta = timedelta(0)) -> None:
        self.skew = skew
        self.jobs: list[dict[str, Any]] = []
        self.created = 0
        self.posts: list[dict[str, Any]] = []
        self.lists: list[httpx.Request] = []
        self.post_script: list[Any] = []
        self.list_script: list[Any] = []

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.skew

    def add_job(self, name: str, created_at: datetime, pipeline_key: str = PIPELINE) -> str:
        job_id = f"job_{len(self.jobs) + 1}"
        self.jobs.append(
            {
                "id": job_id,
                "name": name,
                "pipeline_type": "batch",
                "pipeline_key": pipeline_key,
                "status": "PENDING",
                "created_at": iso(created_at),
                "updated_at": iso(created_at),
            }
        )
        return job_id

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.created += 1
        self.add_job(body["name"], self.now(), body["pipeline_key"])
        return self.jobs[-1]

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = api_path(request)
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert path == "/batch/jobs", path
        if request.method == "POST":
            body = json.loads(request.content)
            self.posts.append(body)
            action = self.post_script.pop(0) if self.post_script else "ok"
            if action == "ok":
                return httpx.Response(201, json=self._create(body))
            if action == "timeout_after_create":
                self._create(body)
                raise httpx.ReadTimeout("timed out reading the answer", request=request)
            if action == "timeout_before_create":
                raise httpx.ReadTimeout("timed out reading the answer", request=request)
            if action == "ctrl_c_after_create":  # Ctrl-C while the answer was on its way
                self._create(body)
                raise KeyboardInterrupt
            if action == "ctrl_c_before_create":
                raise KeyboardInterrupt
            if action == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if isinstance(action, int):
                return httpx.Response(action, json=error_body("unavailable"))
            status, headers = action
            return httpx.Response(status, json=error_body("rate_limited"), headers=headers)
        assert request.method == "GET"
        self.lists.append(request)
        action = self.list_script.pop(0) if self.list_script else "ok"
        if action == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if action == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if isinstance(action, int):
            return httpx.Response(action, json=error_body("unavailable"))
        q = request.url.params.get("q", "")
        rows = [job for job in reversed(self.jobs) if q in job["name"]]  # newest first
        return httpx.Response(
            200,
            json={"total": len(rows), "offset": 0, "limit": 50, "jobs": rows},
            headers={"Date": format_datetime(self.now(), usegmt=True)},
        )


@pytest.mark.parametrize(
    "skew", [timedelta(0), timedelta(hours=3), timedelta(hours=-3)], ids=["same", "ahead", "behind"]
)
def test_create_timeout_after_server_created_returns_that_job(skew: timedelta) -> None:
    """Whatever the server's clock says, the job found is the one this POST made.

    With the server behind, a local-clock comparison would miss the new job (and create a
    duplicate); with it ahead, it would take the hour-old job of the same name.
    """
    clock = FakeClock()
    server = JobServer(skew=skew)
    server.add_job("volve-run", server.now() - timedelta(hours=1))  # an older run
    server.add_job("volve-run-2", server.now())  # matches q, another name
    server.add_job("volve-run", server.now(), pipeline_key="activity-detection")
    server.post_script = ["timeout_after_create"]
    with flow_client(server.handler, clock) as client:
        job = client.create_job(JOB_BODY)
    assert server.created == 1
    assert len(server.posts) == 1
    assert len(server.lists) == 1
    assert server.lists[0].url.params["q"] == "volve-run"
    created = server.jobs[-1]
    assert job.id == created["id"] == "job_4"
    assert job.name == "volve-run"
    assert job.pipeline_key == PIPELINE
    assert clock.delays == []


def test_create_posts_the_request_body() -> None:
    clock = FakeClock()
    server = JobServer()
    with flow_client(server.handler, clock) as client:
        job = client.create_job(JOB_BODY)
    assert job.id == "job_1"
    assert server.posts == [{**JOB_BODY, "pipeline_type": "batch"}]
    assert server.created == 1
    assert server.lists == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_create_server_error_without_job_posts_again(status: int) -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = [status]
    with flow_client(server.handler, clock) as client:
        job = client.create_job(JOB_BODY)
    assert len(server.posts) == 2
    assert len(server.lists) == 1
    assert server.created == 1
    assert len(server.jobs) == 1
    assert job.id == server.jobs[0]["id"]
    assert clock.delays == [0.5]


def test_create_connect_error_is_retried_without_lookup() -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = ["connect", "connect"]
    with flow_client(server.handler, clock) as client:
        job = client.create_job(JOB_BODY)
    assert len(server.posts) == 3
    assert server.lists == []
    assert server.created == 1
    assert job.id == "job_1"
    assert clock.delays == [0.5, 1.0]


def test_create_ignores_an_older_job_of_the_same_name() -> None:
    clock = FakeClock()
    server = JobServer(skew=timedelta(minutes=-7))
    old_id = server.add_job("volve-run", server.now() - timedelta(minutes=10))
    server.post_script = ["timeout_before_create"]
    with flow_client(server.handler, clock) as client:
        job = client.create_job(JOB_BODY)
    assert len(server.posts) == 2
    assert len(server.lists) == 1
    assert server.created == 1
    assert len(server.jobs) == 2
    assert job.id != old_id
    assert job.id == server.jobs[-1]["id"]
    assert clock.delays == [0.5]


@pytest.mark.parametrize("failure", ["connect", "timeout"])
def test_create_lookup_failure_is_ambiguous(failure: str) -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = ["timeout_after_create"]
    server.list_script = [failure] * 10
    with flow_client(server.handler, clock) as client, pytest.raises(AmbiguousCreateError) as info:
        client.create_job(JOB_BODY)
    assert isinstance(info.value, TransportError)
    assert len(server.posts) == 1  # never posted blindly a second time
    assert server.created == 1
    assert len(server.lists) == 4  # the lookup (a GET) had its own retries
    assert clock.delays == [0.5, 1.0, 2.0]
    message = str(info.value)
    assert "'volve-run'" in message
    assert "unknown whether the job exists" in message
    assert "list_jobs(q=...)" in message
    assert KEY not in message


def test_create_lookup_server_error_is_ambiguous() -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = ["timeout_after_create"]
    server.list_script = [503] * 10
    with flow_client(server.handler, clock) as client, pytest.raises(AmbiguousCreateError) as info:
        client.create_job(JOB_BODY)
    assert len(server.posts) == 1
    assert server.created == 1
    assert len(server.lists) == 4
    assert "unknown whether the job exists" in str(info.value)


def test_ctrl_c_during_a_create_says_which_job_it_made() -> None:
    clock = FakeClock()
    server = JobServer()
    server.add_job("volve-run", server.now() - timedelta(hours=1))  # an older run
    server.post_script = ["ctrl_c_after_create"]
    with flow_client(server.handler, clock) as client, pytest.raises(CreateInterrupted) as info:
        client.create_job(JOB_BODY)
    assert isinstance(info.value, KeyboardInterrupt)  # still an interrupt for everyone else
    assert info.value.job is not None and info.value.job.id == server.jobs[-1]["id"] == "job_2"
    assert (len(server.posts), len(server.lists), server.created) == (1, 1, 1)
    assert "made job job_2" in str(info.value)


def test_ctrl_c_before_the_server_created_says_none_was_made() -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = ["ctrl_c_before_create"]
    with flow_client(server.handler, clock) as client, pytest.raises(CreateInterrupted) as info:
        client.create_job(JOB_BODY)
    assert info.value.job is None
    assert (len(server.posts), len(server.lists), server.created) == (1, 1, 0)  # not re-posted


def test_ctrl_c_during_a_create_whose_lookup_fails_stays_a_plain_interrupt() -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = ["ctrl_c_after_create"]
    server.list_script = [503] * 10
    with flow_client(server.handler, clock) as client, pytest.raises(KeyboardInterrupt) as info:
        client.create_job(JOB_BODY)
    assert not isinstance(info.value, CreateInterrupted)  # nobody knows: no claim is made
    assert len(server.posts) == 1


def test_create_gives_up_after_max_retries_when_nothing_was_created() -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = [503] * 10
    with flow_client(server.handler, clock) as client, pytest.raises(AmbiguousCreateError) as info:
        client.create_job(JOB_BODY)
    assert len(server.posts) == 4
    assert len(server.lists) == 4
    assert server.created == 0
    assert clock.delays == [0.5, 1.0, 2.0]
    assert "after 4 attempts" in str(info.value)
    assert "none was created" in str(info.value)
    assert isinstance(info.value.__cause__, ServerError)


def test_create_429_is_retried_after_retry_after() -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = [(429, {"Retry-After": "7"})]
    with flow_client(server.handler, clock) as client:
        job = client.create_job(JOB_BODY)
    assert len(server.posts) == 2
    assert server.lists == []
    assert server.created == 1
    assert job.id == "job_1"
    assert clock.delays == [7.0]


def test_create_refused_request_is_not_retried() -> None:
    clock = FakeClock()
    server = JobServer()
    server.post_script = [400]
    with flow_client(server.handler, clock) as client, pytest.raises(InvalidRequest):
        client.create_job(JOB_BODY)
    assert len(server.posts) == 1
    assert server.lists == []
    assert server.created == 0


@pytest.mark.parametrize("skew", [timedelta(hours=5), timedelta(hours=-5)], ids=["ahead", "behind"])
def test_async_create_timeout_after_server_created_returns_that_job(skew: timedelta) -> None:
    clock = FakeClock()
    server = JobServer(skew=skew)
    server.add_job("volve-run", server.now() - timedelta(hours=1))
    server.post_script = ["timeout_after_create"]

    async def main() -> m.JobRecord:
        async with flow_async_client(server.handler, clock) as client:
            return await client.create_job(JOB_BODY)

    job = asyncio.run(main())
    assert server.created == 1
    assert len(server.posts) == 1
    assert len(server.lists) == 1
    assert job.id == server.jobs[-1]["id"] == "job_2"
    assert clock.delays == []


# --- 3. uploads ---------------------------------------------------------------------------


class SimpleFiles:
    """A fake ``POST /files`` and ``POST /files/base64``."""

    def __init__(self, *, is_valid: bool = True) -> None:
        self.is_valid = is_valid
        self.requests: list[httpx.Request] = []
        self.stored: dict[str, tuple[str | None, bytes]] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.method == "POST"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        path = api_path(request)
        assert path in ("/files", "/files/base64"), path
        (part,) = parse_multipart(request)
        assert part.name == "file"
        assert part.filename is not None
        data = base64.b64decode(part.data, validate=True) if path.endswith("64") else part.data
        self.stored[part.filename] = (part.content_type, data)
        return httpx.Response(
            200, json={"is_valid": self.is_valid, "file_id": part.filename, "file_uid": "fil_1"}
        )


def test_simple_upload_streams_the_file_as_multipart(tmp_path: Path) -> None:
    data = b"t,x,y\n" + b"".join(b"%d,%d,%d\n" % (i, i * 2, i * 3) for i in range(500))
    source = tmp_path / "sensor.csv"
    source.write_bytes(data)
    server = SimpleFiles()
    progress: list[tuple[int, int]] = []
    with flow_client(server.handler, FakeClock()) as client:
        result = client.upload_file(source, on_progress=lambda *a: progress.append(a))
    assert result == m.FileUploadResult(is_valid=True, file_id="sensor.csv", file_uid="fil_1")
    assert len(server.requests) == 1
    (part,) = parse_multipart(server.requests[0])
    assert (part.name, part.filename, part.content_type) == ("file", "sensor.csv", "text/csv")
    assert part.data == data
    assert server.stored == {"sensor.csv": ("text/csv", data)}
    assert progress[-1] == (len(data), len(data))
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert {total for _, total in progress} == {len(data)}


def test_simple_upload_uses_the_given_file_id_and_type(tmp_path: Path) -> None:
    source = tmp_path / "raw.dat"
    source.write_bytes(b"hello")
    server = SimpleFiles()
    with flow_client(server.handler, FakeClock()) as client:
        result = client.upload_file(source, file_id="notes.txt", file_type="text/plain")
    assert result.file_id == "notes.txt"
    assert server.stored == {"notes.txt": ("text/plain", b"hello")}


def test_simple_upload_not_valid_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "a.csv"
    source.write_bytes(b"a\n1\n")
    server = SimpleFiles(is_valid=False)
    with flow_client(server.handler, FakeClock()) as client, pytest.raises(ConfigError):
        client.upload_file(source)
    assert len(server.requests) == 1


def test_upload_bytes_posts_raw_bytes() -> None:
    data = bytes(range(256)) * 4
    server = SimpleFiles()
    with flow_client(server.handler, FakeClock()) as client:
        result = client.upload_bytes(data, "frame.png")
    assert result.file_id == "frame.png"
    assert api_path(server.requests[0]) == "/files"
    assert parse_multipart(server.requests[0])[0].data == data
    assert server.stored == {"frame.png": ("image/png", data)}


def test_upload_base64_sends_base64_text_to_files_base64() -> None:
    data = b"a,b\n\x00\xff,2\n"
    server = SimpleFiles()
    with flow_client(server.handler, FakeClock()) as client:
        result = client.upload_base64(data, "table.csv")
    assert result.file_id == "table.csv"
    (request,) = server.requests
    assert api_path(request) == "/files/base64"
    (part,) = parse_multipart(request)
    assert part.data == base64.b64encode(data)
    assert (part.filename, part.content_type) == ("table.csv", "text/csv")
    assert server.stored == {"table.csv": ("text/csv", data)}


class FlakyFiles:
    """``POST /files`` that stores the file and then answers ``first`` (a 5xx, or a dropped
    connection with ``"drop"``) on the first request, or fails without storing
    (``stores=False``); a file that exists is a 409, as on the platform. Metadata by GET."""

    def __init__(self, first: int | str = 502, *, stores: bool = True, size: int | None = None):
        self.first, self.stores, self.size = first, stores, size
        self.log: list[str] = []
        self.files: dict[str, int] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = api_path(request)
        self.log.append(f"{request.method} {path}")
        if request.method == "GET":
            file_id = path.rsplit("/", 1)[-1]
            if file_id not in self.files:
                return httpx.Response(404, json=error_body("not_found", "no such file"))
            return httpx.Response(
                200,
                json={"file_id": file_id, "file_uid": "fil_1", "num_bytes": self.files[file_id]},
            )
        (part,) = parse_multipart(request)
        assert part.filename is not None
        if part.filename in self.files:
            return httpx.Response(409, json=error_body("conflict", "File already exists"))
        if len(self.log) == 1:
            if self.stores:
                self.files[part.filename] = self.size or len(part.data)
            if self.first == "drop":
                raise httpx.RemoteProtocolError("connection closed", request=request)
            return httpx.Response(int(self.first), json=error_body("internal_error", "oops"))
        self.files[part.filename] = len(part.data)
        return httpx.Response(
            200, json={"is_valid": True, "file_id": part.filename, "file_uid": "fil_2"}
        )


@pytest.mark.parametrize("first", [500, 502, "drop"])
def test_simple_upload_after_an_ambiguous_failure_that_stored_it_returns_the_file(
    first: int | str,
) -> None:
    server = FlakyFiles(first)
    with flow_client(server.handler, FakeClock()) as client:
        result = client.upload_bytes(b"a,b\n1,2\n", "t.csv")
    assert result == m.FileUploadResult(is_valid=True, file_id="t.csv", file_uid="fil_1")
    assert server.log == ["POST /files", "POST /files", "GET /files/metadata/t.csv"]


def test_simple_upload_after_a_5xx_that_stored_nothing_posts_again(tmp_path: Path) -> None:
    source = tmp_path / "t.csv"
    source.write_bytes(b"a,b\n" + b"1,2\n" * 200_000)  # several reads per attempt
    server = FlakyFiles(503, stores=False)
    clock = FakeClock()
    progress: list[int] = []
    with flow_client(server.handler, clock) as client:
        result = client.upload_file(source, on_progress=lambda done, _: progress.append(done))
    assert result.file_uid == "fil_2"
    assert server.log == ["POST /files", "POST /files"]
    assert clock.delays == [0.5]
    restarts = [i for i in range(1, len(progress)) if progress[i] < progress[i - 1]]
    assert len(restarts) == 1 and progress[-1] == source.stat().st_size  # counted afresh


def test_simple_upload_conflict_is_raised_when_the_stored_file_is_not_ours() -> None:
    server = FlakyFiles(502, size=999)  # "stored" with another size: someone else's file
    with flow_client(server.handler, FakeClock()) as client, pytest.raises(Conflict):
        client.upload_bytes(b"a,b\n1,2\n", "t.csv")
    assert server.log == ["POST /files", "POST /files", "GET /files/metadata/t.csv"]


def test_simple_upload_of_an_existing_file_is_a_conflict_without_a_lookup() -> None:
    server = FlakyFiles()
    server.files["t.csv"] = 8
    with flow_client(server.handler, FakeClock()) as client, pytest.raises(Conflict):
        client.upload_bytes(b"a,b\n1,2\n", "t.csv")
    assert server.log == ["POST /files"]


def test_unknown_extension_is_a_config_error_before_any_request(tmp_path: Path) -> None:
    source = tmp_path / "mystery.xyz"
    source.write_bytes(b"?")
    server = SimpleFiles()
    with flow_client(server.handler, FakeClock()) as client:
        with pytest.raises(ConfigError, match=r"mystery\.xyz"):
            client.upload_file(source)
        with pytest.raises(ConfigError, match="file_type="):
            client.upload_bytes(b"?", "mystery.xyz")
        with pytest.raises(ConfigError):
            client.upload_base64(b"?", "mystery")
    assert server.requests == []


@dataclass
class Upload:
    upload_id: str
    filename: str
    file_type: str
    size: int
    part_size: int
    stored: dict[int, bytes] = field(default_factory=dict)
    etags: dict[int, str] = field(default_factory=dict)
    checkpointed: dict[int, str] = field(default_factory=dict)
    signature: dict[int, int] = field(default_factory=dict)

    @property
    def numbers(self) -> list[int]:
        return list(range(1, -(-self.size // self.part_size) + 1))

    def span(self, number: int) -> tuple[int, int]:
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)

    def part(self, number: int) -> dict[str, Any]:
        offset, length = self.span(number)
        self.signature[number] = self.signature.get(number, 0) + 1
        sig = self.signature[number]
        url = f"{STORAGE}/{self.upload_id}/{number}?X-Amz-Signature=s{sig}"
        return {"part_number": number, "url": url, "offset": offset, "length": length}


class DirectFiles:
    """A fake direct-to-cloud upload (§10.8): API endpoints plus a presigned storage host.

    Parts are 1-based (as production answers). ``expire_once`` lists parts whose first URL
    is refused as expired; ``put_failure`` parts raise a transport error on every PUT;
    ``complete_status`` makes complete fail; ``resume_done`` parts are already stored and
    checkpointed when initiate is called (``is_resume: true``).
    """

    def __init__(
        self,
        *,
        part_size: int = 256,
        expire_once: frozenset[int] = frozenset(),
        expired_status: int = 403,
        put_failure: frozenset[int] = frozenset(),
        complete_status: int | None = None,
        resume_source: bytes | None = None,
        resume_done: frozenset[int] = frozenset(),
    ) -> None:
        self.part_size = part_size
        self.expire_once = set(expire_once)
        self.expired_status = expired_status
        self.put_failure = put_failure
        self.complete_status = complete_status
        self.resume_source = resume_source
        self.resume_done = resume_done
        self.upload: Upload | None = None
        self.log: list[tuple[str, Any]] = []
        self.puts: list[httpx.Request] = []
        self.api_requests: list[httpx.Request] = []
        self.completed: bytes | None = None
        self._lock = threading.Lock()

    def calls(self, kind: str) -> list[Any]:
        return [detail for name, detail in self.log if name == kind]

    def assembled(self) -> bytes:
        assert self.upload is not None
        return b"".join(self.upload.stored[n] for n in self.upload.numbers)

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if request.url.host == "storage.test":
                return self._put(request)
            self.api_requests.append(request)
            assert request.headers["authorization"] == f"Bearer {KEY}"
            return self._api(request, api_path(request), json.loads(request.content or b"{}"))

    def _put(self, request: httpx.Request) -> httpx.Response:
        self.puts.append(request)
        assert request.method == "PUT"
        assert "authorization" not in request.headers, "the key must not go to storage"
        assert "transfer-encoding" not in request.headers
        assert self.upload is not None
        upload_id, number_text = request.url.path.strip("/").split("/")
        number = int(number_text)
        assert upload_id == self.upload.upload_id
        sig = int(request.url.params["X-Amz-Signature"][1:])
        _, length = self.upload.span(number)
        assert request.headers["content-length"] == str(length)
        assert len(request.content) == length
        self.log.append(("put", (number, sig)))
        if number in self.put_failure:
            raise httpx.ConnectError("connection reset", request=request)
        if number in self.expire_once and sig == 1:
            self.expire_once.discard(number)
            body = "<Error><Code>ExpiredToken</Code><Message>Request has expired</Message></Error>"
            return httpx.Response(self.expired_status, text=body)
        assert sig == self.upload.signature[number], "a stale URL was used"
        etag = f'"etag-{number}-{sig}"'
        self.upload.stored[number] = request.content
        self.upload.etags[number] = etag
        return httpx.Response(200, headers={"ETag": etag})

    def _api(self, request: httpx.Request, path: str, body: dict[str, Any]) -> httpx.Response:
        assert request.method == "POST"
        if path == "/files/uploads/initiate":
            return self._initiate(body)
        assert self.upload is not None
        prefix = f"/files/uploads/{self.upload.upload_id}/"
        assert path.startswith(prefix), path
        action = path[len(prefix) :]
        self.log.append((action, body))
        if action == "parts/urls":
            return httpx.Response(
                200, json={"parts": [self.upload.part(n) for n in body["part_numbers"]]}
            )
        if action == "parts/checkpoint":
            for token in body["parts"]:
                number = token["part_number"]
                assert token["part_token"] == self.upload.etags[number]
                self.upload.checkpointed[number] = token["part_token"]
            return httpx.Response(200, json={"num_checkpointed": len(body["parts"])})
        if action == "complete":
            if self.complete_status is not None:
                return httpx.Response(
                    self.complete_status, json=error_body("invalid_parts", "bad parts")
                )
            given = {t["part_number"]: t["part_token"] for t in body["parts"]}
            assert not set(given) & set(self.upload.checkpointed), "checkpointed parts resent"
            tokens = {**self.upload.checkpointed, **given}
            assert sorted(tokens) == self.upload.numbers
            assert tokens == self.upload.etags
            self.completed = self.assembled()
            return httpx.Response(
                200,
                json={
                    "file_uid": "fil_direct",
                    "file_name": self.upload.filename,
                    "num_bytes": self.upload.size,
                    "file_status": "Registered",
                },
            )
        if action == "abort":
            return httpx.Response(200)
        raise AssertionError(f"unexpected {path}")

    def _initiate(self, body: dict[str, Any]) -> httpx.Response:
        self.log.append(("initiate", body))
        upload = Upload("upl_1", body["filename"], body["file_type"], body["num_bytes"], 0)
        upload.part_size = self.part_size
        self.upload = upload
        for number in self.resume_done:
            assert self.resume_source is not None
            offset, length = upload.span(number)
            upload.stored[number] = self.resume_source[offset : offset + length]
            upload.etags[number] = upload.checkpointed[number] = f'"etag-{number}-0"'
        todo = [n for n in upload.numbers if n not in self.resume_done]
        return httpx.Response(
            200,
            json={
                "upload_id": upload.upload_id,
                "file_uid": "fil_direct",
                "file_name": upload.filename,
                "total_bytes": upload.size,
                "num_parts": len(upload.numbers),
                "part_size": upload.part_size,
                "is_resume": bool(self.resume_done),
                "strategy": "multipart",
                "parts": [upload.part(n) for n in todo],
            },
        )


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def write_source(tmp_path: Path, name: str = "big.csv", size: int = 3000) -> tuple[Path, bytes]:
    data = random_bytes(size)
    source = tmp_path / name
    source.write_bytes(data)
    return source, data


def test_direct_upload_sends_every_part_and_checkpoints_between_waves(tmp_path: Path) -> None:
    source, data = write_source(tmp_path)
    server = DirectFiles()
    progress: list[tuple[int, int]] = []
    with flow_client(server.handler, FakeClock(), simple_upload_limit=1000) as client:
        result = client.upload_file(source, on_progress=lambda *a: progress.append(a))
    assert result == m.FileUploadResult(is_valid=True, file_id="big.csv", file_uid="fil_direct")
    assert server.completed == data
    assert server.calls("initiate") == [
        {
            "filename": "big.csv",
            "file_type": "text/csv",
            "num_bytes": 3000,
            "resume_if_started": True,
        }
    ]
    # 12 parts of 256 bytes (the last 184); concurrency 4 -> waves of 8
    assert sorted(number for number, _ in server.calls("put")) == list(range(1, 13))
    sizes = {int(r.url.path.rsplit("/", 1)[1]): len(r.content) for r in server.puts}
    assert sizes == {**dict.fromkeys(range(1, 12), 256), 12: 184}
    (checkpoint,) = server.calls("parts/checkpoint")
    assert checkpoint == {
        "parts": [{"part_number": n, "part_token": f'"etag-{n}-1"'} for n in range(1, 9)]
    }
    (complete,) = server.calls("complete")
    assert complete == {
        "parts": [{"part_number": n, "part_token": f'"etag-{n}-1"'} for n in range(9, 13)]
    }
    order = [name if name != "put" else f"put{detail[0]}" for name, detail in server.log]
    cut = order.index("parts/checkpoint")
    assert sorted(order[1:cut]) == sorted(f"put{n}" for n in range(1, 9))
    assert sorted(order[cut + 1 : -1]) == sorted(f"put{n}" for n in range(9, 13))
    assert order[-1] == "complete"
    assert server.calls("abort") == []
    assert server.calls("parts/urls") == []
    assert progress[-1] == (3000, 3000)
    assert all(total == 3000 and 0 < done <= 3000 for done, total in progress)
    assert len(progress) == 12


def test_jsonl_always_uses_the_direct_flow(tmp_path: Path) -> None:
    data = b'{"t": 1, "x": 0.5}\n{"t": 2, "x": 0.7}\n'
    source = tmp_path / "tiny.jsonl"
    source.write_bytes(data)
    server = DirectFiles()
    with flow_client(server.handler, FakeClock()) as client:
        result = client.upload_file(source)
    assert result.file_id == "tiny.jsonl"
    (initiate,) = server.calls("initiate")
    assert initiate["file_type"] == "application/x-ndjson"
    assert initiate["num_bytes"] == len(data)
    assert server.completed == data
    assert [api_path(r) for r in server.api_requests] == [
        "/files/uploads/initiate",
        "/files/uploads/upl_1/complete",
    ]
    assert server.calls("complete") == [{"parts": [{"part_number": 1, "part_token": '"etag-1-1"'}]}]


def test_direct_upload_resumes_only_the_missing_parts(tmp_path: Path) -> None:
    source, data = write_source(tmp_path)
    server = DirectFiles(resume_source=data, resume_done=frozenset(range(1, 8)))
    progress: list[tuple[int, int]] = []
    with flow_client(
        server.handler, FakeClock(), simple_upload_limit=1000, upload_concurrency=1
    ) as client:
        result = client.upload_file(source, on_progress=lambda *a: progress.append(a))
    assert result.file_id == "big.csv"
    assert server.completed == data
    assert [number for number, _ in server.calls("put")] == [8, 9, 10, 11, 12]
    # 7 parts (1792 bytes) were already there: progress starts from them, one part at a time
    assert progress == [(2048, 3000), (2304, 3000), (2560, 3000), (2816, 3000), (3000, 3000)]
    # concurrency 1 -> waves of 2: two checkpoints, the last part goes with complete
    assert [c["parts"] for c in server.calls("parts/checkpoint")] == [
        [{"part_number": n, "part_token": f'"etag-{n}-1"'} for n in (8, 9)],
        [{"part_number": n, "part_token": f'"etag-{n}-1"'} for n in (10, 11)],
    ]
    assert server.calls("complete") == [
        {"parts": [{"part_number": 12, "part_token": '"etag-12-1"'}]}
    ]


@pytest.mark.parametrize("expired_status", [403, 400])
def test_direct_upload_refreshes_an_expired_part_url(tmp_path: Path, expired_status: int) -> None:
    source, data = write_source(tmp_path)
    server = DirectFiles(expire_once=frozenset({3}), expired_status=expired_status)
    progress: list[tuple[int, int]] = []
    clock = FakeClock()
    with flow_client(server.handler, clock, simple_upload_limit=1000) as client:
        client.upload_file(source, on_progress=lambda *a: progress.append(a))
    assert server.completed == data
    assert server.calls("parts/urls") == [{"part_numbers": [3]}]
    puts = server.calls("put")
    assert [p for p in puts if p[0] == 3] == [(3, 1), (3, 2)]
    assert len(puts) == 13
    (checkpoint,) = server.calls("parts/checkpoint")
    assert {"part_number": 3, "part_token": '"etag-3-2"'} in checkpoint["parts"]
    assert len(checkpoint["parts"]) == 8
    assert server.calls("abort") == []
    assert clock.delays == []  # an expired URL is refreshed, not waited for
    assert progress[-1] == (3000, 3000)
    assert max(done for done, _ in progress) == 3000


def test_direct_upload_server_refusal_aborts(tmp_path: Path) -> None:
    source, _ = write_source(tmp_path)
    server = DirectFiles(complete_status=400)
    client = flow_client(server.handler, FakeClock(), simple_upload_limit=1000)
    with client, pytest.raises(InvalidRequest) as info:
        client.upload_file(source)
    assert info.value.code == "invalid_parts"
    assert len(server.calls("put")) == 12
    assert len(server.calls("complete")) == 1
    assert server.calls("abort") == [{}]
    assert [name for name, _ in server.log][-2:] == ["complete", "abort"]


@pytest.mark.parametrize("status", [500, 503])
def test_direct_upload_server_error_is_not_aborted(tmp_path: Path, status: int) -> None:
    source, _ = write_source(tmp_path)
    server = DirectFiles(complete_status=status)
    client = flow_client(server.handler, FakeClock(), simple_upload_limit=1000)
    with client, pytest.raises(ServerError):
        client.upload_file(source)
    # repeated (a repeat that met a 409 would ask whether an earlier one stored the file)
    assert len(server.calls("complete")) == 4
    assert server.calls("abort") == []  # a 5xx may pass: the parts stay for a resume


def test_direct_upload_complete_that_landed_before_a_5xx_returns_the_file(
    tmp_path: Path,
) -> None:
    source, data = write_source(tmp_path)
    server = DirectFiles()
    completes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.test":
            return server.handler(request)
        path = api_path(request)
        if request.method == "GET":
            assert path == "/files/metadata/big.csv"
            meta = {"file_id": "big.csv", "file_uid": "fil_direct", "num_bytes": len(data)}
            return httpx.Response(200, json=meta)
        if path.endswith("/complete"):
            completes.append(1)
            if len(completes) == 1:
                server.handler(request)  # the file is stored, the answer is lost
                return httpx.Response(500, json=error_body("internal_error", "lost"))
            return httpx.Response(409, json=error_body("conflict", "Upload is already completed"))
        return server.handler(request)

    with flow_client(handler, FakeClock(), simple_upload_limit=1000) as client:
        result = client.upload_file(source)
    assert result == m.FileUploadResult(is_valid=True, file_id="big.csv", file_uid="fil_direct")
    assert server.completed == data
    assert len(completes) == 2 and server.calls("abort") == []


def test_direct_upload_transport_failure_is_not_aborted(tmp_path: Path) -> None:
    source, _ = write_source(tmp_path)
    server = DirectFiles(put_failure=frozenset({10}))
    clock = FakeClock()
    client = flow_client(server.handler, clock, simple_upload_limit=1000)
    with client, pytest.raises(TransportError) as info:
        client.upload_file(source)
    assert "PUT http://storage.test/upl_1/10 failed" in str(info.value)
    assert "X-Amz-Signature" not in str(info.value)
    assert [p for p in server.calls("put") if p[0] == 10] == [(10, 1)] * 4
    assert clock.delays == [0.5, 1.0, 2.0]
    assert len(server.calls("parts/checkpoint")) == 1  # the first wave is kept
    assert server.calls("complete") == []
    assert server.calls("abort") == []  # resumable: the checkpointed parts stay


def test_direct_upload_initiate_conflict_is_raised_without_abort(tmp_path: Path) -> None:
    source, _ = write_source(tmp_path)

    def handler(request: httpx.Request) -> httpx.Response:
        assert api_path(request) == "/files/uploads/initiate"
        return httpx.Response(409, json=error_body("conflict", "File already exists: big.csv"))

    client = flow_client(handler, FakeClock(), simple_upload_limit=1000)
    with client, pytest.raises(Conflict, match="File already exists"):
        client.upload_file(source)


def test_async_direct_upload(tmp_path: Path) -> None:
    source, data = write_source(tmp_path)
    server = DirectFiles(expire_once=frozenset({10}))
    progress: list[tuple[int, int]] = []

    async def main() -> m.FileUploadResult:
        async with flow_async_client(
            server.handler, FakeClock(), simple_upload_limit=1000
        ) as client:
            return await client.upload_file(source, on_progress=lambda *a: progress.append(a))

    result = asyncio.run(main())
    assert result == m.FileUploadResult(is_valid=True, file_id="big.csv", file_uid="fil_direct")
    assert server.completed == data
    assert len(server.calls("put")) == 13
    assert server.calls("parts/urls") == [{"part_numbers": [10]}]
    (checkpoint,) = server.calls("parts/checkpoint")
    assert [t["part_number"] for t in checkpoint["parts"]] == list(range(1, 9))
    (complete,) = server.calls("complete")
    assert [t["part_token"] for t in complete["parts"]] == [
        '"etag-9-1"',
        '"etag-10-2"',
        '"etag-11-1"',
        '"etag-12-1"',
    ]
    assert progress[-1] == (3000, 3000)


def test_async_simple_upload(tmp_path: Path) -> None:
    source = tmp_path / "small.csv"
    source.write_bytes(b"a,b\n1,2\n")
    server = SimpleFiles()

    async def main() -> m.FileUploadResult:
        async with flow_async_client(server.handler, FakeClock()) as client:
            return await client.upload_file(source)

    assert asyncio.run(main()).file_id == "small.csv"
    assert server.stored == {"small.csv": ("text/csv", b"a,b\n1,2\n")}


# --- 4. download_output -------------------------------------------------------------------


def output(ref: str, *, output_id: str = "out_3", filename: str = "pred_part_3.csv") -> m.Output:
    return m.Output.model_validate(
        {
            "id": output_id,
            "job_id": "job_1",
            "port_name": "worker.results",
            "input_id": "inp_1",
            "data": {"ref": ref, "filename": filename, "num_bytes": 11},
        }
    )


class Downloads:
    """Presigned storage (``https://storage.test``) plus the API's outputs list.

    Storage URLs carry a signature; ``expired`` signatures are refused with 403. Relisting
    answers pages of two outputs, each with a fresh signature.
    """

    def __init__(self, content: dict[str, bytes], *, page_size: int = 2) -> None:
        self.content = content
        self.page_size = page_size
        self.expired: set[str] = set()
        self.requests: list[httpx.Request] = []
        self.lists: list[httpx.Request] = []
        self.generation = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.method == "GET"
        if request.url.host == "storage.test":
            assert "authorization" not in request.headers, "the key must not go to storage"
            if request.url.params.get("sig") in self.expired:
                return httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>")
            body = self.content.get(request.url.path)
            return httpx.Response(200, content=body) if body else httpx.Response(404)
        assert request.url.host == "api.test"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        path = api_path(request)
        if path == "/batch/jobs/job_1/outputs":
            return self._list(request)
        body = self.content.get(path)
        return httpx.Response(200, content=body) if body else httpx.Response(404)

    def _list(self, request: httpx.Request) -> httpx.Response:
        self.lists.append(request)
        self.generation += 1
        offset = int(request.url.params["offset"])
        rows = [
            output(
                f"https://storage.test/out/part_{n}.csv?sig=fresh{self.generation}",
                output_id=f"out_{n}",
                filename=f"pred_part_{n}.csv",
            ).to_json_dict()
            for n in range(1, 6)
        ]
        page = rows[offset : offset + self.page_size]
        return httpx.Response(
            200, json={"job_id": "job_1", "total": 5, "offset": offset, "limit": 2, "outputs": page}
        )


def no_leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.part"))


def test_download_presigned_ref_without_authorization(tmp_path: Path) -> None:
    server = Downloads({"/out/part_3.csv": b"a,b\n1,2\n3,4"})
    dest = tmp_path / "got.csv"
    with flow_client(server.handler, FakeClock()) as client:
        target = client.download_output(output("https://storage.test/out/part_3.csv?sig=ok"), dest)
    assert target == dest
    assert dest.read_bytes() == b"a,b\n1,2\n3,4"
    assert len(server.requests) == 1
    assert no_leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("ref", "url"),
    [
        ("/v0.5/files/download/pred.csv", f"{BASE}/files/download/pred.csv"),
        ("/batch/jobs/job_1/outputs/out_3/data", f"{BASE}/batch/jobs/job_1/outputs/out_3/data"),
    ],
)
def test_download_relative_ref_from_api_root_with_authorization(
    tmp_path: Path, ref: str, url: str
) -> None:
    path = url[len(BASE) :]
    server = Downloads({path: b"payload"})
    with flow_client(server.handler, FakeClock()) as client:
        target = client.download_output(output(ref), tmp_path / "x.csv")
    (request,) = server.requests
    assert str(request.url) == url
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert target.read_bytes() == b"payload"


def test_download_into_a_directory_keeps_the_filename(tmp_path: Path) -> None:
    server = Downloads({"/out/part_3.csv": b"1,2,3"})
    with flow_client(server.handler, FakeClock()) as client:
        target = client.download_output(
            output("https://storage.test/out/part_3.csv?sig=ok"), tmp_path
        )
    assert target == tmp_path / "pred_part_3.csv"
    assert target.read_bytes() == b"1,2,3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred_part_3.csv"]


def test_download_expired_url_relists_for_a_fresh_one(tmp_path: Path) -> None:
    server = Downloads({"/out/part_3.csv": b"fresh bytes"})
    server.expired.add("old")
    clock = FakeClock()
    with flow_client(server.handler, clock) as client:
        target = client.download_output(
            output("https://storage.test/out/part_3.csv?sig=old"), tmp_path
        )
    assert target.read_bytes() == b"fresh bytes"
    assert [(r.url.host, r.url.path) for r in server.requests] == [
        ("storage.test", "/out/part_3.csv"),
        ("api.test", "/v0.5/batch/jobs/job_1/outputs"),
        ("api.test", "/v0.5/batch/jobs/job_1/outputs"),
        ("storage.test", "/out/part_3.csv"),
    ]
    assert [r.url.params["offset"] for r in server.lists] == ["0", "2"]
    assert {r.url.params["input_id"] for r in server.lists} == {"inp_1"}
    assert server.requests[-1].url.params["sig"] == "fresh2"
    assert clock.delays == []
    assert no_leftovers(tmp_path) == []


def test_download_expired_url_of_an_output_no_longer_listed(tmp_path: Path) -> None:
    server = Downloads({})
    server.expired.add("old")
    with flow_client(server.handler, FakeClock()) as client, pytest.raises(FileNotFoundError):
        client.download_output(
            output("https://storage.test/out/gone.csv?sig=old", output_id="out_99"), tmp_path
        )
    assert len(server.lists) == 3
    assert list(tmp_path.iterdir()) == []


def test_download_refused_relative_ref_is_not_relisted(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert api_path(request) == "/files/download/pred.csv"
        return httpx.Response(403, json=error_body("forbidden", "no access"))

    with flow_client(handler, FakeClock()) as client, pytest.raises(AuthError):
        client.download_output(output("/v0.5/files/download/pred.csv"), tmp_path / "p.csv")
    assert list(tmp_path.iterdir()) == []


def test_failed_download_leaves_no_file(tmp_path: Path) -> None:
    server = Downloads({})
    dest = tmp_path / "out.csv"
    with flow_client(server.handler, FakeClock()) as client, pytest.raises(NotFound):
        client.download_output(output("https://storage.test/out/missing.csv?sig=ok"), dest)
    assert len(server.requests) == 1
    assert server.lists == []
    assert list(tmp_path.iterdir()) == []


class BrokenStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that breaks after its first chunk."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"first chunk,"
        raise httpx.ReadError("connection reset mid-body")

    async def __aiter__(self) -> Any:
        yield b"first chunk,"
        raise httpx.ReadError("connection reset mid-body")


def test_download_broken_mid_body_is_retried_and_leaves_nothing(tmp_path: Path) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, stream=BrokenStream())

    clock = FakeClock()
    dest = tmp_path / "out.csv"
    with flow_client(handler, clock) as client, pytest.raises(TransportError):
        client.download_output(output("https://storage.test/out/part_3.csv?sig=ok"), dest)
    assert len(calls) == 4
    assert clock.delays == [0.5, 1.0, 2.0]
    assert list(tmp_path.iterdir()) == []


def test_download_broken_once_then_complete(tmp_path: Path) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(200, stream=BrokenStream())
        return httpx.Response(200, content=b"whole body")

    dest = tmp_path / "out.csv"
    with flow_client(handler, FakeClock()) as client:
        client.download_output(output("https://storage.test/out/part_3.csv?sig=ok"), dest)
    assert dest.read_bytes() == b"whole body"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_async_download_expired_url_relists(tmp_path: Path) -> None:
    server = Downloads({"/out/part_3.csv": b"fresh bytes"})
    server.expired.add("old")

    async def main() -> Path:
        async with flow_async_client(server.handler, FakeClock()) as client:
            return await client.download_output(
                output("https://storage.test/out/part_3.csv?sig=old"), tmp_path
            )

    target = asyncio.run(main())
    assert target == tmp_path / "pred_part_3.csv"
    assert target.read_bytes() == b"fresh bytes"
    assert len(server.lists) == 2
    assert no_leftovers(tmp_path) == []


def test_async_download_broken_mid_body_leaves_nothing(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=BrokenStream())

    async def main() -> None:
        async with flow_async_client(handler, FakeClock()) as client:
            await client.download_output(
                output("https://storage.test/out/part_3.csv?sig=ok"), tmp_path / "o.csv"
            )

    with pytest.raises(TransportError):
        asyncio.run(main())
    assert list(tmp_path.iterdir()) == []
