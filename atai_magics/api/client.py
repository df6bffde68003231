"""``Client`` and ``AsyncClient``: typed access to every Batch + Files endpoint.

::

    from atai_magics import Client

    with Client() as client:              # ATAI_API_ENDPOINT / ATAI_API_KEY, or arguments
        job = client.create_job({...})    # a JobRecord
        for event in client.iter_events(job.id):
            print(event.level, event.message)

Both clients drive the same flows (``_operations``, ``_uploads``): requests are built once.
Safe requests (GET, DELETE, presigned PUT/GET) are retried with exponential backoff and jitter
on connection errors, timeouts, 429 (honouring ``Retry-After``) and 502/503/504. A create is
never blindly repeated (see ``create_job``). Errors are the ``atai_magics.api.errors`` tree.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .. import __version__
from . import _logs
from . import _operations as ops
from . import _uploads as up
from . import models as m
from ._config import KEY_ENV, BearerAuth, is_loopback, key_source, resolve_base_url
from ._steps import Call, Flow, Outcome, Parallel, RetryPolicy, Step
from .errors import AtaiError, TransportError, error_for_response

__all__ = ["AsyncClient", "Client", "RetryPolicy"]

R = TypeVar("R")
P = TypeVar("P", bound=m.Page[Any])
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
PAGE_SIZE = 100
URL_CACHE_SIZE = 256
JobBody = m.JobRequest | Mapping[str, Any]


class _BaseClient:
    """Settings and request building shared by both clients."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout: float | httpx.Timeout,
        max_retries: int,
        retry: RetryPolicy | None,
        upload_concurrency: int,
        simple_upload_limit: int,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self._key_given = api_key is not None
        self._get_key = key_source(api_key)
        _logs.guard(self, self._get_key)
        self._auth = BearerAuth(self._get_key, origin=httpx.URL(self.base_url).host)
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.upload_concurrency = upload_concurrency
        self.simple_upload_limit = simple_upload_limit
        self._urls: dict[str, httpx.URL] = {}

    @property
    def _direct(self) -> dict[str, None] | None:
        """Mounts that keep a loopback API off any proxy of the environment (``HTTP_PROXY``):
        a proxy would carry its plain-HTTP requests, key included, off this machine. The rest
        of the environment (``SSL_CERT_FILE``...) still applies, and a remote API keeps its
        proxy."""
        host = httpx.URL(self.base_url).host
        if not is_loopback(host):
            return None
        return {f"all://[{host}]" if ":" in host else f"all://{host}": None}  # IPv6 bracketed

    def __repr__(self) -> str:
        source = "given" if self._key_given else f"from {KEY_ENV}"
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key=<{source}>)"

    @property
    def _root_path(self) -> str:
        return httpx.URL(self.base_url).path.rstrip("/")

    def _url(self, path: str) -> httpx.URL | str:
        """The URL of a call: a path below the API root is joined to it once (httpx would parse
        the string twice on every request); an absolute (presigned) URL is used as it is."""
        if "://" in path:
            return path
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[path] = self._join(path)
        return url

    def _join(self, path: str) -> httpx.URL:
        raise NotImplementedError

    def _request_args(self, call: Call) -> dict[str, Any]:
        args: dict[str, Any] = {"method": call.method, "url": self._url(call.path)}
        if params := call.query():  # httpx replaces a URL's own query (a presigned signature)
            args["params"] = params  # with ``params=``, even an empty one
        if call.json is not None:
            args["json"] = call.json
        args.update(call.body() if call.body else {})
        args["headers"] = {**(call.headers or {}), **args.get("headers", {})}
        return args

    def _auth_for(self, call: Call) -> httpx.Auth | None:
        return self._auth if call.authenticated else None

    def _scrub(self, text: str) -> str:
        key = self._get_key()
        return text.replace(key, "***") if key else text

    def _transport_delay(
        self, call: Call, exc: httpx.TransportError, attempt: int
    ) -> float | TransportError:
        """Seconds to wait before trying again, or the ``TransportError`` to give up with.

        The caller raises it outside its ``except``: chained, httpx's exception would keep
        the request, ``Authorization`` header and all, reachable from the error."""
        if self.retry.should_retry_transport(call, exc, attempt):
            return self.retry.delay(attempt)
        where = str(httpx.URL(call.path).copy_with(query=None)) if "://" in call.path else call.path
        return TransportError(
            self._scrub(f"{call.method} {where} failed: {type(exc).__name__}: {exc}")
        )

    def _status_delay(self, call: Call, response: httpx.Response, attempt: int) -> float | None:
        """``None`` when the response is an answer; else a delay, or raise the API error."""
        if response.status_code < 300 or response.status_code in call.accept:
            return None  # (a redirect is an error: the contract has none to follow)
        error = error_for_response(response, scrub=self._get_key())
        if self.retry.should_retry_status(call, response.status_code, attempt):
            return self.retry.delay(attempt, error)
        raise error

    def _upload_flow(
        self,
        path: str | os.PathLike[str],
        file_id: str | None,
        file_type: str | None,
        on_progress: up.ProgressCallback | None,
    ) -> Flow[m.FileUploadResult]:
        source = Path(path)
        return up.upload_file(
            source,
            file_id or source.name,
            file_type or up.guess_file_type(source),
            on_progress,
            simple_limit=self.simple_upload_limit,
            concurrency=self.upload_concurrency,
            retry=self.retry,
        )

    def _bytes_flow(
        self, data: bytes, file_id: str, file_type: str | None, *, encode: bool = False
    ) -> Flow[m.FileUploadResult]:
        return up.upload_bytes(
            data,
            file_id,
            file_type or up.guess_file_type(Path(file_id)),
            encode=encode,
            simple_limit=self.simple_upload_limit,
            concurrency=self.upload_concurrency,
            retry=self.retry,
        )


