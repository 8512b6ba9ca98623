"""Admission: what the API checks and fills in before an object is stored.

A Function must parse (model.function) and name a runtime this machine can run (or a Kubeless
id that resolves to one); it gets the ``function: NAME`` label Kubeless's controller forces.
Nothing is stored when admission fails, so bad input changes nothing.
"""

from __future__ import annotations

from funcmesh.errors import Cause, Invalid
from funcmesh.model.function import parse_function
from funcmesh.model.kinds import FUNCTION, ResourceType
from funcmesh.model.objects import RawObject, metadata_causes, name_of, raise_if_causes
from funcmesh.runtime.catalog import RuntimeCatalog


class Admission:
    """Validates and defaults objects for the API server."""

    def __init__(self, catalog: RuntimeCatalog) -> None:
        self._catalog = catalog

    def admit(self, rt: ResourceType, obj: RawObject, old: RawObject | None) -> RawObject:
        if rt is FUNCTION:
            return self._admit_function(obj)
        raise_if_causes(metadata_causes(obj, rt), kind=rt.kind, name=name_of(obj))
        return obj

    def _admit_function(self, obj: RawObject) -> RawObject:
        spec = parse_function(obj)
        try:
            self._catalog.resolve(spec.runtime)
        except Invalid as exc:
            cause = Cause(field="spec.runtime", message=str(exc), reason="FieldValueNotSupported")
            raise Invalid(f'Function "{spec.name}" is invalid: {exc}', [cause]) from exc
        labels = obj.setdefault("metadata", {}).setdefault("labels", {})
        if isinstance(labels, dict):
            labels["function"] = spec.name
        return obj
