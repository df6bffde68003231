"""TypeID-style identifiers for the local backend (reference §1.3).

An id is a lowercase prefix, ``_`` and 26 lowercase Crockford base32 characters that encode a
UUIDv7: 48 bits of Unix milliseconds, then random bits. Ids made later sort later (as strings),
and ids made in the same millisecond by one process still sort in creation order, because the
random part then counts up instead of being redrawn (RFC 9562 §6.2, method 2).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid

__all__ = ["PREFIXES", "encode_base32", "error_uid", "is_id", "new_id"]

PREFIXES = frozenset({"job", "inp", "out", "fil", "upl", "ppl", "cmp", "org"})

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RAND_BITS = 74  # 12 bits rand_a + 62 bits rand_b of a UUIDv7
_ID_RE = re.compile(r"^([a-z]+)_([0-7][0-9a-hjkmnp-tv-z]{25})$")


def encode_base32(value: int) -> str:
    """A 128-bit integer as 26 Crockford base32 characters (the TypeID suffix encoding)."""
    if not 0 <= value < 1 << 128:
        raise ValueError("value must fit in 128 bits")
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


class _Uuid7Source:
    """Monotonic UUIDv7 integers: the millisecond never goes back and ties count up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def next(self, unix_ms: int | None = None) -> int:
        ms = int(time.time() * 1000) if unix_ms is None else unix_ms
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1 + secrets.randbelow(1 << 16)
                if rand >= 1 << _RAND_BITS:  # counter exhausted: borrow the next millisecond
                    ms += 1
                    rand = secrets.randbits(_RAND_BITS - 1)
            else:
                # Leave headroom (top bit clear) so the counter rarely overflows.
                rand = secrets.randbits(_RAND_BITS - 1)
            self._last_ms, self._last_rand = ms, rand
        rand_a = rand >> 62
        rand_b = rand & ((1 << 62) - 1)
        return (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b


_SOURCE = _Uuid7Source()


def new_id(prefix: str, unix_ms: int | None = None) -> str:
    """A fresh ``<prefix>_<26 chars>`` id, time-sortable; ``unix_ms`` lets a clock be injected."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{encode_base32(_SOURCE.next(unix_ms))}"


def is_id(value: object, prefix: str) -> bool:
    """Whether ``value`` is a well-formed id with this prefix (safe to use in a path)."""
    if not isinstance(value, str):
        return False
    match = _ID_RE.match(value)
    return match is not None and match.group(1) == prefix


def error_uid() -> str:
    """``err-<uuid4>``: the per-error id of the errors envelope (reference §1.6)."""
    return f"err-{uuid.uuid4()}"
