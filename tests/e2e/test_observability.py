"""What an operator reads off a running function: Prometheus metrics on the API server and on
each worker, `function top`, pods with their IPs, events, and the Kubeless event headers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Daemon, api_client

ECHO_EVENT = (
    "def handler(event, context):\n"
    "    return {key: event[key] for key in "
    "('event-id', 'event-type', 'event-time', 'event-namespace')}\n"
)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_top_and_pods_agree_with_the_calls_made(daemon: Daemon, tmp_path: Path) -> None:
    code = tmp_path / "events.py"
    code.write_text(ECHO_EVENT)
    daemon.run(
        "function",
        "deploy",
        "events",
        "--runtime",
        "python3.11",
        "--handler",
        "events.handler",
        "--from-file",
        str(code),
    )
    for _ in range(3):
        answer = httpx.get(f"{daemon.gateway_url}/function/events", timeout=30)
        assert answer.status_code == 200
    headers = answer.json()
    assert len(headers["event-id"]) == 15
    assert headers["event-namespace"] == "gateway.funcmesh.io"
    assert headers["event-time"].endswith("Z")
    own = httpx.get(
        f"{daemon.gateway_url}/function/events",
        headers={"event-id": "mine", "event-namespace": "tests"},
        timeout=30,
    ).json()
    assert (own["event-id"], own["event-namespace"]) == ("mine", "tests")

    with api_client(daemon) as api:
        text = api.get("/metrics").text
    labels = (("function", "events"), ("namespace", "default"))
    assert samples(text, "funcmesh_function_calls_total")[labels] == 4
    assert samples(text, "funcmesh_function_failures_total")[labels] == 0
    assert samples(text, "funcmesh_function_duration_seconds_count")[labels] == 4
    assert samples(text, "funcmesh_function_cold_starts_total")[labels] >= 1
    assert samples(text, "funcmesh_function_instances")[labels] >= 1

    top = json.loads(daemon.run("function", "top", "--function", "events", "-o", "json").stdout)
    [record] = top if isinstance(top, list) else [top]
    assert record["calls"] == 4
    assert record["failures"] == 0

    pods = json.loads(daemon.run("get", "pods", "-l", "function=events", "-o", "json").stdout)
    pod_ip = pods["items"][0]["status"]["podIP"]
    assert pod_ip.startswith("127.128.")
    worker_metrics = httpx.get(f"http://{pod_ip}:8080/metrics", timeout=10).text
    assert sum(samples(worker_metrics, "function_calls_total").values()) == 4
    assert httpx.get(f"http://{pod_ip}:8080/healthz", timeout=10).text == "OK"

    events = daemon.run("get", "events").stdout
    assert "Ready" in events
    assert "events" in events
