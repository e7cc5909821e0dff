"""``bluestreak worker``: import the app's engine, log, and ``poll()`` until SIGTERM or SIGINT.

:func:`load_app` finds the engine named by ``--app module:attr`` and, when
the module fails to import, prints its traceback without this package's and
importlib's frames; :func:`worker_logging` sets up the log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from ..engine import Bluestreak
from .errors import EXIT_OK, EXIT_USAGE, CliError
from .output import printable_lines


def load_app(spec: str) -> Bluestreak:
    """Import ``module:attr`` (``attr`` defaults to ``engine``; dotted paths work) and return the engine.

    A module that fails while importing (a syntax error, a missing environment variable, an
    import deeper inside) has its traceback printed to stderr: it names the file and line.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise CliError(f"--app must look like 'module:engine', got {spec!r}", EXIT_USAGE)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(
                f"--app {spec}: cannot import {module_name!r}: {exc} "
                "(run from your project directory, or set PYTHONPATH)",
                EXIT_USAGE,
            ) from None
        raise _import_failed(spec, module_name, exc) from None
    except Exception as exc:
        raise _import_failed(spec, module_name, exc) from None
    for part in (attr or "engine").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"--app {spec}: {module_name!r} has no attribute {attr or 'engine'!r}", EXIT_USAGE) from None
    if not isinstance(obj, Bluestreak):
        raise CliError(f"--app {spec}: expected a Bluestreak instance, got {type(obj).__name__}", EXIT_USAGE)
    return obj


def _import_failed(spec: str, module_name: str, exc: BaseException) -> CliError:
    _print_import_failure(exc)
    return CliError(f"--app {spec}: importing {module_name!r} failed: {_describe(exc)} (traceback above)", EXIT_USAGE)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _print_import_failure(exc: BaseException) -> None:
    """The traceback of a failed ``--app`` import, without the frames of this module and of importlib."""
    machinery = os.path.dirname(importlib.__file__ or "")
    tb = exc.__traceback__
    while tb is not None and (
        (name := tb.tb_frame.f_code.co_filename) == __file__
        or name.startswith("<frozen importlib")
        or os.path.dirname(name) == machinery
    ):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(printable_lines("".join(lines)))
        sys.stderr.flush()


@contextlib.contextmanager
def worker_logging(level: str) -> Iterator[None]:
    """Log ``bluestreak.*`` at ``level`` to stderr, other libraries at WARNING; restore everything afterwards.

    The root logger is not set to ``level``: at DEBUG, PyMongo alone would log every command.
    """
    root = logging.getLogger()
    ours = logging.getLogger("bluestreak")
    handler: logging.Handler | None = None
    saved = (root.level, ours.level)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    ours.setLevel(level)
    try:
        yield
    finally:
        ours.setLevel(saved[1])
        if handler is not None:
            root.removeHandler(handler)
            root.setLevel(saved[0])


async def run_worker(args: argparse.Namespace) -> int:
    """Run ``bluestreak worker`` with its arguments; its exit code."""
    with worker_logging(args.log_level):
        return await _run(args)


async def _run(args: argparse.Namespace) -> int:
    log = logging.getLogger("bluestreak.cli")
    if getattr(args, "db_url", None) or getattr(args, "db_name", None):
        log.warning("--db-url/--db-name do not apply to 'worker': the app's engine names its own database")
    engine = load_app(args.app)
    if not engine.handler_ids:
        raise CliError(f"--app {args.app}: the engine has no registered handlers", EXIT_USAGE)
    if engine.db_url is not None and engine.db_url.startswith("memory://") and not args.allow_memory:
        raise CliError(
            f"--app {args.app}: the engine uses the in-memory backend ({engine.db_url!r}): no other process can "
            "start or see its workflows and they are lost when the worker exits. Set BLUESTREAK_DB_URL=mongodb://... "
            "(or pass db_url to the engine), or add --allow-memory to run on memory anyway",
            EXIT_USAGE,
        )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s: stopping; running handlers have %gs to finish", sig.name, engine.settings.shutdown_grace)
        engine.stop()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with engine:
            log.info(
                "worker %s polling handlers %s on database %r",
                engine.settings.worker_id,
                ", ".join(engine.handler_ids),
                engine.db_name,
            )
            await engine.poll()
        log.info("worker stopped")
        return EXIT_OK
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
