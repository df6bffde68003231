"""Hostile input against a real local backend in its own process, over raw HTTP.

Path-like, NUL, very long and odd-Unicode ids on every route; oversized, malformed, non-finite
and deeply nested bodies; part numbers of thousands of digits; absurd upload sizes; downloads
racing deletes; a client hanging up mid-body; forged, expired, tampered and replayed signed
URLs; missing and wrong tokens on every route (enumerated from the Starlette app, so new
routes are covered automatically); an input name so long its output name must be cut. After
each attack: the right status, the ``{"errors": [...]}`` envelope, nothing written outside
the home, no unhandled error in the server's log, and a server that still works.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from starlette.routing import Route

from atai_magics.local._signing import Signer
from atai_magics.local.app import MAX_JSON_BYTES, MAX_SIMPLE_UPLOAD_BYTES, create_app
from tests.conftest import LocalBackend, plugin_backend

pytestmark = pytest.mark.reliability

MSC = "machine-state-classification"
CSV = b"timestamp,a,b\n" + b"".join(f"{i},{i * 2},{i * 3}\n".encode() for i in range(40))
MARKER = f"hostile{uuid.uuid4().hex[:12]}"
"""In every hostile name: a file with it anywhere on disk means a name reached the filesystem."""
MULTIPART_SLACK = 64 * 1024


# --- fixtures and helpers -------------------------------------------------------------------


def _snapshot(root: Path, skip: Path) -> set[Path]:
    """Every file and directory under ``root`` except those under ``skip``."""
    found: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames[:] = []
            continue
        found.update(here / n for n in (*dirnames, *filenames))
    return found


@pytest.fixture(scope="module")
def backend(
    tmp_path_factory: pytest.TempPathFactory, routes: list[tuple[str, Route, str]]
) -> Iterator[LocalBackend]:
    """One backend for the module; the files around its home must not change while it runs
    (``routes`` first: its throwaway home is made before the snapshot)."""
    with plugin_backend(tmp_path_factory, "hostile", concurrency=1) as served:
        home = served.info.home.resolve()
        root = tmp_path_factory.getbasetemp().resolve()
        before = _snapshot(root, home)
        yield served
        after = _snapshot(root, home)
        assert after - before == set(), f"files appeared outside the home: {after - before}"
        leaked = [p for p in _marked_paths(home.parent) if home not in p.parents]
        # where "../../../../tmp/<MARKER>.csv" or a name taken as relative would land
        for top in {Path("/"), Path("/tmp"), Path.cwd(), home.parent.parent}:
            leaked += [p for p in top.iterdir() if MARKER in p.name]
        assert leaked == [], leaked


def _marked_paths(*roots: Path) -> list[Path]:
    hits = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            hits += [Path(dirpath) / n for n in (*dirnames, *filenames) if MARKER in n]
    return hits


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Route, str]]:
    """``(method, route, auth mode)`` for every route of the app, read from the app itself."""
    app = create_app(tmp_path_factory.mktemp("routes-home"), "t", start_scheduler=False)
    try:
        found = []
        for route in app.routes:
            assert isinstance(route, Route), route
            auth = inspect.getclosurevars(route.endpoint).nonlocals["auth"]
            for method in sorted(route.methods or ()):
                found.append((method, route, auth))
        return found
    finally:
        app.state.store.close()


def _root(backend: LocalBackend) -> str:
    return backend.info.url.rsplit("/v0.5", 1)[0]


def _auth(backend: LocalBackend) -> dict[str, str]:
    return {"Authorization": f"Bearer {backend.info.token()}"}


@pytest.fixture
def http(backend: LocalBackend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=_root(backend), headers=_auth(backend), timeout=30) as client:
        yield client


@pytest.fixture
def anon(backend: LocalBackend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=_root(backend), timeout=30) as client:
        yield client


def _envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text[:500])
    body = response.json()
    assert set(body) == {"errors"} and isinstance(body["errors"], list), body
    assert len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    assert set(error) <= {"code", "message", "suggestion", "error_uid"}, error
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert error["error_uid"].startswith("err-")
    if code is not None:
        assert error["code"] == code, error
    return error


def _raw(
    backend: LocalBackend,
    method: str,
    target: bytes,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One request over a plain socket, the target sent byte for byte (no URL normalisation)."""
    port = int(urlsplit(backend.info.url).port or 80)
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: 127.0.0.1:{port}".encode()]
    headers = {"Connection": "close", **(headers or {})}
    if body and "Content-Length" not in headers:
        headers["Content-Length"] = str(len(body))
    for name, value in headers.items():
        lines.append(f"{name}: {value}".encode())
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def _raw_envelope(status: int, payload: bytes, expected: int, code: str | None = None) -> None:
    assert status == expected, payload[:500]
    error = json.loads(payload)["errors"][0]
    assert error["error_uid"].startswith("err-")
    if code is not None:
        assert error["code"] == code, error


def _multipart(filename_header: str, content: bytes = CSV, ctype: str = "text/csv") -> bytes:
    return (
        b"--BOUND\r\n"
        + f"Content-Disposition: form-data; name=file; {filename_header}\r\n".encode()
        + f"Content-Type: {ctype}\r\n\r\n".encode()
        + content
        + b"\r\n--BOUND--\r\n"
    )


