"""A pod's DNS settings (``spec.dnsConfig``) and the ``/etc/resolv.conf`` and ``/etc/hosts`` the
kubelet writes from them.

A pod with ``dnsPolicy: ClusterFirst`` asks the cluster DNS (the kube-dns Service's address) and
tries the search list ``<ns>.svc.<zone> svc.<zone> <zone>`` with ``ndots:5`` first, so ``web``,
``web.default`` and ``web.default.svc.cluster.local`` all name the Service ``web``. Its
``/etc/hosts`` maps the pod's own name to its IP. The daemon writes both files for workloads
(:mod:`funcmesh.runtime.workload_dns`) and ``funcmesh exec`` writes them again from the Pod
object, so both render here. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

CLUSTER_DOMAIN: Final = "cluster.local"
NDOTS: Final = 5
MAX_NAMESERVERS: Final = 3  # what the resolver reads (glibc MAXNS)
MAX_HOSTNAME_CHARS: Final = 63
HOSTS_HEADER: Final = (
    "# funcmesh-managed hosts file.\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def search_domains(namespace: str, zone: str = CLUSTER_DOMAIN) -> list[str]:
    """The search list of a pod in ``namespace``, as the kubelet writes it."""
    return [f"{namespace}.svc.{zone}", f"svc.{zone}", zone]


def cluster_first_config(
    namespace: str, nameserver: str, zone: str = CLUSTER_DOMAIN
) -> dict[str, Any]:
    """The ``spec.dnsConfig`` of a ClusterFirst pod: the cluster DNS and its search list."""
    return {
        "nameservers": [nameserver],
        "searches": search_domains(namespace, zone),
        "options": [{"name": "ndots", "value": str(NDOTS)}],
    }


def resolv_conf(dns_config: Mapping[str, Any]) -> str:
    """The ``/etc/resolv.conf`` of a pod with this ``dnsConfig``; entries that are not strings
    (a hand-edited object) are skipped, not written."""
    nameservers = _strings(dns_config.get("nameservers"))[:MAX_NAMESERVERS]
    searches = _strings(dns_config.get("searches"))
    options = [_option(item) for item in dns_config.get("options") or () if _option(item)]
    lines = [f"search {' '.join(searches)}"] if searches else []
    lines += [f"nameserver {address}" for address in nameservers]
    if options:
        lines.append(f"options {' '.join(options)}")
    return "".join(f"{line}\n" for line in lines)


def pod_hostname(pod_name: str, hostname: str | None = None) -> str:
    """The host name a pod's processes see: ``spec.hostname``, else the pod's name cut to 63
    characters without a trailing ``-`` or ``.``, as the kubelet does."""
    return hostname or pod_name[:MAX_HOSTNAME_CHARS].rstrip("-.")


def pod_hosts(
    *,
    ip: str,
    pod_name: str,
    namespace: str,
    hostname: str | None = None,
    subdomain: str | None = None,
    zone: str = CLUSTER_DOMAIN,
) -> str:
    """The pod's ``/etc/hosts``: localhost, then the pod's own name (``spec.hostname`` when set,
    with its fully qualified name under a ``subdomain``) on its IP, as the kubelet writes it."""
    name = pod_hostname(pod_name, hostname)
    if subdomain:
        return f"{HOSTS_HEADER}{ip}\t{name}.{subdomain}.{namespace}.svc.{zone}\t{name}\n"
    return f"{HOSTS_HEADER}{ip}\t{name}\n"


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str) and _word(item)]


def _option(item: Any) -> str:
    """``name`` or ``name:value`` of one ``options`` entry; "" for a malformed one."""
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        return ""
    name, value = item["name"], item.get("value")
    if not _word(name):
        return ""
    return f"{name}:{value}" if isinstance(value, str) and _word(value) else name


def _word(text: str) -> bool:
    """Whether ``text`` fits in a resolv.conf line as one word."""
    return bool(text) and text.isprintable() and " " not in text
