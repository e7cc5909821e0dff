"""Serving the dashboard on its own (``bluestreak ui``): uvicorn on one socket, loopback unless told otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

import uvicorn

from ..engine import Bluestreak
from ..errors import InvalidArgument
from . import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8233


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without an access token."""
    if not is_loopback(host) and not token:
        raise InvalidArgument(
            f"refusing to serve the dashboard on {host} without an access token: anyone who can reach that "
            "address could read every workflow and terminate it. Pass --token (or set BLUESTREAK_UI_TOKEN), "
            "or serve on 127.0.0.1 and reach it through an SSH tunnel or your own authenticating proxy"
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; an error that says what to change if it is taken."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InvalidArgument(
            f"cannot listen on {host}:{port}: {exc.strerror}; pass another --port or --host"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


async def serve(
    engine: Bluestreak,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    read_only: bool = False,
    live_interval: float = 2.0,
    sock: socket.socket | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Connect ``engine``, serve its dashboard until interrupted, then close the engine.

    ``on_ready(url)`` is called once the socket listens (the CLI prints the address).
    Signal handlers are installed by uvicorn only in the main thread.
    """
    check_binding(host, token)
    listening = sock or bind(host, port)
    port = listening.getsockname()[1]
    app = create_app(engine, read_only=read_only, token=token, live_interval=live_interval)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, server_header=False)
    server = _Server(config)
    await engine.init()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop_serving)
            handled.append(sig)
    try:
        if on_ready is not None:
            on_ready(url_of(host, port))
        await server.serve(sockets=[listening])
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        listening.close()
        with contextlib.suppress(Exception):
            await engine.close()


class _Server(uvicorn.Server):
    """uvicorn's server, with SIGINT and SIGTERM left to :func:`serve`: both stop it gracefully, and the
    process then exits 0 (uvicorn's own handlers re-raise the signal once it has stopped)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.30
        return None

    def stop_serving(self) -> None:
        self.should_exit = True


def run(
    engine: Bluestreak,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    read_only: bool = False,
    out: TextIO | None = None,
) -> int:
    """``bluestreak ui``: check the binding, bind, serve until Ctrl-C or SIGTERM; the exit code."""
    check_binding(host, token)
    sock = bind(host, port)
    stream = out or sys.stdout

    def ready(url: str) -> None:
        link = f"{url}?token=<the token>" if token else url
        mode = " (read-only)" if read_only else ""
        print(f"bluestreak dashboard{mode} on {link} — database {engine.db_name!r}; Ctrl-C stops it", file=stream)
        stream.flush()

    asyncio.run(serve(engine, host=host, port=port, token=token, read_only=read_only, sock=sock, on_ready=ready))
    return 0
