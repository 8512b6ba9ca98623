"""Istio's access decisions: may this caller make this request of this workload (the
AuthorizationPolicies), and which mTLS mode does the workload's port take (the
PeerAuthentications).

``Authorizer`` reads the policies of a ``PolicySource`` (the MeshTable, or a ``PolicyList`` in
tests). Per workload (namespace and labels) it keeps the policies that apply, compiled
(``authz_rules``), until the source's ``version`` changes; a decision is then a few
precompiled checks per rule, and allocates nothing.

AuthorizationPolicy, in Istio's order (security/v1beta1/authorization_policy.proto): CUSTOM
is refused by the parser; any DENY policy that matches denies; with no ALLOW policy on the
workload the request is allowed; else it is allowed only when an ALLOW policy matches. A
policy applies to a workload when it is in the root namespace (``istio-system``) or in the
workload's, and its selector is empty or holds for the workload's labels (``targetRef`` is
refused by the parser). ALLOW without rules matches nothing, so it allows nothing (Istio's
"allow-nothing", ``spec: {}``); DENY without rules denies nothing; a rule without fields
matches everything (``rules: [{}]``: "allow-all", or with DENY "deny-all"). Policies are
tried in (namespace, name) order, so the one a decision names is the first that matched.

PeerAuthentication (istio/istio pilot/pkg/security/authn ``ComposePeerAuthentication``): a
workload policy (a selector that holds, in the workload's namespace) overrides the namespace
policy (no selector, same namespace), which overrides the mesh policy (no selector, root
namespace); ``UNSET`` inherits from the level above, and nothing at all means PERMISSIVE. A
policy with a selector in the root namespace is ignored, as Istio does. The workload policy's
``portLevelMtls`` overrides its mode for those ports (``UNSET`` there inherits the workload's
mode). Of several policies at one level Istio takes the oldest; creation times are not kept
here, so the first by name is taken.

No I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from funcmesh.mesh.authz_facts import Peer, RequestFacts, namespace_of_principal, normalize_path
from funcmesh.mesh.authz_rules import CompiledPolicy, compile_policy
from funcmesh.mesh.table import CACHE_ENTRIES
from funcmesh.model.istio_security import AuthorizationPolicySpec, PeerAuthenticationSpec

__all__ = [
    "ROOT_NAMESPACE",
    "Authorizer",
    "Decision",
    "Peer",
    "PolicyList",
    "PolicySource",
    "RequestFacts",
    "namespace_of_principal",
    "normalize_path",
]

ROOT_NAMESPACE = "istio-system"  # Istio's default root namespace: its policies are mesh-wide
DEFAULT_MTLS_MODE = "PERMISSIVE"
_UNSET = "UNSET"
_Key = tuple[str, frozenset[tuple[str, str]]]  # (namespace, labels) of a workload
_S = TypeVar("_S", AuthorizationPolicySpec, PeerAuthenticationSpec)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer for one request. ``policy`` is "namespace.name" of the policy that decided
    (the DENY or ALLOW policy that matched), None when none did."""

    allowed: bool
    policy: str | None
    reason: str


NO_POLICY = Decision(allowed=True, policy=None, reason="no ALLOW policy applies")


class PolicySource(Protocol):
    """Where the policies come from: the MeshTable, whose ``version`` grows on every change."""

    version: int

    def authorization_policies(self, namespace: str) -> list[AuthorizationPolicySpec]: ...

    def peer_authentications(self, namespace: str) -> list[PeerAuthenticationSpec]: ...


class PolicyList:
    """Fixed lists of policies (tests, tools): a PolicySource that never changes."""

    def __init__(
        self,
        authorization_policies: Iterable[AuthorizationPolicySpec] = (),
        peer_authentications: Iterable[PeerAuthenticationSpec] = (),
    ) -> None:
        self.version = 0
        self._authorization = sorted(authorization_policies, key=lambda s: (s.namespace, s.name))
        self._peer = sorted(peer_authentications, key=lambda s: (s.namespace, s.name))

    def authorization_policies(self, namespace: str) -> list[AuthorizationPolicySpec]:
        return [spec for spec in self._authorization if spec.namespace == namespace]

    def peer_authentications(self, namespace: str) -> list[PeerAuthenticationSpec]:
        return [spec for spec in self._peer if spec.namespace == namespace]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Applicable:
    """The policies that apply to one workload, compiled, and the decisions they give."""

    deny: tuple[tuple[CompiledPolicy, Decision], ...]
    allow: tuple[tuple[CompiledPolicy, Decision], ...]
    no_match: Decision  # ALLOW policies apply and none matched


@dataclass(frozen=True, slots=True, kw_only=True)
class _Mtls:
    mode: str
    ports: Mapping[int, str]


