"""AuthorizationPolicy on the data plane: may this request go to this member?

``MeshAccess.check`` runs before each attempt of a mesh call (``mesh_calls.MeshCall``) for
the member chosen: the workload is the member's namespace and labels, the peer the request's
caller (its principal over mesh mTLS, "" for plaintext, and its address), the request its
method, path (the one sent, after rewrites, as the destination's sidecar would see it) and
headers, and the port the workload's (an endpoint's port; for a function, the Service
port, which is the instance's by default). A denial is Envoy's: 403 ``RBAC: access
denied``, or 400 for a path Istio's normalization refuses.

The hot path first: while no AuthorizationPolicy is stored, a check is one attribute read;
while none applies to a workload, one cached look-up (``Authorizer.applies``). No logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from funcmesh.gateway.backends import Backend
from funcmesh.gateway.destinations import EndpointBackend
from funcmesh.gateway.messages import Request
from funcmesh.mesh.authz import Authorizer, Peer, RequestFacts
from funcmesh.mesh.telemetry import rbac_denied_details

RBAC_DENIED_BODY = "RBAC: access denied"  # Envoy's exact body
BAD_PATH_DETAILS = "path_normalization_failed"
FUNCTION_PORT = 8080  # a function's Service port (Kubeless') and, by default, its instances'


class PolicyPresence(Protocol):
    """Whether any AuthorizationPolicy exists (``MeshTable``)."""

    @property
    def has_authorization_policies(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Denial:
    """How a refused attempt is answered: status, plain-text body, Envoy's details."""

    status: int
    body: str
    details: str


_BAD_PATH = Denial(status=400, body="Bad Request", details=BAD_PATH_DETAILS)


class MeshAccess:
    """Checks attempts against the AuthorizationPolicies."""

    def __init__(self, authorizer: Authorizer, policies: PolicyPresence) -> None:
        self._authorizer = authorizer
        self._policies = policies

    def check(
        self, backend: Backend, request: Request, target: bytes, *, service_port: int
    ) -> Denial | None:
        """None when ``request`` (sent with ``target``, to the Service port
        ``service_port``, 0 when unknown) may go to ``backend``; else how to answer it."""
        if not self._policies.has_authorization_policies:
            return None
        authorizer = self._authorizer
        namespace, labels = backend.namespace, backend.labels
        if not authorizer.applies(namespace=namespace, labels=labels):
            return None
        port = backend.port if isinstance(backend, EndpointBackend) else service_port
        facts = RequestFacts.parse(
            request.method, target, request.headers, port=port or FUNCTION_PORT
        )
        if facts is None:
            return _BAD_PATH
        peer = Peer.of(request.principal, request.client_ip.decode("latin-1"))
        decision = authorizer.decide(namespace=namespace, labels=labels, peer=peer, request=facts)
        if decision.allowed:
            return None
        details = rbac_denied_details(decision.policy)
        return Denial(status=403, body=RBAC_DENIED_BODY, details=details)
