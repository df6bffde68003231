"""Fault injection: the spec syntax, and each fault as a real client sees it over loopback."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fake_local_app import create_app

from atai_magics.local.faults import DroppedConnection, FaultMiddleware, FaultSpec

# -- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "error_rate=0.1,rate_limit_rate=0.05,latency_ms=50,drop_rate=0.02,crash_rate=0.5",
        "latency_ms=12.5",
        "rate_limit_rate=1,retry_after=30,seed=42",
        "error_rate=0.333",
    ],
)
def test_parse_and_str_round_trip(text: str) -> None:
    spec = FaultSpec.parse(text)
    assert FaultSpec.parse(str(spec)) == spec
    assert str(spec) == text  # canonical text is stable


def test_parse_values_and_defaults() -> None:
    spec = FaultSpec.parse(" error_rate = 0.1 , latency_ms=50,seed=7, ")
    assert spec == FaultSpec(error_rate=0.1, latency_ms=50.0, seed=7)
    assert spec.retry_after == 1 and spec.enabled
    for off in ("", "  ", "none", "off", None):
        assert FaultSpec.parse(off) == FaultSpec()
    assert str(FaultSpec()) == ""
    assert not FaultSpec().enabled
    assert not FaultSpec(crash_rate=1.0).enabled  # crashes are the scheduler's, not HTTP's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("eror_rate=0.1", "unknown fault 'eror_rate'; did you mean 'error_rate'?"),
        ("latency=5", "did you mean 'latency_ms'?"),
        ("bogus=1", "unknown fault 'bogus' (known: error_rate,"),
        ("error_rate=1.5", "error_rate=1.5 must be between 0 and 1"),
        ("drop_rate=-0.1", "drop_rate=-0.1 must be between 0 and 1"),
        ("latency_ms=-1", "latency_ms=-1.0 must be >= 0"),
        ("latency_ms=nan", "latency_ms=nan must be >= 0"),
        ("error_rate=lots", "error_rate='lots' is not a number"),
        ("seed=1.5", "seed='1.5' is not an integer"),
        ("error_rate", "'error_rate' needs a value"),
        ("error_rate=", "'error_rate' needs a value"),
        ("error_rate=0.1,error_rate=0.2", "'error_rate' is given twice"),
        ("retry_after=-1", "retry_after=-1 must be >= 0"),
    ],
)
def test_parse_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FaultSpec.parse(text)


def test_should_crash_follows_the_rate_and_the_seed() -> None:
    assert all(FaultSpec(crash_rate=1.0).should_crash(FaultSpec().rng()) for _ in range(50))
    assert not any(FaultSpec(crash_rate=0.0).should_crash(FaultSpec().rng()) for _ in range(50))
    spec = FaultSpec(crash_rate=0.5, seed=3)
    first, second = spec.rng(), spec.rng()
    draws = [spec.should_crash(first) for _ in range(40)]
    assert draws == [spec.should_crash(second) for _ in range(40)]
    assert any(draws) and not all(draws)


# -- the middleware over a real socket --------------------------------------------------------


class LiveServer:
    """uvicorn on 127.0.0.1 in a thread, serving the fake app behind a FaultMiddleware."""

    def __init__(self, spec: FaultSpec, home: Path) -> None:
        self.app = create_app(home, "tok", 1)
        self.slept: list[float] = []
        self.middleware = FaultMiddleware(self.app, spec, sleep=self._sleep)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.middleware, lifespan="off", log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    async def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)  # recorded, not slept: tests never depend on the clock
        await asyncio.sleep(0)

    @property
    def executed(self) -> list[str]:
        return self.app.state.executed  # type: ignore[no-any-return]

    def client(self) -> httpx.Client:
        headers = {"Authorization": "Bearer tok"}
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=10)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Callable[[str], LiveServer]]:
    servers: list[LiveServer] = []

    def make(spec: str) -> LiveServer:
        server = LiveServer(FaultSpec.parse(spec), tmp_path)
        servers.append(server.__enter__())
        return server

    yield make
    for server in servers:
        server.__exit__()


def _errors_of(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert set(body) == {"errors"}
    return body["errors"]  # type: ignore[no-any-return]


def test_error_rate_one_answers_5xx_envelopes_and_never_runs_the_request(
    live: Callable[[str], LiveServer],
) -> None:
    server = live("error_rate=1,seed=1")
    statuses = set()
    with server.client() as client:
        for _ in range(30):
            response = client.post("/v0.5/batch/jobs", json={"name": "x"})
            statuses.add(response.status_code)
            [error] = _errors_of(response)
            assert error["code"] == "internal_error"
            assert error["message"].startswith("Injected fault")
            assert re.fullmatch(r"err-[0-9a-f-]{36}", error["error_uid"])
            assert response.headers["content-type"] == "application/json"
    assert statuses == {500, 502, 503}
    assert server.executed == []
    assert server.middleware.injected == {"error": 30}


def test_rate_limit_rate_one_answers_429_with_retry_after(
    live: Callable[[str], LiveServer],
) -> None:
    server = live("rate_limit_rate=1,retry_after=7")
    with server.client() as client:
        response = client.post("/v0.5/batch/jobs", content=b"x" * 200_000)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    [error] = _errors_of(response)
    assert error["code"] == "rate_limited"
    assert server.executed == []


@pytest.mark.parametrize("body", [b"", b"x" * 3_000_000], ids=["empty", "large-unread-body"])
def test_drop_rate_one_closes_the_connection_without_a_response(
    live: Callable[[str], LiveServer], caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    server = live("drop_rate=1")
    with server.client() as client:
        for _ in range(3):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
                client.post("/v0.5/batch/jobs", content=body)
    assert server.executed == []
    assert server.middleware.injected == {"drop": 3}
    # uvicorn neither answered 500 nor logged "returned without starting response"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_rates_of_zero_never_fault_and_latency_is_recorded_not_timed(
    live: Callable[[str], LiveServer],
) -> None:
    server = live("error_rate=0,rate_limit_rate=0,drop_rate=0,latency_ms=40,seed=5")
    with server.client() as client:
        answers = [client.post("/v0.5/batch/jobs", json={"i": i}).status_code for i in range(25)]
    assert answers == [201] * 25
    assert len(server.executed) == 25
    assert len(server.slept) == 25 == server.middleware.injected["latency"]
    assert list(server.middleware.delays) == server.slept
    assert all(0.020 <= delay <= 0.060 for delay in server.slept)  # 40 ms * uniform(0.5, 1.5)
    assert len(set(server.slept)) > 1


def test_only_api_routes_get_faults(live: Callable[[str], LiveServer]) -> None:
    server = live("error_rate=1,drop_rate=1,latency_ms=10")
    with server.client() as client:
        for path in ("/healthz", "/", "/v0.50/batch/jobs", "/other/v0.5"):
            assert client.get(path).status_code == 404  # the app's own answer
    assert server.middleware.injected == {}


async def _call(middleware: FaultMiddleware, path: str = "/v0.5/batch/jobs") -> str:
    """One request straight through ASGI (no server): the outcome as a word."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    try:
        await middleware(scope, receive, send)
    except DroppedConnection:
        return "drop"
    return str(sent[0]["status"])


def test_a_seed_replays_the_same_faults() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def no_sleep(seconds: float) -> None:
        return None

    spec = FaultSpec.parse("error_rate=0.3,rate_limit_rate=0.3,drop_rate=0.2,latency_ms=5,seed=9")

    async def outcomes() -> list[str]:
        middleware = FaultMiddleware(app, spec, sleep=no_sleep)
        return [await _call(middleware) for _ in range(60)]

    first, second = asyncio.run(outcomes()), asyncio.run(outcomes())
    assert first == second
    assert {"200", "429", "drop"} <= set(first)
    assert set(first) & {"500", "502", "503"}