class Authorizer:
    """Decides requests and mTLS modes for workloads from a PolicySource's policies."""

    def __init__(self, source: PolicySource, *, root_namespace: str = ROOT_NAMESPACE) -> None:
        self._source = source
        self._root = root_namespace
        self._version = source.version
        self._applicable: dict[_Key, _Applicable] = {}
        self._mtls: dict[_Key, _Mtls] = {}
        self._compiled: dict[tuple[str, str], CompiledPolicy] = {}
        self._compiled_before: dict[tuple[str, str], CompiledPolicy] = {}  # the last version's

    @classmethod
    def of(
        cls,
        authorization_policies: Iterable[AuthorizationPolicySpec] = (),
        peer_authentications: Iterable[PeerAuthenticationSpec] = (),
    ) -> Authorizer:
        return cls(PolicyList(authorization_policies, peer_authentications))

    def applies(self, *, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether any AuthorizationPolicy applies to the workload: while none does, every
        request is allowed and the data plane need not build RequestFacts."""
        applicable = self._applicable_to(namespace, labels)
        return bool(applicable.deny or applicable.allow)

    def decide(
        self, *, namespace: str, labels: Mapping[str, str], peer: Peer, request: RequestFacts
    ) -> Decision:
        """Whether ``peer`` may make ``request`` of the workload with ``labels`` in
        ``namespace``, in Istio's order: DENY, then ALLOW."""
        applicable = self._applicable_to(namespace, labels)
        for policy, decision in applicable.deny:
            if policy.matches(peer, request):
                return decision
        if not applicable.allow:
            return NO_POLICY
        for policy, decision in applicable.allow:
            if policy.matches(peer, request):
                return decision
        return applicable.no_match

    def mtls_mode(self, *, namespace: str, labels: Mapping[str, str], port: int) -> str:
        """The mTLS mode ("STRICT", "PERMISSIVE" or "DISABLE") of the workload's ``port`` (the
        port the workload listens on, which ``portLevelMtls`` names: Istio's target port, not
        the Service's)."""
        self._follow_source()
        key = (namespace, frozenset(labels.items()))
        mtls = self._mtls.get(key)
        if mtls is None:
            mtls = self._compose_mtls(namespace, labels)
            if len(self._mtls) >= CACHE_ENTRIES:
                self._mtls.clear()
            self._mtls[key] = mtls
        return mtls.ports.get(port, mtls.mode)

    # caches

    def _follow_source(self) -> None:
        version = self._source.version
        if version != self._version:
            self._version = version
            self._applicable.clear()
            self._mtls.clear()
            self._compiled_before, self._compiled = self._compiled, {}

    def _applicable_to(self, namespace: str, labels: Mapping[str, str]) -> _Applicable:
        self._follow_source()
        key = (namespace, frozenset(labels.items()))
        try:
            return self._applicable[key]
        except KeyError:
            pass
        applicable = self._collect(namespace, labels)
        if len(self._applicable) >= CACHE_ENTRIES:
            self._applicable.clear()
        self._applicable[key] = applicable
        return applicable

    def _collect(self, namespace: str, labels: Mapping[str, str]) -> _Applicable:
        deny: list[tuple[CompiledPolicy, Decision]] = []
        allow: list[tuple[CompiledPolicy, Decision]] = []
        for spec in self._in_scope(self._source.authorization_policies, namespace):
            if not _selects(spec.selector, labels):
                continue
            policy = self._compile(spec)
            if policy.deny:
                reason = f"denied by DENY policy {policy.name}"
                deny.append((policy, Decision(allowed=False, policy=policy.name, reason=reason)))
            else:
                reason = f"allowed by ALLOW policy {policy.name}"
                allow.append((policy, Decision(allowed=True, policy=policy.name, reason=reason)))
        names = ", ".join(policy.name for policy, _ in allow)
        no_match = Decision(allowed=False, policy=None, reason=f"no ALLOW policy matched ({names})")
        return _Applicable(deny=tuple(deny), allow=tuple(allow), no_match=no_match)

    def _in_scope(self, listing: Callable[[str], list[_S]], namespace: str) -> list[_S]:
        """The policies of the root namespace and of ``namespace``, by (namespace, name)."""
        found = list(listing(self._root))
        if namespace != self._root:
            found.extend(listing(namespace))
        found.sort(key=lambda spec: (spec.namespace, spec.name))
        return found

    def _compile(self, spec: AuthorizationPolicySpec) -> CompiledPolicy:
        """The compiled policy, reused while the table holds the same spec object."""
        key = (spec.namespace, spec.name)
        compiled = self._compiled.get(key) or self._compiled_before.get(key)
        if compiled is None or compiled.spec is not spec:
            compiled = compile_policy(spec)
        self._compiled[key] = compiled
        return compiled

    def _compose_mtls(self, namespace: str, labels: Mapping[str, str]) -> _Mtls:
        mesh: PeerAuthenticationSpec | None = None
        space: PeerAuthenticationSpec | None = None
        workload: PeerAuthenticationSpec | None = None
        # in (namespace, name) order: the first of a level is kept
        for spec in self._in_scope(self._source.peer_authentications, namespace):
            if not spec.selector:
                if spec.namespace == self._root:
                    mesh = mesh or spec
                else:
                    space = space or spec
            elif spec.namespace != self._root and _selects(spec.selector, labels):
                workload = workload or spec
        mode = DEFAULT_MTLS_MODE
        for level in (mesh, space, workload):
            if level is not None and level.mode != _UNSET:
                mode = level.mode
        ports: dict[int, str] = {}
        if workload is not None:
            ports = {port: mode if m == _UNSET else m for port, m in workload.port_modes}
        return _Mtls(mode=mode, ports=ports)


def _selects(selector: tuple[tuple[str, str], ...], labels: Mapping[str, str]) -> bool:
    """Whether a matchLabels selector holds for ``labels`` (an empty one always does)."""
    return all(labels.get(name) == value for name, value in selector)