MULTIPART = {"Content-Type": "multipart/form-data; boundary=BOUND"}
JSON_TYPE = {"Content-Type": "application/json"}


def _upload(http: httpx.Client, name: str, content: bytes = CSV) -> httpx.Response:
    return http.post(
        "/v0.5/files", files={"file": (name, content, "text/csv")}, headers={"Accept": "*/*"}
    )


def _msc_body(inference: str = "data.csv", shots: str = "normal.csv") -> dict[str, Any]:
    return {
        "name": "hostile",
        "pipeline_type": "batch",
        "pipeline_key": MSC,
        "inputs": {
            "worker.inference": [{"file_id": inference}],
            "worker.n_shots": [{"file_id": shots, "metadata": {"class": "normal"}}],
        },
        "parameters": {"worker": {"config": {"window_size": 8}}},
    }


@pytest.fixture(scope="module")
def seeded(backend: LocalBackend) -> dict[str, Any]:
    """Two input files and a job over them (its inputs carry signed download refs)."""
    with httpx.Client(base_url=_root(backend), headers=_auth(backend), timeout=30) as http:
        for name in ("data.csv", "normal.csv"):
            assert _upload(http, name).status_code == 200
        job = http.post("/v0.5/batch/jobs", json=_msc_body())
        assert job.status_code == 200, job.text
        inputs = http.get(f"/v0.5/batch/jobs/{job.json()['id']}/inputs").json()["inputs"]
        refs = {i["data"]["filename"]: i["data"]["ref"] for i in inputs}
        return {"job_id": job.json()["id"], "refs": refs}


# --- hostile ids ----------------------------------------------------------------------------

# Names a path, a protocol or a terminal would misread; each carries MARKER.
REFUSED_NAMES = [
    f"../{MARKER}.csv",
    f"../../../../tmp/{MARKER}.csv",
    f"/tmp/{MARKER}.csv",
    f"..\\..\\{MARKER}.csv",
    f"a\\{MARKER}.csv",
    f"sub/{MARKER}.csv",
    "..",
    ".",
    f".{MARKER}.csv",
    f"{MARKER}\x00.csv",
    f"{MARKER}\x00/../../x.csv",
    f"{MARKER}\n.csv",
    f"{MARKER}\r.csv",
    f"{MARKER}\x1b[31m.csv",
    f"{MARKER}\u202egsv.csv",  # right-to-left override
    f"{MARKER}\u200b.csv",  # zero-width space
    f"{MARKER}\u2028.csv",  # line separator
    f"{MARKER}\ufeff.csv",  # BOM
    f" {MARKER}.csv",
    f"{MARKER}.csv ",
    MARKER + "a" * 10_000 + ".csv",
    MARKER + "é" * 124 + ".csv",  # 257 bytes of UTF-8
]
# Odd but harmless: kept verbatim as ids, never used as paths.
ACCEPTED_NAMES = [
    f"{MARKER}%2e%2e%2f.csv",
    f"{MARKER}..csv",
    f"{MARKER}\uff0f\uff0e\uff0e.csv",  # fullwidth solidus and full stops
    f"{MARKER}📈.csv",
    f"{MARKER}e\u0301.csv",  # NFD
    f"{MARKER}\u00e9.csv",  # NFC: a different id
    f"{MARKER}~$*?<>|:.csv",
    MARKER + "a" * (255 - len(MARKER) - 4) + ".csv",
]


def _disposition(name: str) -> str:
    """A Content-Disposition filename, RFC 5987-encoded so any code point survives."""
    return "filename*=UTF-8''" + quote(name.encode("utf-8", "surrogatepass"), safe="")


@pytest.mark.parametrize("name", REFUSED_NAMES, ids=lambda n: repr(n[-40:]))
@pytest.mark.parametrize("route", ["/v0.5/files", "/v0.5/files/base64"])
def test_upload_refuses_unsafe_names(backend: LocalBackend, route: str, name: str) -> None:
    content = b"dCxhCjEsMgo=" if route.endswith("base64") else b"t,a\n1,2\n"
    status, payload = _raw(
        backend,
        "POST",
        route.encode(),
        {**_auth(backend), **MULTIPART},
        _multipart(_disposition(name), content),
    )
    _raw_envelope(status, payload, 400, "invalid_file_id")


def test_upload_refuses_unsafe_plain_filenames(backend: LocalBackend) -> None:
    """The same names as a plain ``filename="…"`` (what most clients send), bytes as they are."""
    for name in [n for n in REFUSED_NAMES if "\r" not in n and "\n" not in n]:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        body = _multipart(f'filename="{escaped}"')
        status, payload = _raw(
            backend, "POST", b"/v0.5/files", {**_auth(backend), **MULTIPART}, body
        )
        _raw_envelope(status, payload, 400, "invalid_file_id")
    for header in ('filename=""', "filename*=UTF-8''"):
        status, payload = _raw(
            backend, "POST", b"/v0.5/files", {**_auth(backend), **MULTIPART}, _multipart(header)
        )
        _raw_envelope(status, payload, 400, "invalid_file_id")


