"""Where the client's endpoint and key come from, and the Bearer auth that sends the key.

The key is read from its environment variable when a request is made (not when the client is
built), kept in a closure rather than an attribute, and only ever leaves the process as an
``Authorization: Bearer`` header, never over plain HTTP to a host other than loopback.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Generator

import httpx

from .errors import ConfigError

DEFAULT_BASE_URL = "https://api.u1.archetypeai.app/v0.5"
API_VERSION_PATH = "/v0.5"
ENDPOINT_ENV = "ATAI_API_ENDPOINT"
KEY_ENV = "ATAI_API_KEY"


def resolve_base_url(base_url: str | None) -> str:
    """The API root ending in ``/v0.5``: the argument, else ``ATAI_API_ENDPOINT``, else prod.

    Both forms seen in the wild are accepted: the bare host and the host with ``/v0.5``.
    """
    raw = (base_url or os.environ.get(ENDPOINT_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"Invalid API endpoint {raw!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"Invalid API endpoint {raw!r}: expected http(s)://HOST[/v0.5], e.g. {DEFAULT_BASE_URL}"
        )
    if not raw.endswith(API_VERSION_PATH):
        raw += API_VERSION_PATH
    return raw


@functools.lru_cache(maxsize=64)  # asked on every request; a pure function of the name
def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine (the only place plain HTTP may go)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def key_source(api_key: str | None) -> Callable[[], str | None]:
    """A function giving the key at request time, without the key being stored on an object.

    Surrounding whitespace is dropped: a key read from a file often ends in a newline."""
    if api_key is not None:
        key = api_key.strip() or None
        return lambda: key
    return lambda: (os.environ.get(KEY_ENV) or "").strip() or None


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>``; refuses plain HTTP to anything but loopback."""

    def __init__(self, get_key: Callable[[], str | None], *, origin: str) -> None:
        self._get_key = get_key
        self._origin = origin

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # Checked before the key is read: a frame of a refused request never holds it.
        if request.url.scheme != "https" and not is_loopback(request.url.host):
            raise ConfigError(
                f"Refusing to send the API key over plain HTTP to {request.url.host!r}: "
                "use https:// (plain http is allowed only for loopback hosts)"
            )
        key = self._get_key()
        if not key:
            raise ConfigError(
                f"No API key: set the {KEY_ENV} environment variable or pass api_key= "
                "(unset ATAI_API_ENDPOINT too to use the embedded local backend)"
            )
        if not (key.isascii() and key.isprintable()) or " " in key:
            raise ConfigError(  # httpx would quote the header, key and all, in its error
                "The API key holds a space, a control or a non-ASCII character, which a header "
                "cannot carry: check how it was set. Nothing was sent."
            )
        request.headers["Authorization"] = f"Bearer {key}"
        yield request

    def __repr__(self) -> str:
        return f"BearerAuth(<key for {self._origin}>)"
