"""Kubernetes resource quantities (``128Mi``, ``1G``, ``500m``) as numbers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from funcmesh.errors import Invalid

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)$")


def parse_quantity(text: str | int | float) -> Decimal:
    """Value of a quantity in base units (bytes for memory, cores for cpu)."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise Invalid(f'quantity "{text}" is not valid: expected e.g. 128Mi, 1Gi, 500M or 0.5')
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:
        raise Invalid(f'quantity "{text}" is not a number') from exc
    return number * _SUFFIXES[match.group(2)]


def parse_memory_bytes(text: str | int | float) -> int:
    """Bytes of a memory quantity, rounded up."""
    value = parse_quantity(text)
    if value < 0:
        raise Invalid(f'memory "{text}" must not be negative')
    return int(value.to_integral_value(rounding="ROUND_CEILING"))
