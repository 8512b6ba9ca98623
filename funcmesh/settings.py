"""Settings of the daemon and the CLI, as frozen values.

This is the only module that reads environment variables, and it reads them from a mapping it is
given (``os.environ`` at the entry points, a plain dict in tests). It does no other I/O.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from funcmesh.errors import Invalid

DEFAULT_API_ADDR = "127.0.0.1:6443"
DEFAULT_GATEWAY_ADDR = "127.0.0.1:8080"
DEFAULT_GATEWAY_TLS_ADDR = "127.0.0.1:8443"
NATS_URL_SCHEMES = ("nats", "tls")
DEFAULT_SERVICE_CIDR = "127.96.0.0/16"
DEFAULT_DNS_ADDR = "127.0.0.1:5353"
DNS_PORT = 53
NO_DNS_UPSTREAM = "none"
OTLP_TRACES_PATH = "/v1/traces"


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A host and port to listen on or connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeSettings:
    """How instances are run."""

    pod_cidr: str = "127.128.0.0/16"
    service_cidr: str = DEFAULT_SERVICE_CIDR  # ClusterIPs; base + 10 is the kube-dns Service's
    worker_port: int = 8080
    max_queue_per_function: int = 1000
    queue_wait_s: float = 60.0
    log_bytes_per_function: int = 1 << 20
    restart_backoff_s: float = 10.0  # workloads: first back-off, doubling to 30x (kubelet's)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingSettings:
    """The mesh's spans: where they are exported and how many new traces are sampled."""

    otlp_endpoint: str | None = None  # OTLP/HTTP traces URL (…/v1/traces); None: no export
    sample_ratio: float = 1.0  # of new traces; an incoming sampled flag is always obeyed
    traces_per_second: float = 100.0  # new traces sampled at most (math.inf: no limit)
    enabled: bool = True  # FUNCMESH_TRACING=off: no spans, no trace context passed on


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    """Everything ``funcmesh up`` needs to know before it starts."""

    home: Path
    work_dir: Path | None = None  # where code and dependency environments go (see app)
    api_addr: Address
    gateway_addr: Address
    gateway_tls_addr: Address  # HTTPTriggers with a tls-secret, certificate chosen by SNI
    max_body_bytes: int = 10 << 20
    drain_s: float = 10.0
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    nats_url: str | None = None  # the NATS server NATSTriggers subscribe at; None: none
    dns_addr: Address = field(default_factory=lambda: parse_address(DEFAULT_DNS_ADDR, what=""))
    # where names outside cluster.local go: None: the machine's resolv.conf; (): refused
    dns_upstream: tuple[Address, ...] | None = None
    # plain Services' VIPs by kernel NAT (nftables) when root and nft work; FUNCMESH_VIP_NAT=off
    vip_nat: bool = True
    tracing: TracingSettings = field(default_factory=TracingSettings)
    access_log: bool = True  # the mesh's access log in memory; FUNCMESH_ACCESS_LOG=off
    access_log_file: bool = False  # and in $FUNCMESH_HOME/logs: FUNCMESH_ACCESS_LOG=file

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def kubeconfig_path(self) -> Path:
        return self.home / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.home / "pki"


def parse_address(text: str, *, what: str) -> Address:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6) or fail with a message naming ``what``."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise Invalid(f"{what} must be HOST:PORT, got {text!r}")
    return Address(host=host, port=int(port_text))


def default_home(env: Mapping[str, str]) -> Path:
    """``$FUNCMESH_HOME`` or ``~/.funcmesh``."""
    if env.get("FUNCMESH_HOME"):
        return Path(env["FUNCMESH_HOME"]).expanduser()
    return Path(env.get("HOME", "~")).expanduser() / ".funcmesh"


