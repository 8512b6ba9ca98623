"""Ages as kubectl shows them: ``5s``, ``3m12s``, ``4d``, ``2y30d``.

``human_duration`` is kubectl's ``duration.HumanDuration``; ``age_since`` applies it to an
object's RFC 3339 timestamp. Pure: the caller passes the current time.
"""

from __future__ import annotations

import math
from typing import Any

from funcmesh.model.objects import parse_rfc3339


def human_duration(seconds: float) -> str:
    """kubectl's ``duration.HumanDuration``: two significant units while they matter."""
    whole = math.floor(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes, hours = whole // 60, whole // 3600
    days = hours // 24
    if minutes < 10:
        return _units(minutes, "m", whole % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return _units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _units(days, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return _units(days // 365, "y", days % 365, "d")
    return f"{days // 365}y"


def _units(major: int, major_unit: str, minor: int, minor_unit: str) -> str:
    return f"{major}{major_unit}" if minor == 0 else f"{major}{major_unit}{minor}{minor_unit}"


def age_since(timestamp: Any, now_s: float) -> str:
    """The age of an RFC 3339 ``timestamp`` at ``now_s``; ``<unknown>`` if it is not one."""
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        return human_duration(now_s - parse_rfc3339(timestamp))
    except ValueError:
        return "<unknown>"
