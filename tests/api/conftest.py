"""Shared fixtures of the API tests: a recording ``httpx.MockTransport`` and clients on it.

::

    def test_something(mock_api, make_client):
        mock_api.add("GET", "/v0.5/batch/jobs/queue", json={"queues": []})
        with make_client() as client:
            client.get_queue()
        assert mock_api.requests[0].url.path == "/v0.5/batch/jobs/queue"

Test modules should take what they need as fixtures (``mock_api``, ``make_client``,
``make_async_client``, ``no_sleep``, ``api_key``, ``base_url``) rather than import this file.

``mock_api`` records every ``httpx.Request`` (body already read) and answers from, in order:
a route added with ``add`` (a response, a callable ``request -> response`` or a list of either,
used one per call, the last one repeating), then ``mock_api.handler``, else ``200 {}``. The same
``mock_api.transport`` serves ``Client`` and ``AsyncClient`` (handlers stay synchronous).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from atai_magics.api.client import AsyncClient, Client, RetryPolicy

BASE_URL = "https://api.test/v0.5"
API_KEY = "sk_canary_1234567890"

Handler = Callable[[httpx.Request], httpx.Response]
Answer = httpx.Response | Handler


class MockApi:
    """A router that records every request and answers from routes or a handler."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []
        self._routes: dict[tuple[str, str], list[Answer]] = {}

    def add(
        self,
        method: str,
        path: str,
        answer: Answer | list[Answer] | None = None,
        **response_kwargs: Any,
    ) -> None:
        """Answer ``method path`` (``url.path``, e.g. ``/v0.5/files/info``).

        ``answer`` is a response, a handler or a list of them (one per call, the last repeats);
        without it, ``httpx.Response(200, **response_kwargs)`` (e.g. ``json=...``) is used.
        """
        if answer is None:
            status = response_kwargs.pop("status_code", 200)
            answer = httpx.Response(status, **response_kwargs)
        answers = list(answer) if isinstance(answer, list) else [answer]
        self._routes[(method.upper(), path)] = answers

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answers = self._routes.get((request.method, request.url.path))
        if answers:
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
        elif self.handler is not None:
            answer = self.handler
        else:
            answer = httpx.Response(200, json={})
        response = answer(request) if callable(answer) else _copy(answer)
        self.responses.append(response)
        return response

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def calls(self) -> list[tuple[str, str]]:
        """``(method, raw path + query)`` of every request, in order."""
        return [(r.method, r.url.raw_path.decode()) for r in self.requests]


def _copy(response: httpx.Response) -> httpx.Response:
    """A fresh response per call, so one canned response can answer many requests."""
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


def no_sleep_retry(max_retries: int = 0, sleeps: list[float] | None = None) -> RetryPolicy:
    """A retry policy that never really sleeps (the delays are appended to ``sleeps``)."""
    waited = sleeps if sleeps is not None else []

    async def async_sleep(seconds: float) -> None:
        waited.append(seconds)

    return RetryPolicy(
        max_retries=max_retries,
        jitter=lambda: 1.0,
        sleep=waited.append,
        async_sleep=async_sleep,
    )


@pytest.fixture(autouse=True)
def _clean_api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's endpoint or key."""
    monkeypatch.delenv("ATAI_API_ENDPOINT", raising=False)
    monkeypatch.delenv("ATAI_API_KEY", raising=False)


@pytest.fixture
def api_key() -> str:
    """The key the clients of ``make_client`` use: recognisable, so leaks can be searched."""
    return API_KEY


@pytest.fixture
def base_url() -> str:
    return BASE_URL


@pytest.fixture
def no_sleep() -> Callable[..., RetryPolicy]:
    """``no_sleep(max_retries=0, sleeps=None)``: see ``no_sleep_retry``."""
    return no_sleep_retry


@pytest.fixture
def mock_api() -> MockApi:
    return MockApi()


@pytest.fixture
def make_client(mock_api: MockApi) -> Iterator[Callable[..., Client]]:
    """``make_client(**kwargs)``: a ``Client`` on ``mock_api`` (test URL and key, no retries)."""
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("retry", no_sleep_retry())
        kwargs.setdefault("transport", mock_api.transport)
        client = Client(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def make_async_client(mock_api: MockApi) -> Callable[..., AsyncClient]:
    """``make_async_client(**kwargs)``: an ``AsyncClient`` on ``mock_api``; use ``async with``."""

    def make(**kwargs: Any) -> AsyncClient:
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("retry", no_sleep_retry())
        kwargs.setdefault("transport", mock_api.transport)
        return AsyncClient(**kwargs)

    return make