def load_daemon_settings(
    env: Mapping[str, str],
    *,
    api_addr: str | None = None,
    gateway_addr: str | None = None,
    nats_url: str | None = None,
    gateway_tls_addr: str | None = None,
    dns_addr: str | None = None,
    dns_upstream: Sequence[str] = (),
    otlp_endpoint: str | None = None,
) -> DaemonSettings:
    """Flags win over ``FUNCMESH_*`` variables, which win over the defaults."""
    api = api_addr or env.get("FUNCMESH_API_ADDR") or DEFAULT_API_ADDR
    gateway = gateway_addr or env.get("FUNCMESH_GATEWAY_ADDR") or DEFAULT_GATEWAY_ADDR
    gateway_tls = (
        gateway_tls_addr or env.get("FUNCMESH_GATEWAY_TLS_ADDR") or DEFAULT_GATEWAY_TLS_ADDR
    )
    work_dir = env.get("FUNCMESH_WORK_DIR")
    max_queue = env.get("FUNCMESH_MAX_QUEUE", "")
    if max_queue and not max_queue.isdigit():
        raise Invalid(f"FUNCMESH_MAX_QUEUE must be a whole number, got {max_queue!r}")
    runtime = (
        RuntimeSettings(max_queue_per_function=int(max_queue)) if max_queue else RuntimeSettings()
    )
    backoff = env.get("FUNCMESH_RESTART_BACKOFF_S")
    if backoff:
        runtime = replace(runtime, restart_backoff_s=parse_backoff_s(backoff))
    service_cidr = env.get("FUNCMESH_SERVICE_CIDR")
    if service_cidr:
        runtime = replace(runtime, service_cidr=parse_service_cidr(service_cidr, runtime.pod_cidr))
    nats = nats_url or env.get("FUNCMESH_NATS_URL")
    dns = dns_addr or env.get("FUNCMESH_DNS_ADDR") or DEFAULT_DNS_ADDR
    upstream = list(dns_upstream) or [env.get("FUNCMESH_DNS_UPSTREAM") or ""]
    access_log = parse_access_log(env.get("FUNCMESH_ACCESS_LOG", ""))
    return DaemonSettings(
        home=default_home(env),
        work_dir=Path(work_dir).expanduser() if work_dir else None,
        api_addr=parse_address(api, what="--api-addr"),
        gateway_addr=parse_address(gateway, what="--gateway-addr"),
        gateway_tls_addr=parse_address(gateway_tls, what="--gateway-tls-addr"),
        runtime=runtime,
        nats_url=parse_nats_url(nats) if nats else None,
        dns_addr=parse_address(dns, what="--dns-addr"),
        dns_upstream=parse_dns_upstream(upstream),
        vip_nat=parse_switch(env.get("FUNCMESH_VIP_NAT", ""), what="FUNCMESH_VIP_NAT"),
        tracing=load_tracing_settings(env, otlp_endpoint=otlp_endpoint),
        access_log=access_log != "off",
        access_log_file=access_log == "file",
    )


def load_tracing_settings(
    env: Mapping[str, str], *, otlp_endpoint: str | None = None
) -> TracingSettings:
    """``--otlp-endpoint`` (else ``FUNCMESH_OTLP_ENDPOINT``), ``FUNCMESH_TRACE_SAMPLE_RATIO``,
    ``FUNCMESH_TRACES_PER_SECOND`` and ``FUNCMESH_TRACING`` (on/off)."""
    endpoint = otlp_endpoint or env.get("FUNCMESH_OTLP_ENDPOINT")
    ratio = env.get("FUNCMESH_TRACE_SAMPLE_RATIO", "").strip()
    per_second = env.get("FUNCMESH_TRACES_PER_SECOND", "").strip()
    return TracingSettings(
        otlp_endpoint=parse_otlp_endpoint(endpoint) if endpoint else None,
        sample_ratio=parse_sample_ratio(ratio) if ratio else 1.0,
        traces_per_second=parse_traces_per_second(per_second) if per_second else 100.0,
        enabled=parse_switch(env.get("FUNCMESH_TRACING", ""), what="FUNCMESH_TRACING"),
    )