def test_odd_but_safe_names_round_trip(backend: LocalBackend, http: httpx.Client) -> None:
    """Accepted ids come back verbatim through metadata, download and delete."""
    home = backend.info.home
    for name in ACCEPTED_NAMES:
        content = f"t,name\n1,{len(name)}\n".encode()
        status, payload = _raw(
            backend,
            "POST",
            b"/v0.5/files",
            {**_auth(backend), **MULTIPART},
            _multipart(_disposition(name), content),
        )
        assert status == 200, payload
        assert json.loads(payload)["file_id"] == name
        quoted = quote(name, safe="")
        meta = http.get(f"/v0.5/files/metadata/{quoted}")
        assert meta.status_code == 200 and meta.json()["file_id"] == name
        assert http.get(f"/v0.5/files/download/{quoted}").content == content
        # the bytes live under the file's uid, never under the user's name
        assert _marked_paths(home) == []
        assert http.delete(f"/v0.5/files/delete/{quoted}").json()["file_id"] == name
        _envelope(http.get(f"/v0.5/files/metadata/{quoted}"), 404, "not_found")


# Path segments: percent-encoded by the test, decoded by the server.
SEGMENTS = [
    "..",
    ".",
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",  # double-encoded
    "..\\..\\..\\windows\\win.ini",
    "a\x00b",
    "\x00",
    "a" * 10_000,
    "\u202e\u200b",
    "e\u0301\U0001f4c8",
    "%00",
    "x/retry",
    "x/cancel",
    "~root",
    "$HOME",
    "*",
    "?a=b#c",
]


def _fill(route: Route, value: str) -> str:
    path = route.path
    for name, convertor in route.param_convertors.items():
        # dots encoded too, so no client collapses "." or ".." segments before sending
        encoded = quote(value, safe="").replace(".", "%2E")
        text = "1" if type(convertor).__name__ == "IntegerConvertor" else encoded
        path = path.replace(f"{{{name}:int}}", text).replace(f"{{{name}}}", text)
    return path


def test_hostile_path_segments_on_every_route(
    routes: list[tuple[str, Route, str]], http: httpx.Client, seeded: dict[str, Any]
) -> None:
    """Every route with a path parameter, every hostile segment: an error, never a 5xx."""
    checked = 0
    for method, route, auth in routes:
        if not route.param_convertors or method == "HEAD":
            continue
        for value in SEGMENTS:
            response = http.request(method, _fill(route, value), json={})
            # signed-only: 403 unsigned, or 404 when a decoded "/" leaves no matching route
            allowed = {403, 404} if auth == "signed" else {400, 404, 405}
            assert response.status_code in allowed, (method, route.path, value[:40])
            _envelope(response, response.status_code)
            assert b"root:" not in response.content
            checked += 1
    assert checked > 300


@pytest.mark.parametrize(
    "target",
    [
        b"/v0.5/files/download/../../../../../../etc/passwd",
        b"/v0.5/files/download/..%2f..%2f..%2f..%2fetc%2fpasswd",
        b"/v0.5/files/download/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"/v0.5/files/download/..%5c..%5cetc%5cpasswd",
        b"/v0.5/files/download/%2e%2e",
        b"/v0.5/files/download/data.csv%00.txt",
        b"/v0.5/files/metadata/../../files/info",
        b"/v0.5/files/delete/..%2fdata.csv",
        b"/v0.5/batch/jobs/x/outputs/..%2f..%2f..%2ftoken/download",
        b"/v0.5/batch/jobs/../../../token",
        b"/v0.5/files/download/%ED%A0%80",  # a lone surrogate's UTF-8 bytes
        b"/v0.5/files/download/%FF%FE",
    ],
)
def test_traversal_targets_sent_verbatim(
    backend: LocalBackend, seeded: dict[str, Any], target: bytes
) -> None:
    """Dot segments and encoded separators reach the server unnormalised: 404, nothing read."""
    method = "DELETE" if b"/delete/" in target else "GET"
    status, payload = _raw(backend, method, target, _auth(backend))
    _raw_envelope(status, payload, 404)
    assert backend.info.token().encode() not in payload and b"root:" not in payload


def test_raw_nul_and_control_bytes_in_the_request_line(backend: LocalBackend) -> None:
    """Unencoded NUL/CR in the target: the HTTP parser refuses it (400); the server lives on."""
    for target in (b"/v0.5/files/download/a\x00b", b"/v0.5/files/download/a\x7fb"):
        status, _ = _raw(backend, "GET", target, _auth(backend))
        assert status in (400, 404), target
    assert httpx.get(f"{_root(backend)}/healthz").status_code == 200


@pytest.mark.parametrize(
    "file_id",
    [
        "../data.csv",
        "../../../../etc/passwd",
        "/etc/passwd",
        "..\\data.csv",
        "data.csv\x00",
        "a" * 10_000,
        "\u202edata.csv",
        "data.csv/",
        ".",
    ],
    ids=repr,
)
def test_job_input_file_ids(http: httpx.Client, seeded: dict[str, Any], file_id: str) -> None:
    """Hostile input file ids resolve to no file: 400 invalid_inputs, no job created."""
    before = http.get("/v0.5/batch/jobs").json()["total"]
    for body in (_msc_body(inference=file_id), _msc_body(shots=file_id)):
        error = _envelope(http.post("/v0.5/batch/jobs", json=body), 400, "invalid_inputs")
        assert error["message"].startswith("Failed to resolve file inputs")
    assert http.get("/v0.5/batch/jobs").json()["total"] == before


