"""``--otlp-endpoint`` / ``FUNCMESH_OTLP_ENDPOINT`` and ``FUNCMESH_TRACE_SAMPLE_RATIO``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from funcmesh.errors import Invalid
from funcmesh.settings import load_daemon_settings

HOME = {"HOME": "/h"}


@pytest.mark.parametrize(
    ("given", "endpoint"),
    [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),  # a collector's base URL
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        ("https://otel.example:443/v1/traces", "https://otel.example:443/v1/traces"),
        ("http://jaeger:4318/custom/path", "http://jaeger:4318/custom/path"),
    ],
)
def test_an_endpoint_gets_the_traces_path_when_it_has_none(given: str, endpoint: str) -> None:
    assert load_daemon_settings(HOME, otlp_endpoint=given).tracing.otlp_endpoint == endpoint


def test_the_flag_wins_over_the_variable_and_nothing_means_no_export() -> None:
    env = HOME | {"FUNCMESH_OTLP_ENDPOINT": "http://a:4318"}
    assert load_daemon_settings(env).tracing.otlp_endpoint == "http://a:4318/v1/traces"
    flagged = load_daemon_settings(env, otlp_endpoint="http://b:4318")
    assert flagged.tracing.otlp_endpoint == "http://b:4318/v1/traces"
    assert load_daemon_settings(HOME).tracing.otlp_endpoint is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            "grpc://127.0.0.1:4317",
            "must be an http:// or https:// URL, got 'grpc://127.0.0.1:4317'",
        ),
        ("127.0.0.1:4318", "must be an http:// or https:// URL"),
        ("http://:4318", "must be an http:// or https:// URL"),
        ("http://host:99999", "--otlp-endpoint must be http://HOST:PORT"),
    ],
)
def test_a_bad_endpoint_is_refused(given: str, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        load_daemon_settings(HOME, otlp_endpoint=given)


@pytest.mark.parametrize(("value", "ratio"), [(None, 1.0), ("0", 0.0), ("0.25", 0.25), ("1", 1.0)])
def test_the_sample_ratio(value: str | None, ratio: float) -> None:
    env = HOME | ({} if value is None else {"FUNCMESH_TRACE_SAMPLE_RATIO": value})
    assert load_daemon_settings(env).tracing.sample_ratio == ratio


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", "nan"])
def test_a_bad_sample_ratio_is_refused(value: str) -> None:
    with pytest.raises(Invalid, match="FUNCMESH_TRACE_SAMPLE_RATIO must be a number from 0 to 1"):
        load_daemon_settings(HOME | {"FUNCMESH_TRACE_SAMPLE_RATIO": value})


@pytest.mark.parametrize(
    ("value", "per_second"),
    [(None, 100.0), ("0", 0.0), ("2.5", 2.5), ("unlimited", math.inf), ("inf", math.inf)],
)
def test_traces_per_second(value: str | None, per_second: float) -> None:
    env = HOME | ({} if value is None else {"FUNCMESH_TRACES_PER_SECOND": value})
    assert load_daemon_settings(env).tracing.traces_per_second == per_second


@pytest.mark.parametrize("value", ["-1", "many", "nan", "1e400"])
def test_a_bad_traces_per_second_is_refused(value: str) -> None:
    with pytest.raises(Invalid, match="FUNCMESH_TRACES_PER_SECOND must be a number of 0 or more"):
        load_daemon_settings(HOME | {"FUNCMESH_TRACES_PER_SECOND": value})


def test_up_refuses_a_bad_endpoint_before_starting(tmp_path: Path) -> None:
    """In a process of its own: ``up`` configures logging for the whole process."""
    funcmesh = Path(sys.executable).with_name("funcmesh")
    env = {"PATH": os.defpath, "FUNCMESH_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [str(funcmesh), "up", "--otlp-endpoint", "grpc://127.0.0.1:4317"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "--otlp-endpoint must be an http:// or https:// URL" in result.stderr
    assert not (tmp_path / "home").exists()  # nothing started
