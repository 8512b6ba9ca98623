"""Istio host names: the rules that turn what a user wrote into the name a request is for.

A VirtualService or DestinationRule names hosts the way Istio reads them: a short name is a
Service in the rule's own namespace, ``name.namespace`` and ``name.namespace.svc`` are
completed to the cluster domain, and any other name (``shop.example.com``, ``*.example.com``)
is taken as written. Requests name their host in the Host/:authority header, with an optional
port. These functions are pure and cheap; they do no DNS look-ups.
"""

from __future__ import annotations

CLUSTER_DOMAIN = "cluster.local"
_SERVICE_SUFFIX = f".svc.{CLUSTER_DOMAIN}"


def qualify(host: str, namespace: str) -> str:
    """The full name of ``host`` written in a rule of ``namespace``.

    As Istio (pilot's short-name rule): a name without a dot is relative to the rule's
    namespace, "reviews" -> "reviews.<namespace>.svc.cluster.local"; a dotted name is taken as
    written (lower case, a trailing dot removed), so "reviews.other" is not the Service
    reviews of namespace other (write "reviews.other.svc.cluster.local") and "example.com"
    stays an outside name, as a Gateway's hosts need. One convenience beyond Istio:
    "reviews.other.svc" gets the cluster domain added (no public name ends in ".svc").
    """
    name = host.strip().lower().rstrip(".")
    if "*" in name or name.endswith(_SERVICE_SUFFIX):
        return name
    if "." not in name:
        return service_host(namespace, name)
    if name.endswith(".svc") and name.count(".") == 2:
        return f"{name}.{CLUSTER_DOMAIN}"
    return name


def service_host(namespace: str, name: str) -> str:
    """The full name of the Service ``name`` of ``namespace``: "name.namespace.svc.cluster.local"
    (the inverse of ``service_of``)."""
    return f"{name}.{namespace}{_SERVICE_SUFFIX}"


def service_of(fqdn: str) -> tuple[str, str] | None:
    """(namespace, name) of the Service "name.namespace.svc.cluster.local", else None."""
    if not fqdn.endswith(_SERVICE_SUFFIX):
        return None
    name, dot, namespace = fqdn[: -len(_SERVICE_SUFFIX)].partition(".")
    if not dot or not name or not namespace or "." in namespace or "*" in fqdn:
        return None
    return (namespace, name)


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``host`` is named by ``pattern``: the same name, "*" (every host), or
    "*.example.com" (any name ending in ".example.com", not "example.com" itself). Both are
    lower case, without a port."""
    if pattern == host or pattern == "*":
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def authority_host(value: bytes) -> str:
    """The host of a Host/:authority header value, without its port, lower case:
    b"Shop.Example.com:8080" -> "shop.example.com", b"[::1]:80" -> "::1"."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")
