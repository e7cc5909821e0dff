"""Start and stop a SecantusDB wire-protocol server for the test session.

Used by ``conftest.py`` and by the crash tests, which kill and restart it. A
real MongoDB is used instead when ``BLUESTREAK_TEST_MONGODB_URL`` is set.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import monitoring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secantus_binary() -> str | None:
    exe = Path(sys.executable).with_name("secantusd-py")
    if exe.exists():
        return str(exe)
    return shutil.which("secantusd-py")


class SecantusServer:
    """One ``secantusd-py`` subprocess on a free loopback port and its data directory."""

    def __init__(self, *, sync_on_commit: bool = False, test_commands: bool = True, standalone: bool = False) -> None:
        binary = secantus_binary()
        if binary is None:
            raise RuntimeError("secantusd-py is not installed: make test (pip install --group dev)")
        self.binary = binary
        self.port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="bluestreak-secantus-")
        self.sync_on_commit = sync_on_commit
        self.test_commands = test_commands
        self.standalone = standalone  # a standalone mongod's hello (no replica set): no transactions
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self.data_dir + ".log")

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 60.0) -> None:
        args = [
            self.binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            self.data_dir,
            "--log-level",
            "WARNING",
        ]
        if self.test_commands:
            args.append("--enable-test-commands")
        if self.sync_on_commit:
            args.append("--sync-on-commit")
        if self.standalone:
            args.append("--standalone")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"secantusd-py did not accept connections within {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the server (a crash); the data directory stays."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Stop the server and remove its data."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


def require_secantus() -> None:
    """Skip the calling test when SecantusDB is not installed, except in CI, where that is a failure."""
    import pytest

    if secantus_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("secantusd-py is missing in CI: install the project with make test (pip install --group dev)")
        pytest.skip("secantusd-py not installed (make test (pip install --group dev))")


class FailedCommands(monitoring.CommandListener):
    """Counts failed commands by ``name/code`` (``name/net`` for network errors)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        failure = event.failure or {}
        code = failure.get("code")
        self.counts[f"{event.command_name}/{code if code is not None else 'net'}"] += 1
