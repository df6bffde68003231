"""Keeps API keys out of logs.

The errors this package raises are scrubbed where they are made, but the HTTP libraries log
on their own: at DEBUG, httpcore writes every response's headers, so a server (or a proxy)
that echoes the ``Authorization`` header would put the key into the user's log. A filter on
those loggers, and on this package's, replaces every live client's key with ``***`` in the
message, a logged traceback and a stack.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

__all__ = ["guard"]

LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "atai_magics.watch",
    "atai_magics.ui.card",
    "atai_magics.ui.files",
)
"""Filters see only records made by their own logger, so each is named (not its parent)."""

KeySource = Callable[[], "str | None"]


class _ScrubKeys(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._owners: weakref.WeakKeyDictionary[object, KeySource] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def add(self, owner: object, key: KeySource) -> None:
        with self._lock:
            self._owners[owner] = key

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            sources = list(self._owners.values())
        keys = {key for source in sources if (key := source())}
        if not keys:
            return True
        text = record.getMessage()
        if any(key in text for key in keys):
            record.msg, record.args = _scrubbed(text, keys), None
        if record.exc_info and not record.exc_text:  # a logged traceback, as handlers format it
            record.exc_text = _FORMAT.formatException(record.exc_info)
        if record.exc_text and any(key in record.exc_text for key in keys):
            record.exc_text, record.exc_info = _scrubbed(record.exc_text, keys), None
        if record.stack_info and any(key in record.stack_info for key in keys):
            record.stack_info = _scrubbed(record.stack_info, keys)
        return True


def _scrubbed(text: str, keys: set[str]) -> str:
    for key in keys:
        text = text.replace(key, "***")
    return text


_FORMAT = logging.Formatter()


_scrub = _ScrubKeys()
_installed = False


def guard(owner: object, key: KeySource) -> None:
    """Scrub ``key()`` from the logs for as long as ``owner`` (a client) lives."""
    global _installed
    _scrub.add(owner, key)
    if not _installed:
        for name in LOGGERS:
            logging.getLogger(name).addFilter(_scrub)
        _installed = True
