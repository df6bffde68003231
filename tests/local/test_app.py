"""The local backend's HTTP API, served by a real uvicorn on 127.0.0.1 and driven by our client.

Signed-URL expiry is tested with an injected clock (no sleeping); the scheduler is not
started, so jobs stay PENDING and assertions on queue fields are deterministic.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from atai_magics import Client
from atai_magics.api import models as m
from atai_magics.api.errors import ApiError
from atai_magics.local import app as app_module
from atai_magics.local._ids import is_id
from atai_magics.local.app import create_app
from atai_magics.local.store import Store

TOKEN = "sk_test_local_token"
MSC = "machine-state-classification"
CSV = b"timestamp,a,b\n" + b"".join(f"{i},{i * 2},{i * 3}\n".encode() for i in range(40))


class FakeClock:
    """A settable epoch clock for URL signing."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    url: str
    clock: FakeClock
    store: Store

    def client(self, **kwargs: Any) -> Client:
        return Client(base_url=f"{self.url}/v0.5", api_key=TOKEN, max_retries=0, **kwargs)

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/v0.5", headers=headers)


@contextlib.contextmanager
def _serve(home: Path, scheduler: bool = False) -> Iterator[Backend]:
    """A real server on an ephemeral port, stopped on exit."""
    clock = FakeClock()
    app = create_app(
        home,
        TOKEN,
        start_scheduler=scheduler,
        clock=clock,
        max_upload_bytes=64 * 1024,
        max_json_bytes=256 * 1024,
        part_size=1024,
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn failed to start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Backend(f"http://127.0.0.1:{port}", clock, app.state.store)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    """A server without a scheduler: jobs stay PENDING."""
    with _serve(tmp_path / "home") as served:
        yield served


def _envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["errors"][0]
    assert error["error_uid"].startswith("err-")
    if code is not None:
        assert error["code"] == code
    return error


def _msc_body(name: str = "msc-run") -> dict[str, Any]:
    """The seed page's request, adapted to a hosted pipeline."""
    return {
        "name": name,
        "pipeline_type": "batch",
        "pipeline_key": MSC,
        "inputs": {
            "worker.inference": [{"file_id": "data.csv"}],
            "worker.n_shots": [{"file_id": "normal.csv", "metadata": {"class": "normal"}}],
        },
        "parameters": {"worker": {"parallelism": 2, "config": {"window_size": 8}}},
    }


def _upload_inputs(client: Client) -> None:
    client.upload_bytes(CSV, "data.csv")
    client.upload_bytes(CSV, "normal.csv")


# --- jobs -----------------------------------------------------------------------------------


def test_list_jobs_response_is_the_store_page(backend: Backend) -> None:
    """``GET /batch/jobs`` sends the store's JSON text as is: a valid JobList, same data."""
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        for i in range(3):
            assert http.post("/batch/jobs", json=_msc_body(f'é {i} "q"')).status_code == 200
        response = http.get("/batch/jobs", params={"limit": 2, "offset": 1})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    page = m.JobList.model_validate_json(response.content)
    assert (page.total, page.offset, page.limit, len(page.jobs)) == (3, 1, 2, 2)
    assert response.json() == backend.store.list_jobs(offset=1, limit=2)
    assert [j.queue_position for j in page.jobs] == [2, 1]
    assert all(j.input_progress is not None and j.input_progress.pending == 1 for j in page.jobs)


def test_seed_create_job_is_pending_with_queue_fields(backend: Backend) -> None:
    """The seed curl request (adapted) creates a PENDING job at the back of the queue."""
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        first = http.post("/batch/jobs", json=_msc_body("first"))
        assert first.status_code == 200, first.text
        second = client.create_job(_msc_body("second"))
    job = first.json()
    assert job["status"] == "PENDING" and job["pipeline_key"] == MSC
    assert job["pipeline_version"] and job["input_progress"] is None
    assert (job["queue_position"], job["queue_depth"]) == (1, 1)
    assert job["parameters"]["worker"]["parallelism"] == 2
    assert is_id(job["id"], "job") and job["created_at"].endswith("Z")
    assert (second.queue_position, second.queue_depth) == (2, 2)


def test_create_job_errors(backend: Backend) -> None:
    """Unknown pipelines, ports, files and bodies get the platform's answers."""
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        seed = {**_msc_body(), "pipeline_key": "image-classifier"}
        error = _envelope(http.post("/batch/jobs", json=seed), 404)
        assert error["message"] == "Pipeline 'image-classifier' has no active versions"
        pinned = {**_msc_body(), "pipeline_version": "9.9.9"}
        _envelope(http.post("/batch/jobs", json=pinned), 404)
        training = {**_msc_body(), "pipeline_type": "training"}
        _envelope(http.post("/batch/jobs", json=training), 400)
        bad_port = _msc_body()
        bad_port["inputs"]["images"] = [{"file_id": "data.csv"}]
        assert (
            "worker.inference"
            in _envelope(http.post("/batch/jobs", json=bad_port), 400)["suggestion"]
        )
        missing = _msc_body()
        del missing["inputs"]["worker.inference"]
        assert (
            "worker.inference" in _envelope(http.post("/batch/jobs", json=missing), 400)["message"]
        )
        unresolved = _msc_body()
        unresolved["inputs"]["worker.inference"] = [{"file_id": "nope.csv"}]
        error = _envelope(http.post("/batch/jobs", json=unresolved), 400)
        assert error["message"].startswith("Failed to resolve file inputs")
        headers = {"Content-Type": "application/json"}
        _envelope(http.post("/batch/jobs", content=b"{not json", headers=headers), 400)
        invalid = http.post("/batch/jobs", json={"pipeline_key": MSC})
        assert "name" in _envelope(invalid, 422, "validation_error")["message"]
        huge = {**_msc_body(), "name": "x" * 300_000}
        _envelope(http.post("/batch/jobs", json=huge), 413)
        with pytest.raises(ApiError) as info:
            client.create_job({**_msc_body(), "pipeline_key": "image-classifier"})
        assert info.value.status_code == 404


def test_cancel_retry_conflicts_and_unknown_job(backend: Backend) -> None:
    """Cancel twice → 409; retry a pending job → 409; unknown ids → 404."""
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        _envelope(http.post(f"/batch/jobs/{job.id}/retry"), 409, "conflict")
        assert client.cancel_job(job.id).status == "CANCELLED"
        _envelope(http.post(f"/batch/jobs/{job.id}/cancel"), 409, "conflict")
        retried = client.retry_job(job.id)
        assert (retried.status, retried.retry_count) == ("PENDING", 1)
        _envelope(http.get("/batch/jobs/job_00000000000000000000000000"), 404)
        _envelope(http.post("/batch/jobs/nope/cancel"), 404)
        assert client.get_queue().queues[0].depth == 1
        listed = client.list_jobs(status="PENDING")
        assert [j.id for j in listed.jobs] == [job.id]
        client.cancel_job(job.id)
        assert client.delete_job(job.id).deleted
        _envelope(http.get(f"/batch/jobs/{job.id}"), 404)


def test_jos_alias_queue_route_and_job_reads(backend: Backend) -> None:
    """``/jos/jobs`` aliases ``/batch/jobs``; ``/queue`` is not taken for a job id."""
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        alias = http.get(f"/jos/jobs/{job.id}")
        assert alias.status_code == 200 and alias.json()["id"] == job.id
        assert http.get("/jos/jobs").json()["total"] == 1
        assert http.get("/batch/jobs/queue").json()["queues"][0]["pipeline_type"] == "batch"
        assert client.list_events(job.id).total >= 0
        assert client.list_progress(job.id).total == 0
        assert client.get_inputs_progress_counts(job.id).pending == 1
        assert client.list_inputs_progress(job.id, status=["pending"]).total == 1


def test_traces_etag_304(backend: Backend) -> None:
    """Unchanged traces answer 304 to ``If-None-Match``."""
    with backend.client() as client:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        traces = client.get_inputs_progress_traces(job.id, buckets=10)
        assert traces is not None and traces.etag
        assert client.get_inputs_progress_traces(job.id, buckets=10, etag=traces.etag) is None


# --- auth -----------------------------------------------------------------------------------

JOB = "job_00000000000000000000000000"
ROUTES = [
    ("POST", "/batch/jobs"),
    ("GET", "/batch/jobs"),
    ("GET", "/batch/jobs/queue"),
    ("GET", f"/batch/jobs/{JOB}"),
    ("DELETE", f"/batch/jobs/{JOB}"),
    ("POST", f"/batch/jobs/{JOB}/retry"),
    ("POST", f"/batch/jobs/{JOB}/cancel"),
    ("GET", f"/batch/jobs/{JOB}/events"),
    ("GET", f"/batch/jobs/{JOB}/progress"),
    ("GET", f"/batch/jobs/{JOB}/inputs"),
    ("GET", f"/batch/jobs/{JOB}/inputs/progress"),
    ("GET", f"/batch/jobs/{JOB}/inputs/progress/counts"),
    ("GET", f"/batch/jobs/{JOB}/inputs/progress/traces"),
    ("GET", f"/batch/jobs/{JOB}/outputs"),
    ("GET", f"/batch/jobs/{JOB}/outputs/out_x/download"),
    ("GET", "/jos/jobs"),
    ("GET", f"/jos/jobs/{JOB}"),
    ("GET", "/batch/registry/pipelines"),
    ("GET", f"/batch/registry/pipelines/{MSC}"),
    ("GET", f"/batch/registry/pipelines/{MSC}/schema"),
    ("POST", "/files"),
    ("POST", "/files/base64"),
    ("DELETE", "/files/delete/a.csv"),
    ("GET", "/files/download/a.csv"),
    ("GET", "/files/info"),
    ("GET", "/files/metadata"),
    ("GET", "/files/metadata/a.csv"),
    ("POST", "/files/uploads/initiate"),
    ("POST", "/files/uploads/upl_x/parts/urls"),
    ("POST", "/files/uploads/upl_x/parts/checkpoint"),
    ("POST", "/files/uploads/upl_x/complete"),
    ("POST", "/files/uploads/upl_x/abort"),
]


def test_the_app_state_does_not_show_the_token(tmp_path: Path) -> None:
    app = create_app(tmp_path / "home", TOKEN, start_scheduler=False)
    assert TOKEN not in repr(app.state.backend) and TOKEN not in repr(vars(app.state))
    app.state.store.close()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_route_requires_the_token(backend: Backend, token: str | None) -> None:
    """Every API route answers 401 in the errors envelope without the right Bearer token."""
    with backend.http(token) as http:
        for method, path in ROUTES:
            response = http.request(method, path, json={})
            assert response.status_code == 401, (method, path)
            _envelope(response, 401, "unauthorized")
        # A part URL is signed instead: no signature is a 403, like storage.
        _envelope(http.put("/files/uploads/upl_x/parts/1", content=b"x"), 403)


# --- pipelines ------------------------------------------------------------------------------


def test_pipeline_registry(backend: Backend) -> None:
    """Pipelines have stable ``ppl_`` ids and are found by id or by key."""
    with backend.client() as client, backend.http() as http:
        listed = client.list_pipelines(status="published")
        keys = {p.pipeline_key for p in listed.pipelines}
        assert MSC in keys
        msc = next(p for p in listed.pipelines if p.pipeline_key == MSC)
        assert is_id(msc.id, "ppl") and is_id(msc.components["worker"], "cmp")
        assert msc.visibility == "platform" and msc.status == "published"
        assert client.get_pipeline(msc.id) == client.get_pipeline(MSC)
        schema = client.get_pipeline_schema(msc.id)
        assert isinstance(schema.user_schema, dict) and "worker.inference" in schema.inputs
        assert (
            http.get("/batch/registry/pipelines", params={"pipeline_type": "training"}).json()[
                "total"
            ]
            == 0
        )
        _envelope(http.get("/batch/registry/pipelines/image-classifier"), 404)


# --- files ----------------------------------------------------------------------------------


def test_simple_base64_download_delete_and_errors(backend: Backend, tmp_path: Path) -> None:
    """Simple and base64 uploads round-trip; types, duplicates and sizes are checked."""
    with backend.client() as client, backend.http() as http:
        assert client.upload_bytes(CSV, "a.csv").is_valid
        result = client.upload_base64(b'{"k": 1}', "b.json")
        assert result.file_id == "b.json" and result.file_uid
        assert client.download_file("b.json", tmp_path / "b.json").read_bytes() == b'{"k": 1}'
        assert client.download_file("a.csv", tmp_path / "a.csv").read_bytes() == CSV
        raw = http.get("/files/download/a.csv")
        assert raw.headers["content-type"] == "application/octet-stream"
        with pytest.raises(ApiError) as info:
            client.upload_bytes(b"\x00", "x.bin", file_type="application/octet-stream")
        assert (info.value.status_code, info.value.code) == (400, "invalid_file_type")
        assert info.value.message == "Unsupported file type: application/octet-stream"
        with pytest.raises(ApiError) as info:
            client.upload_bytes(CSV, "a.csv")
        assert (info.value.status_code, info.value.code) == (409, "conflict")
        assert info.value.message == "File already exists: a.csv"
        with pytest.raises(ApiError) as info:
            client.upload_bytes(b"x" * (100 * 1024), "big.txt")
        assert info.value.status_code == 413
        with pytest.raises(ApiError) as info:
            client.initiate_upload("c.jsonl", "application/jsonl", 10)
        assert info.value.status_code == 400
        assert client.get_file_metadata("a.csv").num_bytes == len(CSV)
        assert client.get_files_info().num_files == 2
        assert client.delete_file("a.csv").file_id == "a.csv"
        _envelope(http.get("/files/metadata/a.csv"), 404)
        _envelope(http.get("/files/download/a.csv"), 404)


def test_metadata_list_styles(backend: Backend) -> None:
    """Cursor style when limit/after/before is given, else a shard-style bare array."""
    with backend.client() as client, backend.http() as http:
        for name in ("1.csv", "2.csv", "3.csv"):
            client.upload_bytes(CSV, name)
        shard = http.get("/files/metadata").json()
        assert [f["file_id"] for f in shard] == ["1.csv", "2.csv", "3.csv"]
        page = http.get("/files/metadata", params={"limit": 2}).json()
        assert [f["file_id"] for f in page["data"]] == ["3.csv", "2.csv"]
        assert page["has_more"] and page["next_cursor"]
        rest = http.get("/files/metadata", params={"limit": 2, "after": page["next_cursor"]})
        assert [f["file_id"] for f in rest.json()["data"]] == ["1.csv"]
        assert [f.file_id for f in client.iter_files(page_size=2)] == ["3.csv", "2.csv", "1.csv"]


class _ExpireFirstPut(httpx.HTTPTransport):
    """Moves the clock past every URL's expiry just before the first part PUT."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.fired = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and not self.fired:
            self.fired = True
            self.clock.now += 7200
        return super().handle_request(request)


def test_direct_upload_with_expired_part_url(backend: Backend, tmp_path: Path) -> None:
    """A multipart upload whose part URLs expire refreshes them and stores the exact bytes."""
    data = bytes(range(256)) * 40  # 10 KiB: 10 parts of 1 KiB
    source = tmp_path / "big.csv"
    source.write_bytes(data)
    transport = _ExpireFirstPut(backend.clock)
    with backend.client(simple_upload_limit=1000, transport=transport) as client:
        result = client.upload_file(source)
        assert transport.fired and result.file_id == "big.csv"
        assert client.download_file("big.csv", tmp_path / "out.csv").read_bytes() == data


def test_resumed_direct_upload(backend: Backend, tmp_path: Path) -> None:
    """Checkpointed parts are skipped when the upload is resumed."""
    data = b"0123456789" * 300  # 3000 bytes: parts of 1024, 1024, 952
    source = tmp_path / "r.csv"
    source.write_bytes(data)
    with backend.client(simple_upload_limit=100) as client, httpx.Client() as raw:
        started = client.initiate_upload("r.csv", "text/csv", len(data), resume_if_started=True)
        first = started.parts[0]
        assert first.url.startswith(backend.url) and "signature=" in first.url
        put = raw.put(first.url, content=data[first.offset : first.offset + first.length])
        assert put.status_code == 200 and put.headers["etag"].startswith('"')
        token = m.PartToken(part_number=first.part_number, part_token=put.headers["etag"])
        assert client.checkpoint_parts(started.upload_id, [token]).num_checkpointed == 1
        resumed = client.initiate_upload("r.csv", "text/csv", len(data), resume_if_started=True)
        assert resumed.is_resume and first.part_number not in {p.part_number for p in resumed.parts}
        assert client.upload_file(source).file_id == "r.csv"
        assert client.download_file("r.csv", tmp_path / "back.csv").read_bytes() == data
        with pytest.raises(ApiError) as info:
            client.initiate_upload("r.csv", "text/csv", len(data))
        assert (info.value.status_code, info.value.message) == (409, "File already exists: r.csv")
        other = client.initiate_upload("s.csv", "text/csv", 10)
        client.abort_upload(other.upload_id)
        with pytest.raises(ApiError):
            client.get_part_urls(other.upload_id, [1])


# --- outputs and signed URLs ----------------------------------------------------------------


def test_output_download_via_signed_url(backend: Backend, tmp_path: Path) -> None:
    """Output refs are signed absolute URLs; expired ones are 403 and the client re-lists."""
    with backend.client() as client, httpx.Client() as raw:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        backend.store.add_output(job.id, "worker.results", "pred.csv", b"t,Prediction\n1,a\n")
        output = client.list_outputs(job.id).outputs[0]
        assert output.data.ref.startswith(f"{backend.url}/v0.5/batch/jobs/{job.id}/outputs/")
        assert output.expires_at is not None
        assert raw.get(output.data.ref).content == b"t,Prediction\n1,a\n"
        tampered = output.data.ref[:-1] + ("0" if output.data.ref[-1] != "0" else "1")
        _envelope(raw.get(tampered), 403, "signature_does_not_match")
        inputs = client.list_inputs(job.id).inputs
        assert inputs[0].data is not None and raw.get(inputs[0].data.ref).content == CSV
        backend.clock.now += 7200
        _envelope(raw.get(output.data.ref), 403, "request_expired")
        saved = client.download_output(output, tmp_path)
        assert saved.read_bytes() == b"t,Prediction\n1,a\n"


def test_lifespan_runs_the_scheduler(tmp_path: Path) -> None:
    """With the scheduler started by the lifespan, a created job leaves the queue."""
    pytest.importorskip("atai_magics.local.scheduler")
    with _serve(tmp_path / "home", scheduler=True) as served, served.client() as client:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        status = job.status
        for _ in range(600):
            status = client.get_job(job.id).status
            if status in ("COMPLETED", "FAILED"):
                break
            time.sleep(0.05)
        assert status in ("COMPLETED", "FAILED")


# --- review fixes: parameter bounds, bad Unicode, Host pinning, upload threads --------------


@pytest.mark.parametrize(
    "query",
    [
        "/batch/jobs?limit=9223372036854775808",
        "/batch/jobs?offset=99999999999999999999999",
        "/batch/jobs?offset=-1",
        "/batch/jobs?limit=-5",
        "/files/metadata?shard_index=9223372036854775808",
        "/files/metadata?max_items_per_shard=-2",
        "/files/metadata?shard_index=-2",
        "/files/metadata?limit=9223372036854775808",
        f"/batch/jobs/{'job_00000000000000000000000000'}/events?offset=18446744073709551616",
    ],
)
def test_out_of_range_integer_parameters_are_400(backend: Backend, query: str) -> None:
    with backend.http() as http:
        error = _envelope(http.get(query), 400, "invalid_parameter")
    assert "between" in error["message"]


def test_in_range_integer_parameters_still_work(backend: Backend) -> None:
    with backend.http() as http:
        assert http.get("/batch/jobs?offset=9223372036854775807&limit=0").status_code == 200
        assert http.get("/files/metadata?shard_index=-1&max_items_per_shard=-1").json() == []


def test_traces_buckets_out_of_range_is_400(backend: Backend) -> None:
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        url = f"/batch/jobs/{job.id}/inputs/progress/traces?buckets=9223372036854775808"
        _envelope(http.get(url), 400, "invalid_parameter")


def _surrogate_bodies() -> list[tuple[str, bytes]]:
    """Bodies that pass every other check, with a lone surrogate (a ``\\ud800`` escape)."""
    named = _msc_body(name="\ud800")
    keyed = _msc_body()
    keyed["parameters"]["worker"]["config"]["\udfff"] = 1
    nested = _msc_body()
    nested["inputs"]["worker.inference"][0]["metadata"] = {"note": ["ok", "x\udc80y"]}
    initiate = {"filename": "a\ud800.csv", "file_type": "text/csv", "num_bytes": 3}
    jobs = [("/batch/jobs", json.dumps(b).encode()) for b in (named, keyed, nested)]
    return [*jobs, ("/files/uploads/initiate", json.dumps(initiate).encode())]


@pytest.mark.parametrize(("path", "body"), _surrogate_bodies())
def test_lone_surrogates_in_json_bodies_are_400(backend: Backend, path: str, body: bytes) -> None:
    with backend.client() as client:
        _upload_inputs(client)
    with backend.http() as http:
        response = http.post(path, content=body, headers={"content-type": "application/json"})
        error = _envelope(response, 400, "invalid_json")
        assert "surrogate" in error["message"]
        assert http.get("/batch/jobs").json()["total"] == 0


def test_deeply_nested_json_is_400(backend: Backend) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with backend.http() as http:
        _envelope(http.post("/batch/jobs", content=body), 400, "invalid_json")


def test_traces_if_none_match_star_is_304(backend: Backend) -> None:
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        url = f"/batch/jobs/{job.id}/inputs/progress/traces"
        response = http.get(url, headers={"If-None-Match": "*"})
        assert response.status_code == 304 and response.headers["etag"]
        assert http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        missing = http.get(
            f"/batch/jobs/{JOB}/inputs/progress/traces", headers={"If-None-Match": "*"}
        )
        _envelope(missing, 404)


def test_signed_urls_ignore_a_forged_host_header(backend: Backend) -> None:
    forged = {"Host": "evil.example:8080"}
    with backend.client() as client, backend.http() as http:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        backend.store.add_output(job.id, "worker.results", "pred.csv", b"t,Prediction\n")
        outputs = http.get(f"/batch/jobs/{job.id}/outputs", headers=forged).json()["outputs"]
        assert outputs[0]["data"]["ref"].startswith(f"{backend.url}/v0.5/batch/jobs/{job.id}/")
        inputs = http.get(f"/batch/jobs/{job.id}/inputs", headers=forged).json()["inputs"]
        assert all(i["data"]["ref"].startswith(f"{backend.url}/v0.5/") for i in inputs)
        initiated = http.post(
            "/files/uploads/initiate",
            json={"filename": "big.csv", "file_type": "text/csv", "num_bytes": 3000},
            headers=forged,
        ).json()
        assert initiated["parts"]
        assert all(p["url"].startswith(f"{backend.url}/v0.5/files/") for p in initiated["parts"])


def test_head_on_a_signed_get_url_is_403(backend: Backend) -> None:
    """The signature binds the method, as on S3: HEAD needs its own signature."""
    with backend.client() as client, httpx.Client() as raw:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
        backend.store.add_output(job.id, "worker.results", "pred.csv", b"t,Prediction\n")
        ref = client.list_outputs(job.id).outputs[0].data.ref
        assert raw.head(ref).status_code == 403
        assert raw.get(ref).status_code == 200


def _stalled_upload(url: str) -> socket.socket:
    """A simple upload whose client sent the headers and a few bytes, then went quiet."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        "POST /v0.5/files HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        "Content-Length: 60000\r\n\r\n"
        "--xyz\r\n"
    )
    sock.sendall(head.encode())
    return sock


