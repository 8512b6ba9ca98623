"""Admission: what the API checks and fills in before an object is stored.

A Function must parse (model.function), name a runtime this machine can run (or a Kubeless
id that resolves to one), and carry code that decodes, matches its checksum and, for an
archive, opens and holds the handler module (runtime.content.check_content; url content is
fetched later, by the controller). It gets the ``function: NAME`` label Kubeless's controller
forces. Nothing is stored when admission fails, so bad input changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from funcmesh.errors import Cause, Invalid
from funcmesh.model.function import FunctionSpec, parse_function
from funcmesh.model.kinds import FUNCTION, ResourceType
from funcmesh.model.objects import RawObject, metadata_causes, name_of, raise_if_causes
from funcmesh.runtime.catalog import Runtime, RuntimeCatalog
from funcmesh.runtime.content import check_content

# The spec fields that decide whether the code prepares: unchanged, it was checked already.
_CONTENT_FIELDS = ("function", "function-content-type", "checksum", "handler", "runtime")


class Admission:
    """Validates and defaults objects for the API server."""

    def __init__(self, catalog: RuntimeCatalog) -> None:
        self._catalog = catalog

    def admit(self, rt: ResourceType, obj: RawObject, old: RawObject | None) -> RawObject:
        if rt is FUNCTION:
            return self._admit_function(obj, old)
        raise_if_causes(metadata_causes(obj, rt), kind=rt.kind, name=name_of(obj))
        return obj

    def _admit_function(self, obj: RawObject, old: RawObject | None) -> RawObject:
        spec = parse_function(obj)
        try:
            runtime = self._catalog.resolve(spec.runtime).runtime
        except Invalid as exc:
            cause = Cause(field="spec.runtime", message=str(exc), reason="FieldValueNotSupported")
            raise Invalid(f'Function "{spec.name}" is invalid: {exc}', [cause]) from exc
        if old is None or _content_of(old) != _content_of(obj):
            _check_code(spec, runtime)
        labels = obj.setdefault("metadata", {}).setdefault("labels", {})
        if isinstance(labels, dict):
            labels["function"] = spec.name
        return obj


def _content_of(obj: Mapping[str, Any]) -> tuple[object, ...]:
    spec = obj.get("spec")
    fields = spec if isinstance(spec, dict) else {}
    return tuple(fields.get(name) for name in _CONTENT_FIELDS)


def _check_code(spec: FunctionSpec, runtime: Runtime) -> None:
    try:
        check_content(
            content=spec.content,
            content_type=spec.content_type,
            checksum=spec.checksum,
            module=spec.module,
            suffix=runtime.suffix,
            deps_file=runtime.deps_file,
        )
    except Invalid as exc:
        causes = exc.causes or (Cause(field="spec.function", message=str(exc)),)
        details = "; ".join(f"{cause.field}: {cause.message}" for cause in causes)
        raise Invalid(f'Function "{spec.name}" is invalid: {details}', causes) from exc
