"""The access log's lines: what it keeps of each request, and the line Envoy would write.

Istio's ``EnvoyTextLogFormat`` (Envoy's default format plus Istio's additions)::

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER%
    %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    %REQUESTED_SERVER_NAME% %ROUTE_NAME%

on one line, with "-" for every empty value, START_TIME in UTC with milliseconds and durations
in whole milliseconds, as Envoy writes them. The format holds no Authorization or Cookie value
and must keep it so; a stray line break in a value is escaped so one request stays one line.

Compiled with the data plane (``funcmesh.native``): with a log file, every request's line is
formatted as it is logged, and interpreted that was a third of the daemon's own work on a call
at 1,000 requests/s. ``funcmesh.mesh.access_log`` keeps and writes the lines. Pure functions,
no I/O.
"""

from __future__ import annotations

import time
from typing import Final

from funcmesh.mesh.telemetry import RequestRecord

# What the access log keeps of a request: the values its line shows (strings, bytes, numbers
# and None in a tuple, which the garbage collector stops tracking; ten thousand kept records
# would make every full collection visit them).
LineValues = tuple[
    float, bytes, bytes, bytes, int, str, str, str, int, int, float, float | None,
    bytes, bytes, bytes, bytes, str, str, str, str, str, str, str,
]  # fmt: skip
LINE_FIELDS: Final = (  # the names of ``line_values``, in its order
    "start_wall_s",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration_s",
    "upstream_service_time_s",
    "forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local",
    "downstream_local",
    "downstream_remote",
    "requested_server_name",
    "route_name",
)
_MILLISECONDS: Final[tuple[str, ...]] = tuple(f".{ms:03d}Z" for ms in range(1000))


def line_values(r: RequestRecord) -> LineValues:
    """A record's ``LINE_FIELDS``. Written out: compiled, each is a read of the record's C
    struct, where an ``operator.attrgetter`` takes the generic attribute lookup for each."""
    return (
        r.start_wall_s,
        r.method,
        r.path,
        r.protocol,
        r.response_code,
        r.response_flags,
        r.response_code_details,
        r.upstream_transport_failure_reason,
        r.bytes_received,
        r.bytes_sent,
        r.duration_s,
        r.upstream_service_time_s,
        r.forwarded_for,
        r.user_agent,
        r.request_id,
        r.authority,
        r.upstream_host,
        r.upstream_cluster,
        r.upstream_local,
        r.downstream_local,
        r.downstream_remote,
        r.requested_server_name,
        r.route_name,
    )


def format_line(record: RequestRecord, start_time: str) -> str:
    """One record in Istio's default text format (no trailing newline)."""
    return format_values(line_values(record), start_time)


def format_values(values: LineValues, start_time: str) -> str:
    """The line of a record's ``line_values``; ``start_time`` is its start, formatted."""
    (
        _,
        method,
        path,
        protocol,
        code,
        flags,
        details,
        failure,
        received,
        sent,
        duration_s,
        service_time_s,
        forwarded_for,
        user_agent,
        request_id,
        authority,
        upstream_host,
        upstream_cluster,
        upstream_local,
        downstream_local,
        downstream_remote,
        server_name,
        route,
    ) = values
    line = (
        f'[{start_time}] "{method.decode("utf-8", "backslashreplace") or "-"} '
        f'{path.decode("utf-8", "backslashreplace") or "-"} '
        f'{protocol.decode("utf-8", "backslashreplace") or "-"}" '
        f"{code} {flags or '-'} {details or '-'} - "
        f'"{failure or "-"}" '
        f"{received} {sent} {int(duration_s * 1000)} "
        f"{'-' if service_time_s is None else int(service_time_s * 1000)} "
        f'"{forwarded_for.decode("utf-8", "backslashreplace") or "-"}" '
        f'"{user_agent.decode("utf-8", "backslashreplace") or "-"}" '
        f'"{request_id.decode("utf-8", "backslashreplace") or "-"}" '
        f'"{authority.decode("utf-8", "backslashreplace") or "-"}" '
        f'"{upstream_host or "-"}" {upstream_cluster or "-"} {upstream_local or "-"} '
        f"{downstream_local or '-'} {downstream_remote or '-'} "
        f"{server_name or '-'} {route or '-'}"
    )
    if "\n" in line or "\r" in line:  # an HTTP parser refuses these; belt and braces
        line = line.replace("\r", "\\r").replace("\n", "\\n")
    return line


class StartTimes:
    """``%START_TIME%`` of wall-clock seconds: ``2026-11-27T07:50:01.123Z``. The part up to the
    second is formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, wall_s: float) -> str:
        second, millisecond = divmod(int(wall_s * 1000), 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLISECONDS[millisecond]


def format_lines(kept: list[LineValues], start_times: StartTimes) -> list[str]:
    """The lines of kept values, in their order."""
    return [format_values(values, start_times.format(values[0])) for values in kept]
