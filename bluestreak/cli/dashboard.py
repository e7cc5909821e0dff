"""``bluestreak ui``: serve the web dashboard (:mod:`bluestreak.ui`) of the database the arguments name."""

from __future__ import annotations

import argparse
import os

from .connection import open_engine
from .errors import EXIT_USAGE, CliError


def run_ui(args: argparse.Namespace) -> int:
    """``bluestreak ui``: the web dashboard (:mod:`bluestreak.ui`), until Ctrl-C or SIGTERM."""
    try:
        from ..ui.server import run
    except ModuleNotFoundError as exc:
        missing = f"'bluestreak ui' needs the ui extra ({exc.name} is missing): pip install 'bluestreak[ui]'"
        raise CliError(missing, EXIT_USAGE) from None
    token = args.token or os.environ.get("BLUESTREAK_UI_TOKEN") or None
    return run(open_engine(args), host=args.host, port=args.port, token=token, read_only=args.read_only)
