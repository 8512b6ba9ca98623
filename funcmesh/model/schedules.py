"""Cron schedules as Kubeless's CronJobTrigger writes them, and when they are due.

A schedule is calendar-based (five cron fields, or a descriptor such as ``@hourly``, optionally
after ``CRON_TZ=<zone>``) or an interval (``@every 1m30s``) counted from an anchor, the
trigger's creation. This is the language robfig/cron's ``ParseStandard`` accepts, which
Kubeless's CLI and Kubernetes CronJobs use; extensions other cron libraries have (seconds,
``L``, ``W``, ``#``, ``H``) are refused so a schedule means the same everywhere. Calendar
schedules are read in UTC unless ``CRON_TZ`` names a zone (a Kubernetes controller manager runs
in UTC). Times are Unix seconds; every due time is a whole second and due times are at least one
second apart. croniter lives here and nowhere else. No I/O and no clock: callers pass moments.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from croniter import CroniterBadDateError, CroniterError, croniter

from funcmesh.errors import Invalid

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
EXAMPLES = "e.g. */5 * * * *, @hourly or @every 10s"
MAX_COUNTED_RUNS = 1000  # counting calendar runs one by one stops here
_REFERENCE_S = 946684800.0  # 2000-01-01: a schedule must come due after some fixed moment

_TZ_PREFIX = re.compile(r"^(?:CRON_TZ|TZ)=(\S*)\s*(.*)$", re.DOTALL)
_FIELD = re.compile(r"^[0-9A-Za-z*?/,-]+$")
_NAMES = frozenset(
    "jan feb mar apr may jun jul aug sep oct nov dec sun mon tue wed thu fri sat".split()
)
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS_S = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "μs": Decimal("1e-6"),
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CalendarSchedule:
    """Five cron fields (descriptors expanded), read in ``time_zone``."""

    text: str
    expression: str
    time_zone: str = "UTC"

    def next_after(self, moment_s: float, *, anchor_s: float = 0.0) -> float:
        """The first due time strictly after ``moment_s`` (the anchor plays no part)."""
        return float(croniter(self.expression, self._local(moment_s)).get_next(float))

    def latest_until(self, moment_s: float, *, anchor_s: float = 0.0) -> float | None:
        """The last due time at or before ``moment_s``."""
        # croniter's get_prev is strict; due times are whole seconds, so half a second later
        # includes a due time equal to the moment and no other.
        start = self._local(math.floor(moment_s) + 0.5)
        return float(croniter(self.expression, start).get_prev(float))

    def count_due(self, first_s: float, before_s: float, *, anchor_s: float = 0.0) -> int:
        """Due times in ``[first_s, before_s)``, counted up to MAX_COUNTED_RUNS."""
        moments = croniter(self.expression, self._local(first_s - 0.5))
        count = 0
        while count < MAX_COUNTED_RUNS and moments.get_next(float) < before_s:
            count += 1
        return count

    def _local(self, moment_s: float) -> datetime:
        return datetime.fromtimestamp(moment_s, zoneinfo.ZoneInfo(self.time_zone))


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalSchedule:
    """``@every``: due every ``interval_s`` seconds after the anchor (not at the anchor)."""

    text: str
    interval_s: int

    def next_after(self, moment_s: float, *, anchor_s: float = 0.0) -> float:
        periods = max(1, math.floor((moment_s - anchor_s) / self.interval_s) + 1)
        return anchor_s + periods * self.interval_s

    def latest_until(self, moment_s: float, *, anchor_s: float = 0.0) -> float | None:
        periods = math.floor((moment_s - anchor_s) / self.interval_s)
        return anchor_s + periods * self.interval_s if periods >= 1 else None

    def count_due(self, first_s: float, before_s: float, *, anchor_s: float = 0.0) -> int:
        if before_s <= first_s:
            return 0
        return math.ceil((before_s - first_s) / self.interval_s)


Schedule = CalendarSchedule | IntervalSchedule


def parse_schedule(text: str) -> Schedule:
    """The schedule ``text`` means; Invalid with a message that shows the accepted forms."""
    raw = text.strip()
    if not raw:
        raise Invalid(f"a schedule is required, {EXAMPLES}")
    time_zone = "UTC"
    if prefixed := _TZ_PREFIX.match(raw):
        time_zone, raw = _checked_time_zone(prefixed.group(1), text), prefixed.group(2).strip()
    if raw.startswith("@every"):
        return IntervalSchedule(text=text, interval_s=_every_seconds(raw, text))
    if raw.startswith("@"):
        expression = DESCRIPTORS.get(raw.lower())
        if expression is None:
            known = ", ".join(DESCRIPTORS)
            raise Invalid(f'unknown descriptor "{raw}" in schedule "{text}": use {known} or @every')
        return CalendarSchedule(text=text, expression=expression, time_zone=time_zone)
    return CalendarSchedule(text=text, expression=_checked_fields(raw, text), time_zone=time_zone)


def _checked_time_zone(zone: str, text: str) -> str:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise Invalid(
            f'unknown time zone "{zone}" in schedule "{text}": use an IANA name such as '
            "Europe/Berlin"
        ) from None
    return zone


def _every_seconds(raw: str, text: str) -> int:
    duration = raw.removeprefix("@every").strip()
    seconds = parse_go_duration_s(duration) if duration else None
    if seconds is None or seconds < 1 or seconds != seconds.to_integral_value():
        raise Invalid(
            f'schedule "{text}": @every needs a duration of whole seconds, at least 1s '
            "(e.g. @every 10s, @every 1m30s, @every 2h)"
        )
    return int(seconds)


def parse_go_duration_s(text: str) -> Decimal | None:
    """Seconds of a Go duration (``1m30s``, ``1.5h``, ``500ms``, ``0``), None if not one."""
    if text == "0":
        return Decimal(0)
    parts = _GO_DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum((Decimal(number) * _GO_UNITS_S[unit] for number, unit in parts), Decimal(0))


def _checked_fields(raw: str, text: str) -> str:
    fields = raw.split()
    if len(fields) != len(FIELD_NAMES):
        raise Invalid(
            f'schedule "{text}" has {len(fields)} fields; cron needs 5 '
            f"({', '.join(FIELD_NAMES)}), or a descriptor, {EXAMPLES}"
        )
    for name, field in zip(FIELD_NAMES, fields, strict=True):
        words = re.findall(r"[A-Za-z]+", field)
        if not _FIELD.match(field) or any(word.lower() not in _NAMES for word in words):
            raise Invalid(
                f'schedule "{text}": the {name} field "{field}" may hold numbers, *, ?, '
                "ranges (a-b), steps (/n), lists (a,b) and month or weekday names only"
            )
    expression = " ".join(fields)
    try:
        croniter(expression, _REFERENCE_S).get_next(float)
    except CroniterBadDateError:
        raise Invalid(f'schedule "{text}" never comes due (no such date)') from None
    except (CroniterError, ValueError) as exc:
        raise Invalid(f'schedule "{text}" is not a valid cron expression: {exc}') from None
    return expression
