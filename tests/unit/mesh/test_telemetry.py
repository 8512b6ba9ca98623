"""Istio's metrics as Prometheus scrapes them after some requests through the mesh."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from funcmesh.mesh.access_lines import LINE_FIELDS, line_values
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.telemetry import (
    LABELS,
    NO_HEALTHY_UPSTREAM,
    SETTLE_AFTER_S,
    UPSTREAM_REQUEST_TIMEOUT,
    RequestRecord,
    Telemetry,
    istio_labels,
    rbac_denied_details,
    response_flags,
    series_key,
    spiffe_id,
)

HELLO = RequestRecord(
    source_workload="caller",
    source_namespace="default",
    source_principal="cluster.local/ns/default/sa/default",
    source_app="caller",
    destination_service="hello.default.svc.cluster.local",
    destination_service_name="hello",
    destination_service_namespace="default",
    destination_workload="hello",
    destination_workload_namespace="default",
    destination_app="hello",
    destination_version="v1",
    response_code=200,
    connection_security_policy="mutual_tls",
    duration_s=0.003,
    bytes_received=120,
    bytes_sent=700,
)


def scrape(registry: prometheus_client.CollectorRegistry) -> dict[str, list[Sample]]:
    text = prometheus_client.generate_latest(registry).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def only(samples: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    found = only(samples, name, **labels)
    assert len(found) == 1, found
    return found[0].value


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry()


def test_requests_are_counted_per_label_combination(
    registry: prometheus_client.CollectorRegistry,
) -> None:
    telemetry = Telemetry(registry, None)
    for _ in range(3):
        telemetry.record(HELLO)
    telemetry.record(dataclasses.replace(HELLO, response_code=503, response_flags="UH"))
    families = scrape(registry)
    requests = families["istio_requests"]
    assert value(requests, "istio_requests_total", response_code="200") == 3
    assert value(requests, "istio_requests_total", response_code="503", response_flags="UH") == 1
    assert telemetry.series_count == 2


def test_labels_are_istios_with_its_defaults(registry: prometheus_client.CollectorRegistry) -> None:
    Telemetry(registry, None).record(HELLO)
    (sample,) = scrape(registry)["istio_requests"]
    assert set(sample.labels) == set(LABELS)
    assert sample.labels == {
        "reporter": "destination",
        "source_workload": "caller",
        "source_workload_namespace": "default",
        "source_principal": "spiffe://cluster.local/ns/default/sa/default",
        "source_app": "caller",
        "source_version": "unknown",
        "source_canonical_service": "caller",
        "source_canonical_revision": "latest",
        "source_cluster": "Kubernetes",
        "destination_workload": "hello",
        "destination_workload_namespace": "default",
        "destination_principal": "unknown",
        "destination_app": "hello",
        "destination_version": "v1",
        "destination_service": "hello.default.svc.cluster.local",
        "destination_service_name": "hello",
        "destination_service_namespace": "default",
        "destination_canonical_service": "hello",
        "destination_canonical_revision": "v1",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
        "response_code": "200",
        "grpc_response_status": "",
    }


def test_a_caller_from_outside_the_mesh_is_unknown(
    registry: prometheus_client.CollectorRegistry,
) -> None:
    Telemetry(registry, None).record(RequestRecord(response_code=404, response_flags="NR"))
    (sample,) = scrape(registry)["istio_requests"]
    labels = sample.labels
    assert labels["source_workload"] == labels["source_principal"] == "unknown"
    assert labels["source_canonical_service"] == labels["source_cluster"] == "unknown"
    assert labels["destination_service"] == "unknown"
    assert (labels["response_code"], labels["response_flags"]) == ("404", "NR")
    assert labels["connection_security_policy"] == "unknown"


@pytest.mark.parametrize(
    ("duration_s", "le"),
    [
        (0.0002, "0.5"),  # 0.2 ms
        (0.0005, "0.5"),  # a bound is inclusive
        (0.0007, "1.0"),
        (0.003, "5.0"),
        (0.2, "250.0"),
        (45.0, "60000.0"),
        (7200.0, "+Inf"),
    ],
)
def test_durations_land_in_istios_millisecond_buckets(
    registry: prometheus_client.CollectorRegistry, duration_s: float, le: str
) -> None:
    Telemetry(registry, None).record(dataclasses.replace(HELLO, duration_s=duration_s))
    samples = scrape(registry)["istio_request_duration_milliseconds"]
    buckets = {
        s.labels["le"]: s.value for s in only(samples, "istio_request_duration_milliseconds_bucket")
    }
    assert len(buckets) == 20  # Envoy's 19 default bounds and +Inf
    bounds = list(buckets)
    first_with_it = bounds.index(le)
    assert all(buckets[b] == 0 for b in bounds[:first_with_it])
    assert all(buckets[b] == 1 for b in bounds[first_with_it:])
    assert value(samples, "istio_request_duration_milliseconds_sum") == pytest.approx(
        duration_s * 1000
    )
    assert value(samples, "istio_request_duration_milliseconds_count") == 1


def test_sizes_are_histograms_in_bytes(registry: prometheus_client.CollectorRegistry) -> None:
    telemetry = Telemetry(registry, None)
    telemetry.record(dataclasses.replace(HELLO, bytes_received=0, bytes_sent=700))
    telemetry.record(dataclasses.replace(HELLO, bytes_received=3000, bytes_sent=2_000_000))
    families = scrape(registry)
    received = families["istio_request_bytes"]
    sent = families["istio_response_bytes"]
    assert value(received, "istio_request_bytes_bucket", le="0.5") == 1
    assert value(received, "istio_request_bytes_bucket", le="2500.0") == 1
    assert value(received, "istio_request_bytes_bucket", le="5000.0") == 2
    assert value(received, "istio_request_bytes_sum") == 3000
    assert value(sent, "istio_response_bytes_bucket", le="1000.0") == 1
    assert value(sent, "istio_response_bytes_bucket", le="1800000.0") == 1
    assert value(sent, "istio_response_bytes_bucket", le="3600000.0") == 2
    assert value(sent, "istio_response_bytes_count") == 2


def test_each_record_reaches_the_access_log(registry: prometheus_client.CollectorRegistry) -> None:
    log = AccessLog()
    telemetry = Telemetry(registry, log)
    telemetry.record(dataclasses.replace(HELLO, method=b"GET", path=b"/a"))
    telemetry.record(dataclasses.replace(HELLO, method=b"POST", path=b"/b"))
    assert [line.split('"')[1] for _, line in log.lines()] == [
        "GET /a HTTP/1.1",
        "POST /b HTTP/1.1",
    ]


def test_on_a_loop_requests_are_counted_and_logged_in_a_batch_on_its_next_turn(
    registry: prometheus_client.CollectorRegistry,
) -> None:
    timers: list[tuple[float, Callable[[], None]]] = []
    log = AccessLog()
    telemetry = Telemetry(
        registry, log, call_later=lambda delay, call: timers.append((delay, call))
    )
    for path in (b"/a", b"/b", b"/c"):
        telemetry.record(dataclasses.replace(HELLO, method=b"GET", path=path))
    assert [delay for delay, _ in timers] == [SETTLE_AFTER_S]  # one callback for the batch
    timers.pop()[1]()
    assert [line.split('"')[1] for _, line in log.lines()] == [
        "GET /a HTTP/1.1",
        "GET /b HTTP/1.1",
        "GET /c HTTP/1.1",
    ]
    telemetry.record(HELLO)  # a scrape counts what is waiting
    assert value(scrape(registry)["istio_requests"], "istio_requests_total") == 4
    telemetry.record(HELLO)  # and so does a reader of the access log
    assert len(log.lines()) == 5
    for _, settle in timers:  # the batches' timers, their requests already taken
        settle()
    assert len(log.lines()) == 5
    assert value(scrape(registry)["istio_requests"], "istio_requests_total") == 5


def test_nothing_is_exported_before_the_first_request(
    registry: prometheus_client.CollectorRegistry,
) -> None:
    Telemetry(registry, None)
    families = scrape(registry)
    assert families["istio_requests"] == []
    assert families["istio_request_duration_milliseconds"] == []


@pytest.mark.parametrize(
    ("flags", "expected"),
    [((), "-"), ((NO_HEALTHY_UPSTREAM,), "UH"), (("URX", UPSTREAM_REQUEST_TIMEOUT), "URX,UT")],
)
def test_response_flags_are_joined_as_envoy_writes_them(
    flags: tuple[str, ...], expected: str
) -> None:
    assert response_flags(*flags) == expected


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b"),
        ("spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b"),
        ("unknown", "unknown"),
        ("", "unknown"),
    ],
)
def test_principals_are_spiffe_ids(principal: str, expected: str) -> None:
    assert spiffe_id(principal) == expected


def test_rbac_denial_details_name_the_policy() -> None:
    assert rbac_denied_details() == "rbac_access_denied_matched_policy[none]"
    assert (
        rbac_denied_details("ns[default]-policy[deny-post]-rule[0]")
        == "rbac_access_denied_matched_policy[ns[default]-policy[deny-post]-rule[0]]"
    )


def distinct_record() -> tuple[RequestRecord, dict[str, object]]:
    """A record whose every field holds a value of its own type that no other field holds."""
    samples: dict[type, Callable[[int], object]] = {
        float: lambda i: i + 0.5,
        bytes: lambda i: b"b%d" % i,
        str: lambda i: f"s{i}",
        int: lambda i: 1000 + i,
    }
    values: dict[str, object] = {}
    for index, field in enumerate(dataclasses.fields(RequestRecord)):
        kind = field.type  # a string from the source, the type itself from the compiled class
        if isinstance(kind, str):
            kind = {"bytes": bytes, "str": str, "int": int}.get(kind, float)
        values[field.name] = samples.get(kind, samples[float])(index)
    return RequestRecord(**values), values  # type: ignore[arg-type]


def test_a_record_defaults_every_field_and_refuses_unknown_ones() -> None:
    fresh = RequestRecord()
    assert (fresh.protocol, fresh.reporter, fresh.upstream_host) == (
        b"HTTP/1.1",
        "destination",
        "-",
    )
    assert (fresh.response_code, fresh.upstream_service_time_s) == (0, None)
    assert dataclasses.replace(fresh, response_code=7).response_code == 7
    with pytest.raises(TypeError):
        RequestRecord(no_such_field=1)  # type: ignore[call-arg]


def test_the_written_out_readers_read_the_fields_they_name() -> None:
    """``line_values`` and ``series_key`` list fields by hand (for speed): a slip shows here."""
    record, values = distinct_record()
    assert line_values(record) == tuple(values[name] for name in LINE_FIELDS)
    key = series_key(record)
    assert len(set(key)) == len(key)  # no field read twice
    for name, value in values.items():  # a field the labels show is part of the key
        other = "x" if isinstance(value, str) else b"x" if isinstance(value, bytes) else value + 1  # type: ignore[operator]
        changed = dataclasses.replace(record, **{name: other})
        if istio_labels(changed) != istio_labels(record):
            assert series_key(changed) != key, name
