"""Bearer-token authentication with scopes.

No tokens configured: the API is open (embedded, single-host use). Any token configured: every
``/v1`` route demands one. 401 = no or unknown token; 403 = known token without the scope.
``admin`` includes ``read`` and ``ingest``. Tokens are compared as SHA-256 digests with
``hmac.compare_digest`` against every configured token, so neither content nor length leaks
through timing, and they are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from monitor.config import AuthConfig, Scope

__all__ = [
    "IMPLIED",
    "AuthError",
    "Authenticator",
    "Principal",
    "digest_of",
]


IMPLIED: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "read", "ingest"}),
    "read": frozenset({"read"}),
    "ingest": frozenset({"ingest"}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def digest_of(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(self, config: AuthConfig):
        self._tokens: list[tuple[bytes, Principal]] = []
        for token in config.tokens:
            scopes: set[str] = set()
            for scope in token.scopes:
                scopes |= IMPLIED[scope]
            digest = digest_of(token.secret())
            self._tokens.append((digest, Principal(token.name, frozenset(scopes))))

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return None
        return self.identify_digest(digest_of(credential.strip()))

    def identify_digest(self, digest: bytes) -> Principal | None:
        """The principal whose token hashes to ``digest`` (the status page's cookie holds the digest)."""
        found: Principal | None = None
        for expected, principal in self._tokens:  # no early exit: constant work per request
            if hmac.compare_digest(digest, expected):
                found = principal
        return found

    def authorize(self, authorization: str | None, scope: Scope) -> Principal | None:
        """The caller, or None when auth is disabled; raises AuthError (401/403)."""
        if not self.enabled:
            return None
        principal = self.identify(authorization)
        if principal is None:
            raise AuthError(401, "missing or invalid bearer token")
        if scope not in principal.scopes:
            raise AuthError(403, f"token {principal.name!r} lacks the {scope!r} scope")
        return principal
