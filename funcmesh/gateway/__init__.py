"""The HTTP data plane for function calls: ``Gateway`` (server), fed by a ``Backends`` seam.

Modules: ``server`` (lifecycle, routing of requests), ``downstream`` (client connections),
``proxy`` (one call and its failure table), ``upstream`` (instance connections and their pool),
``messages`` (HTTP heads), ``routing`` (``/function/NAME[.NS]``), ``backends`` (the Protocols the
runtime's instance pool satisfies). Service VIPs (the kube-proxy): ``vips`` (a listener per
cluster IP and port), ``splicing`` (TCP forwarding), ``datagrams`` (UDP), ``balancing`` (which
endpoint), ``vip_ports`` and ``vip_nat`` (listening sockets, kernel NAT), ``vip_tls`` (mTLS at a
VIP: the first byte decides, PeerAuthentication's mode allows). The mesh (``funcmesh.mesh`` holds
its rules and pure parts): ``mesh_plane`` (what every mesh call shares, its telemetry, and the
one decision how a function is called: routed, under a DestinationRule, or direct),
``mesh_calls`` (a routed call: route, attempts, retries), ``direct_calls`` (a call without
rules: the relay's ``proxy.Call`` itself), ``mesh_records`` (a call's record, span and local
answers), ``mesh_attempts`` (an attempt's view of the client), ``mesh_access``
(AuthorizationPolicy before each attempt), ``destinations`` (a route's destination resolved to
function pools or endpoints), ``triggers`` (HTTPTriggers, called as ``/function/NAME`` is),
``async_calls``. Never imports ``api``, ``nameserver`` or the runtime.
"""
