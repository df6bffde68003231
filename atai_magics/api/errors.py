"""One exception hierarchy for everything the client can raise.

::

    AtaiError                  anything from atai_magics; renders itself in a few lines
    ├── ConfigError            bad settings caught before sending: no key, key over plain HTTP,
    │                          an unknown file type, a malformed base URL
    ├── TransportError         the request did not get an answer (connect, timeout, protocol)
    │   └── AmbiguousCreateError   a create may or may not have reached the server
    └── ApiError               the API answered with an error status
        ├── InvalidRequest     400, 413, 422
        ├── AuthError          401, 403
        ├── NotFound           404
        ├── Conflict           409
        ├── RateLimited        429 (``retry_after`` in seconds when the server said)
        ├── ServerError        5xx
        └── InvalidResponse    an answer the contract does not allow: a redirect, or a body
                               that is not the documented shape

Apart from these, ``Client.create_job`` raises `CreateInterrupted`, a ``KeyboardInterrupt``,
when Ctrl-C arrives while its POST is out: it says whether the create made the job.

No message, ``repr`` or attribute of these errors ever contains the API key: the client
scrubs it from every text it puts into one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # errors are imported by the cheap parts of the extension: no httpx there
    import httpx

    from .models import JobRecord

__all__ = [
    "AmbiguousCreateError",
    "ApiError",
    "AtaiError",
    "AuthError",
    "ConfigError",
    "Conflict",
    "CreateInterrupted",
    "InvalidRequest",
    "InvalidResponse",
    "NotFound",
    "RateLimited",
    "ServerError",
    "TransportError",
    "error_for_response",
    "invalid_body",
]


class AtaiError(Exception):
    """Base of every atai_magics error."""

    def _render_traceback_(self) -> list[str]:
        """IPython shows these lines instead of a traceback: the cell still fails."""
        first, *rest = str(self).splitlines() or [""]
        return [f"{type(self).__name__}: {first}", *(f"  {line}" for line in rest)]


class ConfigError(AtaiError):
    """A setting is wrong or missing; nothing was sent."""


class TransportError(AtaiError):
    """No HTTP answer arrived after the retries allowed (connection, timeout, protocol)."""


class AmbiguousCreateError(TransportError):
    """A create request failed in a way that leaves unknown whether the job exists."""


class CreateInterrupted(KeyboardInterrupt):
    """Ctrl-C while a create request was out. ``job`` is the job it made, found on the server
    right after the interrupt, or None when the server has none. (A second Ctrl-C, or a
    server that cannot be asked, leaves a plain ``KeyboardInterrupt``: then nobody knows.)"""

    def __init__(self, name: str, job: JobRecord | None) -> None:
        made = f"it made job {job.id}" if job is not None else "no job was made"
        super().__init__(f"Interrupted while creating job {name!r}: {made}")
        self.job = job


class ApiError(AtaiError):
    """The API answered with an error status.

    ``code``, ``message``, ``suggestion`` and ``error_uid`` come from the first entry of the
    ``errors`` envelope (all entries are in ``errors``); a legacy ``{"detail": ...}`` body
    becomes ``message``.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        suggestion: str | None = None,
        error_uid: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.code = code
        self.suggestion = suggestion
        self.error_uid = error_uid
        self.errors = errors or []
        self.method = method
        self.url = url
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"{self.status_code}"
        if self.code:
            head += f" {self.code}"
        text = f"{head}: {self.message}"
        if self.method and self.url:
            text += f" ({self.method} {self.url})"
        if self.suggestion:
            text += f"\nSuggestion: {self.suggestion}"
        if self.error_uid:
            text += f"\nError id: {self.error_uid}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, code={self.code!r})"


class InvalidRequest(ApiError):
    """400, 413 or 422: the request itself was refused."""


class AuthError(ApiError):
    """401 or 403: the key is missing, wrong, for another deployment, or lacks permission."""


class NotFound(ApiError):
    """404: no such job, file, upload or pipeline (or no active version of a pipeline)."""


class Conflict(ApiError):
    """409: the resource is not in a state that allows this (e.g. cancelling a finished job)."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` is the server's wish in seconds, if given."""

    retry_after: float | None = None


class ServerError(ApiError):
    """5xx: the platform failed; safe requests are retried before this is raised."""


class InvalidResponse(ApiError):
    """The API answered in a way the contract does not allow: a redirect, or a success whose
    body is not the documented shape (``status_code`` is the answer's)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    413: InvalidRequest,
    422: InvalidRequest,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}


def parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (a number; HTTP dates are rare and ignored)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_for_response(response: httpx.Response, *, scrub: str | None = None) -> ApiError:
    """The right ``ApiError`` for an error response, parsing both error envelopes.

    ``scrub`` is a secret to remove from any text copied out of the response.
    """
    status = response.status_code
    cls = _BY_STATUS.get(status) or (
        ServerError if status >= 500 else InvalidResponse if status < 400 else ApiError
    )
    errors: list[dict[str, Any]] = []
    message = response.reason_phrase or "error"

    def clean(value: Any, limit: int | None = None) -> str | None:
        """Scrubbed, then cut: a key cut in half would no longer be found."""
        if value is None:
            return None
        text = str(value)
        return (text.replace(scrub, "***") if scrub else text)[:limit]

    try:
        body = json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError):
        body = None
        text = clean(response.content[:65536].decode("utf-8", "replace").strip(), 300)
        if text:
            message = text
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        errors = [_scrubbed(e, scrub) for e in body["errors"] if isinstance(e, dict)]
    elif isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        message = clean(detail if isinstance(detail, str) else json.dumps(detail), 500) or ""
    first = errors[0] if errors else {}
    request = _request_of(response)
    error = cls(
        status,
        clean(first.get("message")) or clean(message) or "error",
        code=clean(first.get("code")),
        suggestion=clean(first.get("suggestion")),
        error_uid=clean(first.get("error_uid")),
        errors=errors,
        method=request.method if request else None,
        url=clean(_display_url(request.url)) if request else None,
    )
    if isinstance(error, RateLimited):
        error.retry_after = parse_retry_after(response)
    return error


def invalid_body(response: httpx.Response, what: str, problems: list[Any]) -> InvalidResponse:
    """The error for a success whose body is not a valid ``what``. ``problems`` are pydantic's
    error dicts, without inputs; the key the request carried is scrubbed from what is left
    (a path can hold a key the server echoed as a JSON field name)."""
    request = _request_of(response)
    secret = request.headers.get("authorization", "").removeprefix("Bearer ") if request else ""
    first = problems[0] if problems else {}
    where = ".".join(str(part) for part in first.get("loc", ())) or "the body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    text = f"the answer is not a valid {what}: {where}: {first.get('msg', 'invalid')}{more}"
    if secret:
        text = text.replace(secret, "***")
    return InvalidResponse(
        response.status_code,
        text[:500],
        method=request.method if request else None,
        url=_display_url(request.url) if request else None,
    )


def _request_of(response: httpx.Response) -> httpx.Request | None:
    try:
        return response.request
    except RuntimeError:  # a response built by hand, without its request
        return None


def _scrubbed(value: Any, secret: str | None) -> Any:
    """``value`` (JSON) with ``secret`` replaced by ``***`` in every string, keys included."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, "***")
    if isinstance(value, dict):
        return {_scrubbed(k, secret): _scrubbed(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, secret) for v in value]
    return value


def _display_url(url: httpx.URL) -> str:
    """The URL without its query: presigned signatures stay out of messages."""
    return str(url.copy_with(query=None))
