"""How a browser presents a token to the status page: a login form and a cookie, never the URL.

With tokens configured, every page needs the ``read`` scope, like ``GET /v1/...``. A browser cannot
send an ``Authorization`` header by itself, so ``/login`` takes the token in a POST body (nothing in
a URL that proxies and access logs record) and answers with a cookie holding the token's SHA-256
digest, not the token: ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's
page sends it), ``Secure`` when served over HTTPS, and valid for ``COOKIE_SECONDS``. Only the
pages accept the cookie, and they are read-only, so a leaked cookie opens the pages and nothing
else: the API keeps demanding the bearer token itself. A request with an ``Authorization`` header
(a reverse proxy that injects one, or curl) is served as well.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote

from fastapi import Request
from starlette.responses import RedirectResponse, Response

from monitor.collector.auth import Authenticator, AuthError, Principal, digest_of

__all__ = [
    "COOKIE",
    "COOKIE_SECONDS",
    "LOGIN_BODY_LIMIT",
    "app_path",
    "authorize_page",
    "base_of",
    "check",
    "login_redirect",
    "read_login_form",
    "safe_next",
    "set_session",
]

COOKIE = "calmon_session"
COOKIE_SECONDS = 12 * 3600
LOGIN_BODY_LIMIT = 8192


def authorize_page(auth: Authenticator, request: Request) -> Principal | None:
    """The viewer (None when auth is off); raises AuthError 401/403 like the API."""
    if not auth.enabled:
        return None
    header = request.headers.get("authorization")
    if header:
        return auth.authorize(header, "read")
    cookie = request.cookies.get(COOKIE, "")
    try:
        digest = bytes.fromhex(cookie)
    except ValueError:
        digest = b""
    principal = auth.identify_digest(digest) if len(digest) == 32 else None
    if principal is None:
        raise AuthError(401, "sign in with a token that has the read scope")
    if "read" not in principal.scopes:
        raise AuthError(403, f"token {principal.name!r} lacks the 'read' scope")
    return principal


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def base_of(request: Request) -> str:
    """The path prefix a reverse proxy serves calmon under (ASGI ``root_path``), or ""."""
    return str(request.scope.get("root_path") or "").rstrip("/")


def app_path(request: Request) -> str:
    """The request's path and query within calmon (servers differ on whether ``path`` holds the prefix)."""
    base, path = base_of(request), request.url.path
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base) :] or "/"
    return path + (f"?{request.url.query}" if request.url.query else "")


def login_redirect(request: Request) -> Response:
    target = quote(safe_next(app_path(request)), safe="/")
    return RedirectResponse(f"{base_of(request)}/login?next={target}", status_code=303)


async def read_login_form(request: Request) -> tuple[str, str] | None:
    """(token, next) from an urlencoded form; None when the body is too large or not a form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_BODY_LIMIT:
            return None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:  # more fields than a login form has
        return None
    return fields.get("token", [""])[0].strip(), safe_next(fields.get("next", ["/"])[0])


def set_session(response: Response, token: str, secure: bool) -> None:
    response.set_cookie(
        COOKIE, digest_of(token).hex(), max_age=COOKIE_SECONDS, httponly=True, samesite="strict",
        secure=secure, path="/",
    )  # fmt: skip


def check(auth: Authenticator, token: str) -> Principal:
    """The principal of a typed-in token, or AuthError naming what is wrong with it."""
    principal = auth.identify(f"Bearer {token}") if token else None
    if principal is None:
        raise AuthError(401, "unknown token")
    if "read" not in principal.scopes:
        raise AuthError(403, f"token {principal.name!r} lacks the 'read' scope")
    return principal
