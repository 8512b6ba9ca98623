"""``call get``'s header lines."""

from __future__ import annotations

from funcmesh.cli.calls import describe_call


def test_a_finished_call_shows_status_duration_and_callback() -> None:
    lines = describe_call(
        {
            "id": "abc",
            "function": "default/hello",
            "phase": "Failed",
            "statusCode": 500,
            "durationSeconds": 0.0123,
            "callbackUrl": "http://x/cb",
            "callback": "Failed",
            "callbackError": "callback answered 503",
        }
    )
    assert lines == [
        "Call:     abc",
        "Function: default/hello",
        "Phase:    Failed",
        "Status:   500",
        "Duration: 12.3 ms",
        "Callback: Failed (callback answered 503)",
    ]


def test_a_pending_call_has_no_status_or_duration_yet() -> None:
    lines = describe_call({"id": "abc", "function": "default/hello", "phase": "Pending"})
    assert lines[3:] == ["Status:   -", "Duration: -"]
