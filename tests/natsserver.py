"""A real ``nats-server`` for tests: on a free loopback port, stopped and reaped by its owner.

Tests that need one call ``nats_server_binary()`` first, which skips them (with the reason) on a
machine without the Debian package ``nats-server`` (``scripts/setup`` installs it as root).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 5.0


def nats_server_binary() -> str:
    """The nats-server executable, or skip the test saying how to get one."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip(
            "nats-server is not installed: run scripts/setup as root or apt-get install nats-server"
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NatsServer:
    """One nats-server process on 127.0.0.1:``port``; can be stopped and started again."""

    def __init__(self, binary: str, *, log_path: Path, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_until_serving()
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _wait_until_serving(self) -> None:
        """Until the server greets a client with its INFO line."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    if probe.recv(5) == b"INFO ":
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise AssertionError(f"nats-server did not start:\n{self.log_path.read_text()}")
