"""DNS server for cluster.local (named so to avoid clashing with dnspython's ``dns``).

zone: the answers; wire: the hand-written fast path; responder: the dnspython slow path;
upstream: forwarding with a cache; backlog: the saturation signal; server: the listeners.
"""
