"""Durations as Kubeless, Knative and Istio objects write them: ``180``, ``300s``, ``1.5s``."""

from __future__ import annotations

import re

from funcmesh.errors import Invalid

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str | int | float, *, what: str) -> float:
    """Seconds of a duration; a bare number means seconds. Negative or empty is invalid."""
    raw = str(text).strip()
    try:
        seconds = float(raw)
    except ValueError:
        parts = _PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise Invalid(
                f'{what} "{text}" is not a duration: use e.g. 30, 30s, 1.5s, 5m'
            ) from None
        seconds = sum(float(number) * _UNITS_S[unit] for number, unit in parts)
    if seconds < 0:
        raise Invalid(f'{what} "{text}" must not be negative')
    return seconds
