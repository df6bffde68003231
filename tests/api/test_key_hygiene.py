"""The key on real sockets: out of the HTTP libraries' logs (a server echoing it back), and
never handed to a proxy on its way to a loopback backend."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from atai_magics.api.client import AsyncClient, Client
from atai_magics.api.errors import AuthError, InvalidResponse

KEY = "sk-log-canary-0123456789abcdef"


@contextlib.contextmanager
def echo_server(redirect: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """A server answering 401 with the request's Authorization header in a response header
    (or a 307 to ``redirect``); yields its URL and the request lines it received."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.requestline)
            if redirect:
                self.send_response(307)
                self.send_header("Location", redirect)
            else:
                self.send_response(401)
                self.send_header("X-Echo", self.headers.get("Authorization", ""))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v0.5", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def echo_url() -> Iterator[str]:
    with echo_server() as (url, _):
        yield url


def test_debug_logs_of_an_echoing_server_never_show_the_key(
    echo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Client(echo_url, api_key=KEY, max_retries=0) as client, pytest.raises(AuthError):
        client.get_job("job_01abcdefghjkmnpqrstvwxyz0")
    headers = [r for r in caplog.records if "receive_response_headers.complete" in r.getMessage()]
    assert headers, "httpcore logged no response headers: the check would be blind"
    assert "X-Echo" in caplog.text and "Bearer ***" in caplog.text
    assert KEY not in caplog.text and KEY[:12] not in caplog.text


def test_the_async_client_is_guarded_too(echo_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    async def ask() -> None:
        async with AsyncClient(echo_url, api_key=KEY, max_retries=0) as client:
            await client.list_jobs()

    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthError):
        asyncio.run(ask())
    assert "Bearer ***" in caplog.text and KEY not in caplog.text


def test_other_records_pass_unchanged_and_a_gone_client_is_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("httpcore.http11")
    client = Client("http://127.0.0.1:9/v0.5", api_key="sk-short-lived-key")
    log.debug("headers %s", "sk-short-lived-key")
    log.debug("nothing secret: %s", 42)
    assert [r.getMessage() for r in caplog.records] == ["headers ***", "nothing secret: 42"]
    assert caplog.records[1].args == (42,)  # untouched records keep their arguments
    client.close()
    del client
    gc.collect()
    caplog.clear()
    log.debug("headers %s", "sk-short-lived-key")
    assert caplog.records[0].getMessage() == "headers sk-short-lived-key"  # no key kept forever


def test_a_logged_traceback_is_scrubbed_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = Client("http://127.0.0.1:9/v0.5", api_key="sk-traceback-key")
    try:
        raise ValueError("a body that held sk-traceback-key")
    except ValueError:
        logging.getLogger("atai_magics.ui.files").exception("listing failed")
    assert "a body that held ***" in caplog.text and "sk-traceback-key" not in caplog.text
    client.close()


def test_a_proxy_from_the_environment_never_carries_a_loopback_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With HTTP_PROXY set, plain-HTTP requests to a loopback backend would go, key and all,
    to the proxy; they go straight to the backend instead. A remote API keeps the proxy."""
    with echo_server() as (backend_url, backend_seen), echo_server() as (proxy_url, proxy_seen):
        proxy = proxy_url.removesuffix("/v0.5")
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        with Client(backend_url, api_key=KEY, max_retries=0) as client, pytest.raises(AuthError):
            client.get_queue()
        assert backend_seen and proxy_seen == []
        remote = Client("https://api.example.test", api_key=KEY)
        assert remote._http._transport_for_url(remote._http.base_url) is not remote._http._transport
        local = Client(backend_url, api_key=KEY)
        assert local._http.trust_env  # SSL_CERT_FILE and the like still apply


def test_a_redirect_is_never_followed_not_even_by_a_download(tmp_path: Path) -> None:
    """The contract has no redirects: following one could carry the key to another host."""
    with echo_server() as (elsewhere, elsewhere_seen):
        with (
            echo_server(redirect=elsewhere + "/files") as (url, seen),
            Client(url, api_key=KEY, max_retries=0) as client,
        ):
            with pytest.raises(InvalidResponse, match="307"):
                client.download_file("data.csv", tmp_path / "data.csv")
            with pytest.raises(InvalidResponse, match="307"):
                client.get_files_info()
        assert len(seen) == 2 and elsewhere_seen == []
    assert list(tmp_path.iterdir()) == []
