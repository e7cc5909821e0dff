"""The bluestreak web dashboard: list, inspect and control workflows in a browser.

Run it on its own::

    bluestreak ui --db-url mongodb://localhost:27017 [--port 8233] [--read-only]

or mount it in your own ASGI service, behind your own authentication::

    from bluestreak.ui import create_app
    app.mount("/workflows", create_app(engine))

Needs the ``ui`` extra: ``pip install "bluestreak[ui]"`` (Starlette, Jinja2, uvicorn).
See ``docs/dashboard.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine import Bluestreak

__all__ = ["create_app"]

MISSING_EXTRA = "the dashboard needs the 'ui' extra ({missing} is not installed): pip install 'bluestreak[ui]'"


def create_app(
    engine: Bluestreak,
    *,
    read_only: bool = False,
    token: str | None = None,
    title: str = "bluestreak",
    live_interval: float = 2.0,
    trusted_origins: Iterable[str] = (),
) -> Any:
    """The dashboard of ``engine`` as an ASGI application (a Starlette app).

    :param engine: a :class:`~bluestreak.Bluestreak`; initialised on the first
        request if the service has not done it (``init`` is idempotent). It
        needs no handlers: the dashboard only reads and calls operator controls.
    :param read_only: hide every action and refuse their POSTs (403).
    :param token: if set, every request must carry it: ``Authorization: Bearer
        <token>``, or the session cookie set by opening ``?token=<token>`` once
        (or by the login form). Leave it ``None`` when the service that mounts
        the app authenticates requests itself.
    :param title: shown in the header and the window title.
    :param live_interval: seconds between the live updates of an open page (0 turns them off).
    :param trusted_origins: extra ``Origin`` values accepted on actions, e.g.
        ``["https://ops.example.com"]`` behind a proxy that changes the ``Host`` header.
    """
    try:
        from .app import build_app
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        if exc.name in ("starlette", "jinja2", "markupsafe"):
            raise ModuleNotFoundError(MISSING_EXTRA.format(missing=exc.name), name=exc.name) from None
        raise
    if live_interval < 0:
        from ..errors import InvalidArgument

        raise InvalidArgument(f"live_interval must be >= 0 seconds (0 turns live updates off), got {live_interval!r}")
    if token is not None and not token.strip():
        from ..errors import InvalidArgument

        raise InvalidArgument("token must not be empty: pass None for no token")
    return build_app(
        engine,
        read_only=read_only,
        token=token,
        title=title,
        live_interval=float(live_interval),
        trusted_origins=tuple(trusted_origins),
    )
