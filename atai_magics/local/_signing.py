"""Presigned-style URLs served by the local backend itself (reference §1.2, §7.6, §10.8).

A URL carries ``?expires=<epoch seconds>&signature=<hex>``, the signature being HMAC-SHA256
over the method, the (decoded) path and the expiry, keyed with a secret derived from the
backend's token. Such URLs need no Authorization header, like S3's; an expired or tampered
URL is refused with 403, which clients take as "re-list for a fresh URL".
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import quote

__all__ = ["SignatureError", "Signer"]


class SignatureError(Exception):
    """A signed URL that must be refused: ``code`` is S3-like (``request_expired`` …)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Signer:
    """Signs and verifies (method, path, expiry) triples."""

    def __init__(
        self, token: str, ttl: float = 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hmac.new(token.encode(), b"atai-local-url-signing-v1", hashlib.sha256).digest()
        self.ttl = ttl
        self.clock = clock

    def _mac(self, method: str, path: str, expires: int) -> str:
        message = f"{method.upper()}\n{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, path: str) -> tuple[str, int]:
        """``(path?query, expires)`` for the decoded ``path``; the path is percent-encoded."""
        expires = int(self.clock() + self.ttl)
        signature = self._mac(method, path, expires)
        return f"{quote(path)}?expires={expires}&signature={signature}", expires

    def verify(self, method: str, path: str, expires: str | None, signature: str | None) -> None:
        """Raise SignatureError unless the signature is valid and not expired."""
        if not expires or not signature:
            raise SignatureError("access_denied", "Missing expires or signature query parameter")
        try:
            expires_at = int(expires)
        except ValueError:
            raise SignatureError("access_denied", "Malformed expires parameter") from None
        expected = self._mac(method, path, expires_at)
        given = signature.lower().encode("utf-8", "surrogatepass")  # bytes: any text compares
        if not hmac.compare_digest(expected.encode(), given):
            raise SignatureError("signature_does_not_match", "The request signature does not match")
        if self.clock() > expires_at:
            raise SignatureError("request_expired", "Request has expired")
