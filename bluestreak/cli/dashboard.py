"""``bluestreak ui``: serve the web dashboard (:mod:`bluestreak.ui`) of the database the arguments name."""

from __future__ import annotations

import argparse
import os

from .connection import open_engine
from .errors import EXIT_USAGE, CliError
from .worker import load_app


def run_ui(args: argparse.Namespace) -> int:
    """``bluestreak ui``: the web dashboard (:mod:`bluestreak.ui`), until Ctrl-C or SIGTERM."""
    try:
        from ..ui.server import run
    except ModuleNotFoundError as exc:
        missing = f"'bluestreak ui' needs the ui extra ({exc.name} is missing): pip install 'bluestreak[ui]'"
        raise CliError(missing, EXIT_USAGE) from None
    token = args.token or os.environ.get("BLUESTREAK_UI_TOKEN") or None
    if args.app is not None:
        if args.db_url or args.db_name:
            raise CliError("pass either --app (its engine names the database) or --db-url/--db-name", EXIT_USAGE)
        engine = load_app(args.app)
    else:
        engine = open_engine(args)
    return run(engine, host=args.host, port=args.port, token=token, read_only=args.read_only)
