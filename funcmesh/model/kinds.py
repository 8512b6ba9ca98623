"""The resource types funcmesh serves, with their Kubernetes names.

One table says for each kind its group, version, plural, short names and whether it is namespaced
and stored. The API's discovery documents, the CLI's ``get KIND`` and the store all read it.

A kind may be served under several versions of its group (Istio's objects are
``networking.istio.io/v1``, ``v1beta1`` and ``v1alpha3`` with one schema), as Kubernetes serves a
multi-version CRD: ``version`` is the one storage version, ``served_versions`` the others; the
objects are stored once, under the storage version, and each request sees them in its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from funcmesh.errors import NotFound


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceType:
    """One served resource, e.g. ``kubeless.io/v1beta1`` ``functions``."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    read_only: bool = False
    deletable: bool = False  # a read-only kind that can still be deleted (Pods)
    served_versions: tuple[str, ...] = ()  # served besides ``version``, same schema

    @property
    def api_version(self) -> str:
        """The storage version's ``apiVersion``: what the store and admission see."""
        return self.api_version_at(self.version)

    @property
    def versions(self) -> tuple[str, ...]:
        """Every served version, the storage (preferred) one first."""
        return (self.version, *self.served_versions)

    @property
    def api_versions(self) -> tuple[str, ...]:
        return tuple(self.api_version_at(version) for version in self.versions)

    def api_version_at(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def key(self) -> str:
        """Stable storage key: ``functions.kubeless.io`` or ``pods`` for the core group."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def verbs(self) -> tuple[str, ...]:
        if self.read_only:
            return (
                ("delete", "get", "list", "watch") if self.deletable else ("get", "list", "watch")
            )
        return ("create", "delete", "get", "list", "patch", "update", "watch")


FUNCTION = ResourceType(
    group="kubeless.io",
    version="v1beta1",
    kind="Function",
    plural="functions",
    singular="function",
    namespaced=True,
)
NAMESPACE = ResourceType(
    group="",
    version="v1",
    kind="Namespace",
    plural="namespaces",
    singular="namespace",
    namespaced=False,
    short_names=("ns",),
)
POD = ResourceType(
    group="",
    version="v1",
    kind="Pod",
    plural="pods",
    singular="pod",
    namespaced=True,
    short_names=("po",),
    read_only=True,  # a view of running instances and replicas, not stored
    deletable=True,  # deleting one stops it (a Deployment's is replaced)
)
EVENT = ResourceType(
    group="",
    version="v1",
    kind="Event",
    plural="events",
    singular="event",
    namespaced=True,
    short_names=("ev",),
)

SECRET = ResourceType(
    group="",
    version="v1",
    kind="Secret",
    plural="secrets",
    singular="secret",
    namespaced=True,
)
HTTP_TRIGGER = ResourceType(
    group="kubeless.io",
    version="v1beta1",
    kind="HTTPTrigger",
    plural="httptriggers",
    singular="httptrigger",
    namespaced=True,
)
CRONJOB_TRIGGER = ResourceType(
    group="kubeless.io",
    version="v1beta1",
    kind="CronJobTrigger",
    plural="cronjobtriggers",
    singular="cronjobtrigger",
    namespaced=True,
)
NATS_TRIGGER = ResourceType(
    group="kubeless.io",
    version="v1beta1",
    kind="NATSTrigger",
    plural="natstriggers",
    singular="natstrigger",
    namespaced=True,
)
SERVICE = ResourceType(
    group="",
    version="v1",
    kind="Service",
    plural="services",
    singular="service",
    namespaced=True,
    short_names=("svc",),
)
ENDPOINTS = ResourceType(
    group="",
    version="v1",
    kind="Endpoints",
    plural="endpoints",
    singular="endpoints",
    namespaced=True,
    short_names=("ep",),
)
DEPLOYMENT = ResourceType(
    group="apps",
    version="v1",
    kind="Deployment",
    plural="deployments",
    singular="deployment",
    namespaced=True,
    short_names=("deploy",),
)

# Istio's objects: v1 is stored; the older versions Istio's docs still write are served too.
_NETWORKING_ISTIO = "networking.istio.io"
_SECURITY_ISTIO = "security.istio.io"
VIRTUAL_SERVICE = ResourceType(
    group=_NETWORKING_ISTIO,
    version="v1",
    served_versions=("v1beta1", "v1alpha3"),
    kind="VirtualService",
    plural="virtualservices",
    singular="virtualservice",
    namespaced=True,
    short_names=("vs",),
)
DESTINATION_RULE = ResourceType(
    group=_NETWORKING_ISTIO,
    version="v1",
    served_versions=("v1beta1", "v1alpha3"),
    kind="DestinationRule",
    plural="destinationrules",
    singular="destinationrule",
    namespaced=True,
    short_names=("dr",),
)
GATEWAY = ResourceType(
    group=_NETWORKING_ISTIO,
    version="v1",
    served_versions=("v1beta1", "v1alpha3"),
    kind="Gateway",
    plural="gateways",
    singular="gateway",
    namespaced=True,
    short_names=("gw",),
)
AUTHORIZATION_POLICY = ResourceType(
    group=_SECURITY_ISTIO,
    version="v1",
    served_versions=("v1beta1",),
    kind="AuthorizationPolicy",
    plural="authorizationpolicies",
    singular="authorizationpolicy",
    namespaced=True,
    short_names=("ap",),
)
PEER_AUTHENTICATION = ResourceType(
    group=_SECURITY_ISTIO,
    version="v1",
    served_versions=("v1beta1",),
    kind="PeerAuthentication",
    plural="peerauthentications",
    singular="peerauthentication",
    namespaced=True,
    short_names=("pa",),
)

ALL: tuple[ResourceType, ...] = (
    FUNCTION,
    HTTP_TRIGGER,
    CRONJOB_TRIGGER,
    NATS_TRIGGER,
    NAMESPACE,
    POD,
    EVENT,
    SECRET,
    SERVICE,
    ENDPOINTS,
    DEPLOYMENT,
    VIRTUAL_SERVICE,
    DESTINATION_RULE,
    GATEWAY,
    AUTHORIZATION_POLICY,
    PEER_AUTHENTICATION,
)


def find_resource(name: str) -> ResourceType:
    """Resolve what a user types (``functions``, ``function``, ``Function``, ``po``,
    ``functions.kubeless.io``) to a resource type."""
    wanted = name.lower()
    for rt in ALL:
        names = {rt.plural, rt.singular, rt.kind.lower(), rt.key, *rt.short_names}
        if rt.group:
            names |= {f"{rt.singular}.{rt.group}"}
            names |= {f"{rt.plural}.{version}.{rt.group}" for version in rt.versions}
        if wanted in names:
            return rt
    raise NotFound(f'the server doesn\'t have a resource type "{name}"')


def find_by_kind(api_version: str, kind: str) -> ResourceType:
    """Resolve ``apiVersion`` and ``kind`` of a manifest (any served version of the kind)."""
    for rt in ALL:
        if api_version in rt.api_versions and rt.kind == kind:
            return rt
    raise NotFound(f'no kind "{kind}" is registered for version "{api_version}"')


def served_under(group: str, version: str) -> tuple[ResourceType, ...]:
    """The resource types served under one group/version; empty when it is not served."""
    return tuple(rt for rt in ALL if rt.group == group and version in rt.versions)
