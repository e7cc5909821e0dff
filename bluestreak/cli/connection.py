"""Which database the commands open: ``--db-url``/``--db-name`` or the environment, with a short timeout."""

from __future__ import annotations

import argparse
import os

from ..engine import Bluestreak
from .errors import EXIT_USAGE, CliError

DEFAULT_DB_NAME = "bluestreak"
CONNECT_TIMEOUT_MS = 5000
"""``serverSelectionTimeoutMS`` added to a ``mongodb://`` URL that does not set it."""


def connection_url(url: str) -> str:
    """``url`` with ``serverSelectionTimeoutMS`` set, so an unreachable server fails in seconds."""
    if not url.startswith(("mongodb://", "mongodb+srv://")) or "serverselectiontimeoutms" in url.lower():
        return url
    scheme, _, rest = url.partition("://")
    option = f"serverSelectionTimeoutMS={CONNECT_TIMEOUT_MS}"
    if "?" in rest:
        base, _, query = rest.partition("?")
        return f"{scheme}://{base}?{query}&{option}" if query else f"{scheme}://{base}?{option}"
    if "/" not in rest:
        rest += "/"
    return f"{scheme}://{rest}?{option}"


def open_engine(args: argparse.Namespace) -> Bluestreak:
    """The engine of the database the arguments (or ``$BLUESTREAK_DB_URL``/``$BLUESTREAK_DB_NAME``) name."""
    url = args.db_url or _text_env("BLUESTREAK_DB_URL")
    if not url:
        raise CliError("no database: pass --db-url mongodb://... or set BLUESTREAK_DB_URL", EXIT_USAGE)
    name = args.db_name or _text_env("BLUESTREAK_DB_NAME") or DEFAULT_DB_NAME
    return Bluestreak(connection_url(url), name)


def _text_env(name: str) -> str:
    value = os.environ.get(name, "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"${name} is not valid UTF-8 text", EXIT_USAGE) from None
    return value
