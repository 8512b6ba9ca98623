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
- ``endpoint_sets``: the members of a destination and the choice of one per attempt
  (balancer, outlier detection, connection limits).
- ``budget``: the retry budget of a host.
- ``telemetry``: Istio's request metrics.
- ``access_log``: one line per request in Envoy's default format.
- ``destinations``: a route's destination resolved to members.
- ``calls``: one call through the mesh, from route selection to the answer.
"""
