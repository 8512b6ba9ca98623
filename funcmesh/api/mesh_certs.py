"""``POST /funcmesh/v1/mesh/certificates``: a mesh certificate for an identity.

The body names the identity, ``{"namespace": "default", "serviceAccount": "frontend"}``
(each defaults to ``default``; the namespace must exist); the answer (201) carries the
certificate for ``spiffe://cluster.local/ns/<ns>/sa/<sa>``, its private key and the mesh CA
in PEM, and when it expires: what a workload presents to a Service's VIP for mTLS, and what
``funcmesh mesh cert`` writes to files. Only the API's token holder (cluster-admin) may ask,
as for every path but the health checks. A server built without a mesh CA answers 404 saying
so. Never logs a key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from funcmesh.api.negotiation import decode_json
from funcmesh.api.status import BadRequest
from funcmesh.api.wire import json_response, read_body
from funcmesh.errors import NotFound
from funcmesh.mesh.identity import MeshIdentity, check_identity
from funcmesh.model.kinds import NAMESPACE
from funcmesh.store.sqlite import Store

PATH = "/funcmesh/v1/mesh/certificates"
MAX_BODY_BYTES = 4096
_FIELDS = ("namespace", "serviceAccount")
_DEFAULT = "default"  # the namespace and the service account when not given


class MeshCertificatesEndpoint:
    """Issues mesh certificates, or 404 when the daemon has no mesh CA."""

    def __init__(self, identity: MeshIdentity | None, *, store: Store) -> None:
        self._identity = identity
        self._store = store

    async def issue(self, request: web.Request) -> web.Response:
        identity = self._identity
        if identity is None:
            raise NotFound("the mesh certificate authority is not enabled on this server")
        body = await read_body(request, max_bytes=MAX_BODY_BYTES)
        namespace, service_account = _identity_of(decode_json(body or b"{}", what="the body"))
        check_identity(namespace, service_account)
        if not await self._store.exists(NAMESPACE, "", namespace):
            raise NotFound(f'namespaces "{namespace}" not found')
        issued = await asyncio.to_thread(identity.issue, namespace, service_account)
        document = {
            "apiVersion": "funcmesh.io/v1",
            "kind": "MeshCertificate",
            "spiffeId": issued.spiffe_id,
            "certificate": issued.cert_pem,
            "privateKey": issued.key_pem,
            "caCertificate": issued.ca_pem,
            "notAfter": issued.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return json_response(document, status=201)


def _identity_of(document: Any) -> tuple[str, str]:
    """(namespace, serviceAccount) of the request body; BadRequest naming what is wrong."""
    if not isinstance(document, dict):
        raise BadRequest(
            'the body must be a JSON object: {"namespace": ..., "serviceAccount": ...}'
        )
    unknown = sorted(set(document) - set(_FIELDS))
    if unknown:
        raise BadRequest(f"unknown fields {', '.join(unknown)}: only {', '.join(_FIELDS)}")
    values = []
    for field in _FIELDS:
        value = document.get(field, _DEFAULT)
        if not isinstance(value, str):
            raise BadRequest(f"{field} must be a string, got {type(value).__name__}")
        values.append(value)
    return values[0], values[1]
