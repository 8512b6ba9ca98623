"""What every call through the mesh shares: ``MeshPlane``.

It holds the relay (upstream connections, deadlines), the destinations (a route's destination
resolved to members), the AuthorizationPolicy check, randomness, the tracer and the telemetry,
and starts each call: ``call`` one under a route (``mesh_calls.MeshCall``), ``direct`` one to a
function without mesh rules (``direct_calls.DirectCall``). ``record`` counts, logs and ends the
span of every finished call; ``close`` answers the calls that wait (a retry's back-off, a fault
delay, a free connection) when the gateway closes.
"""

from __future__ import annotations

import logging
import random

from funcmesh.gateway.backends import Backend
from funcmesh.gateway.destinations import Destinations
from funcmesh.gateway.direct_calls import DirectCall
from funcmesh.gateway.mesh_access import MeshAccess
from funcmesh.gateway.mesh_calls import MeshCall
from funcmesh.gateway.messages import Request
from funcmesh.gateway.proxy import Responder
from funcmesh.gateway.relay import Relay
from funcmesh.gateway.routing import FunctionRoute
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
        telemetry: Telemetry | None = None,
        rng: random.Random | None = None,
        access: MeshAccess | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.relay = relay
        self.tracer = tracer  # a span per call, its context passed on upstream
        self.destinations = destinations
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

    def direct(
        self,
        backend: Backend,
        route: FunctionRoute,
        request: Request,
        client: Responder,
        *,
        port: int = 0,
    ) -> None:
        """Call one function with no mesh rule on its way: one attempt, measured; ``port`` is
        its Service port when the call came to it (0: not known, the default 8080 is shown)."""
        DirectCall(self, backend, route, request, client, port=port).start()

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