def _close_files(args: dict[str, Any]) -> None:
    for value in (args.get("files") or {}).values():
        handle = value[1] if isinstance(value, tuple) else value
        if hasattr(handle, "close"):
            handle.close()


def _partial_path(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(target.name + ".part")


class Client(_BaseClient):
    """A synchronous client of the Batch + Files API (thread-safe)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        upload_concurrency: int = 4,
        simple_upload_limit: int = up.SIMPLE_UPLOAD_LIMIT,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            retry=retry,
            upload_concurrency=upload_concurrency,
            simple_upload_limit=simple_upload_limit,
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            transport=transport,
            mounts=self._direct,
            headers={"User-Agent": f"atai-magics/{__version__}"},
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _join(self, path: str) -> httpx.URL:
        return self._http.build_request("GET", path).url

    def async_twin(
        self,
        *,
        max_retries: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> AsyncClient:
        """An ``AsyncClient`` for the same API with the same key source (for the watcher)."""
        twin = AsyncClient(
            self.base_url,
            None,
            timeout=self.timeout,
            max_retries=self.retry.max_retries if max_retries is None else max_retries,
            transport=transport,
        )
        twin._key_given, twin._get_key, twin._auth = self._key_given, self._get_key, self._auth
        return twin

    # --- the driver -----------------------------------------------------------------------

    def _run(self, flow: Flow[R]) -> R:
        try:
            step = next(flow)
            while True:
                try:
                    result = self._do(step)
                except (AtaiError, KeyboardInterrupt) as exc:  # Ctrl-C too: see create_job
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _do(self, step: Step) -> Any:
        if isinstance(step, Call):
            return self._send(step)
        if isinstance(step, Parallel):
            with ThreadPoolExecutor(max_workers=max(1, step.limit)) as pool:
                return list(pool.map(self._outcome, step.calls))
        self.retry.sleep(step.seconds)
        return None

    def _outcome(self, call: Call) -> Outcome:
        try:
            return self._send(call)
        except AtaiError as exc:
            return exc

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            args = self._request_args(call)
            try:
                response = self._http.send(
                    self._http.build_request(**args), auth=self._auth_for(call), stream=True
                )
                try:
                    if response.status_code >= 300 or call.stream_to is None:
                        response.read()
                    wait = self._status_delay(call, response, attempt)
                    if wait is None:
                        if call.stream_to is not None:
                            self._save(response, call.stream_to)
                        return response
                    delay: float | TransportError = wait
                finally:
                    response.close()
            except httpx.TransportError as exc:
                delay = self._transport_delay(call, exc, attempt)
            finally:
                _close_files(args)
            if isinstance(delay, TransportError):
                raise delay
            self.retry.sleep(delay)
            attempt += 1

    @staticmethod
    def _save(response: httpx.Response, target: Path) -> None:
        partial = _partial_path(target)
        try:
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)

    def _pages(self, list_page: Callable[..., P], page_size: int, **filters: Any) -> Iterator[Any]:
        offset: int | None = 0
        while offset is not None:
            page = list_page(offset=offset, limit=page_size, **filters)
            yield from page.rows
            offset = ops.next_offset(page, offset)

    # --- jobs -----------------------------------------------------------------------------

    def create_job(self, body: JobBody) -> m.JobRecord:
        """Submit a job (``POST /batch/jobs``); never creates it twice on a flaky network."""
        return self._run(ops.create_job(m.JobRequest.model_validate(body), self.retry))

    def list_jobs(
        self,
        *,
        pipeline_type: str | None = None,
        status: str | None = None,
        q: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.JobList:
        return self._run(
            ops.list_jobs(
                pipeline_type=pipeline_type, status=status, q=q, offset=offset, limit=limit
            )
        )

    def iter_jobs(
        self,
        *,
        pipeline_type: str | None = None,
        status: str | None = None,
        q: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[m.JobRecord]:
        return self._pages(
            self.list_jobs, page_size, pipeline_type=pipeline_type, status=status, q=q
        )

    def get_job(self, job_id: str) -> m.JobRecord:
        return self._run(ops.get_job(job_id))

    def cancel_job(self, job_id: str) -> m.CancelResult:
        return self._run(ops.cancel_job(job_id))

    def retry_job(self, job_id: str) -> m.RetryResult:
        return self._run(ops.retry_job(job_id))

    def delete_job(self, job_id: str) -> m.DeleteResult:
        return self._run(ops.delete_job(job_id))

    def get_queue(self) -> m.QueueDepths:
        return self._run(ops.get_queue())

    def list_events(
        self,
        job_id: str,
        *,
        level: str | None = None,
        event_type: str | None = None,
        input_id: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.EventList:
        return self._run(
            ops.list_events(
                job_id,
                level=level,
                event_type=event_type,
                input_id=input_id,
                offset=offset,
                limit=limit,
            )
        )

    def iter_events(
        self,
        job_id: str,
        *,
        level: str | None = None,
        event_type: str | None = None,
        input_id: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[m.Event]:
        return self._pages(
            lambda **kw: self.list_events(job_id, **kw),
            page_size,
            level=level,
            event_type=event_type,
            input_id=input_id,
        )

    def list_progress(
        self,
        job_id: str,
        *,
        kind: str | None = None,
        input_id: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.ProgressList:
        return self._run(
            ops.list_progress(job_id, kind=kind, input_id=input_id, offset=offset, limit=limit)
        )

    def iter_progress(
        self,
        job_id: str,
        *,
        kind: str | None = None,
        input_id: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[m.ProgressEntry]:
        return self._pages(
            lambda **kw: self.list_progress(job_id, **kw), page_size, kind=kind, input_id=input_id
        )

    def list_inputs(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        status: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.InputList:
        return self._run(
            ops.list_inputs(job_id, port_name=port_name, status=status, offset=offset, limit=limit)
        )

    def list_inputs_progress(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        status: str | list[str] | None = None,
        order: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.InputProgressList:
        return self._run(
            ops.list_inputs_progress(
                job_id,
                port_name=port_name,
                status=status,
                order=order,
                offset=offset,
                limit=limit,
            )
        )

    def get_inputs_progress_counts(
        self, job_id: str, *, port_name: str | None = None
    ) -> m.InputProgressCounts:
        return self._run(ops.get_inputs_progress_counts(job_id, port_name=port_name))

    def get_inputs_progress_traces(
        self, job_id: str, *, buckets: int | None = None, etag: str | None = None
    ) -> m.Traces | None:
        """Bucketed progress for charts; ``None`` when unchanged since ``etag`` (304)."""
        return self._run(ops.get_inputs_progress_traces(job_id, buckets, etag))

    def list_outputs(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        input_id: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.OutputList:
        return self._run(
            ops.list_outputs(
                job_id, port_name=port_name, input_id=input_id, offset=offset, limit=limit
            )
        )

    def iter_outputs(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        input_id: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[m.Output]:
        return self._pages(
            lambda **kw: self.list_outputs(job_id, **kw),
            page_size,
            port_name=port_name,
            input_id=input_id,
        )

    def download_output(self, output: m.Output, dest: str | os.PathLike[str]) -> Path:
        """Save one output to ``dest`` (a file, or a directory to keep its filename)."""
        return self._run(ops.download_output(output, dest, self._root_path))

    # --- pipelines ------------------------------------------------------------------------

    def list_pipelines(
        self,
        *,
        pipeline_type: str | None = None,
        visibility: str | None = None,
        status: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.PipelineList:
        return self._run(
            ops.list_pipelines(
                pipeline_type=pipeline_type,
                visibility=visibility,
                status=status,
                offset=offset,
                limit=limit,
            )
        )

    def get_pipeline(self, pipeline_id: str) -> m.Pipeline:
        return self._run(ops.get_pipeline(pipeline_id))

    def get_pipeline_schema(self, pipeline_id: str) -> m.PipelineSchema:
        return self._run(ops.get_pipeline_schema(pipeline_id))

    # --- files ----------------------------------------------------------------------------

    def upload_file(
        self,
        path: str | os.PathLike[str],
        file_id: str | None = None,
        file_type: str | None = None,
        on_progress: up.ProgressCallback | None = None,
    ) -> m.FileUploadResult:
        """Upload a local file, streamed from disk; large and JSONL files go direct-to-cloud."""
        return self._run(self._upload_flow(path, file_id, file_type, on_progress))

    def upload_bytes(
        self, data: bytes, file_id: str, file_type: str | None = None
    ) -> m.FileUploadResult:
        return self._run(self._bytes_flow(data, file_id, file_type))

    def upload_base64(
        self, data: bytes, file_id: str, file_type: str | None = None
    ) -> m.FileUploadResult:
        """Upload through ``POST /files/base64`` (the bytes are encoded here)."""
        return self._run(self._bytes_flow(data, file_id, file_type, encode=True))

    def delete_file(self, file_id: str) -> m.FileUploadResult:
        return self._run(ops.delete_file(file_id))

    def download_file(self, file_id: str, dest: str | os.PathLike[str]) -> Path:
        return self._run(ops.download_file(file_id, dest))

    def get_files_info(self) -> m.FilesInfo:
        return self._run(ops.get_files_info())

    def list_files(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        before: str | None = None,
        file_type: str | None = None,
        shard_index: int | None = None,
        max_items_per_shard: int | None = None,
    ) -> m.FileMetaPage:
        """One page of file metadata (cursor style; shard-style arrays are wrapped)."""
        return self._run(
            ops.list_files(
                limit=limit,
                after=after,
                before=before,
                file_type=file_type,
                shard_index=shard_index,
                max_items_per_shard=max_items_per_shard,
            )
        )

    def iter_files(
        self, *, file_type: str | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[m.FileMeta]:
        query: dict[str, Any] | None = {"limit": page_size, "file_type": file_type}
        while query is not None:
            page = self.list_files(**query)
            if page.style == "cursor" or "shard_index" in query:
                yield from page.data
            query = ops.next_files_query(page, query)

    def get_file_metadata(self, file_id: str) -> m.FileMeta:
        return self._run(ops.get_file_metadata(file_id))

    def initiate_upload(
        self, filename: str, file_type: str, num_bytes: int, *, resume_if_started: bool = False
    ) -> m.InitiateUploadResponse:
        request = m.InitiateUploadRequest(
            filename=filename,
            file_type=file_type,
            num_bytes=num_bytes,
            resume_if_started=resume_if_started,
        )
        return self._run(ops.initiate_upload(request))

    def get_part_urls(self, upload_id: str, part_numbers: list[int]) -> m.PartUrlsResponse:
        return self._run(ops.get_part_urls(upload_id, part_numbers))

    def checkpoint_parts(
        self, upload_id: str, parts: list[m.PartToken]
    ) -> m.CheckpointPartsResponse:
        return self._run(ops.checkpoint_parts(upload_id, parts))

    def complete_upload(
        self,
        upload_id: str,
        parts: list[m.PartToken],
        *,
        integrity_checksum: str | None = None,
    ) -> m.CompleteUploadResponse:
        return self._run(ops.complete_upload(upload_id, parts, integrity_checksum))

    def abort_upload(self, upload_id: str) -> None:
        self._run(ops.abort_upload(upload_id))


class AsyncClient(_BaseClient):
    """The asyncio twin of ``Client``: the same methods, awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        upload_concurrency: int = 4,
        simple_upload_limit: int = up.SIMPLE_UPLOAD_LIMIT,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            retry=retry,
            upload_concurrency=upload_concurrency,
            simple_upload_limit=simple_upload_limit,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            transport=transport,
            mounts=self._direct,
            headers={"User-Agent": f"atai-magics/{__version__}"},
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _join(self, path: str) -> httpx.URL:
        return self._http.build_request("GET", path).url

    # --- the driver -----------------------------------------------------------------------

    async def _run(self, flow: Flow[R]) -> R:
        try:
            step = next(flow)
            while True:
                try:
                    result = await self._do(step)
                except AtaiError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Call):
            return await self._send(step)
        if isinstance(step, Parallel):
            gate = asyncio.Semaphore(max(1, step.limit))

            async def outcome(call: Call) -> Outcome:
                async with gate:
                    try:
                        return await self._send(call)
                    except AtaiError as exc:
                        return exc

            return list(await asyncio.gather(*(outcome(call) for call in step.calls)))
        await self.retry.async_sleep(step.seconds)
        return None

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            args = _async_content(self._request_args(call))
            try:
                response = await self._http.send(
                    self._http.build_request(**args), auth=self._auth_for(call), stream=True
                )
                try:
                    if response.status_code >= 300 or call.stream_to is None:
                        await response.aread()
                    wait = self._status_delay(call, response, attempt)
                    if wait is None:
                        if call.stream_to is not None:
                            await self._save(response, call.stream_to)
                        return response
                    delay: float | TransportError = wait
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                delay = self._transport_delay(call, exc, attempt)
            finally:
                _close_files(args)
            if isinstance(delay, TransportError):
                raise delay
            await self.retry.async_sleep(delay)
            attempt += 1

    @staticmethod
    async def _save(response: httpx.Response, target: Path) -> None:
        partial = _partial_path(target)
        try:
            with partial.open("wb") as file:
                async for chunk in response.aiter_bytes():
                    file.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)

    async def _pages(
        self, list_page: Callable[..., Awaitable[P]], page_size: int, **filters: Any
    ) -> AsyncIterator[Any]:
        offset: int | None = 0
        while offset is not None:
            page = await list_page(offset=offset, limit=page_size, **filters)
            for row in page.rows:
                yield row
            offset = ops.next_offset(page, offset)

    # --- jobs -----------------------------------------------------------------------------

    async def create_job(self, body: JobBody) -> m.JobRecord:
        """Submit a job (``POST /batch/jobs``); never creates it twice on a flaky network."""
        return await self._run(ops.create_job(m.JobRequest.model_validate(body), self.retry))

    async def list_jobs(
        self,
        *,
        pipeline_type: str | None = None,
        status: str | None = None,
        q: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.JobList:
        return await self._run(
            ops.list_jobs(
                pipeline_type=pipeline_type, status=status, q=q, offset=offset, limit=limit
            )
        )

    def iter_jobs(
        self,
        *,
        pipeline_type: str | None = None,
        status: str | None = None,
        q: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[m.JobRecord]:
        return self._pages(
            self.list_jobs, page_size, pipeline_type=pipeline_type, status=status, q=q
        )

    async def get_job(self, job_id: str) -> m.JobRecord:
        return await self._run(ops.get_job(job_id))

    async def cancel_job(self, job_id: str) -> m.CancelResult:
        return await self._run(ops.cancel_job(job_id))

    async def retry_job(self, job_id: str) -> m.RetryResult:
        return await self._run(ops.retry_job(job_id))

    async def delete_job(self, job_id: str) -> m.DeleteResult:
        return await self._run(ops.delete_job(job_id))

    async def get_queue(self) -> m.QueueDepths:
        return await self._run(ops.get_queue())

    async def list_events(
        self,
        job_id: str,
        *,
        level: str | None = None,
        event_type: str | None = None,
        input_id: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.EventList:
        return await self._run(
            ops.list_events(
                job_id,
                level=level,
                event_type=event_type,
                input_id=input_id,
                offset=offset,
                limit=limit,
            )
        )

    def iter_events(
        self,
        job_id: str,
        *,
        level: str | None = None,
        event_type: str | None = None,
        input_id: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[m.Event]:
        return self._pages(
            lambda **kw: self.list_events(job_id, **kw),
            page_size,
            level=level,
            event_type=event_type,
            input_id=input_id,
        )

    async def list_progress(
        self,
        job_id: str,
        *,
        kind: str | None = None,
        input_id: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.ProgressList:
        return await self._run(
            ops.list_progress(job_id, kind=kind, input_id=input_id, offset=offset, limit=limit)
        )

    def iter_progress(
        self,
        job_id: str,
        *,
        kind: str | None = None,
        input_id: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[m.ProgressEntry]:
        return self._pages(
            lambda **kw: self.list_progress(job_id, **kw), page_size, kind=kind, input_id=input_id
        )

    async def list_inputs(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        status: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.InputList:
        return await self._run(
            ops.list_inputs(job_id, port_name=port_name, status=status, offset=offset, limit=limit)
        )

    async def list_inputs_progress(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        status: str | list[str] | None = None,
        order: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.InputProgressList:
        return await self._run(
            ops.list_inputs_progress(
                job_id,
                port_name=port_name,
                status=status,
                order=order,
                offset=offset,
                limit=limit,
            )
        )

    async def get_inputs_progress_counts(
        self, job_id: str, *, port_name: str | None = None
    ) -> m.InputProgressCounts:
        return await self._run(ops.get_inputs_progress_counts(job_id, port_name=port_name))

    async def get_inputs_progress_traces(
        self, job_id: str, *, buckets: int | None = None, etag: str | None = None
    ) -> m.Traces | None:
        """Bucketed progress for charts; ``None`` when unchanged since ``etag`` (304)."""
        return await self._run(ops.get_inputs_progress_traces(job_id, buckets, etag))

    async def list_outputs(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        input_id: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.OutputList:
        return await self._run(
            ops.list_outputs(
                job_id, port_name=port_name, input_id=input_id, offset=offset, limit=limit
            )
        )

    def iter_outputs(
        self,
        job_id: str,
        *,
        port_name: str | None = None,
        input_id: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[m.Output]:
        return self._pages(
            lambda **kw: self.list_outputs(job_id, **kw),
            page_size,
            port_name=port_name,
            input_id=input_id,
        )

    async def download_output(self, output: m.Output, dest: str | os.PathLike[str]) -> Path:
        """Save one output to ``dest`` (a file, or a directory to keep its filename)."""
        return await self._run(ops.download_output(output, dest, self._root_path))

    # --- pipelines ------------------------------------------------------------------------

    async def list_pipelines(
        self,
        *,
        pipeline_type: str | None = None,
        visibility: str | None = None,
        status: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> m.PipelineList:
        return await self._run(
            ops.list_pipelines(
                pipeline_type=pipeline_type,
                visibility=visibility,
                status=status,
                offset=offset,
                limit=limit,
            )
        )

    async def get_pipeline(self, pipeline_id: str) -> m.Pipeline:
        return await self._run(ops.get_pipeline(pipeline_id))

    async def get_pipeline_schema(self, pipeline_id: str) -> m.PipelineSchema:
        return await self._run(ops.get_pipeline_schema(pipeline_id))

    # --- files ----------------------------------------------------------------------------

    async def upload_file(
        self,
        path: str | os.PathLike[str],
        file_id: str | None = None,
        file_type: str | None = None,
        on_progress: up.ProgressCallback | None = None,
    ) -> m.FileUploadResult:
        """Upload a local file, streamed from disk; large and JSONL files go direct-to-cloud."""
        return await self._run(self._upload_flow(path, file_id, file_type, on_progress))

    async def upload_bytes(
        self, data: bytes, file_id: str, file_type: str | None = None
    ) -> m.FileUploadResult:
        return await self._run(self._bytes_flow(data, file_id, file_type))

    async def upload_base64(
        self, data: bytes, file_id: str, file_type: str | None = None
    ) -> m.FileUploadResult:
        """Upload through ``POST /files/base64`` (the bytes are encoded here)."""
        return await self._run(self._bytes_flow(data, file_id, file_type, encode=True))

    async def delete_file(self, file_id: str) -> m.FileUploadResult:
        return await self._run(ops.delete_file(file_id))

    async def download_file(self, file_id: str, dest: str | os.PathLike[str]) -> Path:
        return await self._run(ops.download_file(file_id, dest))

    async def get_files_info(self) -> m.FilesInfo:
        return await self._run(ops.get_files_info())

    async def list_files(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        before: str | None = None,
        file_type: str | None = None,
        shard_index: int | None = None,
        max_items_per_shard: int | None = None,
    ) -> m.FileMetaPage:
        """One page of file metadata (cursor style; shard-style arrays are wrapped)."""
        return await self._run(
            ops.list_files(
                limit=limit,
                after=after,
                before=before,
                file_type=file_type,
                shard_index=shard_index,
                max_items_per_shard=max_items_per_shard,
            )
        )

    async def iter_files(
        self, *, file_type: str | None = None, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[m.FileMeta]:
        query: dict[str, Any] | None = {"limit": page_size, "file_type": file_type}
        while query is not None:
            page = await self.list_files(**query)
            if page.style == "cursor" or "shard_index" in query:
                for meta in page.data:
                    yield meta
            query = ops.next_files_query(page, query)

    async def get_file_metadata(self, file_id: str) -> m.FileMeta:
        return await self._run(ops.get_file_metadata(file_id))

    async def initiate_upload(
        self, filename: str, file_type: str, num_bytes: int, *, resume_if_started: bool = False
    ) -> m.InitiateUploadResponse:
        request = m.InitiateUploadRequest(
            filename=filename,
            file_type=file_type,
            num_bytes=num_bytes,
            resume_if_started=resume_if_started,
        )
        return await self._run(ops.initiate_upload(request))

    async def get_part_urls(self, upload_id: str, part_numbers: list[int]) -> m.PartUrlsResponse:
        return await self._run(ops.get_part_urls(upload_id, part_numbers))

    async def checkpoint_parts(
        self, upload_id: str, parts: list[m.PartToken]
    ) -> m.CheckpointPartsResponse:
        return await self._run(ops.checkpoint_parts(upload_id, parts))

    async def complete_upload(
        self,
        upload_id: str,
        parts: list[m.PartToken],
        *,
        integrity_checksum: str | None = None,
    ) -> m.CompleteUploadResponse:
        return await self._run(ops.complete_upload(upload_id, parts, integrity_checksum))

    async def abort_upload(self, upload_id: str) -> None:
        await self._run(ops.abort_upload(upload_id))


def _async_content(args: dict[str, Any]) -> dict[str, Any]:
    """httpx's AsyncClient wants async byte streams; part bodies are sync generators."""
    content = args.get("content")
    if isinstance(content, Iterator):

        async def stream(chunks: Iterator[bytes] = content) -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        args["content"] = stream()
    return args
