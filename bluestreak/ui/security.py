"""What protects the dashboard: response headers, the access token, and CSRF checks of every action.

- **Headers**: a strict Content-Security-Policy (scripts and styles only from
  the dashboard's own static files; no inline script, no inline style, no
  frames), ``nosniff``, no referrer to other sites, ``no-store`` on pages.
- **Token** (optional, required by ``bluestreak ui`` on a non-loopback
  address): a request is let in with ``Authorization: Bearer <token>``, or
  with the session cookie that ``?token=<token>`` (or the login form) sets;
  the token itself never stays in the address bar.
- **CSRF**: every action is a POST that must carry the per-session token
  from a ``SameSite=Strict`` cookie in a form field, signed by a key of this
  app; and an ``Origin`` (or ``Referer``) that is this dashboard's own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "bluestreak_csrf"
SESSION_COOKIE = "bluestreak_session"
CSRF_FIELD = "csrf"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware: adds :data:`SECURITY_HEADERS` to every response (and ``no-store`` to non-static ones)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = _route_path(scope).startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


_OURS = {k for k, _ in SECURITY_HEADERS} | {b"cache-control"}


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class Keys:
    """The secrets of one app: the signing key of its CSRF tokens and sessions, and the access token if any."""

    def __init__(self, token: str | None) -> None:
        self._key = secrets.token_bytes(32)
        self.token = token

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:32]

    # -- CSRF ---------------------------------------------------------------------------

    def new_csrf(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('csrf:' + nonce)}"

    def csrf_valid(self, value: str | None) -> bool:
        """Whether ``value`` is a CSRF token this app issued (a cookie planted by another site is not)."""
        if not value or "." not in value:
            return False
        nonce, _, mac = value.partition(".")
        return hmac.compare_digest(mac, self._sign("csrf:" + nonce))

    # -- access token ----------------------------------------------------------------------

    def session_value(self) -> str:
        """The session cookie's value: derived from the token, so it is void when the token changes."""
        assert self.token is not None
        return self._sign("session:" + self.token)

    def token_matches(self, given: str | None) -> bool:
        return self.token is not None and given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def authorised(self, request: Request) -> bool:
        """Whether the request may see the dashboard: no token set, a bearer token, or the session cookie."""
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and self.token_matches(header[7:].strip()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie, self.session_value())


def same_origin(request: Request, trusted: Iterable[str] = ()) -> tuple[bool, str]:
    """Whether a POST comes from a page of this dashboard, by its ``Origin`` (or ``Referer``) header.

    ``(ok, reason)``. Without either header (some privacy tools strip both)
    the signed CSRF token alone decides.
    """
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    allowed = {o.rstrip("/") for o in trusted}
    if origin is not None:
        if origin == "null":
            return False, "the request's Origin is 'null' (a sandboxed or privacy-restricted page)"
        if origin.rstrip("/") in allowed or urlsplit(origin).netloc == host:
            return True, ""
        return False, f"the request came from {origin}, not from this dashboard ({host})"
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        if f"{parts.scheme}://{parts.netloc}" in allowed or parts.netloc == host:
            return True, ""
        return False, f"the request came from a page of {parts.netloc or 'an unknown site'}, not from this dashboard"
    return True, ""
