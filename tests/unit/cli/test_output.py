from __future__ import annotations

import pytest

from funcmesh.cli.output import cell_text, error_lines, format_duration_ms, format_table
from funcmesh.errors import Cause, Invalid, NotFound


def test_columns_are_left_aligned_three_spaces_apart() -> None:
    text = format_table(("NAME", "STATUS"), [["hello", "Ready"], ["a-longer-name", "Building"]])
    assert text.splitlines() == [
        "NAME            STATUS",
        "hello           Ready",
        "a-longer-name   Building",
    ]


def test_multi_line_cells_continue_on_the_next_lines() -> None:
    text = format_table(("NAME", "DEPS", "STATUS"), [["hello", "six\nrequests==2.31", "Ready"]])
    assert text.splitlines() == [
        "NAME    DEPS             STATUS",
        "hello   six              Ready",
        "        requests==2.31",
    ]


def test_empty_cells_keep_the_columns_in_place() -> None:
    text = format_table(("A", "B", "C"), [["", "", "x"]])
    assert text.splitlines()[1] == "        x"


@pytest.mark.parametrize(
    ("value_ms", "text"),
    [(None, "-"), (0.35, "350µs"), (1.24, "1.2ms"), (35.2, "35ms"), (2500, "2.5s")],
)
def test_durations(value_ms: float | None, text: str) -> None:
    assert format_duration_ms(value_ms) == text


@pytest.mark.parametrize(
    ("value", "text"), [(None, "<none>"), (True, "true"), (3, "3"), (["a", "b"], "a,b")]
)
def test_cells(value: object, text: str) -> None:
    assert cell_text(value) == text


def test_error_is_one_line() -> None:
    assert error_lines(NotFound('functions.kubeless.io "x" not found')) == [
        'error: functions.kubeless.io "x" not found'
    ]


def test_invalid_lists_only_causes_the_message_does_not_say() -> None:
    error = Invalid(
        'Function "x" is invalid: spec.runtime: Invalid runtime: python9',
        [
            Cause(field="spec.runtime", message="Invalid runtime: python9"),
            Cause(field="spec.timeout", message="must be more than 0 seconds"),
        ],
    )
    assert error_lines(error) == [
        'error: Function "x" is invalid: spec.runtime: Invalid runtime: python9',
        "  spec.timeout: must be more than 0 seconds",
    ]


def test_multi_line_messages_are_indented() -> None:
    lines = error_lines(
        NotFound("function hello failed: BuildFailed: pip failed\nNo matching dist")
    )
    assert lines == ["error: function hello failed: BuildFailed: pip failed", "  No matching dist"]