def test_stalled_uploads_leave_threads_for_other_routes(backend: Backend) -> None:
    """More stalled uploads than the default thread pool has threads (40): reads still answer."""
    with backend.client() as client:
        _upload_inputs(client)
        job = client.create_job(_msc_body())
    sockets = [_stalled_upload(backend.url) for _ in range(45)]
    try:
        time.sleep(0.5)  # let every upload reach its handler
        with backend.http() as http:
            response = http.get(f"/batch/jobs/{job.id}", timeout=10)
            assert response.status_code == 200 and response.json()["id"] == job.id
            assert http.post(f"/batch/jobs/{job.id}/cancel", timeout=10).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
    with backend.client() as client:  # the limiter's threads come back once the clients go
        assert client.upload_bytes(b"after", "after.txt").file_id == "after.txt"


def test_an_upload_body_that_goes_quiet_is_dropped_and_frees_its_thread(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More stalled uploads than there are upload threads (8): each is answered 408 once it
    has sent nothing for BODY_IDLE_SECONDS, and the next upload goes through."""
    monkeypatch.setattr(app_module, "BODY_IDLE_SECONDS", 0.5)
    sockets = [_stalled_upload(backend.url) for _ in range(app_module.UPLOAD_THREADS + 2)]
    try:
        for sock in sockets:
            answer = b""
            while b"request_timeout" not in answer and (chunk := sock.recv(4096)):
                answer += chunk  # the head and the body may come apart
            assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
    finally:
        for sock in sockets:
            sock.close()
    with backend.client() as client:
        assert client.upload_bytes(b"after", "after.txt").file_id == "after.txt"
    leftovers = [p for p in backend.store.files_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []
