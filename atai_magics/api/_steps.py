"""The steps an operation asks its driver to perform, and the retry policy.

Every endpoint is written once, as a generator (a *flow*) that yields steps and receives their
results: a :class:`Call` gets an ``httpx.Response``, :class:`Parallel` a list of responses or
errors, :class:`Sleep` nothing. Errors are thrown back into the flow, so a flow can recover
(re-list an expired URL, look for a job whose create timed out). The sync ``Client`` and the
``AsyncClient`` are two drivers of the same flows, so request building lives in one place.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydantic

from .errors import ApiError, AtaiError, RateLimited, invalid_body

R = TypeVar("R")

SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
"""Methods repeated after an ambiguous failure (PUT only ever goes to presigned part URLs)."""

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport failures that prove the request did not reach the server."""


@dataclass(frozen=True)
class Call:
    """One HTTP request. ``path`` is relative to the API root, or an absolute (presigned) URL."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    body: Callable[[], dict[str, Any]] | None = None
    """Fresh httpx keyword arguments (``files=``, ``content=``) for each attempt."""
    headers: Mapping[str, str] | None = None
    authenticated: bool = True
    accept: frozenset[int] = frozenset()
    """Statuses >= 400 (or 304) handed back to the flow instead of raised."""
    stream_to: Path | None = None
    """Stream the response body to this file (written beside it, then renamed)."""

    @property
    def idempotent(self) -> bool:
        return self.method.upper() in SAFE_METHODS

    def query(self) -> dict[str, Any]:
        return {k: v for k, v in (self.params or {}).items() if v is not None}


@dataclass(frozen=True)
class Parallel:
    """Run calls concurrently (at most ``limit`` at once); results in order, errors as values."""

    calls: list[Call]
    limit: int = 4


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Call | Parallel | Sleep
Flow = Generator[Step, Any, R]
Outcome = httpx.Response | AtaiError


@dataclass
class RetryPolicy:
    """Exponential backoff, jittered between half and all of it; ``Retry-After`` wins if given."""

    max_retries: int = 3
    backoff: float = 0.5
    backoff_max: float = 30.0
    jitter: Callable[[], float] = field(default=random.random)
    sleep: Callable[[float], None] = field(default=time.sleep)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)

    def delay(self, attempt: int, error: AtaiError | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(error.retry_after, self.backoff_max)
        ceiling = min(self.backoff_max, self.backoff * 2.0**attempt)
        return ceiling * (0.5 + 0.5 * self.jitter())

    def should_retry_status(self, call: Call, status: int, attempt: int) -> bool:
        if attempt >= self.max_retries or status in call.accept:
            return False
        if status == 429:  # refused before any work was done: safe for any method
            return True
        return call.idempotent and status in RETRY_STATUSES

    def should_retry_transport(self, call: Call, exc: Exception, attempt: int) -> bool:
        if attempt >= self.max_retries:
            return False
        return call.idempotent or isinstance(exc, NEVER_SENT)


def parse(model: type[Any], response: httpx.Response) -> Any:
    """Validate a JSON response into ``model``; a body of another shape is ``InvalidResponse``
    (raised outside the ``except``: pydantic's error would carry the body, echoes and all)."""
    try:
        return model.model_validate_json(response.content)
    except pydantic.ValidationError as exc:
        problems = exc.errors(include_url=False, include_context=False, include_input=False)
    raise invalid_body(response, model.__name__, list(problems))


def is_expired_url_error(error: AtaiError) -> bool:
    """Storage refuses an expired presigned URL with 403 (S3) or 400 ``TokenExpired``."""
    if not isinstance(error, ApiError):
        return False
    if error.status_code == 403:
        return True
    text = f"{error.code} {error.message}".lower()
    return error.status_code == 400 and ("expired" in text)
