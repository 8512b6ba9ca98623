"""Status conditions (``type/status/reason/message/lastTransitionTime``), as Kubernetes writes them.

Function status, written by the function controller:

    status:
      observedGeneration: 3        # the generation the rest of the status describes
      runtime: python3.11          # the runtime actually used (after resolving Kubeless ids)
      conditions:
      - type: Ready                # True once the code is prepared, deps built, handler loaded
        status: "False"
        reason: BuildFailed        # Deploying|Building|BuildFailed|LoadFailed|Invalid|Ready
        message: "pip install failed: ..."
      - type: RuntimeSubstituted   # present, status True, when a Kubeless id was mapped
        status: "True"
        reason: RuntimeNotAvailable
        message: "runtime python3.7 is not available here; using python3.11"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from funcmesh.model.objects import metadata_of, rfc3339


def find_condition(status: Mapping[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for condition in (status or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


def set_condition(
    status: dict[str, Any], kind: str, *, ok: bool, reason: str, message: str = ""
) -> None:
    """Add or replace a condition; the transition time changes only when the status does."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != kind]
    old = find_condition(status, kind)
    value = "True" if ok else "False"
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    conditions.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since or rfc3339(),
        }
    )
    status["conditions"] = sorted(conditions, key=lambda c: str(c["type"]))


def remove_condition(status: dict[str, Any], kind: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != kind]


def function_status_text(obj: Mapping[str, Any]) -> str:
    """One word or phrase for tables: ``Ready``, ``Building``, ``BuildFailed: <message>``."""
    status = obj.get("status") or {}
    ready = find_condition(status, "Ready")
    generation = metadata_of(obj).get("generation")
    if ready is None or status.get("observedGeneration") != generation:
        return "Deploying"
    if ready.get("status") == "True":
        return "Ready"
    reason = str(ready.get("reason") or "NotReady")
    message = str(ready.get("message") or "").strip().splitlines()
    return (
        f"{reason}: {message[0]}" if message and reason not in ("Building", "Deploying") else reason
    )
