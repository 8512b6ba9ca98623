"""A dependency build's output: to a capped log file, to whoever follows the build, and a tail.

The installer's output is read in chunks and split into lines; each non-empty line (cut to
1000 characters) goes to the listeners and into the tail that a failed build's message quotes.
The log file keeps at most ``max_bytes``. A listener that raises is dropped; the build goes on.

Must not: start or stop the installer (``funcmesh.runtime.builds`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

TAIL_LINES = 20
_MAX_LINE_CHARS = 1000
_CHUNK_BYTES = 1 << 16


class BuildOutput:
    """Fans a build's output out to the log file (capped), the listeners and a tail."""

    def __init__(self, *, log: BinaryIO, listeners: list[Progress], max_bytes: int) -> None:
        self._log = log
        self._listeners = listeners
        self._log_budget_bytes = max_bytes
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = b""

    async def pump(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(_CHUNK_BYTES):
            await asyncio.to_thread(self._write_log, chunk)
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                self._publish(line)
        if self._partial:
            self._publish(self._partial)
            self._partial = b""

    def tail(self) -> str:
        return "\n".join(self._tail)

    def _write_log(self, chunk: bytes) -> None:
        if self._log_budget_bytes > 0:
            kept = chunk[: self._log_budget_bytes]
            self._log_budget_bytes -= len(chunk)
            self._log.write(kept)
            if self._log_budget_bytes <= 0:
                self._log.write(b"\n[funcmesh: output truncated, the log is full]\n")
            self._log.flush()

    def _publish(self, raw_line: bytes) -> None:
        line = raw_line.decode("utf-8", "replace").rstrip()[:_MAX_LINE_CHARS]
        if not line:
            return
        self._tail.append(line)
        for listener in list(self._listeners):
            try:
                listener(line)
            except Exception:
                logger.exception("a build progress listener failed; it hears no more")
                with contextlib.suppress(ValueError):
                    self._listeners.remove(listener)
