"""The mesh: Istio's traffic rules, balancing, resilience and telemetry for every HTTP call.

One implementation serves the three entries of the data plane (the gateway, the Services' VIP
listeners and the API server's service proxy). The package sits between the controllers and
runtime | discovery: it may import discovery, store, model and errors, and must not import
runtime, gateway, api or controllers.

Modules:

- ``hosts``: Istio host names (qualifying short names, wildcards, the Host header).
- ``routes``: VirtualService routes compiled for cheap per-request selection.
- ``table``: ``MeshTable``, the in-memory VirtualServices, DestinationRules, Gateways and
  security policies, with cached routes per host.
- ``feed``: ``MeshFeed``, keeps a MeshTable equal to the stored Istio objects.
- ``endpoint_sets``: the members of a destination and the choice of one per attempt, over
  ``balancers`` (peak EWMA P2C, round robin, random, least request, consistent hash) and
  ``outliers`` (outlier detection), with connection limits.
- ``budget``: the retry budget of a host.
- ``authz`` (with ``authz_facts`` and ``authz_rules``): AuthorizationPolicy decisions and the
  PeerAuthentication mode of a workload's port.
- ``telemetry``: Istio's request metrics; ``access_log``: one line per request in Istio's
  default format.

The data plane's side (a route's destination resolved to members, one call through the mesh
from route selection to the answer) is in ``funcmesh.gateway.destinations`` and
``funcmesh.gateway.mesh_calls``.
"""
