from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.schedules import (
    MAX_COUNTED_RUNS,
    CalendarSchedule,
    IntervalSchedule,
    parse_go_duration_s,
    parse_schedule,
)


def at(text: str) -> float:
    """Unix time of ``2024-01-01 10:00:00`` (UTC) style text."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(moment_s: float | None) -> str | None:
    if moment_s is None:
        return None
    return datetime.fromtimestamp(moment_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*/5 * * * *", CalendarSchedule(text="*/5 * * * *", expression="*/5 * * * *")),
        ("  0 9  * * 1-5 ", CalendarSchedule(text="  0 9  * * 1-5 ", expression="0 9 * * 1-5")),
        ("0 0 ? * MON-FRI", CalendarSchedule(text="0 0 ? * MON-FRI", expression="0 0 ? * MON-FRI")),
        ("0 0 1 jan,Jul *", CalendarSchedule(text="0 0 1 jan,Jul *", expression="0 0 1 jan,Jul *")),
        ("0 0 29 2 *", CalendarSchedule(text="0 0 29 2 *", expression="0 0 29 2 *")),
        ("@hourly", CalendarSchedule(text="@hourly", expression="0 * * * *")),
        ("@daily", CalendarSchedule(text="@daily", expression="0 0 * * *")),
        ("@midnight", CalendarSchedule(text="@midnight", expression="0 0 * * *")),
        ("@weekly", CalendarSchedule(text="@weekly", expression="0 0 * * 0")),
        ("@monthly", CalendarSchedule(text="@monthly", expression="0 0 1 * *")),
        ("@yearly", CalendarSchedule(text="@yearly", expression="0 0 1 1 *")),
        ("@annually", CalendarSchedule(text="@annually", expression="0 0 1 1 *")),
        ("@every 10s", IntervalSchedule(text="@every 10s", interval_s=10)),
        ("@every 1m30s", IntervalSchedule(text="@every 1m30s", interval_s=90)),
        ("@every 1.5m", IntervalSchedule(text="@every 1.5m", interval_s=90)),
        ("@every 2h", IntervalSchedule(text="@every 2h", interval_s=7200)),
        ("@every 1500ms", None),  # whole seconds only
        (
            "CRON_TZ=Europe/Berlin 0 9 * * *",
            CalendarSchedule(
                text="CRON_TZ=Europe/Berlin 0 9 * * *",
                expression="0 9 * * *",
                time_zone="Europe/Berlin",
            ),
        ),
        (
            "TZ=Asia/Tokyo @daily",
            CalendarSchedule(
                text="TZ=Asia/Tokyo @daily", expression="0 0 * * *", time_zone="Asia/Tokyo"
            ),
        ),
    ],
)
def test_schedules_robfig_cron_accepts_parse(text: str, expected: object) -> None:
    if expected is None:
        with pytest.raises(Invalid, match="whole seconds"):
            parse_schedule(text)
    else:
        assert parse_schedule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a schedule is required, e.g. */5 * * * *, @hourly or @every 10s"),
        ("* * * *", 'schedule "* * * *" has 4 fields; cron needs 5 (minute, hour, day of month'),
        ("0 * * * * *", 'schedule "0 * * * * *" has 6 fields'),  # no seconds field
        ("61 * * * *", 'schedule "61 * * * *" is not a valid cron expression'),
        ("0 0 L * *", 'the day of month field "L" may hold numbers'),
        ("0 0 * * 5#3", 'the day of week field "5#3" may hold numbers'),
        ("H * * * *", 'the minute field "H" may hold numbers'),
        ("0 0 * * funday", 'the day of week field "funday"'),
        ("0 0 31 2 *", 'schedule "0 0 31 2 *" never comes due'),
        ("@often", 'unknown descriptor "@often" in schedule "@often": use @yearly'),
        ("@every", "@every needs a duration of whole seconds, at least 1s"),
        ("@every 10", "@every needs a duration"),  # Go durations need a unit
        ("@every 500ms", "at least 1s"),
        ("@every 0s", "at least 1s"),
        ("@every -5s", "at least 1s"),
        ("CRON_TZ=Mars/Olympus 0 9 * * *", 'unknown time zone "Mars/Olympus"'),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(Invalid) as refused:
        parse_schedule(text)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", Decimal(0)),
        ("10s", Decimal(10)),
        ("1m30s", Decimal(90)),
        ("1.5h", Decimal(5400)),
        ("2h45m", Decimal(9900)),
        ("300ms", Decimal("0.3")),
        ("1s500ms", Decimal("1.5")),
        ("10", None),
        ("1x", None),
        ("s", None),
        ("1m 30s", None),
    ],
)
def test_go_durations(text: str, seconds: Decimal | None) -> None:
    assert parse_go_duration_s(text) == seconds


@pytest.mark.parametrize(
    ("text", "moment", "after", "latest"),
    [
        ("*/5 * * * *", "2024-01-01 10:00:00", "2024-01-01 10:05:00", "2024-01-01 10:00:00"),
        ("*/5 * * * *", "2024-01-01 10:04:59", "2024-01-01 10:05:00", "2024-01-01 10:00:00"),
        ("*/5 * * * *", "2024-01-01 10:00:00.5", "2024-01-01 10:05:00", "2024-01-01 10:00:00"),
        ("@hourly", "2024-01-01 23:30:00", "2024-01-02 00:00:00", "2024-01-01 23:00:00"),
        ("@monthly", "2024-01-31 12:00:00", "2024-02-01 00:00:00", "2024-01-01 00:00:00"),
        ("0 9 * * 1-5", "2024-01-05 09:00:01", "2024-01-08 09:00:00", "2024-01-05 09:00:00"),
        # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer
        ("CRON_TZ=Europe/Berlin 0 9 * * *", "2024-01-01 08:30:00", "2024-01-02 08:00:00",
         "2024-01-01 08:00:00"),
        ("CRON_TZ=Europe/Berlin 0 9 * * *", "2024-07-01 06:30:00", "2024-07-01 07:00:00",
         "2024-06-30 07:00:00"),
    ],
)  # fmt: skip
def test_calendar_due_times(text: str, moment: str, after: str, latest: str) -> None:
    schedule = parse_schedule(text)
    assert iso(schedule.next_after(at(moment))) == after
    assert iso(schedule.latest_until(at(moment))) == latest


def test_calendar_counts_due_times_in_a_half_open_range_up_to_a_limit() -> None:
    every_minute = parse_schedule("* * * * *")
    start = at("2024-01-01 10:00:00")
    assert every_minute.count_due(start, start + 180) == 3  # 10:00, 10:01, 10:02
    assert every_minute.count_due(start, start + 180.5) == 4
    assert every_minute.count_due(start, start) == 0
    assert every_minute.count_due(start, start + 7 * 86400) == MAX_COUNTED_RUNS


@pytest.mark.parametrize(
    ("moment", "after", "latest"),
    [
        (90.0, 110.0, None),  # before the anchor: the first run is one period after it
        (100.0, 110.0, None),  # the anchor itself is not a run
        (105.5, 110.0, None),
        (110.0, 120.0, 110.0),
        (119.999, 120.0, 110.0),
        (1000.0, 1010.0, 1000.0),
    ],
)
def test_intervals_count_from_the_anchor(moment: float, after: float, latest: float | None) -> None:
    every_10s = parse_schedule("@every 10s")
    assert every_10s.next_after(moment, anchor_s=100.0) == after
    assert every_10s.latest_until(moment, anchor_s=100.0) == latest


def test_intervals_count_due_times_exactly() -> None:
    every_10s = parse_schedule("@every 10s")
    assert every_10s.count_due(110.0, 140.0, anchor_s=100.0) == 3
    assert every_10s.count_due(110.0, 140.5, anchor_s=100.0) == 4
    assert every_10s.count_due(110.0, 110.0, anchor_s=100.0) == 0
    assert every_10s.count_due(110.0, 10**7, anchor_s=100.0) == 999_989
