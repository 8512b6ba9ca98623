"""OTLP/HTTP export of the mesh's spans to a real HTTP receiver on loopback, which decodes each
POST /v1/traces with opentelemetry-proto as a collector would."""

from __future__ import annotations

import http.server
import queue
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from funcmesh.errors import Invalid
from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.mesh.trace_store import TraceStore
from funcmesh.mesh.tracing import Tracer
from funcmesh.mesh.tracing_export import OtlpExporter

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
DEADLINE_S = 10.0


class Collector(http.server.ThreadingHTTPServer):
    """Takes OTLP/HTTP protobuf posts; each decoded request lands in ``received``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: queue.Queue[tuple[str, str, ExportTraceServiceRequest]] = queue.Queue()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.received.put((self.path, self.headers["Content-Type"], request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(DEADLINE_S)


def record(service: str, workload: str, status: int) -> RequestRecord:
    return RequestRecord(
        method=b"GET",
        path=f"/function/{service}".encode(),
        authority=f"{service}.default:8080".encode(),
        destination_service=f"{service}.default.svc.cluster.local",
        destination_service_name=service,
        destination_service_namespace="default",
        destination_workload=workload,
        upstream_cluster=f"outbound|8080||{service}.default.svc.cluster.local",
        response_code=status,
        duration_s=0.004,
    )


def spans_by_service(request: ExportTraceServiceRequest) -> dict[str, list[ProtoSpan]]:
    found: dict[str, list[ProtoSpan]] = {}
    for resource_spans in request.resource_spans:
        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            assert scope_spans.scope.name == "funcmesh.mesh"
            found.setdefault(attributes["service.name"], []).extend(scope_spans.spans)
    return found


def test_finished_spans_reach_the_collector_as_otlp(collector: Collector) -> None:
    exporter = OtlpExporter(collector.url, schedule_delay_ms=60_000)  # sent on flush only
    try:
        tracer = Tracer(TraceStore(), exporter=exporter)
        caller = tracer.start([(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())])
        callee = tracer.start(
            [(b"traceparent", b"00-%s-%s-01" % (TRACE.encode(), caller.span_id.hex().encode()))]
        )
        tracer.finish_call(callee, record("world", "world", 200))
        tracer.finish_call(caller, record("hello", "hello", 502))
        assert exporter.flush()
        path, content_type, request = collector.received.get(timeout=DEADLINE_S)
    finally:
        exporter.close()
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    services = spans_by_service(request)
    assert sorted(services) == ["hello.default", "world.default"]  # as Istio names services
    (hello,) = services["hello.default"]
    (world,) = services["world.default"]
    assert hello.trace_id.hex() == world.trace_id.hex() == TRACE
    assert hello.parent_span_id.hex() == PARENT
    assert world.parent_span_id == hello.span_id == caller.span_id
    assert hello.name == "hello.default.svc.cluster.local:8080/*"
    assert hello.kind == ProtoSpan.SPAN_KIND_SERVER
    assert hello.end_time_unix_nano - hello.start_time_unix_nano == 4_000_000
    assert hello.status.code == Status.STATUS_CODE_ERROR  # a 5xx
    assert world.status.code == Status.STATUS_CODE_UNSET
    attributes = {a.key: a.value for a in hello.attributes}
    assert attributes["http.response.status_code"].int_value == 502
    assert attributes["url.path"].string_value == "/function/hello"
    assert attributes["funcmesh.workload"].string_value == "hello"


def test_spans_are_sent_by_the_batch_thread_without_a_flush(collector: Collector) -> None:
    exporter = OtlpExporter(collector.url, schedule_delay_ms=50)
    try:
        tracer = Tracer(None, exporter=exporter)
        tracer.finish_call(tracer.start([]), record("hello", "hello", 200))
        _, _, request = collector.received.get(timeout=DEADLINE_S)
    finally:
        exporter.close()
    assert [len(spans) for spans in spans_by_service(request).values()] == [1]


def test_a_collector_that_is_down_costs_the_caller_nothing() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = OtlpExporter(f"http://127.0.0.1:{port}/v1/traces", timeout_s=0.5)
    tracer = Tracer(None, exporter=exporter)
    started = time.monotonic()
    for _ in range(100):
        tracer.finish_call(tracer.start([]), record("hello", "hello", 200))
    assert time.monotonic() - started < 0.5  # queued, never sent from the caller's thread
    exporter.close()  # gives up after its timeout
    exporter.export(tracer.start([]))  # after close: dropped quietly


def test_an_endpoint_must_be_http() -> None:
    with pytest.raises(Invalid, match="http:// or https://"):
        OtlpExporter("grpc://127.0.0.1:4317")


def test_closing_with_a_collector_that_never_answers_is_bounded() -> None:
    with socket.socket() as silent:  # connections complete in the backlog, nothing answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"
        exporter = OtlpExporter(url, timeout_s=30, schedule_delay_ms=10)
        tracer = Tracer(None, exporter=exporter)
        tracer.finish_call(tracer.start([]), record("hello", "hello", 200))
        time.sleep(0.1)  # let the batch thread start its (hopeless) export
        started = time.monotonic()
        exporter.close(timeout_s=0.3)
        assert time.monotonic() - started < 1.0


def test_a_full_queue_warns_once_not_per_span(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:  # the batch thread hangs on its first export
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"
        exporter = OtlpExporter(url, timeout_s=30, max_queue_spans=2)
        try:
            tracer = Tracer(None, exporter=exporter)
            for _ in range(50):  # 48 dropped at least
                tracer.finish_call(tracer.start([]), record("hello", "hello", 200))
        finally:
            exporter.close(timeout_s=0.2)
    warnings = [r for r in caplog.records if str(r.msg).startswith("Queue full")]
    assert len(warnings) == 1
