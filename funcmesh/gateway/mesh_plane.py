"""What every call through the mesh shares: ``MeshPlane``.

It holds the relay (upstream connections, deadlines), the destinations (a route's destination
resolved to members), the AuthorizationPolicy check, randomness, the tracer and the telemetry,
and starts each call. ``call_function`` is the one decision of how a call of ``NAME.NS`` goes
(``/function/NAME``, a Service's VIP, an HTTPTrigger): under its VirtualService routes, or its
DestinationRule's policy, as a ``mesh_calls.MeshCall``; else straight to the function, as a
``direct_calls.DirectCall``; else to the Service of that name. ``call`` starts a call under a
route already chosen (a Gateway object's). ``record`` counts, logs and ends the span of every
finished call; ``close`` answers the calls that wait (a retry's back-off, a fault delay, a free
connection) when the gateway closes.
"""

from __future__ import annotations

import logging
import random

from funcmesh.gateway.backends import Backends
from funcmesh.gateway.destinations import Destinations
from funcmesh.gateway.direct_calls import DirectCall
from funcmesh.gateway.mesh_access import MeshAccess
from funcmesh.gateway.mesh_calls import MeshCall, default_route
from funcmesh.gateway.messages import Request
from funcmesh.gateway.proxy import Responder
from funcmesh.gateway.relay import Relay
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.mesh.hosts import service_host
from funcmesh.mesh.routes import CompiledRoute
from funcmesh.mesh.telemetry import RequestRecord, Telemetry
from funcmesh.mesh.tracing import Span, Tracer

logger = logging.getLogger(__name__)


class MeshPlane:
    """What every mesh call shares: the relay, the destinations, randomness, telemetry."""

    def __init__(
        self,
        relay: Relay,
        destinations: Destinations | None,
        *,
        backends: Backends,
        telemetry: Telemetry | None = None,
        rng: random.Random | None = None,
        access: MeshAccess | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.relay = relay
        self.tracer = tracer  # a span per call, its context passed on upstream
        self.destinations = destinations
        self.backends = backends
        # the rules and Services that call_function consults: only with destinations to serve
        self.mesh = destinations.mesh if destinations is not None else None
        self.services = destinations.services if destinations is not None else None
        self.telemetry = telemetry
        self.access = access  # AuthorizationPolicy, checked before each attempt
        self.loop = relay.loop
        self.draw = (rng or random.Random()).random
        self.waiting: set[MeshCall] = set()  # between attempts or in a fault delay

    def call(
        self,
        route: CompiledRoute,
        target: bytes,
        request: Request,
        client: Responder,
        *,
        port: int = 0,
    ) -> None:
        """Answer ``request`` under ``route``; ``client.end_call()`` follows."""
        MeshCall(self, route, target, request, client, port=port).start()

    def call_function(
        self,
        route: FunctionRoute,
        request: Request,
        client: Responder,
        *,
        port: int = 0,
        missing: str = "",
    ) -> bool:
        """Call the function or Service ``route`` names, routed as the host
        ``NAME.NS.svc.cluster.local``: by its VirtualServices when it has any, by its
        DestinationRule's policy when it has one, else the function itself, else the Service
        of that name (through the mesh). ``port`` is the Service port the call came to (0: not
        known). False when the call started (``client.end_call()`` follows); True when it was
        answered at once: 404 when no route matches, or when nothing has the name (``missing``
        is the message then; by default ``function NS/NAME not found``).

        The hot path: with no rule for the host it costs one cached look-up in the mesh table
        before the function's own."""
        mesh = self.mesh
        if mesh is not None:
            host, routes, rule = mesh.service_rules(route.namespace, route.name)
            if routes is not None:
                selected = routes.select(request.method, route.target, request.headers, port)
                if selected is None:
                    client.send_error(404, f"no route of {host} matches this request")
                    return True
                target = selected.target(route.target)
                MeshCall(self, selected.route, target, request, client, port=port).start()
                return False
            if rule is not None:  # its policy applies: balance, limits
                service_route = default_route(host, (route.namespace, route.name))
                MeshCall(self, service_route, route.target, request, client, port=port).start()
                return False
        backend = self.backends.lookup(route.namespace, route.name)
        if backend is not None:
            DirectCall(self, backend, route, request, client, port=port).run()
            return False
        services = self.services
        if services is not None and services.service(route.namespace, route.name) is not None:
            host = service_host(route.namespace, route.name)
            service_route = default_route(host, (route.namespace, route.name))
            MeshCall(self, service_route, route.target, request, client, port=port).start()
            return False
        function = route.display_name
        client.send_error(404, missing or f"function {function} not found", function=function)
        return True

    def close(self) -> None:
        """Answer the calls waiting for a retry or a fault delay: the gateway is closing."""
        for call in list(self.waiting):
            call.give_up(503, "the gateway is closing")

    def record(self, record: RequestRecord, span: Span | None) -> None:
        """Count the call, log it, end its span; a failure here never reaches the client."""
        try:
            if self.telemetry is not None:
                self.telemetry.record(record)
            if span is not None and self.tracer is not None:
                self.tracer.finish_call(span, record)
        except Exception:
            logger.exception("recording a mesh call failed")
