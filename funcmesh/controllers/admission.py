"""Admission: what the API checks and fills in before an object is stored.

A Function must parse (model.function), name a runtime this machine can run (or a Kubeless
id that resolves to one), and carry code that decodes, matches its checksum and, for an
archive, opens and holds the handler module (runtime.content.check_content; url content is
fetched later, by the controller). It gets the ``function: NAME`` label Kubeless's controller
forces. A NATSTrigger must name a valid subject and a non-empty function selector
(model.triggers). A CronJobTrigger must have a valid schedule and name a Function that exists
in its namespace. A Secret gets its stringData merged into data (model.secrets). An HTTPTrigger
must name a Function that exists and Secrets of the right types (basic auth: an Opaque Secret
with key ``auth``; TLS: a ``kubernetes.io/tls`` Secret). A Service is put in normal form and
gets its ClusterIP (controllers.service_ips); Endpoints are checked (model.endpoints). A
Deployment gets Kubernetes's defaults and must have one runnable container whose labels its
selector selects (model.deployments). Istio's VirtualService, DestinationRule, Gateway,
AuthorizationPolicy and PeerAuthentication must parse (model.istio_*): every field is one
funcmesh serves and every value is valid; the hosts they name need not exist yet. Nothing is
stored when admission fails, so bad input changes nothing.

Admission runs in a worker thread (the API keeps it off the event loop), so it reads stored
objects through an ObjectLookup that blocks that thread, never the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

from funcmesh.errors import Cause, Invalid, NotFound, Unavailable
from funcmesh.model.deployments import admit_deployment
from funcmesh.model.endpoints import normalise_endpoints
from funcmesh.model.function import FunctionSpec, parse_function
from funcmesh.model.http_triggers import HttpTriggerSpec, parse_http_trigger
from funcmesh.model.istio_destinations import parse_destination_rule, parse_gateway
from funcmesh.model.istio_networking import parse_virtual_service
from funcmesh.model.istio_security import parse_authorization_policy, parse_peer_authentication
from funcmesh.model.kinds import (
    AUTHORIZATION_POLICY,
    CRONJOB_TRIGGER,
    DEPLOYMENT,
    DESTINATION_RULE,
    ENDPOINTS,
    FUNCTION,
    GATEWAY,
    HTTP_TRIGGER,
    NATS_TRIGGER,
    PEER_AUTHENTICATION,
    SECRET,
    SERVICE,
    VIRTUAL_SERVICE,
    ResourceType,
)
from funcmesh.model.objects import RawObject, metadata_causes, name_of, raise_if_causes
from funcmesh.model.secrets import TLS, admit_secret, secret_type_of
from funcmesh.model.triggers import parse_cronjob_trigger, parse_nats_trigger
from funcmesh.runtime.catalog import Runtime, RuntimeCatalog
from funcmesh.runtime.content import check_content
from funcmesh.store.sqlite import Store

# The spec fields that decide whether the code prepares: unchanged, it was checked already.
_CONTENT_FIELDS = ("function", "function-content-type", "checksum", "handler", "runtime")
T = TypeVar("T")
# Istio's kinds: admitted when they parse (one Invalid cause per problem), stored as sent
_ISTIO_PARSERS: dict[str, Callable[[RawObject], object]] = {
    VIRTUAL_SERVICE.key: parse_virtual_service,
    DESTINATION_RULE.key: parse_destination_rule,
    GATEWAY.key: parse_gateway,
    AUTHORIZATION_POLICY.key: parse_authorization_policy,
    PEER_AUTHENTICATION.key: parse_peer_authentication,
}


class ObjectLookup(Protocol):
    """Reads of stored objects that admission needs; called from admission's worker thread."""

    def exists(self, rt: ResourceType, namespace: str, name: str) -> bool: ...

    def find(self, rt: ResourceType, namespace: str, name: str) -> RawObject | None: ...


class ServiceIPs(Protocol):
    """Normal form and ClusterIP of a Service (controllers.service_ips.ClusterIPs); called from
    admission's worker thread."""

    def admit(self, obj: RawObject, old: RawObject | None) -> RawObject: ...


