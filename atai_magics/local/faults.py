"""Fault injection for the local backend: the failures a client meets on the real platform.

Off by default. ``atai-magics local start --faults "error_rate=0.1,latency_ms=50"`` turns it on
so that retries, backoff and the no-duplicate-create logic of the client can be rehearsed
against a real HTTP server:

- ``error_rate``       answer 500, 502 or 503 with the platform's ``errors`` envelope;
- ``rate_limit_rate``  answer 429 with ``Retry-After: <retry_after>`` and code ``rate_limited``;
- ``latency_ms``       sleep ``latency_ms * uniform(0.5, 1.5)`` before handling a request;
- ``drop_rate``        close the connection without sending a single byte of response;
- ``crash_rate``       make a pipeline run fail (used by the scheduler via ``should_crash``).

Errors, 429s and drops are decided *before* the request reaches the app, so an injected fault
never executes the request: a create that got a 503 or a dropped connection created nothing.
(A real platform may fail after the work is done; the client must cope with both, and this
choice makes its "did my create land?" path testable with a known answer.)

Only API routes under ``/v0.5`` are affected; ``/healthz`` and anything else pass untouched.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import random
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DroppedConnection", "FaultMiddleware", "FaultSpec"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RATES = ("error_rate", "rate_limit_rate", "drop_rate", "crash_rate")
_ERROR_STATUSES = (500, 502, 503)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass(frozen=True)
class FaultSpec:
    """What to inject and how often; ``FaultSpec()`` injects nothing."""

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    crash_rate: float = 0.0
    retry_after: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {name}={value!r} must be between 0 and 1")
        if not self.latency_ms >= 0.0:  # also refuses NaN
            raise ValueError(f"fault latency_ms={self.latency_ms!r} must be >= 0")
        if self.retry_after < 0:
            raise ValueError(f"fault retry_after={self.retry_after!r} must be >= 0")

    @classmethod
    def parse(cls, text: str | None) -> FaultSpec:
        """``"error_rate=0.1,latency_ms=50"`` -> FaultSpec; ``""``, ``"none"`` or ``"off"`` -> off.

        Raises ``ValueError`` naming the bad key (with a did-you-mean) or the bad value.
        """
        text = (text or "").strip()
        if text.lower() in ("", "none", "off"):
            return cls()
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"unknown fault {key!r}{hint} (known: {', '.join(known)})",
                )
            if not sep or not raw:
                raise ValueError(f"fault {key!r} needs a value, as in {key}=<number>")
            if key in values:
                raise ValueError(f"fault {key!r} is given twice")
            try:
                values[key] = int(raw) if key in ("retry_after", "seed") else float(raw)
            except ValueError:
                kind = "an integer" if key in ("retry_after", "seed") else "a number"
                raise ValueError(f"fault {key}={raw!r} is not {kind}") from None
        return cls(**values)

    def __str__(self) -> str:
        """The spec in ``parse`` syntax, only the non-default settings (``""`` when off)."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"{f.name}={_format_number(value)}")
        return ",".join(parts)

    @property
    def enabled(self) -> bool:
        """Whether the middleware has anything to do (crashes are the scheduler's business)."""
        return any(
            (self.error_rate, self.rate_limit_rate, self.latency_ms, self.drop_rate),
        )

    def rng(self) -> random.Random:
        """A generator seeded from ``seed`` (None: from the OS), so a run can be replayed."""
        return random.Random(self.seed)

    def should_crash(self, rng: random.Random) -> bool:
        """Whether a pipeline run should fail now: the scheduler's hook for ``crash_rate``."""
        return self.crash_rate > 0.0 and rng.random() < self.crash_rate


def _format_number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


class DroppedConnection(ConnectionError):
    """Raised where the server gives no way to close the socket (not uvicorn, e.g. in tests)."""


class FaultMiddleware:
    """Pure ASGI middleware injecting the faults of a ``FaultSpec`` into ``/v0.5`` requests.

    ``injected`` counts each fault served (``"error"``, ``"rate_limit"``, ``"drop"``,
    ``"latency"``) and ``delays`` keeps the last sleeps in seconds, so tests can check what
    happened without timing anything. ``sleep`` is replaceable for the same reason.
    """

    def __init__(
        self,
        app: ASGIApp,
        spec: FaultSpec,
        *,
        prefix: str = "/v0.5",
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.app = app
        self.spec = spec
        self.prefix = prefix.rstrip("/")
        self.sleep = sleep
        self.rng = spec.rng()
        self.injected: Counter[str] = Counter()
        self.delays: deque[float] = deque(maxlen=1000)

    def _applies(self, scope: Scope) -> bool:
        if scope["type"] != "http" or not self.spec.enabled:
            return False
        path: str = scope.get("path", "")
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        spec, rng = self.spec, self.rng
        # Decide everything up front, with a fixed number of draws per request: a seeded run
        # then injects the same faults into the same requests whatever their timing.
        delay = spec.latency_ms / 1000.0 * rng.uniform(0.5, 1.5) if spec.latency_ms else 0.0
        drop = rng.random() < spec.drop_rate
        rate_limited = rng.random() < spec.rate_limit_rate
        error = rng.random() < spec.error_rate
        status = rng.choice(_ERROR_STATUSES)
        if delay:
            self.injected["latency"] += 1
            self.delays.append(delay)
            await self.sleep(delay)
        if drop:
            self.injected["drop"] += 1
            await _drop_connection(receive, send)
        elif rate_limited:
            self.injected["rate_limit"] += 1
            await _drain(receive)
            message = f"Injected fault: rate limit exceeded; retry after {spec.retry_after}s"
            await _send_error(
                send, 429, "rate_limited", message, [(b"retry-after", b"%d" % spec.retry_after)]
            )
        elif error:
            self.injected["error"] += 1
            await _drain(receive)
            message = f"Injected fault: {status} {_REASONS[status]} (local --faults)"
            await _send_error(send, status, "internal_error", message)
        else:
            await self.app(scope, receive, send)


async def _drain(receive: Receive) -> None:
    """Read the request body away, so the client gets to read our answer, not a broken pipe."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(
        {"errors": [{"code": code, "message": message, "error_uid": f"err-{uuid.uuid4()}"}]}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop_connection(receive: Receive, send: Send) -> None:
    """Close the socket without a response, as a crashed proxy would.

    ASGI has no "abort" message, and raising before ``http.response.start`` makes uvicorn
    answer 500 (a response, not a drop). uvicorn's ``send`` is a bound method of its
    request cycle, which holds the asyncio transport: closing that sends FIN with no bytes,
    and the client sees "server disconnected without sending a response". We then wait for
    uvicorn to notice (``http.disconnect``) so it does not log "returned without starting
    response". Elsewhere (e.g. httpx's ASGITransport) we raise ``DroppedConnection``.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.BaseTransport):
        raise DroppedConnection("Injected fault: connection dropped")
    transport.close()
    for _ in range(10_000):  # body chunks may still be queued before the disconnect
        message = await asyncio.wait_for(receive(), timeout=5.0)
        if message["type"] == "http.disconnect":
            return
