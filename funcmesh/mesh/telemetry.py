"""Istio's standard metrics for every request through the mesh, and the hand-off to the access log.

The data plane fills one ``RequestRecord`` along a call and gives it to ``Telemetry.record``
at the end. Recording is the hot path (thousands of requests per second on two cores), so it is
one dict lookup keyed by the raw label values, a few integer updates and three ``bisect``
calls on plain attributes: no locks, no prometheus metric objects, no ``.labels()`` call. The
exported label values (Istio's spellings, defaults and derived labels) are computed once per
new series. Prometheus reads the numbers only when scraped, through one collector:

``istio_requests_total`` (counter), ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes`` (histograms), with Istio's labels (the set
istio/proxy's stats filter writes), unknown values as ``unknown``, both clusters
``Kubernetes`` (Istio's default cluster id) when the peer is known. funcmesh is the one hop
that is both ends of a call, so ``reporter`` is ``destination`` unless the data plane says
otherwise. Istio leaves histogram buckets to Envoy's defaults, the same for durations (ms)
and sizes (bytes), and so does this module.

Series are bounded by services x workloads x response codes x flags, which the objects of
the mesh bound: a label value never comes from a request's path, headers or body. Nothing
here logs, does I/O or reads the clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from funcmesh.mesh.access_log import AccessLog

CallLater = Callable[[float, Callable[[], None]], object]
# How long a finished request waits to be counted and logged: 0 is the loop's next turn, right
# after the answers of this one were written (see ``Telemetry.record``).
SETTLE_AFTER_S = 0.0

# Envoy's default histogram buckets, which Istio keeps for its histograms (durations in ms,
# sizes in bytes) unless a pod's ``sidecar.istio.io/statsHistogramBuckets`` says otherwise.
# Typed as a tuple of any length and Final: compiled, a fixed-length tuple type would be a C
# struct boxed into a new tuple (19 numbers) at each use, and a module name not Final a dict
# lookup.
ENVOY_DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip
DURATION_BUCKETS_MS: Final[tuple[float, ...]] = ENVOY_DEFAULT_BUCKETS
BYTES_BUCKETS: Final[tuple[float, ...]] = ENVOY_DEFAULT_BUCKETS
UNKNOWN = "unknown"
DEFAULT_CLUSTER = "Kubernetes"
LATEST_REVISION = "latest"
SPIFFE_PREFIX = "spiffe://"
LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "response_code",
    "grpc_response_status",
)

# Envoy's %RESPONSE_FLAGS% short names: several are joined with "," (``response_flags``).
NO_FLAGS = "-"
NO_HEALTHY_UPSTREAM = "UH"
UPSTREAM_CONNECTION_FAILURE = "UF"
UPSTREAM_OVERFLOW = "UO"
NO_ROUTE = "NR"
UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
UPSTREAM_REQUEST_TIMEOUT = "UT"
DELAY_INJECTED = "DI"
FAULT_INJECTED = "FI"
DOWNSTREAM_CONNECTION_TERMINATION = "DC"
UPSTREAM_CONNECTION_TERMINATION = "UC"
UPSTREAM_REMOTE_RESET = "UR"
# Envoy's %RESPONSE_CODE_DETAILS% for the common outcomes (one token, no whitespace). A call
# that an AuthorizationPolicy denies has no response flag in Envoy: its 403 says why here.
VIA_UPSTREAM = "via_upstream"
ROUTE_NOT_FOUND = "route_not_found"
NO_HEALTHY_UPSTREAM_DETAILS = "no_healthy_upstream"
RESPONSE_TIMEOUT = "response_timeout"
PER_TRY_TIMEOUT = "upstream_per_try_timeout"
FAULT_FILTER_ABORT = "fault_filter_abort"
CONNECTION_FAILURE_DETAILS = "upstream_reset_before_response_started{connection_failure}"
CONNECTION_TERMINATION_DETAILS = "upstream_reset_before_response_started{connection_termination}"
OVERFLOW_DETAILS = "upstream_reset_before_response_started{overflow}"
DOWNSTREAM_DISCONNECT = "downstream_remote_disconnect"


def response_flags(*flags: str) -> str:
    """``%RESPONSE_FLAGS%`` of a call: the flags joined with ",", or "-" without any."""
    return ",".join(flags) if flags else NO_FLAGS


def rbac_denied_details(policy_id: str | None = None) -> str:
    """Envoy's details of a 403 from the RBAC filter: the DENY policy that matched, or
    ``[none]`` when no ALLOW policy did."""
    return f"rbac_access_denied_matched_policy[{policy_id or 'none'}]"


@dataclass(kw_only=True, init=False)
class RequestRecord:
    """What the data plane learns about one request along its way; mutable, one per request.

    Its ``__init__`` is written out (the dataclass makes none): compiled (``funcmesh.native``),
    the record is a C struct that this ``__init__`` fills in C, where mypyc leaves a dataclass's
    generated ``__init__`` interpreted (38 attribute stores through the generic path, about
    16,000 instructions per call). The dataclass gives it ``fields``, ``replace``, ``==`` and
    a ``repr``.

    Bytes are as they arrived on the wire (the access log shows them without decoding them
    twice); addresses are ``ip:port``; an empty value is written "-" in the access log.
    """

    start_wall_s: float  # time.time() at arrival: the access log's START_TIME
    method: bytes
    path: bytes  # the original request target, before any rewrite
    protocol: bytes
    authority: bytes
    user_agent: bytes
    forwarded_for: bytes
    request_id: bytes
    downstream_remote: str
    downstream_local: str
    requested_server_name: str  # the SNI of an mTLS connection
    reporter: str
    source_workload: str
    source_namespace: str
    source_principal: str  # cluster.local/ns/NS/sa/SA (spiffe:// is added)
    source_app: str  # the source workload's ``app`` label
    source_version: str  # its ``version`` label
    destination_service: str  # FQDN: hello.default.svc.cluster.local
    destination_service_name: str
    destination_service_namespace: str
    destination_workload: str
    destination_workload_namespace: str
    destination_principal: str
    destination_app: str
    destination_version: str
    upstream_host: str
    upstream_local: str
    upstream_cluster: str  # outbound|8080|v1|hello.default.svc.cluster.local
    upstream_transport_failure_reason: str
    route_name: str
    response_code: int  # 0: no response was sent
    response_flags: str
    response_code_details: str
    bytes_received: int
    bytes_sent: int
    duration_s: float
    upstream_service_time_s: float | None
    connection_security_policy: str  # "none" or "mutual_tls" once known

    def __init__(
        self,
        *,
        start_wall_s: float = 0.0,
        method: bytes = b"",
        path: bytes = b"",
        protocol: bytes = b"HTTP/1.1",
        authority: bytes = b"",
        user_agent: bytes = b"",
        forwarded_for: bytes = b"",
        request_id: bytes = b"",
        downstream_remote: str = "",
        downstream_local: str = "",
        requested_server_name: str = "",
        reporter: str = "destination",
        source_workload: str = UNKNOWN,
        source_namespace: str = UNKNOWN,
        source_principal: str = UNKNOWN,
        source_app: str = UNKNOWN,
        source_version: str = UNKNOWN,
        destination_service: str = UNKNOWN,
        destination_service_name: str = UNKNOWN,
        destination_service_namespace: str = UNKNOWN,
        destination_workload: str = UNKNOWN,
        destination_workload_namespace: str = UNKNOWN,
        destination_principal: str = UNKNOWN,
        destination_app: str = UNKNOWN,
        destination_version: str = UNKNOWN,
        upstream_host: str = "-",
        upstream_local: str = "",
        upstream_cluster: str = "-",
        upstream_transport_failure_reason: str = "",
        route_name: str = "-",
        response_code: int = 0,
        response_flags: str = NO_FLAGS,
        response_code_details: str = "-",
        bytes_received: int = 0,
        bytes_sent: int = 0,
        duration_s: float = 0.0,
        upstream_service_time_s: float | None = None,
        connection_security_policy: str = UNKNOWN,
    ) -> None:
        self.start_wall_s = start_wall_s
        self.method = method
        self.path = path
        self.protocol = protocol
        self.authority = authority
        self.user_agent = user_agent
        self.forwarded_for = forwarded_for
        self.request_id = request_id
        self.downstream_remote = downstream_remote
        self.downstream_local = downstream_local
        self.requested_server_name = requested_server_name
        self.reporter = reporter
        self.source_workload = source_workload
        self.source_namespace = source_namespace
        self.source_principal = source_principal
        self.source_app = source_app
        self.source_version = source_version
        self.destination_service = destination_service
        self.destination_service_name = destination_service_name
        self.destination_service_namespace = destination_service_namespace
        self.destination_workload = destination_workload
        self.destination_workload_namespace = destination_workload_namespace
        self.destination_principal = destination_principal
        self.destination_app = destination_app
        self.destination_version = destination_version
        self.upstream_host = upstream_host
        self.upstream_local = upstream_local
        self.upstream_cluster = upstream_cluster
        self.upstream_transport_failure_reason = upstream_transport_failure_reason
        self.route_name = route_name
        self.response_code = response_code
        self.response_flags = response_flags
        self.response_code_details = response_code_details
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        self.duration_s = duration_s
        self.upstream_service_time_s = upstream_service_time_s
        self.connection_security_policy = connection_security_policy


def series_key(r: RequestRecord) -> tuple[object, ...]:
    """What tells one series from another: the record fields the labels derive from."""
    return (
        r.reporter,
        r.source_workload,
        r.source_namespace,
        r.source_principal,
        r.source_app,
        r.source_version,
        r.destination_workload,
        r.destination_workload_namespace,
        r.destination_principal,
        r.destination_app,
        r.destination_version,
        r.destination_service,
        r.destination_service_name,
        r.destination_service_namespace,
        r.response_code,
        r.response_flags,
        r.connection_security_policy,
    )


class _Series:
    """Counts of one label combination: requests and three histograms (bucket counts not yet
    cumulative; the last one is +Inf)."""

    __slots__ = (
        "duration_counts",
        "duration_sum_ms",
        "labels",
        "request_bytes_counts",
        "request_bytes_sum",
        "requests",
        "response_bytes_counts",
        "response_bytes_sum",
    )

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.requests = 0
        self.duration_sum_ms = 0.0
        self.request_bytes_sum = 0
        self.response_bytes_sum = 0
        self.duration_counts = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.request_bytes_counts = [0] * (len(BYTES_BUCKETS) + 1)
        self.response_bytes_counts = [0] * (len(BYTES_BUCKETS) + 1)


class Telemetry:
    """Istio's metrics of every request, exported when scraped, plus the access log."""

    def __init__(
        self,
        registry: CollectorRegistry,
        access_log: AccessLog | None,
        *,
        call_later: CallLater | None = None,
        settle_after_s: float = SETTLE_AFTER_S,
    ) -> None:
        self._series: dict[tuple[object, ...], _Series] = {}
        self._access_log = access_log
        self._call_later = call_later
        self._settle_after_s = settle_after_s
        self._pending: list[RequestRecord] = []
        if access_log is not None:  # its readers see every request taken so far
            access_log.before_read = self.settle
        registry.register(self)  # a collector: Prometheus calls collect() when scraped

    def record(self, record: RequestRecord) -> None:
        """Take one finished request (the hot path). With ``call_later`` (the event loop's),
        it is counted and logged ``settle_after_s`` later with the others that finished
        meanwhile, off every request's way: a batch costs less per request than one at a time.
        The default, the loop's next turn, settles while the daemon is still awake from
        writing the answer. At a low rate that is when no request is waiting. A 10 ms timer
        (used until session 10) fired into an idle loop, and the requests that arrived while
        it ran waited for it: +0.02-0.03 ms at the mesh's p90 and p99 at 1,000 requests/s
        (docs/benchmarks.md). Reading the metrics or the access log settles first, so no
        reader misses a request. Without ``call_later``, at once."""
        pending = self._pending
        pending.append(record)
        if len(pending) == 1:
            if self._call_later is None:
                self.settle()
            else:
                self._call_later(self._settle_after_s, self.settle)

    def settle(self) -> None:
        """Count and log the requests taken since the last time (before metrics are read, and
        before the daemon stops). One loop with no call per request: this is the hot part."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        all_series, bisect_left = self._series, bisect.bisect_left
        for r in pending:
            key = series_key(r)
            series = all_series.get(key)
            if series is None:
                series = all_series[key] = _Series(istio_labels(r))
            series.requests += 1
            duration_ms = r.duration_s * 1000.0
            series.duration_sum_ms += duration_ms
            series.duration_counts[bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
            received, sent = r.bytes_received, r.bytes_sent
            series.request_bytes_sum += received
            series.request_bytes_counts[bisect_left(BYTES_BUCKETS, received)] += 1
            series.response_bytes_sum += sent
            series.response_bytes_counts[bisect_left(BYTES_BUCKETS, sent)] += 1
        if self._access_log is not None:
            self._access_log.extend(pending)

    @property
    def series_count(self) -> int:
        self.settle()
        return len(self._series)

    def collect(self) -> Iterator[Metric]:
        self.settle()
        requests = CounterMetricFamily(
            "istio_requests_total", "Requests through the mesh", labels=LABELS
        )
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds",
            "Time from a request's arrival to the end of its answer, in milliseconds",
            labels=LABELS,
        )
        request_bytes = HistogramMetricFamily(
            "istio_request_bytes", "Bytes of a request as received, headers included", labels=LABELS
        )
        response_bytes = HistogramMetricFamily(
            "istio_response_bytes", "Bytes of an answer as sent, headers included", labels=LABELS
        )
        for series in list(self._series.values()):
            labels = series.labels
            requests.add_metric(labels, series.requests)
            duration.add_metric(
                labels,
                cumulative_buckets(DURATION_BUCKETS_MS, series.duration_counts),
                series.duration_sum_ms,
            )
            request_bytes.add_metric(
                labels,
                cumulative_buckets(BYTES_BUCKETS, series.request_bytes_counts),
                series.request_bytes_sum,
            )
            response_bytes.add_metric(
                labels,
                cumulative_buckets(BYTES_BUCKETS, series.response_bytes_counts),
                series.response_bytes_sum,
            )
        yield from (requests, duration, request_bytes, response_bytes)


def istio_labels(record: RequestRecord) -> list[str]:
    """The values of ``LABELS`` for a record, as Istio's stats filter derives them.

    A canonical service is the ``app`` label, else the workload's name; a canonical revision
    the ``version`` label, else ``latest``. A principal is a SPIFFE id. A source that funcmesh
    could not identify has cluster ``unknown``, as Istio reports a peer without metadata.
    """
    r = record
    source_known = r.source_workload != UNKNOWN
    return [
        r.reporter,
        r.source_workload,
        r.source_namespace,
        spiffe_id(r.source_principal),
        r.source_app,
        r.source_version,
        _canonical_service(r.source_app, r.source_workload),
        _canonical_revision(r.source_version),
        DEFAULT_CLUSTER if source_known else UNKNOWN,
        r.destination_workload,
        r.destination_workload_namespace,
        spiffe_id(r.destination_principal),
        r.destination_app,
        r.destination_version,
        r.destination_service,
        r.destination_service_name,
        r.destination_service_namespace,
        _canonical_service(r.destination_app, r.destination_workload),
        _canonical_revision(r.destination_version),
        DEFAULT_CLUSTER,
        "http",  # funcmesh's data plane speaks HTTP/1.1 only, never gRPC framing
        r.response_flags or NO_FLAGS,
        r.connection_security_policy,
        str(r.response_code),
        "",  # grpc_response_status: empty for HTTP, as Istio writes it
    ]


def spiffe_id(principal: str) -> str:
    """``cluster.local/ns/NS/sa/SA`` (AuthorizationPolicy's spelling) as the certificate's
    URI SAN ``spiffe://cluster.local/ns/NS/sa/SA``, which Istio's metrics show."""
    if principal in ("", UNKNOWN) or principal.startswith(SPIFFE_PREFIX):
        return principal or UNKNOWN
    return SPIFFE_PREFIX + principal


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, int]]:
    """Prometheus ``le`` buckets: counts at or below each bound, then +Inf."""
    total, buckets = 0, []
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
    return buckets


def _canonical_service(app: str, workload: str) -> str:
    return app if app != UNKNOWN else workload


def _canonical_revision(version: str) -> str:
    return version if version != UNKNOWN else LATEST_REVISION