class StoreLookup:
    """An ObjectLookup over the async store: each read runs on the event loop while the
    admission thread waits for it. Build it on the loop; never call it from the loop's thread."""

    def __init__(self, store: Store, *, timeout_s: float = 10.0) -> None:
        self._store = store
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s

    def exists(self, rt: ResourceType, namespace: str, name: str) -> bool:
        return self._wait(self._store.exists(rt, namespace, name))

    def find(self, rt: ResourceType, namespace: str, name: str) -> RawObject | None:
        return self._wait(self._find(rt, namespace, name))

    async def _find(self, rt: ResourceType, namespace: str, name: str) -> RawObject | None:
        try:
            return await self._store.get(rt, namespace, name)
        except NotFound:
            return None

    def _wait(self, read: Coroutine[Any, Any, T]) -> T:
        if _running_loop() is self._loop:
            read.close()
            raise RuntimeError("StoreLookup blocks: call it from a worker thread, not the loop")
        future = asyncio.run_coroutine_threadsafe(read, self._loop)
        try:
            return future.result(self._timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(f"the store did not answer within {self._timeout_s:g} s") from None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Admission:
    """Validates and defaults objects for the API server."""

    def __init__(
        self,
        catalog: RuntimeCatalog,
        *,
        objects: ObjectLookup | None = None,
        service_ips: ServiceIPs | None = None,
    ) -> None:
        self._catalog = catalog
        self._objects = objects
        self._service_ips = service_ips

    def admit(self, rt: ResourceType, obj: RawObject, old: RawObject | None) -> RawObject:
        if rt is FUNCTION:
            return self._admit_function(obj, old)
        if rt is NATS_TRIGGER:
            parse_nats_trigger(obj)  # the envelope, the subject and the function selector
            return obj
        if rt is CRONJOB_TRIGGER:
            return self._admit_cronjob_trigger(obj, old)
        if rt is SECRET:
            return admit_secret(obj)
        if rt is HTTP_TRIGGER:
            return self._admit_http_trigger(obj, old)
        if rt is SERVICE:
            if self._service_ips is None:
                raise Unavailable("admission was built without a ClusterIP allocator")
            return self._service_ips.admit(obj, old)
        if rt is ENDPOINTS:
            return normalise_endpoints(obj)
        if rt is DEPLOYMENT:
            return admit_deployment(obj, old)  # defaults; one runnable container; selector
        if rt.key in _ISTIO_PARSERS:
            _ISTIO_PARSERS[rt.key](obj)  # every field served, every value valid
            return obj
        raise_if_causes(metadata_causes(obj, rt), kind=rt.kind, name=name_of(obj))
        return obj

    def _admit_cronjob_trigger(self, obj: RawObject, old: RawObject | None) -> RawObject:
        trigger = parse_cronjob_trigger(obj)
        if old is None or _function_name_of(old) != trigger.function_name:
            self._require_function(
                CRONJOB_TRIGGER, trigger.name, trigger.namespace, trigger.function_name
            )
        return obj

    def _admit_http_trigger(self, obj: RawObject, old: RawObject | None) -> RawObject:
        trigger = parse_http_trigger(obj)
        if old is None or _function_name_of(old) != trigger.function_name:
            self._require_function(
                HTTP_TRIGGER, trigger.name, trigger.namespace, trigger.function_name
            )
        causes = self._trigger_secret_causes(trigger)
        raise_if_causes(causes, kind=HTTP_TRIGGER.kind, name=trigger.name)
        return obj

    def _trigger_secret_causes(self, trigger: HttpTriggerSpec) -> list[Cause]:
        causes = []
        if trigger.basic_auth_secret:
            secret = self._secret(trigger.namespace, trigger.basic_auth_secret)
            data = secret.get("data") if secret is not None else None
            if secret is None or not isinstance(data, dict) or "auth" not in data:
                causes.append(_secret_cause(trigger, "basic-auth-secret", 'with the key "auth"'))
        if trigger.tls_secret:
            secret = self._secret(trigger.namespace, trigger.tls_secret)
            if secret is None or secret_type_of(secret) != TLS:
                causes.append(_secret_cause(trigger, "tls-secret", f"of type {TLS}"))
        return causes

    def _secret(self, namespace: str, name: str) -> RawObject | None:
        if self._objects is None:
            raise Unavailable("admission was built without access to stored objects")
        return self._objects.find(SECRET, namespace, name)

    def _require_function(
        self, rt: ResourceType, trigger: str, namespace: str, function_name: str
    ) -> None:
        """Refuse a trigger of a Function that does not exist (Kubeless's CLI refused it too)."""
        if self._objects is None:
            raise Unavailable("admission was built without access to stored objects")
        if self._objects.exists(FUNCTION, namespace, function_name):
            return
        message = f'function "{function_name}" not found in namespace "{namespace}"'
        cause = Cause(field="spec.function-name", message=message, reason="FieldValueNotFound")
        raise Invalid(f'{rt.kind} "{trigger}" is invalid: spec.function-name: {message}', [cause])

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


def _secret_cause(trigger: HttpTriggerSpec, field: str, wanted: str) -> Cause:
    name = trigger.basic_auth_secret if field == "basic-auth-secret" else trigger.tls_secret
    message = f'needs a Secret "{name}" {wanted} in namespace "{trigger.namespace}"'
    return Cause(field=f"spec.{field}", message=message, reason="FieldValueNotFound")


def _function_name_of(obj: Mapping[str, Any]) -> object:
    spec = obj.get("spec")
    return spec.get("function-name") if isinstance(spec, dict) else None


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
