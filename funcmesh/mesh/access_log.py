"""The mesh's access log: one line per request in Istio's default text format, kept and written.

The lines are Envoy's (``funcmesh.mesh.access_lines`` formats them). The last ``keep_lines``
requests stay in memory with sequence numbers (the first line is 1) for ``funcmesh mesh
logs``, as the values their lines show (``line_values``): a line is formatted when it is read,
so a request nobody reads costs no formatting. Followers wait on one shared future that the
next line resolves, so there is no polling and nothing per request while nobody follows. With
a path (``FUNCMESH_ACCESS_LOG=file``), lines are also formatted at once and appended to a file
(mode 0600), buffered: written when ``flush_bytes`` wait, when the timer that the first
buffered line arms fires (``flush_interval_s`` later, through the ``call_later`` the daemon
passes, e.g. ``loop.call_later``), on ``flush`` and on ``close``; never one write system call
per request. At ``rotate_bytes`` the file becomes ``NAME.1`` (one old file kept).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Protocol

from funcmesh.errors import Unavailable
from funcmesh.mesh.access_lines import (
    LineValues,
    StartTimes,
    format_lines,
    format_values,
    line_values,
)
from funcmesh.mesh.telemetry import RequestRecord

logger = logging.getLogger(__name__)

KEEP_LINES = 10_000
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 64 * 1024
ROTATE_BYTES = 50 * 1024 * 1024
FILE_MODE = 0o600


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class AccessLog:
    """Access log lines: the last ``keep_lines`` in memory, all of them in a file if given."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        keep_lines: int = KEEP_LINES,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        flush_bytes: int = FLUSH_BYTES,
        rotate_bytes: int = ROTATE_BYTES,
        call_later: CallLater | None = None,
    ) -> None:
        self._kept: deque[LineValues] = deque(maxlen=keep_lines)
        # who holds requests not handed over yet (the telemetry, batching them): asked first
        self.before_read: Callable[[], None] | None = None
        self._next_seq = 1
        self._changed: asyncio.Future[None] | None = None
        self._closed = False
        self._start_times = StartTimes()
        self._path = path
        self._flush_interval_s = flush_interval_s
        self._flush_bytes = flush_bytes
        self._rotate_bytes = rotate_bytes
        self._call_later = call_later
        self._timer: TimerHandle | None = None
        self._pending: list[str] = []
        self._pending_chars = 0
        self._write_failed = False
        self._fd = -1
        self._file_bytes = 0
        if path is not None:
            try:
                self._open(path)
            except OSError as exc:
                raise Unavailable(f"cannot open the mesh access log {path}: {exc}") from exc

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest line (0 before the first)."""
        return self._next_seq - 1

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, record: RequestRecord) -> None:
        """Format and keep one record's line."""
        self.extend((record,))

    def extend(self, records: Sequence[RequestRecord]) -> None:
        """Keep the records (no I/O unless a flush of the file is due)."""
        if self._closed:
            return
        kept = list(map(line_values, records))
        self._kept.extend(kept)
        self._next_seq += len(kept)
        if self._path is not None:
            lines = format_lines(kept, self._start_times)
            self._pending += lines
            self._pending_chars += sum(map(len, lines)) + len(lines)
            if self._pending_chars >= self._flush_bytes:
                self.flush()
            elif self._timer is None and self._call_later is not None:
                self._timer = self._call_later(self._flush_interval_s, self._flush_on_timer)
        changed = self._changed
        if changed is not None:
            self._changed = None
            if not changed.done():
                changed.set_result(None)

    def lines(
        self, *, after_seq: int | None = None, tail: int | None = None
    ) -> list[tuple[int, str]]:
        """Kept lines with their sequence numbers, oldest first: those after ``after_seq``,
        at most the last ``tail``."""
        if self.before_read is not None:
            self.before_read()
        count = len(self._kept)
        if after_seq is not None:
            count = min(count, max(0, self.last_seq - after_seq))
        if tail is not None:
            count = min(count, max(0, tail))
        newest_first = list(itertools.islice(reversed(self._kept), count))
        first_seq = self._next_seq - count
        start_time = self._start_times.format
        return [
            (first_seq + index, format_values(values, start_time(values[0])))
            for index, values in enumerate(reversed(newest_first))
        ]

    async def wait(self, after_seq: int) -> bool:
        """Return True once a line newer than ``after_seq`` exists, False once closed."""
        while self.last_seq <= after_seq and not self._closed:
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            # shielded: the future is shared, a cancelled follower must not cancel it for all
            await asyncio.shield(self._changed)
        return self.last_seq > after_seq

    async def follow(self, after_seq: int) -> AsyncGenerator[list[tuple[int, str]], None]:
        """Batches of lines newer than ``after_seq`` as they come, until the log is closed."""
        while await self.wait(after_seq):
            batch = self.lines(after_seq=after_seq)
            if batch:
                after_seq = batch[-1][0]
                yield batch
            else:  # the follower fell further behind than the lines kept
                after_seq = self.last_seq

    def flush(self) -> None:
        """Write the buffered lines to the file now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode("utf-8")
        self._pending.clear()
        self._pending_chars = 0
        if self._path is None:
            return
        try:
            if self._fd < 0:  # a rotation failed half-way: try again
                self._open(self._path)
            if self._file_bytes > 0 and self._file_bytes + len(data) > self._rotate_bytes:
                self._rotate(self._path)
            self._write(data)
        except OSError as exc:
            if not self._write_failed:  # once per failure streak: a full disk stays quiet
                logger.warning("could not write the mesh access log %s: %s", self._path, exc)
            self._write_failed = True
        else:
            self._write_failed = False

    def close(self) -> None:
        """Flush, close the file and end every follower; later lines are dropped."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    # internals

    def _flush_on_timer(self) -> None:
        self._timer = None
        self.flush()

    def _open(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        self._file_bytes = os.fstat(self._fd).st_size

    def _rotate(self, path: Path) -> None:
        os.close(self._fd)
        self._fd = -1
        os.replace(path, path.with_name(path.name + ".1"))
        self._open(path)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._file_bytes += written
            view = view[written:]
