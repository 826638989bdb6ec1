"""Who is calling: API keys to tenants (and admin keys), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from saga.gateway.server import HttpRequest


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """API keys to names, compared in constant time: the presented key's SHA-256 is
    compared with every stored digest by :func:`hmac.compare_digest`, with no early
    exit, so the time taken says nothing about which bytes matched."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._entries = [(_digest(k), name) for k, name in keys.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> str | None:
        presented = _digest(key)
        found: str | None = None
        for digest, name in self._entries:
            if hmac.compare_digest(presented, digest):
                found = name
        return found


def bearer(http: HttpRequest) -> str:
    scheme, _, key = http.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""
