"""Trace context in (W3C traceparent/tracestate, B3 single and multi), out, spans, the store."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.mesh.trace_context import (
    TRACE_HEADERS,
    IdSource,
    outgoing_headers,
    parse_context,
    parse_traceparent,
    with_trace_headers,
)
from funcmesh.mesh.trace_store import TraceStore
from funcmesh.mesh.tracing import Sampler, Span, Tracer, call_attributes, span_name

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
NOT_GIVEN = 2


class Clock:
    def __init__(self, start_ns: int = 1_764_229_801_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def export(self, span: Span) -> None:
        self.spans.append(span)


def counting_bytes() -> tuple[list[int], IdSource]:
    """An IdSource over predictable bytes (1, 2, 3, ...), and the sizes it asked for."""
    asked: list[int] = []
    counter = itertools.count(1)

    def random_bytes(size: int) -> bytes:
        asked.append(size)
        return bytes(next(counter) % 256 for _ in range(size))

    return asked, IdSource(random_bytes, batch_bytes=64)


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    pairs = [(b"Host", b"hello.default:8080"), (b"User-Agent", b"curl/8.5.0")]
    return pairs + [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


# traceparent, as the W3C Trace Context spec reads it


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, (TRACE, PARENT, 1)),
        (f"00-{TRACE}-{PARENT}-00", (TRACE, PARENT, 0)),
        (f"00-{TRACE}-{PARENT}-03", (TRACE, PARENT, 3)),  # unknown flags are kept, bit 0 read
        (f" {VALID} ", (TRACE, PARENT, 1)),  # optional whitespace around the value
        (f"01-{TRACE}-{PARENT}-01-what-the-future-holds", (TRACE, PARENT, 1)),
        (f"cc-{TRACE}-{PARENT}-01", (TRACE, PARENT, 1)),  # a later version, exactly 55 long
        (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is invalid
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 is exactly 55 characters
        (f"01-{TRACE}-{PARENT}-01extra", None),  # a later version: "-" after the flags
        (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-{PARENT}-01", None),  # upper-case hex
        (f"00-{TRACE[:-1]}g-{PARENT}-01", None),  # not hex
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),  # 31 digits
        (f"00-{TRACE}0-{PARENT}-01", None),  # 33 digits
        (f"00-{TRACE}-{PARENT[:-1]}-01", None),
        (f"00-{TRACE}-{PARENT}-1", None),
        (f"00_{TRACE}_{PARENT}_01", None),
        (f"0-{TRACE}-{PARENT}-01", None),
        ("", None),
        ("00", None),
    ],
)
def test_traceparent(value: str, expected: tuple[str, str, int] | None) -> None:
    parsed = parse_traceparent(value.encode())
    if expected is None:
        assert parsed is None
    else:
        assert parsed == (bytes.fromhex(expected[0]), bytes.fromhex(expected[1]), expected[2])


def test_a_valid_traceparent_brings_its_tracestate_joined() -> None:
    context = parse_context(
        [
            (b"TraceParent", VALID.encode()),
            (b"tracestate", b"congo=t61rcWkgMzE"),
            (b"TRACESTATE", b"rojo=00f067aa0ba902b7"),
        ]
    )
    assert context.trace_id == bytes.fromhex(TRACE)
    assert context.parent_span_id == bytes.fromhex(PARENT)
    assert context.sampled == 1
    assert context.tracestate == b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@pytest.mark.parametrize(
    "pairs",
    [
        [(b"traceparent", f"00-{TRACE}-{'0' * 16}-01".encode()), (b"tracestate", b"a=b")],
        [(b"traceparent", VALID.encode()), (b"traceparent", VALID.encode())],  # twice: invalid
        [(b"tracestate", b"a=b")],  # a tracestate alone means nothing
    ],
)
def test_a_malformed_context_counts_as_none(pairs: list[tuple[bytes, bytes]]) -> None:
    context = parse_context(pairs)
    assert context.trace_id is None
    assert context.parent_span_id is None
    assert context.tracestate == b""
    assert context.sampled == NOT_GIVEN
    assert context.had_context  # the request's trace headers are replaced upstream


def test_an_oversized_tracestate_is_dropped() -> None:
    context = parse_context(
        [(b"traceparent", VALID.encode()), (b"tracestate", b"a=" + b"b" * 5000)]
    )
    assert context.trace_id == bytes.fromhex(TRACE)
    assert context.tracestate == b""


def test_no_trace_headers_no_context() -> None:
    context = parse_context(headers())
    assert (context.trace_id, context.had_context, context.sampled) == (None, False, NOT_GIVEN)


# B3


SHORT = "a3ce929d0e0e4736"
SPAN = "e457b5a2e4d86bd1"


@pytest.mark.parametrize(
    ("values", "trace_id", "parent", "sampled", "debug"),
    [
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "1"}, TRACE, SPAN, 1, False),
        ({"x-b3-traceid": SHORT, "x-b3-spanid": SPAN}, "0" * 16 + SHORT, SPAN, NOT_GIVEN, False),
        (
            {"x-b3-traceid": TRACE.upper(), "x-b3-spanid": SPAN, "x-b3-sampled": "0"},
            TRACE,
            SPAN,
            0,
            False,
        ),  # fmt: skip
        (
            {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "true"},
            TRACE,
            SPAN,
            1,
            False,
        ),  # fmt: skip
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "1"}, TRACE, SPAN, 1, True),
        (
            {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-parentspanid": PARENT},
            TRACE,
            SPAN,
            NOT_GIVEN,
            False,
        ),  # fmt: skip
        ({"x-b3-sampled": "0"}, None, None, 0, False),  # a decision without ids
        ({"x-b3-traceid": TRACE, "x-b3-sampled": "1"}, None, None, 1, False),  # no span id
        ({"x-b3-traceid": "0" * 32, "x-b3-spanid": SPAN}, None, None, NOT_GIVEN, False),
        ({"x-b3-traceid": TRACE[:20], "x-b3-spanid": SPAN}, None, None, NOT_GIVEN, False),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": "xyz"}, None, None, NOT_GIVEN, False),
        ({"b3": f"{TRACE}-{SPAN}-1-{PARENT}"}, TRACE, SPAN, 1, False),
        ({"b3": f"{TRACE}-{SPAN}-d"}, TRACE, SPAN, 1, True),
        ({"b3": f"{SHORT}-{SPAN}"}, "0" * 16 + SHORT, SPAN, NOT_GIVEN, False),
        ({"b3": "0"}, None, None, 0, False),
        ({"b3": "d"}, None, None, 1, True),
        ({"b3": f"{TRACE}-{SPAN}-x"}, None, None, NOT_GIVEN, False),
        ({"b3": f"{TRACE}-{SPAN}-1-nothex"}, None, None, NOT_GIVEN, False),
        ({"b3": f"{TRACE}-{SPAN}-1-{PARENT}-more"}, None, None, NOT_GIVEN, False),
        ({"b3": "maybe"}, None, None, NOT_GIVEN, False),
    ],
)
def test_b3(
    values: dict[str, str], trace_id: str | None, parent: str | None, sampled: int, debug: bool
) -> None:
    context = parse_context([(k.encode(), v.encode()) for k, v in values.items()])
    assert context.trace_id == (bytes.fromhex(trace_id) if trace_id else None)
    assert context.parent_span_id == (bytes.fromhex(parent) if parent else None)
    assert (context.sampled, context.debug) == (sampled, debug)
    assert context.b3_single == ("b3" in values)
    assert context.b3_multi == any(name.startswith("x-b3-") for name in values)


def test_traceparent_wins_over_b3_and_b3_is_still_propagated() -> None:
    context = parse_context(
        [
            (b"x-b3-traceid", b"1" * 32),
            (b"x-b3-spanid", b"2" * 16),
            (b"traceparent", VALID.encode()),
        ]
    )
    assert context.trace_id == bytes.fromhex(TRACE)
    assert context.b3_multi


# spans


def test_a_request_with_a_context_gets_a_child_span_of_the_same_trace() -> None:
    tracer = Tracer(TraceStore(), clock_ns=Clock())
    span = tracer.start(headers(traceparent=VALID, tracestate="congo=t61rcWkgMzE"))
    assert span.trace_id == bytes.fromhex(TRACE)
    assert span.parent_span_id == bytes.fromhex(PARENT)
    assert len(span.span_id) == 8
    assert span.span_id != bytes.fromhex(PARENT)
    assert span.sampled
    assert span.tracestate == b"congo=t61rcWkgMzE"
    assert span.kind == "server"
    assert span.start_ns == Clock().now_ns


def test_a_request_without_context_starts_a_trace() -> None:
    tracer = Tracer(TraceStore())
    first, second = tracer.start(headers()), tracer.start(headers())
    assert first.parent_span_id is None
    assert len(first.trace_id) == 16
    assert first.trace_id != second.trace_id
    assert first.span_id != second.span_id
    assert first.sampled


def test_ids_are_cut_from_batches_and_never_all_zero() -> None:
    asked, ids = counting_bytes()
    tracer = Tracer(None, ids=ids)
    spans = [tracer.start(headers()) for _ in range(10)]
    assert asked == [64] * 4  # 10 x 24 bytes from four 64-byte batches
    assert len({span.trace_id for span in spans}) == 10

    zeros = iter([bytes(64), b"\x01" * 64])
    ids = IdSource(lambda size: next(zeros), batch_bytes=64)
    assert ids.take(8, bytes(8)) == b"\x01" * 8  # the zero ids of the first batch are skipped


@pytest.mark.parametrize(
    ("ratio", "flags", "expected"),
    [
        (1.0, None, True),
        (0.0, None, False),
        (0.0, "01", True),  # an incoming decision is obeyed
        (1.0, "00", False),
    ],
)
def test_sampling(ratio: float, flags: str | None, expected: bool) -> None:
    tracer = Tracer(TraceStore(), sample_ratio=ratio)
    given = headers() if flags is None else headers(traceparent=f"00-{TRACE}-{PARENT}-{flags}")
    assert tracer.start(given).sampled is expected


def test_a_ratio_samples_by_trace_id_so_every_hop_agrees() -> None:
    tracer = Tracer(TraceStore(), sample_ratio=0.5, traces_per_second=math.inf)
    low = f"{'ab' * 8}{'00' * 7}01"  # low 64 bits tiny: under the bound
    high = f"{'ab' * 8}{'ff' * 8}"
    assert tracer.start(headers(b3=f"{low}-{SPAN}")).sampled  # B3 without a decision: ours
    assert not tracer.start(headers(b3=f"{high}-{SPAN}")).sampled
    sampled = sum(tracer.start(headers()).sampled for _ in range(2000))
    assert 800 < sampled < 1200
    with pytest.raises(ValueError, match="sample_ratio"):
        Tracer(None, sample_ratio=1.5)


class SecondsClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_at_most_traces_per_second_new_traces_are_sampled() -> None:
    clock = SecondsClock()
    tracer = Tracer(TraceStore(), sampler=Sampler(1.0, 10.0, clock=clock))
    assert sum(tracer.start_new()[0] is not None for _ in range(50)) == 10  # a second's worth
    clock.now_s += 0.5
    assert sum(tracer.start_new()[0] is not None for _ in range(50)) == 5
    clock.now_s += 60.0  # a quiet minute saves no more than one second's worth
    assert sum(tracer.start(headers()).sampled for _ in range(50)) == 10
    # a sampled incoming context is obeyed whatever the limit
    assert tracer.start(headers(traceparent=VALID)).sampled


def test_no_limit_and_a_limit_of_zero() -> None:
    unlimited = Tracer(None, traces_per_second=math.inf)
    assert all(unlimited.start_new()[0] is not None for _ in range(500))
    none = Tracer(None, traces_per_second=0.0)
    assert all(none.start_new()[0] is None for _ in range(50))
    with pytest.raises(ValueError, match="traces_per_second"):
        Sampler(1.0, -1.0)


def test_a_new_trace_not_sampled_has_no_span_but_passes_its_context_on() -> None:
    span, line = Tracer(None, traces_per_second=0.0).start_new()
    assert span is None
    parsed = parse_traceparent(line.removeprefix(b"traceparent: ").removesuffix(b"\r\n"))
    assert parsed is not None
    assert parsed[2] == 0  # flags 00: later hops do not sample it either
    assert line.endswith(b"-00\r\n")


def test_a_new_sampled_trace_sends_its_own_ids() -> None:
    span, line = Tracer(TraceStore()).start_new()
    assert span is not None
    assert span.sampled
    assert span.parent_span_id is None
    assert line == b"traceparent: 00-%s-%s-01\r\n" % (
        span.trace_id.hex().encode(),
        span.span_id.hex().encode(),
    )


def test_traceparent_lines_come_from_batches_with_ids_never_all_zero() -> None:
    asked: list[int] = []
    batches = iter([bytes(24), b"\x01" * 16 + bytes(8), b"\x01" * 48])

    def random_bytes(size: int) -> bytes:
        asked.append(size)
        return next(batches)

    ids = IdSource(random_bytes, batch_bytes=24)
    # a batch with a zero trace id, then one with a zero span id, yield no line
    line = ids.take_line()
    assert line == b"traceparent: 00-%s-%s-00\r\n" % (b"01" * 16, b"01" * 8)
    assert asked == [24, 24, 24]
    assert ids.take_line() == line  # the third batch made two lines: no new draw
    assert asked == [24, 24, 24]


# outgoing headers


def test_outgoing_traceparent_names_this_hop_as_the_parent() -> None:
    tracer = Tracer(TraceStore())
    span = tracer.start(headers(traceparent=VALID, tracestate="congo=t61rcWkgMzE"))
    out = dict(outgoing_headers(span))
    assert out == {
        b"traceparent": f"00-{TRACE}-{span.span_id.hex()}-01".encode(),
        b"tracestate": b"congo=t61rcWkgMzE",
    }


def test_an_unsampled_call_propagates_its_decision() -> None:
    span = Tracer(TraceStore()).start(headers(traceparent=f"00-{TRACE}-{PARENT}-00"))
    assert dict(outgoing_headers(span))[b"traceparent"].endswith(b"-00")


def test_b3_goes_out_in_the_forms_it_came_in() -> None:
    tracer = Tracer(TraceStore())
    multi = tracer.start(headers(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_sampled="1"))
    out = dict(outgoing_headers(multi))
    this = multi.span_id.hex().encode()
    assert out == {
        b"traceparent": b"00-%s-%s-01" % (TRACE.encode(), this),
        b"x-b3-traceid": TRACE.encode(),
        b"x-b3-spanid": this,
        b"x-b3-parentspanid": SPAN.encode(),
        b"x-b3-sampled": b"1",
    }
    single = tracer.start(headers(b3=f"{TRACE}-{SPAN}-d"))
    out = dict(outgoing_headers(single))
    this = single.span_id.hex().encode()
    assert out == {
        b"traceparent": b"00-%s-%s-01" % (TRACE.encode(), this),
        b"b3": b"%s-%s-d-%s" % (TRACE.encode(), this, SPAN.encode()),
    }
    debug = tracer.start(headers(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_flags="1"))
    out = dict(outgoing_headers(debug))
    assert out[b"x-b3-flags"] == b"1"
    assert b"x-b3-sampled" not in out  # B3: debug implies sampled


def test_with_trace_headers_replaces_the_incoming_context() -> None:
    tracer = Tracer(TraceStore())
    incoming = headers(traceparent=VALID, tracestate="a=b", x_b3_traceid=TRACE, x_b3_spanid=SPAN)
    span = tracer.start(incoming)
    upstream = with_trace_headers(incoming, span)
    names = [name.lower() for name, _ in upstream]
    assert names[:2] == [b"host", b"user-agent"]
    assert sorted(names[2:]) == sorted(
        [b"traceparent", b"tracestate", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid",
         b"x-b3-sampled"]
    )  # fmt: skip
    assert dict(upstream)[b"x-b3-spanid"] == span.span_id.hex().encode()
    plain = with_trace_headers(headers(), tracer.start(headers()))
    assert [name for name, _ in plain if name in TRACE_HEADERS] == [b"traceparent"]


# finishing


RECORD = RequestRecord(
    method=b"POST",
    path=b"/function/hello?token=secret",
    authority=b"hello.default:8080",
    user_agent=b"curl/8.5.0",
    request_id=b"7c9e-1",
    downstream_remote="127.128.0.7:40112",
    source_workload="caller",
    destination_service="hello.default.svc.cluster.local",
    destination_service_name="hello",
    destination_service_namespace="default",
    destination_workload="hello-v2",
    upstream_host="127.128.0.5:8080",
    upstream_cluster="outbound|8080|v2|hello.default.svc.cluster.local",
    route_name="canary",
    response_code=503,
    response_flags="UF,URX",
    duration_s=0.0125,
)


def test_a_finished_call_is_kept_named_and_exported() -> None:
    store, sink, clock = TraceStore(), Sink(), Clock()
    tracer = Tracer(store, exporter=sink, clock_ns=clock)
    span = tracer.start(headers(traceparent=VALID))
    tracer.finish_call(span, RECORD)
    assert store.trace(bytes.fromhex(TRACE)) == [span]
    assert sink.spans == [span]
    assert span.name == "hello.default.svc.cluster.local:8080/*"
    assert span.status == 503
    assert span.duration_ns == 12_500_000
    assert span.attributes == {
        "http.request.method": "POST",
        "url.path": "/function/hello",  # never the query string
        "network.protocol.version": "1.1",
        "http.response.status_code": 503,
        "error.type": "503",
        "server.address": "hello.default",
        "server.port": 8080,
        "client.address": "127.128.0.7",
        "user_agent.original": "curl/8.5.0",
        "funcmesh.service": "hello.default.svc.cluster.local",
        "funcmesh.service.name": "hello",
        "funcmesh.namespace": "default",
        "funcmesh.workload": "hello-v2",
        "funcmesh.source.workload": "caller",
        "funcmesh.upstream.host": "127.128.0.5:8080",
        "funcmesh.upstream.cluster": "outbound|8080|v2|hello.default.svc.cluster.local",
        "funcmesh.route": "canary",
        "funcmesh.request_id": "7c9e-1",
        "funcmesh.response_flags": "UF,URX",
    }


def test_an_unsampled_span_is_neither_kept_nor_exported() -> None:
    store, sink = TraceStore(), Sink()
    tracer = Tracer(store, exporter=sink)
    span = tracer.start(headers(traceparent=f"00-{TRACE}-{PARENT}-00"))
    tracer.finish_call(span, RECORD)
    tracer.finish(tracer.start(headers(traceparent=f"00-{TRACE}-{PARENT}-00")), status=200)
    assert (store.span_count, sink.spans) == (0, [])


def test_finish_takes_the_status_and_extra_attributes() -> None:
    clock = Clock()
    tracer = Tracer(TraceStore(), clock_ns=clock)
    span = tracer.start(headers(), name="GET /", attributes={"a": 1})
    clock.now_ns += 3_000
    tracer.finish(span, status=200, attributes={"b": "2"})
    assert (span.status, span.duration_ns, span.attributes) == (200, 3_000, {"a": 1, "b": "2"})


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({}, "hello.default.svc.cluster.local:8080/*"),
        ({"upstream_cluster": "-"}, "hello.default.svc.cluster.local/*"),
        ({"destination_service": "unknown"}, "hello.default:8080/*"),
        ({"destination_service": "unknown", "authority": b""}, "-/*"),
    ],
)
def test_span_names_are_istios(changes: dict[str, object], name: str) -> None:
    assert span_name(dataclasses.replace(RECORD, **changes)) == name  # type: ignore[arg-type]


def test_other_methods_and_missing_answers() -> None:
    record = dataclasses.replace(RECORD, method=b"PURGE", response_code=0, authority=b"[::1]")
    attributes = call_attributes(record)
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.request.method_original"] == "PURGE"
    assert attributes["error.type"] == "no_response"
    assert "http.response.status_code" not in attributes
    assert (attributes["server.address"], "server.port" in attributes) == ("[::1]", False)


# the store


def span_of(trace: int, number: int, **attributes: str) -> Span:
    return Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=number.to_bytes(8, "big"),
        parent_span_id=None,
        name="",
        kind="server",
        start_ns=number,
        end_ns=number + 1,
        sampled=True,
        attributes=dict(attributes),
    )


def test_the_store_is_bounded_and_forgets_the_least_recent_trace() -> None:
    store = TraceStore(keep_spans=5, keep_spans_per_trace=3)
    for number in range(3):
        store.add(span_of(1, number))
    store.add(span_of(2, 10))
    store.add(span_of(1, 3))  # over trace 1's limit: dropped, but trace 1 is the most recent
    assert (store.span_count, store.dropped) == (4, 1)
    store.add(span_of(3, 20))
    store.add(span_of(3, 21))  # six spans: trace 2 saw a span least recently and goes
    assert store.trace((2).to_bytes(16, "big")) is None
    assert store.span_count == 5
    assert [spans[0].trace_id[-1] for spans in store.traces()] == [3, 1]
    with pytest.raises(ValueError, match="keep_spans_per_trace"):
        TraceStore(keep_spans=2, keep_spans_per_trace=3)


def test_the_store_finds_traces_by_function_service_and_namespace() -> None:
    store = TraceStore()
    hello = {"funcmesh.service.name": "hello", "funcmesh.workload": "hello-v1"}
    store.add(span_of(1, 1, **hello, **{"funcmesh.namespace": "default"}))
    store.add(span_of(1, 2, **{"funcmesh.workload": "world", "funcmesh.namespace": "default"}))
    store.add(span_of(2, 3, **hello, **{"funcmesh.namespace": "prod"}))
    store.add(span_of(3, 4, **{"funcmesh.service": "web.default.svc.cluster.local"}))

    def found(**query: str) -> list[int]:
        return [spans[0].trace_id[-1] for spans in store.traces(**query)]  # type: ignore[arg-type]

    assert found() == [3, 2, 1]
    assert found(function="hello") == [2, 1]  # the Service's name
    assert found(function="hello-v1", namespace="default") == [1]  # the workload's
    assert found(function="world") == [1]
    assert found(service="web.default.svc.cluster.local") == [3]
    assert found(service="hello", namespace="prod") == [2]
    assert found(function="nobody") == []
    assert [spans[0].trace_id[-1] for spans in store.traces(limit=1)] == [3]
    assert len(store.trace((1).to_bytes(16, "big")) or []) == 2
