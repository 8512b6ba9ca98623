"""The mesh's access log: Istio's line format, the lines kept, the file, and followers."""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import logging
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from funcmesh.errors import Unavailable
from funcmesh.mesh.access_lines import format_line
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.telemetry import RequestRecord, rbac_denied_details


def wall_time(text: str) -> float:
    """``2025-05-11T05:15:24.816`` (UTC) as time.time() would give it."""
    whole, _, fraction = text.partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(fraction) / 1000


# Lines an istio-proxy wrote (Istio's documentation and users' reports), rebuilt from records.
DENIED = RequestRecord(
    start_wall_s=wall_time("2025-05-11T05:15:24.816"),
    method=b"GET",
    path=b"/api/catalog",
    authority=b"webapp.istioinaction",
    user_agent=b"curl/8.5.0",
    request_id=b"1c29b4b4-acdd-9196-b093-322fd083ac38",
    upstream_cluster="inbound|8080||",
    downstream_local="10.10.0.16:8080",
    downstream_remote="10.10.0.14:38380",
    response_code=403,
    response_code_details=rbac_denied_details(),
    bytes_sent=19,
)
DENIED_LINE = (
    '[2025-05-11T05:15:24.816Z] "GET /api/catalog HTTP/1.1" 403 - '
    'rbac_access_denied_matched_policy[none] - "-" 0 19 0 - "-" "curl/8.5.0" '
    '"1c29b4b4-acdd-9196-b093-322fd083ac38" "webapp.istioinaction" "-" inbound|8080|| - '
    "10.10.0.16:8080 10.10.0.14:38380 - -"
)
TIMED_OUT = RequestRecord(
    start_wall_s=wall_time("2024-07-20T07:05:54.173"),
    method=b"GET",
    path=b"/gateway-timeout?delayMs=5000",
    authority=b"localhost:8000",
    user_agent=b"curl/8.4.0",
    forwarded_for=b"10.0.35.28",
    request_id=b"6d67d674-2122-4a2d-b172-0be70c674371",
    upstream_host="172.27.0.2:8080",
    upstream_cluster="outbound|8080|v1|slow.default.svc.cluster.local",
    upstream_local="172.27.0.3:52020",
    downstream_local="127.96.0.12:8080",
    downstream_remote="127.128.0.9:41234",
    requested_server_name="outbound_.8080_.v1_.slow.default.svc.cluster.local",
    route_name="default",
    response_code=504,
    response_flags="UT",
    response_code_details="response_timeout",
    bytes_received=0,
    bytes_sent=24,
    duration_s=4.4979,
    upstream_service_time_s=None,
)
TIMED_OUT_LINE = (
    '[2024-07-20T07:05:54.173Z] "GET /gateway-timeout?delayMs=5000 HTTP/1.1" 504 UT '
    'response_timeout - "-" 0 24 4497 - "10.0.35.28" "curl/8.4.0" '
    '"6d67d674-2122-4a2d-b172-0be70c674371" "localhost:8000" "172.27.0.2:8080" '
    "outbound|8080|v1|slow.default.svc.cluster.local 172.27.0.3:52020 127.96.0.12:8080 "
    "127.128.0.9:41234 outbound_.8080_.v1_.slow.default.svc.cluster.local default"
)


