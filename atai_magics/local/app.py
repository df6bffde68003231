"""The local backend's HTTP API: every endpoint of reference §2 under ``/v0.5``, on Starlette.

``create_app(home, token, concurrency)`` is what ``atai_magics.local.server`` serves. State and
business rules live in `Store`; this module maps HTTP onto it: Bearer auth, the platform's
error envelope, request validation, streamed uploads, and presigned-style URLs that the
backend serves itself (see `_signing`).

Choices where the platform leaves room (reference §12):

- ``POST /batch/jobs`` answers **200** with the job (``input_progress`` null); the official
  client accepts 200 and 201. Invalid JSON is 400, a body failing ``JobRequest`` is 422.
- ``GET /batch/registry/pipelines/{id}`` (and ``/schema``) take a ``ppl_`` id *or* a pipeline
  key (its newest version). Pipeline ids are stable: a hash of ``key@version``.
- Signed URLs (output and input ``data.ref``, upload part URLs) are valid ``url_ttl`` seconds
  (1 hour) and re-signed on every listing; an expired one is 403 ``request_expired``.
- Signed URLs point at the address the server is bound to (``127.0.0.1:<port>``, from the
  ASGI scope), never at the request's ``Host`` header, which a client could forge.
- A signed URL is valid for its method only: ``HEAD`` on a signed ``GET`` URL is 403
  ``signature_does_not_match``, as on S3 (the signature binds the method).
- ``If-None-Match: *`` on traces is 304 whenever the job exists.
- Integer query parameters must lie in ``0 <= n < 2**63`` (``-1`` also for the shard
  parameters), else 400; JSON bodies whose strings cannot be UTF-8 (lone surrogates such as
  ``"\ud800"``) are 400 ``invalid_json``.
- Upload bodies (``POST /files``, ``/files/base64``, part ``PUT``) stream in at most
  ``UPLOAD_THREADS`` threads of their own, so slow uploads never take the threads every other
  route needs.
- ``/v0.5/jos/jobs…`` is an alias of ``/v0.5/batch/jobs…``.

Beyond the platform's API, ``GET /_local/requests`` (Bearer) answers how many authenticated
requests reached each handler since the server started, so tests count at the backend.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import importlib
import inspect
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

import anyio
import anyio.from_thread
import anyio.to_thread
import pydantic
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from atai_magics.api import models as m
from atai_magics.local._ids import encode_base32, error_uid
from atai_magics.local._signing import SignatureError, Signer
from atai_magics.local.pipelines import LocalPipeline, load_pipelines
from atai_magics.local.store import API_PREFIX, DEFAULT_PART_SIZE, Store, StoreError, format_ts

__all__ = [
    "INITIATE_TYPES",
    "MAX_JSON_BYTES",
    "MAX_SIMPLE_UPLOAD_BYTES",
    "SIMPLE_TYPES",
    "UPLOAD_THREADS",
    "URL_TTL_SECONDS",
    "create_app",
    "pipeline_id",
]

_log = logging.getLogger(__name__)

JSON = dict[str, Any]
Handler = Callable[[Request], Awaitable[Response]]
AuthMode = Literal["bearer", "signed", "signed_or_bearer"]
T = TypeVar("T")

MAX_JSON_BYTES = 8 * 1024 * 1024
"""Largest JSON request body (a create-job body listing ~37,000 files is refused with 413)."""
MAX_SIMPLE_UPLOAD_BYTES = 512 * 1024 * 1024
"""Largest ``POST /files`` / ``/files/base64`` upload; larger files use the direct flow."""
URL_TTL_SECONDS = 3600.0
"""How long signed URLs stay valid."""
UPLOAD_THREADS = 8
"""Threads that stream upload bodies; more concurrent uploads wait for one (not a 503)."""
BODY_IDLE_SECONDS = 60.0
"""An upload body that sends nothing for this long is dropped (408): it holds one of the
UPLOAD_THREADS while it streams, and a few stalled clients would hold them all."""
REQUESTS_PATH = "/_local/requests"
"""Counts of requests that reached each handler (see the module docstring)."""
MAX_INT_PARAM = 2**63
"""Integer query parameters must be below this (SQLite's INTEGER is 64-bit signed)."""
_MULTIPART_SLACK = 64 * 1024  # part headers and boundaries around the file of a simple upload
_MAX_FIELD_BYTES = 1024 * 1024
_MAX_HEADER_BYTES = 16 * 1024

SIMPLE_TYPES = (
    "image/jpeg",
    "image/png",
    "video/mp4",
    "text/plain",
    "text/csv",
    "application/json",
)
INITIATE_TYPES = (*SIMPLE_TYPES, "application/x-ndjson", "application/x-parquet")


# --- errors ---------------------------------------------------------------------------------


class ApiFailure(Exception):
    """An error answer in the platform envelope (reference §1.6)."""

    def __init__(self, status: int, code: str, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.suggestion = suggestion


class _TooLarge(Exception):
    """A streamed body went over its limit."""


class _Stalled(Exception):
    """A streamed body sent nothing for BODY_IDLE_SECONDS."""


def error_response(
    status: int, code: str, message: str, suggestion: str | None = None
) -> JSONResponse:
    """The ``{"errors": [...]}`` envelope with a fresh ``error_uid``."""
    error: JSON = {"code": code, "message": message}
    if suggestion:
        error["suggestion"] = suggestion
    error["error_uid"] = error_uid()
    return JSONResponse({"errors": [error]}, status_code=status)


def _too_large(limit: int) -> ApiFailure:
    return ApiFailure(413, "payload_too_large", f"Request body exceeds {limit} bytes")


# --- pipelines ------------------------------------------------------------------------------


def _stable_id(prefix: str, text: str) -> str:
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    return f"{prefix}_{encode_base32(digest)}"


def pipeline_id(pipeline: LocalPipeline) -> str:
    """The stable ``ppl_`` id of a pipeline version (a hash of ``key@version``)."""
    return _stable_id("ppl", f"{pipeline.key}@{pipeline.version}")


def _pipeline_json(pipeline: LocalPipeline, org_id: str, loaded_at: str) -> JSON:
    return {
        "id": pipeline_id(pipeline),
        "pipeline_key": pipeline.key,
        "pipeline_version": pipeline.version,
        "name": pipeline.name,
        "description": pipeline.description,
        "pipeline_type": "batch",
        "components": {
            pipeline.component: _stable_id(
                "cmp", f"{pipeline.key}@{pipeline.version}/{pipeline.component}"
            )
        },
        "default_config": pipeline.default_config,
        "config_schema": pipeline.config_schema,
        "user_config_schema": pipeline.user_schema,
        "edges": [],
        "inputs": pipeline.inputs,
        "outputs": pipeline.outputs,
        "retry_policy": {},
        "visibility": "platform",
        "org_id": org_id,
        "status": "published",
        "created_at": loaded_at,
        "updated_at": loaded_at,
    }


# --- streaming helpers ----------------------------------------------------------------------


def _sync_chunks(request: Request) -> Iterator[bytes]:
    """The request body as a sync iterator; only usable from a worker thread of the loop."""
    stream = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            with anyio.fail_after(BODY_IDLE_SECONDS):
                return await stream.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise _Stalled from None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk


def _limited(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        yield chunk


def _b64decode(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decode streamed Base64 text (whitespace ignored) in 4-character-aligned pieces."""
    rest = b""
    for chunk in chunks:
        data = rest + b"".join(chunk.split())
        cut = len(data) - len(data) % 4
        rest = data[cut:]
        if cut:
            yield base64.b64decode(data[:cut], validate=True)
    if rest:
        raise binascii.Error("Base64 content has a truncated final quantum")


class _Buffered:
    """Just enough buffering over a chunk iterator to split a multipart body."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def _fill(self) -> None:
        try:
            self._buf += next(self._chunks)
        except StopIteration:
            raise ApiFailure(400, "invalid_parameter", "Truncated multipart body") from None

    def read_until(self, sep: bytes, limit: int) -> bytes:
        while (index := self._buf.find(sep)) < 0:
            if len(self._buf) > limit:
                raise ApiFailure(400, "invalid_parameter", "Malformed multipart body")
            self._fill()
        out, self._buf = self._buf[:index], self._buf[index + len(sep) :]
        return out

    def read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def iter_until(self, sep: bytes) -> Iterator[bytes]:
        keep = len(sep) - 1
        while True:
            index = self._buf.find(sep)
            if index >= 0:
                out, self._buf = self._buf[:index], self._buf[index + len(sep) :]
                if out:
                    yield out
                return
            if len(self._buf) > keep:
                cut = len(self._buf) - keep
                out, self._buf = self._buf[:cut], self._buf[cut:]
                yield out
            self._fill()


@dataclass
class _Part:
    name: str | None
    filename: str | None
    content_type: str | None
    body: Iterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


_PARAM_RE = re.compile(r';\s*([\w*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _disposition(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, raw in _PARAM_RE.findall(value):
        raw = raw.strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        key = key.lower()
        if key.endswith("*"):  # RFC 5987: charset'lang'percent-encoded
            key = key[:-1]
            raw = unquote(raw.split("'", 2)[-1])
        params[key] = raw
    return params


def _boundary(content_type: str) -> str:
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiFailure(
            400, "invalid_parameter", "Expected a multipart/form-data body with a file part"
        )
    boundary = _disposition(content_type).get("boundary")
    if not boundary:
        raise ApiFailure(400, "invalid_parameter", "multipart/form-data without a boundary")
    return boundary


def _multipart(chunks: Iterator[bytes], boundary: str) -> Iterator[_Part]:
    """Parts of a multipart body, streamed: consume each part's body before the next."""
    reader = _Buffered(chunks)
    delimiter = b"--" + boundary.encode("latin-1")
    reader.read_until(delimiter, _MAX_FIELD_BYTES)
    while True:
        tail = reader.read_exact(2)
        if tail == b"--":
            return
        if tail != b"\r\n":  # transport padding after the delimiter
            reader.read_until(b"\r\n", _MAX_HEADER_BYTES)
        headers: dict[str, str] = {}
        while line := reader.read_until(b"\r\n", _MAX_HEADER_BYTES):
            name, _, value = line.decode("utf-8", "replace").partition(":")
            headers[name.strip().lower()] = value.strip()
        params = _disposition(headers.get("content-disposition", ""))
        body = reader.iter_until(b"\r\n" + delimiter)
        yield _Part(
            params.get("name"),
            params.get("filename"),
            headers.get("content-type", "").split(";")[0].strip().lower() or None,
            body,
            headers,
        )
        for _ in body:  # whatever the consumer left
            pass


# --- query parameters -----------------------------------------------------------------------


def _int_param(request: Request, name: str, default: int | None, minimum: int = 0) -> int | None:
    """An integer query parameter in ``minimum <= n < 2**63``, else 400 ``invalid_parameter``."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:  # also digit strings over int's 4300-digit limit
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise ApiFailure(
            400, "invalid_parameter", f"Query parameter {name} must be an integer: {shown!r}"
        ) from None
    if not minimum <= value < MAX_INT_PARAM:
        raise ApiFailure(
            400,
            "invalid_parameter",
            f"Query parameter {name} must be between {minimum} and {MAX_INT_PARAM - 1}",
        )
    return value


DOWNLOAD_CHUNK = 1024 * 1024


async def _file_response(path: Path, filename: str | None = None) -> Response:
    """A stored file's bytes, read from a handle opened here: a delete racing the download
    then either comes first (404) or leaves this handle its bytes (POSIX keeps an unlinked
    file while it is open), never a half-sent answer."""
    try:
        handle = await run_in_threadpool(path.open, "rb")
    except FileNotFoundError:
        raise ApiFailure(404, "not_found", "The file was deleted") from None
    size = os.fstat(handle.fileno()).st_size

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await run_in_threadpool(handle.read, DOWNLOAD_CHUNK):
                yield chunk
        finally:
            handle.close()

    headers = {"content-length": str(size)}
    if filename is not None:
        quoted = urllib.parse.quote(filename)
        headers["content-disposition"] = (
            f'attachment; filename="{filename}"'
            if quoted == filename
            else f"attachment; filename*=utf-8''{quoted}"
        )
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


MAX_JSON_DEPTH = 64
"""Nesting a JSON body may have: far more than any job needs, and well under the depth where
storing it would fail (pydantic's serialiser stops at 255)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_problem(value: Any) -> str | None:
    """What makes a parsed body unfit to store, or None: nesting deeper than MAX_JSON_DEPTH,
    a number too large for a float (``1e999``), a string (or key) UTF-8 cannot encode (a lone
    surrogate from a ``\ud800`` escape). Iterative: JSON nests as deep as the parser allows."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            return "a number is too large"
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a string is not valid Unicode (lone surrogate escape)"
    return None


def _offset_limit(request: Request, default_limit: int = 100) -> tuple[int, int]:
    offset = _int_param(request, "offset", 0) or 0
    limit = _int_param(request, "limit", default_limit)
    if offset < 0 or limit is None or limit < 0:
        raise ApiFailure(400, "invalid_parameter", "offset and limit must not be negative")
    return offset, min(limit, 1000)


def _str_param(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


def _validation_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "Invalid request body: " + "; ".join(parts)


# --- the app --------------------------------------------------------------------------------


@dataclass
class _Backend:
    store: Store
    token: str = field(repr=False)
    signer: Signer
    pipelines: dict[str, LocalPipeline]
    pipeline_json: dict[str, JSON]  # by pipeline key
    max_upload_bytes: int
    max_json_bytes: int
    part_size: int
    scheduler: Any = None
    upload_threads: int = UPLOAD_THREADS
    upload_limiter: anyio.CapacityLimiter | None = None
    handled: Counter[str] = field(default_factory=Counter)
    """Authenticated requests that reached each handler, by its name (``create_job``…)."""

    # --- auth and plumbing ---

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return False
        return hmac.compare_digest(credential.strip().encode(), self.token.encode())

    def endpoint(self, handler: Handler, auth: AuthMode = "bearer") -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                signed = auth == "signed" or (
                    auth == "signed_or_bearer" and "signature" in request.query_params
                )
                if signed:
                    self.signer.verify(
                        request.method,
                        request.scope["path"],
                        request.query_params.get("expires"),
                        request.query_params.get("signature"),
                    )
                elif not self.authorized(request):
                    return error_response(401, "unauthorized", "Invalid or missing API key")
                self.handled[handler.__name__] += 1
                return await handler(request)
            except ApiFailure as exc:
                return error_response(exc.status, exc.code, exc.message, exc.suggestion)
            except StoreError as exc:
                return error_response(exc.status, exc.code, exc.message, exc.suggestion)
            except SignatureError as exc:
                return error_response(403, exc.code, exc.message)
            except _TooLarge:
                return error_response(413, "payload_too_large", "Request body is too large")
            except ClientDisconnect:  # the client hung up mid-body: nobody reads an answer
                return Response(status_code=400)
            except _Stalled:
                message = f"The request body sent nothing for {BODY_IDLE_SECONDS:g} s"
                return error_response(408, "request_timeout", message)
            except Exception:
                _log.exception("Unhandled error on %s %s", request.method, request.url.path)
                return error_response(500, "internal_error", "Internal server error")

        return wrapped

    async def in_upload_thread(self, func: Callable[..., T], *args: Any) -> T:
        """Run a body-streaming ``func`` in a thread of the upload limiter, not the default
        one that every other route shares (its 40 threads would otherwise all wait on slow
        clients)."""
        if self.upload_limiter is None:  # made here: a limiter belongs to the running loop
            self.upload_limiter = anyio.CapacityLimiter(self.upload_threads)
        return await anyio.to_thread.run_sync(
            functools.partial(func, *args), limiter=self.upload_limiter
        )

    def wake(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake()

    async def json_body(self, request: Request) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_json_bytes:
            raise _too_large(self.max_json_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_json_bytes:
                raise _too_large(self.max_json_bytes)
        if not body.strip():
            return None
        try:
            parsed = json.loads(bytes(body), parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiFailure(400, "invalid_json", f"Malformed JSON body: {exc}") from None
        except RecursionError:
            raise ApiFailure(
                400, "invalid_json", "Malformed JSON body: nested too deeply"
            ) from None
        problem = _json_problem(parsed)
        if problem:
            raise ApiFailure(400, "invalid_json", f"Malformed JSON body: {problem}")
        return parsed

    async def model_body(self, request: Request, model: type[pydantic.BaseModel]) -> Any:
        body = await self.json_body(request)
        try:
            return model.model_validate({} if body is None else body)
        except pydantic.ValidationError as exc:
            raise ApiFailure(400, "invalid_parameter", _validation_message(exc)) from None

    # --- signing of store paths ---

    @staticmethod
    def base_url(request: Request) -> str:
        """Where this server listens, from the ASGI scope's ``server`` (the bound address), not
        from the ``Host`` header: a forged header must not send signed URLs elsewhere."""
        server = request.scope.get("server")
        if not server or server[1] is None:  # e.g. a Unix socket: nothing better to go on
            return f"{request.url.scheme}://{request.url.netloc}"
        host, port = str(server[0]), int(server[1])
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"{request.url.scheme}://{host}:{port}"

    def signed_url(self, request: Request, method: str, relative: str) -> tuple[str, str]:
        """An absolute signed URL for a store-given relative path, and its expiry."""
        signed, expires = self.signer.sign(method, unquote(relative))
        base = self.base_url(request)
        stamp = format_ts(datetime.fromtimestamp(expires, tz=timezone.utc))
        return base + signed, stamp

    def sign_output(self, request: Request, output: JSON) -> JSON:
        ref = output["data"]["ref"]
        if isinstance(ref, str) and ref.startswith("/"):
            output["data"]["ref"], output["expires_at"] = self.signed_url(request, "GET", ref)
        return output

    def sign_input(self, request: Request, item: JSON) -> JSON:
        data = item.get("data")
        if isinstance(data, dict) and str(data.get("ref", "")).startswith("/"):
            data["ref"], _ = self.signed_url(request, "GET", data["ref"])
        return item

    def sign_parts(self, request: Request, parts: list[JSON]) -> list[JSON]:
        for part in parts:
            part["url"], part["expires_at"] = self.signed_url(request, "PUT", part["url"])
        return parts

    # --- jobs ---

    def find_pipeline(self, key: str, version: str | None) -> LocalPipeline:
        pipeline = self.pipelines.get(key)
        if pipeline is None or (version is not None and version != pipeline.version):
            suggestion = (
                f"Available versions: {pipeline.version}"
                if pipeline is not None
                else "Available pipelines: " + ", ".join(sorted(self.pipelines))
            )
            raise ApiFailure(
                404, "not_found", f"Pipeline '{key}' has no active versions", suggestion
            )
        return pipeline

    @staticmethod
    def check_ports(pipeline: LocalPipeline, request: m.JobRequest) -> None:
        valid = sorted(pipeline.inputs)
        unknown = [p for p in request.inputs if p not in pipeline.inputs]
        if unknown:
            raise ApiFailure(
                400,
                "invalid_inputs",
                f"Unknown input port(s) for pipeline '{pipeline.key}': {', '.join(unknown)}",
                f"Valid ports: {', '.join(valid)}",
            )
        missing = [
            name
            for name, spec in pipeline.inputs.items()
            if spec.get("required", True) and not request.inputs.get(name)
        ]
        if missing:
            raise ApiFailure(
                400,
                "missing_parameter",
                f"Missing required input port(s) for pipeline '{pipeline.key}': "
                f"{', '.join(missing)}",
                f"Valid ports: {', '.join(valid)}",
            )

    async def create_job(self, request: Request) -> Response:
        body = await self.json_body(request)
        try:
            job_request = m.JobRequest.model_validate(body)
        except pydantic.ValidationError as exc:
            raise ApiFailure(422, "validation_error", _validation_message(exc)) from None
        if job_request.pipeline_type != "batch":
            raise ApiFailure(
                400,
                "invalid_parameter",
                f"Pipeline type '{job_request.pipeline_type}' is not hosted by the local backend",
                "Use pipeline_type 'batch'",
            )
        pipeline = self.find_pipeline(job_request.pipeline_key, job_request.pipeline_version)
        self.check_ports(pipeline, job_request)
        job = await run_in_threadpool(
            self.store.create_job, job_request, pipeline.version, pipeline.inputs
        )
        self.wake()
        return JSONResponse(job)

    async def list_jobs(self, request: Request) -> Response:
        offset, limit = _offset_limit(request)
        page = await run_in_threadpool(
            self.store.list_jobs_json,
            _str_param(request, "pipeline_type"),
            _str_param(request, "status"),
            _str_param(request, "q"),
            offset,
            limit,
        )  # JSON text written by the store: no dicts to build and encode again
        return Response(page.encode(), media_type="application/json")

    async def queue(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.store.queue_depths))

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return JSONResponse(await run_in_threadpool(self.store.get_job, job_id))

    async def delete_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return JSONResponse(await run_in_threadpool(self.store.delete_job, job_id))

    async def retry_job(self, request: Request) -> Response:
        result = await run_in_threadpool(self.store.retry, request.path_params["job_id"])
        self.wake()
        return JSONResponse(result)

    async def job_page(
        self, request: Request, list_page: Callable[..., JSON], *filters: str
    ) -> JSON:
        """A job-scoped list from the store: the job id, the named string filters from the
        query (in the store method's order), then ``offset`` and ``limit``."""
        offset, limit = _offset_limit(request)
        args = [_str_param(request, name) for name in filters]
        return await run_in_threadpool(
            list_page, request.path_params["job_id"], *args, offset, limit
        )

    async def cancel_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        result = await run_in_threadpool(self.store.cancel, job_id)
        if self.scheduler is not None:
            self.scheduler.cancel(job_id)
        return JSONResponse(result)

    async def events(self, request: Request) -> Response:
        page = await self.job_page(
            request, self.store.list_events, "level", "event_type", "input_id"
        )
        return JSONResponse(page)

    async def progress(self, request: Request) -> Response:
        page = await self.job_page(request, self.store.list_progress, "kind", "input_id")
        return JSONResponse(page)

    async def inputs(self, request: Request) -> Response:
        page = await self.job_page(request, self.store.list_inputs, "port_name", "status")
        page["inputs"] = [self.sign_input(request, i) for i in page["inputs"]]
        return JSONResponse(page)

    async def inputs_progress(self, request: Request) -> Response:
        offset, limit = _offset_limit(request)
        statuses = [
            s.strip()
            for value in request.query_params.getlist("status")
            for s in value.split(",")
            if s.strip()
        ]
        order = _str_param(request, "order") or "asc"
        if order not in ("asc", "desc"):
            raise ApiFailure(400, "invalid_parameter", "order must be 'asc' or 'desc'")
        page = await run_in_threadpool(
            self.store.inputs_progress,
            request.path_params["job_id"],
            _str_param(request, "port_name"),
            statuses or None,
            order,
            offset,
            limit,
        )
        for item in page.get("items", []):
            self.sign_input(request, item["input"])
        return JSONResponse(page)

    async def input_counts(self, request: Request) -> Response:
        counts = await run_in_threadpool(
            self.store.input_counts, request.path_params["job_id"], _str_param(request, "port_name")
        )
        return JSONResponse(counts)

    async def traces(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        buckets = _int_param(request, "buckets", 100) or 100
        etag = _quoted(await run_in_threadpool(self.store.traces_etag, job_id, buckets))
        wanted = request.headers.get("if-none-match")
        tags = [t.strip() for t in wanted.split(",")] if wanted else []
        if "*" in tags or any(_quoted(t) == etag for t in tags if t):
            return Response(status_code=304, headers={"ETag": etag})
        traces = await run_in_threadpool(self.store.traces, job_id, buckets)
        etag = _quoted(str(traces.pop("etag", etag)))
        return JSONResponse(traces, headers={"ETag": etag})

    async def outputs(self, request: Request) -> Response:
        page = await self.job_page(request, self.store.list_outputs, "port_name", "input_id")
        page["outputs"] = [self.sign_output(request, o) for o in page["outputs"]]
        return JSONResponse(page)

    async def download_output(self, request: Request) -> Response:
        job_id, output_id = request.path_params["job_id"], request.path_params["output_id"]
        output = await run_in_threadpool(self.store.get_output, output_id)
        if output.get("job_id") != job_id:
            raise ApiFailure(404, "not_found", f"Output {output_id} not found in job {job_id}")
        path = await run_in_threadpool(self.store.output_path, output_id)
        return await _file_response(path, output["data"]["filename"])

    # --- pipelines ---

    def lookup_pipeline(self, ident: str) -> JSON:
        for doc in self.pipeline_json.values():
            if doc["id"] == ident:
                return doc
        if ident in self.pipeline_json:
            return self.pipeline_json[ident]
        raise ApiFailure(404, "not_found", f"Pipeline {ident} not found")

    async def list_pipelines(self, request: Request) -> Response:
        offset, limit = _offset_limit(request, default_limit=20)
        docs = sorted(self.pipeline_json.values(), key=lambda d: d["pipeline_key"])
        for name in ("pipeline_type", "visibility", "status", "pipeline_key"):
            value = _str_param(request, name)
            if value is not None:
                docs = [d for d in docs if d[name] == value]
        return JSONResponse(
            {
                "total": len(docs),
                "offset": offset,
                "limit": limit,
                "pipelines": docs[offset : offset + limit],
            }
        )

    async def get_pipeline(self, request: Request) -> Response:
        return JSONResponse(self.lookup_pipeline(request.path_params["pipeline_id"]))

    async def pipeline_schema(self, request: Request) -> Response:
        doc = self.lookup_pipeline(request.path_params["pipeline_id"])
        pipeline = self.pipelines[doc["pipeline_key"]]
        return JSONResponse(
            {
                "id": doc["id"],
                "pipeline_key": pipeline.key,
                "pipeline_version": pipeline.version,
                "user_schema": pipeline.user_schema,
                "config_schema": pipeline.config_schema,
                "inputs": pipeline.inputs,
                "outputs": pipeline.outputs,
            }
        )

    # --- files ---

    def receive_upload(self, chunks: Iterator[bytes], boundary: str, encoded: bool) -> JSON:
        """Parse a simple/base64 upload and stream its file part into the store (sync)."""
        result: JSON | None = None
        try:
            for part in _multipart(chunks, boundary):
                if part.filename is None or result is not None:
                    for index, _ in enumerate(part.body):
                        if index * 65536 > _MAX_FIELD_BYTES:
                            raise ApiFailure(400, "invalid_parameter", "Form field too large")
                    continue
                file_type = part.content_type or "application/octet-stream"
                if file_type not in SIMPLE_TYPES:
                    raise ApiFailure(
                        400,
                        "invalid_file_type",
                        f"Unsupported file type: {file_type}",
                        "Supported types: " + ", ".join(SIMPLE_TYPES),
                    )
                body = _limited(part.body, self.max_upload_bytes)
                if encoded:
                    body = _b64decode(body)
                try:
                    meta = self.store.add_file(part.filename, file_type, body)
                except binascii.Error as exc:
                    raise ApiFailure(
                        400, "invalid_parameter", f"Invalid Base64 content: {exc}"
                    ) from None
                result = {
                    "is_valid": True,
                    "file_id": meta["file_id"],
                    "file_uid": meta["file_uid"],
                }
        except (ApiFailure, StoreError, _TooLarge):
            for _ in chunks:  # read the rest so the client sees the answer, not a reset
                pass
            raise
        if result is None:
            raise ApiFailure(400, "missing_parameter", "The request has no file part")
        return result

    def upload_handler(self, encoded: bool) -> Handler:
        async def handler(request: Request) -> Response:
            boundary = _boundary(request.headers.get("content-type", ""))
            limit = self.max_upload_bytes + _MULTIPART_SLACK
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > limit:
                raise _too_large(self.max_upload_bytes)
            chunks = _limited(_sync_chunks(request), limit)
            try:
                result = await self.in_upload_thread(self.receive_upload, chunks, boundary, encoded)
            except _TooLarge:
                raise _too_large(self.max_upload_bytes) from None
            return JSONResponse(result)

        return handler

    async def delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        return JSONResponse(await run_in_threadpool(self.store.delete_file, file_id))

    async def download_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        await run_in_threadpool(self.store.get_file, file_id)
        path = await run_in_threadpool(self.store.file_path, file_id)
        return await _file_response(path)

    async def files_info(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.store.files_info))

    async def files_metadata(self, request: Request) -> Response:
        query = request.query_params
        file_type = _str_param(request, "file_type")
        if any(k in query for k in ("limit", "after", "before")):
            limit = _int_param(request, "limit", 100) or 100
            if not 1 <= limit <= 1000:
                raise ApiFailure(400, "invalid_parameter", "limit must be between 1 and 1000")
            if query.get("after") and query.get("before"):
                raise ApiFailure(
                    400, "invalid_parameter", "after and before are mutually exclusive"
                )
            page = await run_in_threadpool(
                self.store.list_files_cursor,
                limit,
                _str_param(request, "after"),
                _str_param(request, "before"),
                file_type,
            )
            return JSONResponse(page)
        shard = _int_param(request, "shard_index", -1, minimum=-1)
        size = _int_param(request, "max_items_per_shard", -1, minimum=-1)
        rows = await run_in_threadpool(
            self.store.list_files_shard,
            -1 if shard is None else shard,
            -1 if size is None else size,
            file_type,
        )
        return JSONResponse(rows)

    async def file_metadata(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        return JSONResponse(await run_in_threadpool(self.store.get_file, file_id))

    async def initiate_upload(self, request: Request) -> Response:
        body: m.InitiateUploadRequest = await self.model_body(request, m.InitiateUploadRequest)
        if body.file_type not in INITIATE_TYPES:
            raise ApiFailure(
                400,
                "invalid_file_type",
                f"Unsupported file type: {body.file_type}",
                "Supported types: " + ", ".join(INITIATE_TYPES),
            )
        if body.num_bytes < 0:
            raise ApiFailure(400, "invalid_file_size", "num_bytes must not be negative")
        response = await run_in_threadpool(
            lambda: self.store.initiate_upload(
                body.filename,
                body.file_type,
                body.num_bytes,
                resume_if_started=body.resume_if_started,
                part_size=self.part_size,
            )
        )
        response["parts"] = self.sign_parts(request, response["parts"])
        return JSONResponse(response)

    async def part_urls(self, request: Request) -> Response:
        body: m.PartUrlsRequest = await self.model_body(request, m.PartUrlsRequest)
        response = await run_in_threadpool(
            self.store.part_urls, request.path_params["upload_id"], body.part_numbers
        )
        response["parts"] = self.sign_parts(request, response["parts"])
        return JSONResponse(response)

    async def checkpoint(self, request: Request) -> Response:
        body: m.CheckpointPartsRequest = await self.model_body(request, m.CheckpointPartsRequest)
        result = await run_in_threadpool(
            self.store.checkpoint_parts,
            request.path_params["upload_id"],
            [p.model_dump() for p in body.parts],
        )
        return JSONResponse(result)

    async def complete(self, request: Request) -> Response:
        body: m.CompleteUploadRequest = await self.model_body(request, m.CompleteUploadRequest)
        result = await run_in_threadpool(
            self.store.complete_upload,
            request.path_params["upload_id"],
            [p.model_dump() for p in body.parts],
            body.integrity_checksum,
        )
        return JSONResponse(result)

    async def abort(self, request: Request) -> Response:
        await self.json_body(request)
        await run_in_threadpool(self.store.abort_upload, request.path_params["upload_id"])
        return Response(status_code=200)

    async def put_part(self, request: Request) -> Response:
        upload_id = request.path_params["upload_id"]
        raw = request.path_params["part_number"]
        # Parsed here, not by the route: Starlette's int converter fails (a 500) on a number
        # of thousands of digits, which a signed URL never has but a forged one may.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
            raise ApiFailure(404, "not_found", f"No part {raw[:20]!r} of upload {upload_id}")
        number = int(raw)
        upload = await run_in_threadpool(self.store.get_upload, upload_id)
        chunks = _limited(_sync_chunks(request), int(upload["part_size"]))
        try:
            etag = await self.in_upload_thread(self.store.record_part, upload_id, number, chunks)
        except _TooLarge:
            raise ApiFailure(400, "invalid_parameter", "Part is larger than announced") from None
        return Response(status_code=200, headers={"ETag": _quoted(etag)})

    async def request_counts(self, request: Request) -> Response:
        """What reached the app, by handler: lets tests and soak runs count at the backend
        (a dry run sends no ``create_job``; a flaky network never creates a job twice)."""
        return JSONResponse(dict(self.handled))

    # --- routes ---

    def routes(self) -> list[BaseRoute]:
        e = self.endpoint
        p = API_PREFIX
        routes: list[BaseRoute] = []
        for base in (f"{p}/batch/jobs", f"{p}/jos/jobs"):
            routes += [
                Route(base, e(self.create_job), methods=["POST"]),
                Route(base, e(self.list_jobs), methods=["GET"]),
                Route(f"{base}/queue", e(self.queue), methods=["GET"]),
                Route(f"{base}/{{job_id}}", e(self.get_job), methods=["GET"]),
                Route(f"{base}/{{job_id}}", e(self.delete_job), methods=["DELETE"]),
                Route(f"{base}/{{job_id}}/retry", e(self.retry_job), methods=["POST"]),
                Route(f"{base}/{{job_id}}/cancel", e(self.cancel_job), methods=["POST"]),
                Route(f"{base}/{{job_id}}/events", e(self.events), methods=["GET"]),
                Route(f"{base}/{{job_id}}/progress", e(self.progress), methods=["GET"]),
                Route(f"{base}/{{job_id}}/inputs", e(self.inputs), methods=["GET"]),
                Route(
                    f"{base}/{{job_id}}/inputs/progress",
                    e(self.inputs_progress),
                    methods=["GET"],
                ),
                Route(
                    f"{base}/{{job_id}}/inputs/progress/counts",
                    e(self.input_counts),
                    methods=["GET"],
                ),
                Route(f"{base}/{{job_id}}/inputs/progress/traces", e(self.traces), methods=["GET"]),
                Route(f"{base}/{{job_id}}/outputs", e(self.outputs), methods=["GET"]),
                Route(
                    f"{base}/{{job_id}}/outputs/{{output_id}}/download",
                    e(self.download_output, "signed_or_bearer"),
                    methods=["GET"],
                ),
            ]
        reg = f"{p}/batch/registry/pipelines"
        files = f"{p}/files"
        uploads = f"{files}/uploads"
        routes += [
            Route(reg, e(self.list_pipelines), methods=["GET"]),
            Route(f"{reg}/{{pipeline_id}}", e(self.get_pipeline), methods=["GET"]),
            Route(f"{reg}/{{pipeline_id}}/schema", e(self.pipeline_schema), methods=["GET"]),
            Route(files, e(self.upload_handler(encoded=False)), methods=["POST"]),
            Route(f"{files}/base64", e(self.upload_handler(encoded=True)), methods=["POST"]),
            Route(f"{files}/delete/{{file_id}}", e(self.delete_file), methods=["DELETE"]),
            Route(
                f"{files}/download/{{file_id}}",
                e(self.download_file, "signed_or_bearer"),
                methods=["GET"],
            ),
            Route(f"{files}/info", e(self.files_info), methods=["GET"]),
            Route(f"{files}/metadata", e(self.files_metadata), methods=["GET"]),
            Route(f"{files}/metadata/{{file_id}}", e(self.file_metadata), methods=["GET"]),
            Route(f"{uploads}/initiate", e(self.initiate_upload), methods=["POST"]),
            Route(f"{uploads}/{{upload_id}}/parts/urls", e(self.part_urls), methods=["POST"]),
            Route(
                f"{uploads}/{{upload_id}}/parts/checkpoint", e(self.checkpoint), methods=["POST"]
            ),
            Route(
                f"{uploads}/{{upload_id}}/parts/{{part_number}}",  # not :int, see put_part
                e(self.put_part, "signed"),
                methods=["PUT"],
            ),
            Route(f"{uploads}/{{upload_id}}/complete", e(self.complete), methods=["POST"]),
            Route(f"{uploads}/{{upload_id}}/abort", e(self.abort), methods=["POST"]),
            Route(REQUESTS_PATH, e(self.request_counts), methods=["GET"]),
        ]
        return routes


def _quoted(tag: str) -> str:
    tag = tag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag if tag.startswith('"') else f'"{tag}"'


def _make_scheduler(
    store: Store, pipelines: dict[str, LocalPipeline], concurrency: int, faults: Any
) -> Any:
    """The scheduler, or None when ``atai_magics.local.scheduler`` is not available."""
    try:
        module = importlib.import_module("atai_magics.local.scheduler")
    except ImportError as exc:
        _log.warning("No local scheduler (%s): jobs stay PENDING", exc)
        return None
    cls = module.Scheduler
    extra: dict[str, Any] = {}
    should_crash = getattr(faults, "should_crash", None)
    if callable(should_crash) and float(getattr(faults, "crash_rate", 0.0) or 0.0) > 0.0:
        rng = faults.rng()
        lock = threading.Lock()

        def crash() -> bool:
            with lock:
                return bool(should_crash(rng))

        with contextlib.suppress(TypeError, ValueError):
            if "crash" in inspect.signature(cls).parameters:
                extra["crash"] = crash
    return cls(store, pipelines, concurrency, **extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal server error"
    return error_response(status, code, f"{detail}: {request.method} {request.url.path}")


def create_app(
    home: Path,
    token: str,
    concurrency: int = 2,
    *,
    faults: Any = None,
    start_scheduler: bool = True,
    url_ttl: float = URL_TTL_SECONDS,
    clock: Callable[[], float] = time.time,
    max_upload_bytes: int = MAX_SIMPLE_UPLOAD_BYTES,
    max_json_bytes: int = MAX_JSON_BYTES,
    part_size: int = DEFAULT_PART_SIZE,
    pipelines: Mapping[str, LocalPipeline] | None = None,
) -> Starlette:
    """The API app of one home. ``clock``/``url_ttl`` drive signed-URL expiry (tests inject
    them); ``start_scheduler=False`` leaves jobs PENDING; ``faults`` goes to the scheduler."""
    store = Store(home)
    registry = dict(pipelines) if pipelines is not None else load_pipelines()
    loaded_at = format_ts(datetime.now(timezone.utc))
    backend = _Backend(
        store=store,
        token=token,
        signer=Signer(token, url_ttl, clock),
        pipelines=registry,
        pipeline_json={k: _pipeline_json(p, store.org_id, loaded_at) for k, p in registry.items()},
        max_upload_bytes=max_upload_bytes,
        max_json_bytes=max_json_bytes,
        part_size=part_size,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start_scheduler:
            scheduler = _make_scheduler(store, registry, concurrency, faults)
            if scheduler is not None:
                await run_in_threadpool(scheduler.start)
                backend.scheduler = scheduler
        try:
            yield
        finally:
            if backend.scheduler is not None:
                await run_in_threadpool(backend.scheduler.stop)
                backend.scheduler = None
            store.close()

    app = Starlette(
        routes=backend.routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _http_error},
    )
    app.state.store = store
    app.state.backend = backend
    return app
