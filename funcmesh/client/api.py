"""Typed HTTP client of the funcmesh API, spoken with Kubernetes conventions.

Paths come from ``model.kinds``; answers become typed values (``responses``); error answers and
transport failures become FuncmeshError subclasses with a message a user can act on. httpx lives
in this package only (here, ``transport`` and ``download``); paths come from ``paths``. This
module must not print, prompt or know about the CLI.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from funcmesh import __version__
from funcmesh.client.kubeconfig import Kubeconfig
from funcmesh.client.paths import collection_path, object_path, segment
from funcmesh.client.responses import (
    FunctionStats,
    ObjectList,
    ProxyResponse,
    ServerConfig,
    Table,
    WatchEvent,
    parse_function_stats,
    parse_list,
    parse_object,
    parse_server_config,
    parse_table,
    parse_watch_event,
)
from funcmesh.client.status import error_from_response, error_from_status
from funcmesh.client.transport import tls_verification, transport_error
from funcmesh.errors import FuncmeshError, Invalid
from funcmesh.model.kinds import FUNCTION, POD, ResourceType
from funcmesh.model.objects import RawObject, name_of, namespace_of

logger = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 30.0
WATCH_SLACK_S = 5.0
FUNCTION_PORT_NAME = "http-function-port"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"
MESH_ACCESS_LOG_PATH = "/funcmesh/v1/mesh/accesslog"
TRACES_PATH = "/funcmesh/v1/traces"
MESH_CERTIFICATES_PATH = "/funcmesh/v1/mesh/certificates"
Params = Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshCertificate:
    """A mesh identity's certificate, private key and the mesh CA (PEM), and its expiry."""

    spiffe_id: str
    certificate: str
    private_key: str
    ca_certificate: str
    not_after: str  # RFC 3339