def test_job_input_file_id_lone_surrogate(http: httpx.Client, seeded: dict[str, Any]) -> None:
    body = json.dumps(_msc_body()).replace("data.csv", "\\ud800").encode()
    headers = {"Content-Type": "application/json"}
    _envelope(http.post("/v0.5/batch/jobs", content=body, headers=headers), 400, "invalid_json")


# --- oversized bodies -----------------------------------------------------------------------


def test_declared_oversized_json_bodies_are_413(
    backend: LocalBackend, routes: list[tuple[str, Route, str]]
) -> None:
    """A Content-Length over the JSON limit on every JSON POST route: 413 before the body."""
    json_posts = [
        r for m, r, _ in routes if m == "POST" and not r.path.endswith(("/files", "/base64"))
    ]
    headers = {
        **_auth(backend),
        "Content-Type": "application/json",
        "Content-Length": str(MAX_JSON_BYTES + 1),
    }
    checked = 0
    for route in json_posts:
        if route.path.endswith(("/retry", "/cancel")):
            continue  # they take no body
        status, payload = _raw(backend, "POST", _fill(route, "x").encode(), headers)
        _raw_envelope(status, payload, 413, "payload_too_large")
        checked += 1
    assert checked >= 7


def test_streamed_oversized_json_body_is_413(http: httpx.Client) -> None:
    """Chunked (no Content-Length) and over the limit: counted while streaming, 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(MAX_JSON_BYTES // (1024 * 1024) + 1):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    headers = {"Content-Type": "application/json"}
    _envelope(
        http.post("/v0.5/batch/jobs", content=chunks(), headers=headers), 413, "payload_too_large"
    )


@pytest.mark.parametrize("route", [b"/v0.5/files", b"/v0.5/files/base64"])
def test_declared_oversized_upload_is_413(backend: LocalBackend, route: bytes) -> None:
    headers = {
        **_auth(backend),
        **MULTIPART,
        "Content-Length": str(MAX_SIMPLE_UPLOAD_BYTES + MULTIPART_SLACK + 1),
    }
    status, payload = _raw(backend, "POST", route, headers)
    _raw_envelope(status, payload, 413, "payload_too_large")


def test_part_larger_than_announced_is_400(http: httpx.Client, anon: httpx.Client) -> None:
    started = http.post(
        "/v0.5/files/uploads/initiate",
        json={"filename": f"{MARKER}-big.csv", "file_type": "text/csv", "num_bytes": 20 << 20},
    ).json()
    part = started["parts"][0]
    too_big = b"x" * (part["length"] + 1)
    _envelope(anon.put(part["url"], content=too_big), 400, "invalid_parameter")
    http.post(f"/v0.5/files/uploads/{started['upload_id']}/abort")


# --- malformed bodies -----------------------------------------------------------------------


MALFORMED_JSON = [b"{not json", b'{"name": ', b"\xff\xfe{}", b"[1, 2", b"nul", b"{'a': 1}"]
WRONG_TYPES: list[Any] = [
    [],
    "job",
    42,
    None,
    {"name": 5, "pipeline_key": MSC},
    {"name": "n", "pipeline_key": ["x"]},
    {"name": "n", "pipeline_key": MSC, "inputs": []},
    {"name": "n", "pipeline_key": MSC, "inputs": {"worker.inference": "data.csv"}},
    {"name": "n", "pipeline_key": MSC, "inputs": {"worker.inference": [{"file_id": 7}]}},
    {"name": "n", "pipeline_key": MSC, "inputs": {"worker.inference": [{"file_id": None}]}},
    {"name": "n", "pipeline_key": MSC, "parameters": {"worker": {"parallelism": "many"}}},
    {"name": "n", "pipeline_key": MSC, "parameters": {"worker": {"config": []}}},
]


def test_create_job_malformed_bodies(http: httpx.Client) -> None:
    before = http.get("/v0.5/batch/jobs").json()["total"]
    for content_type in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
        for body in MALFORMED_JSON:
            response = http.post(
                "/v0.5/batch/jobs", content=body, headers={"Content-Type": content_type}
            )
            _envelope(response, 400, "invalid_json")
    for body in WRONG_TYPES:
        response = http.post(
            "/v0.5/batch/jobs",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        _envelope(response, 422, "validation_error")
    _envelope(http.post("/v0.5/batch/jobs"), 422, "validation_error")  # empty body
    multipart = _multipart('filename="a.csv"')
    _envelope(
        http.post("/v0.5/batch/jobs", content=multipart, headers=MULTIPART), 400, "invalid_json"
    )
    assert http.get("/v0.5/batch/jobs").json()["total"] == before


def test_upload_routes_malformed_bodies(backend: LocalBackend, http: httpx.Client) -> None:
    auth = _auth(backend)
    for route in (b"/v0.5/files", b"/v0.5/files/base64"):
        cases: list[tuple[dict[str, str], bytes, int, str]] = [
            ({"Content-Type": "application/json"}, b'{"file": "x"}', 400, "invalid_parameter"),
            ({"Content-Type": "multipart/form-data"}, b"--x\r\n", 400, "invalid_parameter"),
            (MULTIPART, b"", 400, "invalid_parameter"),
            (MULTIPART, b"--BOUND\r\nContent-Disposition: form-data; name=file; fi", 400, None),
            (MULTIPART, _multipart('filename="t.csv"')[:-20], 400, "invalid_parameter"),
            (MULTIPART, b"--BOUND--\r\n", 400, "missing_parameter"),
            (MULTIPART, b"no boundary here " * 70_000, 400, "invalid_parameter"),
            (
                MULTIPART,
                _multipart('filename="t.bin"', ctype="application/x-msdownload"),
                400,
                "invalid_file_type",
            ),
        ]
        for headers, body, status, code in cases:
            got, payload = _raw(
                backend,
                "POST",
                route,
                {**auth, **headers, "Content-Length": str(len(body))},
                body,
            )
            _raw_envelope(got, payload, status, code)
    bad64 = _multipart(f'filename="{MARKER}.json"', b"!!!not base64", "application/json")
    got, payload = _raw(backend, "POST", b"/v0.5/files/base64", {**auth, **MULTIPART}, bad64)
    _raw_envelope(got, payload, 400, "invalid_parameter")
    assert http.get(f"/v0.5/files/metadata/{MARKER}.json").status_code == 404


def test_other_post_routes_malformed_bodies(http: httpx.Client) -> None:
    """initiate, part URLs, checkpoint, complete, abort: 400, never a 5xx."""
    started = http.post(
        "/v0.5/files/uploads/initiate",
        json={"filename": f"{MARKER}-u.csv", "file_type": "text/csv", "num_bytes": 100},
    ).json()
    upload = started["upload_id"]
    json_h = {"Content-Type": "application/json"}
    paths = [
        "/v0.5/files/uploads/initiate",
        f"/v0.5/files/uploads/{upload}/parts/urls",
        f"/v0.5/files/uploads/{upload}/parts/checkpoint",
        f"/v0.5/files/uploads/{upload}/complete",
        f"/v0.5/files/uploads/{upload}/abort",
    ]
    for path in paths:
        for body in MALFORMED_JSON:
            _envelope(http.post(path, content=body, headers=json_h), 400, "invalid_json")
    wrong = {
        "/v0.5/files/uploads/initiate": [
            [],
            "x",
            {"filename": 1, "file_type": "text/csv", "num_bytes": 1},
            {"filename": "a.csv", "file_type": "text/csv", "num_bytes": "many"},
            {"filename": "a.csv", "file_type": "text/csv", "num_bytes": 1.5},
            {"filename": "a.csv", "file_type": "text/csv", "num_bytes": -1},
            {"filename": "a.csv", "file_type": "text/csv", "num_bytes": 2**70},
            {"filename": "a.csv", "file_type": "text/csv", "num_bytes": 10**400},
            {"filename": f"../{MARKER}.csv", "file_type": "text/csv", "num_bytes": 1},
            {"filename": f"{MARKER}\x00.csv", "file_type": "text/csv", "num_bytes": 1},
            {"filename": "a.csv", "file_type": "text/x-shellscript", "num_bytes": 1},
        ],
        f"/v0.5/files/uploads/{upload}/parts/urls": [
            [],
            {"part_numbers": "1"},
            {"part_numbers": [0]},
            {"part_numbers": [-1]},
            {"part_numbers": [2**70]},
            {"part_numbers": [None]},
        ],
        f"/v0.5/files/uploads/{upload}/parts/checkpoint": [
            [],
            {"parts": "x"},
            {"parts": [{"part_number": "one", "part_token": 1}]},
            {"parts": [{"part_number": 2**70, "part_token": "x"}]},
        ],
        f"/v0.5/files/uploads/{upload}/complete": [
            [],
            {"parts": None},
            {"parts": [{"part_number": 1, "part_token": "forged"}]},
        ],
    }
    for path, bodies in wrong.items():
        for body in bodies:
            response = http.post(path, content=json.dumps(body).encode(), headers=json_h)
            assert response.status_code in (400, 404, 409, 413, 422), (path, body)
            assert response.status_code < 500
            _envelope(response, response.status_code)
    assert http.post(f"/v0.5/files/uploads/{upload}/abort").status_code == 200


# --- signed URLs ----------------------------------------------------------------------------


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _with(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = {**_query(url), **params}
    return f"{parts.scheme}://{parts.netloc}{parts.path}?" + "&".join(
        f"{k}={quote(v, safe='')}" for k, v in query.items()
    )


def test_signed_download_url_attacks(
    backend: LocalBackend, seeded: dict[str, Any], anon: httpx.Client, http: httpx.Client
) -> None:
    """Signed file-download URLs: good works; forged, tampered, expired and replayed do not."""
    ref = seeded["refs"]["data.csv"]
    assert anon.get(ref).content == CSV
    q = _query(ref)
    path = urlsplit(ref).path
    root = _root(backend)
    real = Signer(backend.info.token())
    expired_path, _ = Signer(backend.info.token(), ttl=-10).sign("GET", path)
    forged_path, _ = Signer("not-the-token").sign("GET", path)
    sig = q["signature"]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    cases = {
        "forged with another key": (root + forged_path, "signature_does_not_match"),
        "expired but genuine": (root + expired_path, "request_expired"),
        "signature flipped": (_with(ref, signature=flipped), "signature_does_not_match"),
        "signature truncated": (_with(ref, signature=sig[:32]), "signature_does_not_match"),
        "signature empty": (_with(ref, signature=""), "access_denied"),
        "expires extended": (
            _with(ref, expires=str(int(q["expires"]) + 86400)),
            "signature_does_not_match",
        ),
        "expires missing": (f"{root}{path}?signature={sig}", "access_denied"),
        "expires not a number": (_with(ref, expires="soon"), "access_denied"),
        "expires huge": (_with(ref, expires="9" * 5000), "access_denied"),
        "replayed on another file": (
            ref.replace("/data.csv?", "/normal.csv?"),
            "signature_does_not_match",
        ),
        "replayed as a path traversal": (
            ref.replace("/data.csv?", "/..%2Fdata.csv?"),
            None,
        ),
    }
    for label, (url, code) in cases.items():
        response = anon.get(url)
        if code is None:
            assert response.status_code in (403, 404), label
            _envelope(response, response.status_code)
        else:
            _envelope(response, 403, code)
    # A valid Bearer does not rescue a bad signature: the signature is what is checked.
    _envelope(http.get(_with(ref, signature=flipped)), 403, "signature_does_not_match")
    # Method-bound: the GET signature does not work for HEAD, nor on the PUT part route.
    assert anon.head(ref).status_code == 403
    put_path = "/v0.5/files/uploads/upl_x/parts/1"
    _envelope(anon.put(f"{root}{put_path}?{urlsplit(ref).query}", content=b"x"), 403)
    # A genuine signature for a path that does not exist is a 404, not a 500.
    ghost, _ = real.sign("GET", "/v0.5/files/download/ghost.csv")
    _envelope(anon.get(root + ghost), 404, "not_found")


def test_non_ascii_signature_is_403(seeded: dict[str, Any], anon: httpx.Client) -> None:
    ref = seeded["refs"]["data.csv"]
    _envelope(anon.get(_with(ref, signature="é" * 64)), 403, "signature_does_not_match")


def test_signed_output_download_attacks(
    backend: LocalBackend, seeded: dict[str, Any], anon: httpx.Client
) -> None:
    """Output download URLs: a signature binds job, output and method."""
    root = _root(backend)
    job = seeded["job_id"]
    real = Signer(backend.info.token())
    path = f"/v0.5/batch/jobs/{job}/outputs/out_0000000000000000000000000/download"
    signed, _ = real.sign("GET", path)
    _envelope(anon.get(root + signed), 404)  # genuine, but no such output
    query = signed.split("?", 1)[1]
    other = path.replace(job, "job_00000000000000000000000000")
    _envelope(anon.get(f"{root}{other}?{query}"), 403, "signature_does_not_match")
    traversal = path.replace("/download", "/../../../../token/download")
    _envelope(anon.get(f"{root}{quote(traversal)}?{query}"), 404)
    expired, _ = Signer(backend.info.token(), ttl=-1).sign("GET", path)
    _envelope(anon.get(root + expired), 403, "request_expired")
    put_signed, _ = real.sign("PUT", path)
    _envelope(anon.get(root + put_signed), 403, "signature_does_not_match")


def test_signed_part_url_attacks(
    backend: LocalBackend, http: httpx.Client, anon: httpx.Client
) -> None:
    """Part PUT URLs: bound to upload, part number and method; expired and forged refused."""
    root = _root(backend)
    made = [
        http.post(
            "/v0.5/files/uploads/initiate",
            json={"filename": f"{MARKER}-{i}.csv", "file_type": "text/csv", "num_bytes": 4},
        ).json()
        for i in range(2)
    ]
    first, second = made
    url = first["parts"][0]["url"]
    query = urlsplit(url).query
    path = urlsplit(url).path
    cases = {
        "no signature": (f"{root}{path}", "access_denied"),
        "another part": (
            f"{root}{path.rsplit('/', 1)[0]}/2?{query}",
            "signature_does_not_match",
        ),
        "another upload": (
            f"{root}{path.replace(first['upload_id'], second['upload_id'])}?{query}",
            "signature_does_not_match",
        ),
        "forged": (root + Signer("nope").sign("PUT", path)[0], "signature_does_not_match"),
        "expired": (
            root + Signer(backend.info.token(), ttl=-5).sign("PUT", path)[0],
            "request_expired",
        ),
        "GET signature": (
            root + Signer(backend.info.token()).sign("GET", path)[0],
            "signature_does_not_match",
        ),
        "tampered expiry": (
            _with(url, expires=str(int(_query(url)["expires"]) + 1)),
            "signature_does_not_match",
        ),
    }
    for label, (target, code) in cases.items():
        error = _envelope(anon.put(target, content=b"t,a\n"), 403, code)
        assert error, label
    # A Bearer token is no substitute for a part signature.
    _envelope(http.put(f"{root}{path}", content=b"t,a\n"), 403, "access_denied")
    # A genuine signature for an upload that does not exist: 404, nothing stored.
    ghost = path.replace(first["upload_id"], "upl_00000000000000000000000000")
    _envelope(
        anon.put(root + Signer(backend.info.token()).sign("PUT", ghost)[0], content=b"x"), 404
    )
    # The genuine URL still works after all that.
    assert anon.put(url, content=b"t,a\n").status_code == 200
    for upload in made:
        assert http.post(f"/v0.5/files/uploads/{upload['upload_id']}/abort").status_code == 200


def test_a_part_number_of_thousands_of_digits_is_refused(
    backend: LocalBackend, http: httpx.Client, anon: httpx.Client
) -> None:
    """Even genuinely signed: the route must not choke turning it into an int (a 500)."""
    upload = http.post(
        "/v0.5/files/uploads/initiate",
        json={"filename": f"{MARKER}-digits.csv", "file_type": "text/csv", "num_bytes": 4},
    ).json()
    root, signer = _root(backend), Signer(backend.info.token())
    for number in ("9" * 4400, "0" * 20 + "1", "\u0661", "-1", "1.0"):
        path = f"/v0.5/files/uploads/{upload['upload_id']}/parts/{quote(number)}"
        _envelope(anon.put(root + signer.sign("PUT", path)[0], content=b"t,a\n"), 404)
        _envelope(anon.put(root + path, content=b"t,a\n"), 403, "access_denied")
    assert http.post(f"/v0.5/files/uploads/{upload['upload_id']}/abort").status_code == 200


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"x": value}
    return value


def test_non_finite_numbers_and_deep_nesting_are_400(http: httpx.Client) -> None:
    """Python's json reads NaN, Infinity and 1e999; none is JSON, and none may be stored as
    null. Nesting deep enough to break storing the job is refused before it is stored."""
    before = http.get("/v0.5/batch/jobs").json()["total"]
    text = json.dumps(_msc_body())
    assert '"window_size": 8' in text
    for literal in ("NaN", "Infinity", "-Infinity", "1e999", "-1e400"):
        body = text.replace('"window_size": 8', f'"window_size": {literal}')
        response = http.post("/v0.5/batch/jobs", content=body, headers=JSON_TYPE)
        _envelope(response, 400, "invalid_json")
    for depth in (65, 300, 900):
        deep = _msc_body()
        deep["parameters"]["worker"]["config"]["extra"] = _nested(depth)
        response = http.post("/v0.5/batch/jobs", content=json.dumps(deep), headers=JSON_TYPE)
        assert "nested" in _envelope(response, 400, "invalid_json")["message"]
        deep = _msc_body()
        deep["inputs"]["worker.inference"][0]["metadata"] = _nested(depth)
        response = http.post("/v0.5/batch/jobs", content=json.dumps(deep), headers=JSON_TYPE)
        _envelope(response, 400, "invalid_json")
    assert http.get("/v0.5/batch/jobs").json()["total"] == before


def test_an_upload_of_absurd_size_or_part_lists_is_refused_at_once(http: httpx.Client) -> None:
    for num_bytes in (2**63 - 1, 10**15):
        response = http.post(
            "/v0.5/files/uploads/initiate",
            json={
                "filename": f"{MARKER}-huge.bin",
                "file_type": "video/mp4",
                "num_bytes": num_bytes,
            },
        )
        _envelope(response, 400)
    upload = http.post(
        "/v0.5/files/uploads/initiate",
        json={"filename": f"{MARKER}-parts.csv", "file_type": "text/csv", "num_bytes": 4},
    ).json()
    urls = f"/v0.5/files/uploads/{upload['upload_id']}/parts/urls"
    response = http.post(urls, json={"part_numbers": [1] * 200_000})
    assert response.status_code == 200 and len(response.json()["parts"]) == 1  # each part once
    assert http.post(f"/v0.5/files/uploads/{upload['upload_id']}/abort").status_code == 200


def test_downloads_racing_deletes_are_whole_or_404(http: httpx.Client) -> None:
    """A file deleted while it is downloaded: a whole answer or a 404, never a 500 or a cut."""
    name = f"{MARKER}-race.csv"
    stop = threading.Event()
    statuses: list[int] = []
    wrong: list[str] = []

    def client() -> httpx.Client:
        return httpx.Client(base_url=http.base_url, headers=http.headers, timeout=30)

    def churn() -> None:
        with client() as own:
            while not stop.is_set():
                _upload(own, name)
                assert own.delete(f"/v0.5/files/delete/{name}").status_code == 200

    def download() -> None:
        with client() as own:
            for _ in range(400):
                try:
                    response = own.get(f"/v0.5/files/download/{name}")
                except httpx.HTTPError as exc:  # a body cut short
                    wrong.append(repr(exc))
                    continue
                statuses.append(response.status_code)
                if response.status_code == 200 and response.content != CSV:
                    wrong.append(f"{len(response.content)} bytes")

    workers = [threading.Thread(target=churn)] + [threading.Thread(target=download) for _ in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers[1:]:
        worker.join()
    stop.set()
    workers[0].join()
    assert set(statuses) <= {200, 404} and wrong == [], (sorted(set(statuses)), wrong[:3])


def test_a_long_input_name_gets_an_output_name_that_fits(
    http: httpx.Client, seeded: dict[str, Any]
) -> None:
    long_name = MARKER + "l" * (250 - len(MARKER)) + ".csv"  # 254 bytes: a valid id
    assert _upload(http, long_name).status_code == 200
    body = _msc_body(long_name, "normal.csv")
    columns = {"data_columns": ["a", "b"], "timestamp_column": "timestamp"}
    body["parameters"]["worker"]["config"] = {
        "reader_config": {**columns, "window_size": 8, "step_size": 1}
    }
    job = http.post("/v0.5/batch/jobs", json=body).json()
    deadline = time.monotonic() + 120
    while (record := http.get(f"/v0.5/batch/jobs/{job['id']}").json())["status"] not in (
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ):
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    events = http.get(f"/v0.5/batch/jobs/{job['id']}/events").json()["events"]
    assert record["status"] == "COMPLETED", [e["message"] for e in events]
    names = [
        o["data"]["filename"]
        for o in http.get(f"/v0.5/batch/jobs/{job['id']}/outputs").json()["outputs"]
    ]
    assert names and all(len(n.encode()) <= 255 and "_part_" in n for n in names), names


def test_a_client_hanging_up_mid_body_is_no_server_error(backend: LocalBackend) -> None:
    host, port = urlsplit(_root(backend)).hostname, urlsplit(_root(backend)).port
    head = (
        f"POST /v0.5/batch/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {backend.info.token()}\r\nContent-Length: 100000\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(head.encode() + b'{"name": "half')
    time.sleep(0.5)
    assert "Unhandled error" not in backend.info.log_file.read_text(errors="replace")


# --- tokens on every route ------------------------------------------------------------------


def test_routes_are_enumerated(routes: list[tuple[str, Route, str]]) -> None:
    paths = {r.path for _, r, _ in routes}
    assert "/v0.5/batch/jobs" in paths and "/v0.5/files/uploads/initiate" in paths
    assert len(routes) >= 40
    assert {a for _, _, a in routes} == {"bearer", "signed", "signed_or_bearer"}


BAD_AUTH = [
    None,
    "Bearer",
    "Bearer wrong-token",
    "Basic {token}",
    "{token}",
    "Token {token}",
    "Bearer {token}x",
    "Bearer {token_prefix}",
    "Bearer {token} {token}",
    "Bearer\t{token}",
]


def test_every_route_refuses_missing_and_wrong_tokens(
    backend: LocalBackend, routes: list[tuple[str, Route, str]], seeded: dict[str, Any]
) -> None:
    """Every method of every route, every bad Authorization header: 401 (403 for signed-only
    routes), the envelope, and nothing reaches a handler."""
    token = backend.info.token()
    root = _root(backend)
    with httpx.Client(base_url=root, headers=_auth(backend)) as http:
        counted_before = http.get("/_local/requests").json()
    checked = 0
    with httpx.Client(base_url=root, timeout=30) as anon:
        for header in BAD_AUTH:
            headers = {}
            if header is not None:
                headers["Authorization"] = header.format(token=token, token_prefix=token[:-1])
            for method, route, auth in routes:
                # real ids where the route has them, so a leak would be a 200, not a 404
                url = _fill(route, seeded["job_id"] if "job_id" in route.path else "data.csv")
                response = anon.request(method, url, headers=headers, content=b"{}")
                expected = 403 if auth == "signed" else 401
                assert response.status_code == expected, (method, route.path, header)
                if method != "HEAD":
                    _envelope(response, expected, None if auth == "signed" else "unauthorized")
                checked += 1
        # the token is not accepted from the query string either
        assert anon.get(f"/v0.5/files/info?token={token}").status_code == 401
        assert anon.get(f"/v0.5/files/info?api_key={token}").status_code == 401
    assert checked == len(BAD_AUTH) * len(routes)
    with httpx.Client(base_url=root, headers=_auth(backend)) as http:
        counted_after = http.get("/_local/requests").json()
    counted_after["request_counts"] -= 1
    assert counted_after == counted_before


# --- afterwards -----------------------------------------------------------------------------


def test_zz_server_still_healthy(backend: LocalBackend, http: httpx.Client) -> None:
    """Runs last (module order): health, a small upload and a job still work, and nothing
    in the module made the server fail (an unhandled error is logged with its traceback)."""
    assert "Unhandled error" not in backend.info.log_file.read_text(errors="replace")
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    name_a, name_b = f"{MARKER}-after-a.csv", f"{MARKER}-after-b.csv"
    for name in (name_a, name_b):
        assert _upload(http, name).status_code == 200
    job = http.post("/v0.5/batch/jobs", json=_msc_body(name_a, name_b))
    assert job.status_code == 200, job.text
    assert http.get(f"/v0.5/batch/jobs/{job.json()['id']}").status_code == 200
    info = http.get("/v0.5/files/info").json()
    assert info["num_files"] >= 4