class FakeTimers:
    """``loop.call_later`` for a test: remembers what is due, runs it when told."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], None], FakeHandle]] = []

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        self.armed.append((delay_s, callback, handle))
        return handle

    def fire(self) -> None:
        due, self.armed = self.armed, []
        for _, callback, handle in due:
            if not handle.cancelled:
                callback()


@dataclasses.dataclass
class FakeHandle:
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


def request(number: int) -> RequestRecord:
    return dataclasses.replace(DENIED, path=f"/r/{number}".encode())


def path_of(line: str) -> str:
    return line.split('"')[1].split()[1]


# the line


@pytest.mark.parametrize(("record", "line"), [(DENIED, DENIED_LINE), (TIMED_OUT, TIMED_OUT_LINE)])
def test_a_record_is_written_as_istio_writes_it(record: RequestRecord, line: str) -> None:
    log = AccessLog()
    log.append(record)
    assert log.lines() == [(1, line)]


def test_every_empty_value_is_a_dash() -> None:
    line = format_line(RequestRecord(protocol=b""), "1970-01-01T00:00:00.000Z")
    assert line == (
        '[1970-01-01T00:00:00.000Z] "- - -" 0 - - - "-" 0 0 0 - "-" "-" "-" "-" "-" - - - - - -'
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"upstream_service_time_s": 0.0421}, " 42 "),  # whole milliseconds, as Envoy
        ({"duration_s": 0.0009}, " 0 "),
        ({"response_code": 0}, " 0 "),  # no answer was sent
        ({"user_agent": b"caf\xc3\xa9 \xff"}, '"café \\xff"'),  # bytes that are not UTF-8 stay
        ({"start_wall_s": wall_time("2026-11-27T07:50:01.999")}, "[2026-11-27T07:50:01.999Z]"),
    ],
)
def test_values_are_spelled_as_envoy_spells_them(change: dict[str, object], field: str) -> None:
    log = AccessLog()
    log.append(dataclasses.replace(DENIED, **change))  # type: ignore[arg-type]
    ((_, line),) = log.lines()
    assert field in line


def test_a_line_break_in_a_value_cannot_start_a_second_line() -> None:
    line = format_line(dataclasses.replace(DENIED, user_agent=b"evil\r\nGET /forged"), "t")
    assert "\n" not in line
    assert "\r" not in line
    assert '"evil\\r\\nGET /forged"' in line


def test_credentials_are_not_part_of_the_format() -> None:
    assert not any(
        "authorization" in name or "cookie" in name
        for name in (f.name for f in dataclasses.fields(RequestRecord))
    )


# the lines kept


def test_lines_carry_sequence_numbers_and_only_the_last_are_kept() -> None:
    log = AccessLog(keep_lines=3)
    assert (log.last_seq, log.lines()) == (0, [])
    for number in range(1, 6):
        log.append(request(number))
    kept = log.lines()
    assert [seq for seq, _ in kept] == [3, 4, 5]
    assert [path_of(line) for _, line in kept] == ["/r/3", "/r/4", "/r/5"]
    assert log.last_seq == 5


@pytest.mark.parametrize(
    ("after_seq", "tail", "expected"),
    [
        (None, None, [1, 2, 3, 4, 5]),
        (None, 2, [4, 5]),
        (None, 0, []),
        (None, 50, [1, 2, 3, 4, 5]),
        (3, None, [4, 5]),
        (5, None, []),
        (0, None, [1, 2, 3, 4, 5]),
        (1, 2, [4, 5]),
        (3, 5, [4, 5]),
    ],
)
def test_lines_after_a_sequence_number_or_the_tail(
    after_seq: int | None, tail: int | None, expected: list[int]
) -> None:
    log = AccessLog()
    for number in range(1, 6):
        log.append(request(number))
    assert [seq for seq, _ in log.lines(after_seq=after_seq, tail=tail)] == expected


# the file


def test_lines_reach_the_file_when_the_timer_fires_not_per_request(tmp_path: Path) -> None:
    timers = FakeTimers()
    path = tmp_path / "logs" / "mesh-access.log"
    log = AccessLog(path, call_later=timers.call_later)
    log.append(request(1))
    log.append(request(2))
    assert path.read_text() == ""
    assert [delay for delay, _, _ in timers.armed] == [0.2]  # one timer for the whole batch
    timers.fire()
    assert [path_of(line) for line in path.read_text().splitlines()] == ["/r/1", "/r/2"]
    log.append(request(3))
    assert len(timers.armed) == 1  # armed again by the next line
    log.close()
    assert path.read_text().count("\n") == 3
    assert timers.armed[0][2].cancelled
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_full_buffer_is_written_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "mesh-access.log"
    line_bytes = len(format_line(request(1), "2025-05-11T05:15:24.816Z")) + 1
    log = AccessLog(path, flush_bytes=3 * line_bytes)
    log.append(request(1))
    log.append(request(2))
    assert path.read_text() == ""
    log.append(request(3))
    assert len(path.read_text().splitlines()) == 3
    log.close()


def test_flush_writes_now_and_close_ends_the_log(tmp_path: Path) -> None:
    path = tmp_path / "mesh-access.log"
    log = AccessLog(path)
    log.append(request(1))
    log.flush()
    assert len(path.read_text().splitlines()) == 1
    log.close()
    log.append(request(2))  # dropped: the daemon is stopping
    log.flush()
    assert len(path.read_text().splitlines()) == 1
    assert log.last_seq == 1


def test_the_file_rotates_keeping_one_old_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh-access.log"
    old = tmp_path / "mesh-access.log.1"
    line_bytes = len(format_line(request(1), "2025-05-11T05:15:24.816Z")) + 1
    log = AccessLog(path, rotate_bytes=2 * line_bytes, flush_bytes=1)
    for number in range(1, 6):
        log.append(request(number))
    log.close()
    assert [path_of(line) for line in path.read_text().splitlines()] == ["/r/5"]
    assert [path_of(line) for line in old.read_text().splitlines()] == ["/r/3", "/r/4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh-access.log", "mesh-access.log.1"]


def test_an_existing_file_is_appended_to_and_counts_towards_rotation(tmp_path: Path) -> None:
    path = tmp_path / "mesh-access.log"
    path.write_text("x" * 100 + "\n")
    log = AccessLog(path, rotate_bytes=150, flush_bytes=1)
    log.append(request(1))
    log.close()
    assert (tmp_path / "mesh-access.log.1").read_text() == "x" * 100 + "\n"
    assert path_of(path.read_text()) == "/r/1"


def test_a_file_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(Unavailable, match="cannot open the mesh access log"):
        AccessLog(blocker / "mesh-access.log")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_reported_once_and_lines_stay_readable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = AccessLog(Path("/dev/full"), flush_bytes=1)
    with caplog.at_level(logging.WARNING, logger="funcmesh.mesh.access_log"):
        log.append(request(1))
        log.append(request(2))
    log.close()
    assert len(caplog.records) == 1
    assert "could not write the mesh access log /dev/full" in caplog.records[0].getMessage()
    assert len(log.lines()) == 2


# followers


async def next_batch(batches: AsyncIterator[list[tuple[int, str]]]) -> list[tuple[int, str]]:
    return await asyncio.wait_for(anext(batches), timeout=5.0)


async def test_a_follower_gets_new_lines_and_ends_with_the_log() -> None:
    log = AccessLog()
    log.append(request(1))
    batches = log.follow(log.last_seq)
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)
    assert not waiting.done()
    log.append(request(2))
    log.append(request(3))
    batch = await asyncio.wait_for(waiting, timeout=5.0)
    assert [seq for seq, _ in batch] == [2, 3]  # lines that came together come as one batch
    log.append(request(4))
    assert [path_of(line) for _, line in await next_batch(batches)] == ["/r/4"]
    ending = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)
    log.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(ending, timeout=5.0)


async def test_a_follower_that_goes_away_does_not_stop_the_others() -> None:
    log = AccessLog()
    leaving = asyncio.ensure_future(log.wait(0))
    staying = asyncio.ensure_future(log.wait(0))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    log.append(request(1))
    assert await asyncio.wait_for(staying, timeout=5.0) is True


async def test_a_follower_behind_the_kept_lines_continues_from_the_oldest() -> None:
    log = AccessLog(keep_lines=2)
    for number in range(1, 6):
        log.append(request(number))
    batches = log.follow(0)
    assert [seq for seq, _ in await next_batch(batches)] == [4, 5]
    await batches.aclose()


async def test_the_event_loop_timer_writes_lines_soon(tmp_path: Path) -> None:
    path = tmp_path / "mesh-access.log"
    loop = asyncio.get_running_loop()
    log = AccessLog(path, flush_interval_s=0.01, call_later=loop.call_later)
    log.append(request(1))
    deadline = loop.time() + 5.0
    while not path.read_text() and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert path_of(path.read_text()) == "/r/1"
    log.append(request(2))  # arms the timer again; close cancels it and writes the line
    log.close()
    assert len(path.read_text().splitlines()) == 2