class ApiClient:
    """One connection pool to the API; use as a context manager or call ``close``."""

    def __init__(
        self,
        *,
        server: str,
        token: str | None = None,
        ca_pem: str | None = None,
        verify_tls: bool = True,
        transport: httpx.BaseTransport | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        if not server.startswith(("https://", "http://")):
            raise Invalid(f'server "{server}" must be a URL such as https://127.0.0.1:6443')
        self.server = server.rstrip("/")
        self._timeout_s = request_timeout_s
        headers = {"User-Agent": f"funcmesh/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            verify=tls_verification(ca_pem, verify_tls=verify_tls),
            transport=transport,
            timeout=request_timeout_s,
            trust_env=False,  # a proxy from the environment must not see loopback API traffic
        )

    @classmethod
    def from_kubeconfig(cls, config: Kubeconfig, *, server: str | None = None) -> ApiClient:
        """A client for the kubeconfig's context; ``server`` (``--server``) overrides its URL."""
        return cls(
            server=server or config.server,
            token=config.token,
            ca_pem=config.ca_pem,
            verify_tls=not config.insecure_skip_tls_verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- Kubernetes verbs ------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return parse_object(self._json("GET", "/version"), what="GET /version")

    def get(self, rt: ResourceType, namespace: str, name: str) -> RawObject:
        path = object_path(rt, namespace, name)
        return parse_object(self._json("GET", path), what=f"GET {path}")

    def list(
        self,
        rt: ResourceType,
        namespace: str,
        *,
        selector: str | None = None,
        all_namespaces: bool = False,
    ) -> ObjectList:
        path = collection_path(rt, namespace, all_namespaces=all_namespaces)
        params = {"labelSelector": selector} if selector else {}
        return parse_list(self._json("GET", path, params=params), what=f"GET {path}")

    def table(
        self,
        rt: ResourceType,
        namespace: str,
        name: str | None = None,
        *,
        selector: str | None = None,
        all_namespaces: bool = False,
    ) -> Table:
        """The server's human view (a meta.k8s.io Table) of one object or a list."""
        if name is None:
            path = collection_path(rt, namespace, all_namespaces=all_namespaces)
        else:
            path = object_path(rt, namespace, name)
        params = {"labelSelector": selector} if selector else {}
        answer = self._json("GET", path, params=params, headers={"Accept": TABLE_ACCEPT})
        return parse_table(answer, what=f"GET {path}")

    def create(self, rt: ResourceType, obj: RawObject) -> RawObject:
        path = collection_path(rt, namespace_of(obj))
        return parse_object(self._json("POST", path, body=obj), what=f"POST {path}")

    def replace(self, rt: ResourceType, obj: RawObject) -> RawObject:
        path = object_path(rt, namespace_of(obj), name_of(obj))
        return parse_object(self._json("PUT", path, body=obj), what=f"PUT {path}")

    def merge_patch(
        self, rt: ResourceType, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> RawObject:
        """JSON merge patch (RFC 7386); with ``metadata.resourceVersion`` it is conditional."""
        path = object_path(rt, namespace, name)
        headers = {"Content-Type": MERGE_PATCH_CONTENT_TYPE}
        answer = self._json("PATCH", path, body=patch, headers=headers)
        return parse_object(answer, what=f"PATCH {path}")

    def delete(self, rt: ResourceType, namespace: str, name: str) -> RawObject:
        path = object_path(rt, namespace, name)
        return parse_object(self._json("DELETE", path), what=f"DELETE {path}")

    def watch(
        self,
        rt: ResourceType,
        namespace: str,
        *,
        resource_version: str,
        all_namespaces: bool = False,
        field_selector: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[WatchEvent]:
        """Changes after ``resource_version``; ends quietly after ``timeout_s`` without events.

        A watch ``ERROR`` event raises its Status as an exception (ResourceExpired for 410).
        """
        path = collection_path(rt, namespace, all_namespaces=all_namespaces)
        params = {"watch": "true", "resourceVersion": resource_version}
        if field_selector:
            params["fieldSelector"] = field_selector
        if timeout_s is not None:
            params["timeoutSeconds"] = str(max(1, math.ceil(timeout_s)))
        read_timeout_s = None if timeout_s is None else timeout_s + WATCH_SLACK_S
        for line in self._stream_lines(path, params=params, read_timeout_s=read_timeout_s):
            if not line.strip():
                continue
            event = parse_watch_event(_decode_json(line, what=f"watch {path}"))
            if event.type == "ERROR":
                raise error_from_status(event.object)
            yield event

    # -- funcmesh extensions ---------------------------------------------------------------

    def proxy(
        self,
        namespace: str,
        service: str,
        *,
        method: str = "GET",
        path: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        port: str = FUNCTION_PORT_NAME,
    ) -> ProxyResponse:
        """Call a service through the API's service proxy; any status comes back as is."""
        url = (
            f"/api/v1/namespaces/{segment(namespace)}/services/{segment(service)}:"
            f"{segment(port)}/proxy/{path.lstrip('/')}"
        )
        # No read timeout: the function's own timeout (enforced by the daemon) bounds the call.
        timeout = httpx.Timeout(self._timeout_s, read=None)
        # The function, not the API, decides the answer's type: do not send the API's Accept.
        all_headers = {"Accept": "*/*", **(headers or {})}
        response = self._send(method, url, content=body, headers=all_headers, timeout=timeout)
        return ProxyResponse(
            status=response.status_code,
            reason_phrase=response.reason_phrase,
            headers=dict(response.headers),
            body=response.content,
        )

    def function_log(
        self,
        namespace: str,
        name: str,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        build: bool = False,
        timestamps: bool = False,
    ) -> Iterator[str]:
        """Log lines of a function's instances, or of its dependency build with ``build``."""
        path = object_path(FUNCTION, namespace, name) + "/log"
        params = {"follow": "true" if follow else "false"}
        if timestamps:
            params["timestamps"] = "true"
        if tail_lines is not None:
            params["tailLines"] = str(tail_lines)
        if build:
            params["container"] = "build"
        read_timeout_s = None if follow else self._timeout_s
        yield from self._stream_lines(path, params=params, read_timeout_s=read_timeout_s)

    def pod_log(
        self,
        namespace: str,
        name: str,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        timestamps: bool = False,
    ) -> Iterator[str]:
        """Output lines of one pod (every restart of its process), as ``kubectl logs``."""
        path = object_path(POD, namespace, name) + "/log"
        params = {"follow": "true" if follow else "false"}
        if timestamps:
            params["timestamps"] = "true"
        if tail_lines is not None:
            params["tailLines"] = str(tail_lines)
        read_timeout_s = None if follow else self._timeout_s
        yield from self._stream_lines(path, params=params, read_timeout_s=read_timeout_s)

    def mesh_access_log(
        self, *, follow: bool = False, tail_lines: int | None = None
    ) -> Iterator[str]:
        """Access log lines of the mesh (one per request, Istio's format), oldest first."""
        params = {"follow": "true" if follow else "false"}
        if tail_lines is not None:
            params["tailLines"] = str(tail_lines)
        read_timeout_s = None if follow else self._timeout_s
        yield from self._stream_lines(
            MESH_ACCESS_LOG_PATH, params=params, read_timeout_s=read_timeout_s
        )

    def traces(
        self,
        *,
        function: str | None = None,
        service: str | None = None,
        namespace: str | None = None,
        limit: int | None = None,
    ) -> Sequence[dict[str, Any]]:
        """Recent traces through the mesh, the most recently active first, each with its spans."""
        params = {"function": function, "service": service, "namespace": namespace}
        query = {key: value for key, value in params.items() if value}
        if limit is not None:
            query["limit"] = str(limit)
        document = self._json("GET", TRACES_PATH, params=query)
        traces: Sequence[dict[str, Any]] = document["traces"]
        return traces

    def trace(self, trace_id: str) -> dict[str, Any]:
        """One trace with its kept spans."""
        document: dict[str, Any] = self._json("GET", f"{TRACES_PATH}/{segment(trace_id)}")
        return document

    def mesh_certificate(self, namespace: str, service_account: str) -> MeshCertificate:
        """A certificate for ``spiffe://cluster.local/ns/<namespace>/sa/<service_account>``
        from the mesh CA: what a workload presents to a Service's VIP for mTLS."""
        body = {"namespace": namespace, "serviceAccount": service_account}
        what = f"POST {MESH_CERTIFICATES_PATH}"
        document = self._json("POST", MESH_CERTIFICATES_PATH, body=body)
        try:
            return MeshCertificate(
                spiffe_id=str(document["spiffeId"]),
                certificate=str(document["certificate"]),
                private_key=str(document["privateKey"]),
                ca_certificate=str(document["caCertificate"]),
                not_after=str(document["notAfter"]),
            )
        except (KeyError, TypeError) as exc:
            raise FuncmeshError(f"the funcmesh API answered {what} without {exc}") from exc

    def function_stats(self, namespace: str, name: str) -> FunctionStats:
        path = object_path(FUNCTION, namespace, name) + "/stats"
        return parse_function_stats(self._json("GET", path), what=f"GET {path}")

    def server_config(self) -> ServerConfig:
        return parse_server_config(self._json("GET", "/funcmesh/v1/server-config"))

    def async_call(
        self,
        namespace: str,
        name: str,
        *,
        method: str = "POST",
        path: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Queue an async call of a function (stored by the daemon before it answers); its id."""
        url = (
            f"/funcmesh/v1/namespaces/{segment(namespace)}/async-function/{segment(name)}"
            f"/{path.lstrip('/')}"
        )
        all_headers = {"Accept": "*/*", **(headers or {})}
        response = self._send(method, url, content=body, headers=all_headers)
        if response.status_code != 202:
            raise error_from_response(
                response.status_code, response.content, reason_phrase=response.reason_phrase
            )
        document = _decode_json(response.content, what=f"{method} {url}")
        return str(document["id"])

    def get_call(self, call_id: str) -> dict[str, Any]:
        """An async call: ``phase``, ``statusCode``, ``body`` (or ``bodyBase64``), timings."""
        document: dict[str, Any] = self._json("GET", f"/funcmesh/v1/calls/{segment(call_id)}")
        return document

    # -- plumbing --------------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        content = None if body is None else json.dumps(body).encode()
        all_headers = dict(headers or {})
        if content is not None:
            all_headers.setdefault("Content-Type", "application/json")
        response = self._send(method, path, params=params, content=content, headers=all_headers)
        if not response.is_success:
            raise error_from_response(
                response.status_code, response.content, reason_phrase=response.reason_phrase
            )
        return _decode_json(response.content, what=f"{method} {path}")

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else self._timeout_s,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, server=self.server, timeout_s=self._timeout_s) from exc
        logger.debug("%s %s -> %d", method, response.url, response.status_code)
        return response

    def _stream_lines(
        self, path: str, *, params: Params, read_timeout_s: float | None
    ) -> Iterator[str]:
        """Lines of a streamed GET; a read timeout ends the stream quietly."""
        timeout = httpx.Timeout(self._timeout_s, read=read_timeout_s)
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                logger.debug("GET %s (stream) -> %d", response.url, response.status_code)
                if not response.is_success:
                    response.read()
                    raise error_from_response(
                        response.status_code, response.content, reason_phrase=response.reason_phrase
                    )
                yield from response.iter_lines()
        except httpx.ReadTimeout:
            return
        except httpx.HTTPError as exc:
            raise transport_error(exc, server=self.server, timeout_s=self._timeout_s) from exc


def _decode_json(content: bytes | str, *, what: str) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FuncmeshError(f"the funcmesh API answered {what} with invalid JSON") from exc