def parse_otlp_endpoint(text: str) -> str:
    """An OTLP/HTTP collector URL; a URL without a path gets the traces path ``/v1/traces``
    (``http://127.0.0.1:4318`` is a collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT)."""
    url = text.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or too big
    except ValueError as exc:
        raise Invalid(f"--otlp-endpoint must be http://HOST:PORT[/PATH]: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"--otlp-endpoint must be an http:// or https:// URL, got {text!r}")
    if parts.path in ("", "/"):
        return parts._replace(path=OTLP_TRACES_PATH).geturl()
    return url


def parse_sample_ratio(text: str) -> float:
    """``FUNCMESH_TRACE_SAMPLE_RATIO``: the share of new traces sampled, from 0 to 1."""
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise Invalid(f"FUNCMESH_TRACE_SAMPLE_RATIO must be a number from 0 to 1, got {text!r}")
    return ratio


def parse_traces_per_second(text: str) -> float:
    """``FUNCMESH_TRACES_PER_SECOND``: how many new traces are sampled a second at most, 0 or
    more; ``unlimited`` (or ``inf``) for no limit."""
    if text.lower() in ("unlimited", "inf"):
        return math.inf
    try:
        per_second = float(text)
    except ValueError:
        per_second = -1.0
    if not 0.0 <= per_second < math.inf:
        raise Invalid(
            f"FUNCMESH_TRACES_PER_SECOND must be a number of 0 or more or 'unlimited', got {text!r}"
        )
    return per_second


def parse_access_log(text: str) -> str:
    """``FUNCMESH_ACCESS_LOG``: ``on`` (the default: in memory, for ``funcmesh mesh logs``),
    ``file`` (also appended to ``$FUNCMESH_HOME/logs/mesh-access.log``) or ``off``."""
    if text.strip().lower() == "file":
        return "file"
    try:
        return "on" if parse_switch(text, what="FUNCMESH_ACCESS_LOG") else "off"
    except Invalid:
        raise Invalid(f"FUNCMESH_ACCESS_LOG must be on, file or off, got {text!r}") from None


def parse_switch(text: str, *, what: str) -> bool:
    """``on`` (the default, also ``auto``, ``1``, ``true``, ``yes``) or ``off`` (``0``,
    ``false``, ``no``)."""
    value = text.strip().lower()
    if value in ("", "on", "auto", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise Invalid(f"{what} must be on or off, got {text!r}")


def parse_dns_upstream(values: Sequence[str]) -> tuple[Address, ...] | None:
    """``--dns-upstream`` values (each ``IP[:PORT]``, or a comma list of them; ``none`` for no
    forwarding); None when none is given (the machine's resolv.conf decides)."""
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if not items:
        return None
    if [item.lower() for item in items] == [NO_DNS_UPSTREAM]:
        return ()
    return tuple(_parse_dns_server(item) for item in items)


def _parse_dns_server(text: str) -> Address:
    host, port = text, DNS_PORT
    if text.count(":") == 1 or text.startswith("["):  # IPv4:PORT or [IPv6]:PORT
        address = parse_address(text, what="--dns-upstream")
        host, port = address.host, address.port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(
            f"--dns-upstream must be IP[:PORT] (an address, not a name) or none, got {text!r}"
        ) from None
    return Address(host=host, port=port)


def parse_service_cidr(text: str, pod_cidr: str) -> str:
    """Check ``FUNCMESH_SERVICE_CIDR``: a network of at least 16 addresses (kube-dns takes the
    base + 10) that does not overlap the pod network."""
    try:
        network = ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise Invalid(
            f"FUNCMESH_SERVICE_CIDR must be a network like 127.96.0.0/16: {exc}"
        ) from None
    if not isinstance(network, ipaddress.IPv4Network) or not network.subnet_of(
        ipaddress.IPv4Network("127.0.0.0/8")
    ):
        raise Invalid(f"FUNCMESH_SERVICE_CIDR {network} must be inside 127.0.0.0/8 (local VIPs)")
    if network.num_addresses < 16:
        raise Invalid(f"FUNCMESH_SERVICE_CIDR {network} is too small: use 16 addresses or more")
    if network.overlaps(ipaddress.ip_network(pod_cidr)):
        raise Invalid(f"FUNCMESH_SERVICE_CIDR {network} overlaps the pod network {pod_cidr}")
    return str(network)


def parse_nats_url(text: str) -> str:
    """Check ``nats://[USER:PASSWORD@]HOST[:PORT]`` (or ``tls://``); the message never repeats
    credentials."""
    url = text.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or too big
    except ValueError as exc:
        raise Invalid(f"--nats-url must be nats://HOST:PORT: {exc}") from None
    if parts.scheme not in NATS_URL_SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        shown = f"{parts.scheme}://***@{url.rpartition('@')[2]}" if "@" in url else url
        raise Invalid(f"--nats-url must be nats://HOST:PORT (or tls://HOST:PORT), got {shown!r}")
    return url


def parse_backoff_s(text: str) -> float:
    """``FUNCMESH_RESTART_BACKOFF_S``: seconds, more than 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise Invalid(
            f"FUNCMESH_RESTART_BACKOFF_S must be a number of seconds above 0 (at most 3600), "
            f"got {text!r}"
        )
    return seconds
