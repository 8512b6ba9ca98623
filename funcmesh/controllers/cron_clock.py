"""The clock a cron scheduler sleeps on: wall-clock time, slept to on the event loop's timer.

A Protocol, so tests drive the schedule with a fake clock instead of waiting.

Must not: know about triggers or schedules (``funcmesh.controllers.cron``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

MAX_SLEEP_S = 60.0  # the loop clock does not follow wall-clock steps: look again this often


class Clock(Protocol):
    """Wall-clock time and sleeping until a wall-clock moment (tests pass a fake)."""

    def now_s(self) -> float: ...

    async def sleep_until(self, moment_s: float) -> None:
        """Return at ``moment_s``, never before it."""
        ...


class SystemClock:
    """Sleeps on the event loop's timer, to the millisecond, until a Unix time."""

    def now_s(self) -> float:
        return time.time()

    async def sleep_until(self, moment_s: float) -> None:
        # Not polling: one timer to the moment, re-aimed when it fires early (the loop timer's
        # rounding) or when a long sleep may have missed a wall-clock step.
        while (remaining_s := moment_s - time.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(remaining_s, MAX_SLEEP_S))
