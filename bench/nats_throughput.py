"""Benchmark: NATS messages delivered per second to a hello-world function, and none lost.

Starts a nats-server and ``funcmesh up --nats-url`` (through ``FUNCMESH_NATS_URL``) on free
loopback ports, deploys the hello-world function and a NATSTrigger selecting it, warms up with
a few hundred messages, then publishes ``--messages`` messages as fast as nats-py can and
waits until the daemon has dealt with all of them (or nothing moved for ``--settle-s``).

Counts come from the daemon's Prometheus metrics (``/metrics`` on the API): messages received,
deliveries that succeeded, retries, deliveries given up, and messages NATS dropped because the
trigger fell behind (slow consumer). "Lost" is published minus delivered. The rate is the
number of messages over the time from the first publish to the last delivery. The function's
own call count (``function top``) is shown as a cross-check.

    .venv/bin/python bench/nats_throughput.py [--messages 50000] [--payload-bytes 64]

It prints; it asserts nothing. Needs the Debian package nats-server (``scripts/setup``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import harness as h
import httpx
import nats
from prometheus_client.parser import text_string_to_metric_families

from funcmesh.client.kubeconfig import load_kubeconfig
from funcmesh.model.conditions import find_condition
from funcmesh.model.kinds import NATS_TRIGGER

FUNCTION_NAME = "hello"
TRIGGER_NAME = "bench"
SUBJECT = "bench.hello"
WARMUP_MESSAGES = 500
PUBLISH_BATCH = 1000  # messages between flushes, so the client's buffer stays small
POLL_S = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """The daemon's NATS trigger counters, summed over functions."""

    received: float = 0
    delivered: float = 0
    retried: float = 0
    failed: float = 0
    dropped: float = 0


@contextmanager
def nats_server(scratch: Path) -> Iterator[str]:
    binary = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/sbin")
    if binary is None:
        raise SystemExit("nats-server is missing: apt-get install nats-server (scripts/setup)")
    port = h.free_port()
    with open(scratch / "nats.log", "ab") as log:
        process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        h.wait_for(lambda: _answers(port), timeout_s=10, what="nats-server")
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as probe:
            return probe.recv(5) == b"INFO "
    except OSError:
        return False


class Metrics:
    """Reads the daemon's ``/metrics`` with the kubeconfig's CA and token."""

    def __init__(self, daemon: h.Daemon) -> None:
        config = load_kubeconfig(daemon.env)
        verify = httpx.create_ssl_context()
        if config.ca_pem:
            verify.load_verify_locations(cadata=config.ca_pem)
        self._client = httpx.Client(
            base_url=config.server,
            verify=verify,
            headers={"Authorization": f"Bearer {config.token}"},
            trust_env=False,
        )

    def counts(self) -> Counts:
        text = self._client.get("/metrics").raise_for_status().text
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "funcmesh_nats_deliveries_total":
                    key = sample.labels["outcome"]
                elif sample.name == "funcmesh_nats_messages_total":
                    key = "received"
                elif sample.name == "funcmesh_nats_slow_consumer_drops_total":
                    key = "dropped"
                else:
                    continue
                values[key] = values.get(key, 0.0) + sample.value
        return Counts(**values)

    def close(self) -> None:
        self._client.close()


def deploy(daemon: h.Daemon, *, max_scale: int, target_concurrency: int) -> None:
    with daemon.api() as client:
        annotations = h.scaling(
            max_scale=str(max_scale), target_concurrency=str(target_concurrency)
        )
        h.create_all(client, [h.hello_function(FUNCTION_NAME, annotations=annotations)])
        h.wait_all_ready(client, [FUNCTION_NAME])
        selector = {"matchLabels": {"function": FUNCTION_NAME}}
        client.create(
            NATS_TRIGGER,
            {
                "metadata": {"name": TRIGGER_NAME, "namespace": "default"},
                "spec": {"topic": SUBJECT, "functionSelector": selector},
            },
        )

        def subscribed() -> bool:
            status = client.get(NATS_TRIGGER, "default", TRIGGER_NAME).get("status") or {}
            ready = find_condition(status, "Ready")
            return ready is not None and ready.get("reason") == "Subscribed"

        h.wait_for(subscribed, timeout_s=30, what="the trigger to subscribe")


async def publish(url: str, count: int, payload: bytes) -> float:
    """Publish ``count`` messages; the seconds it took (flushed: the server has them all)."""
    client = await nats.connect(url)
    try:
        started = time.monotonic()
        for index in range(count):
            await client.publish(SUBJECT, payload)
            if index % PUBLISH_BATCH == PUBLISH_BATCH - 1:
                await client.flush()
        await client.flush()
        return time.monotonic() - started
    finally:
        await client.close()


def settle(metrics: Metrics, *, expected_delivered: float, quiet_s: float) -> tuple[Counts, float]:
    """Poll until every message is delivered or nothing changed for ``quiet_s``; the counts
    and the monotonic time of the last change."""
    last = metrics.counts()
    last_change = time.monotonic()
    while last.delivered < expected_delivered and time.monotonic() - last_change < quiet_s:
        time.sleep(POLL_S)
        now = metrics.counts()
        if now != last:
            last, last_change = now, time.monotonic()
    return last, last_change


def function_calls(daemon: h.Daemon) -> int:
    top = json.loads(daemon.cli("function", "top", "-o", "json").stdout)
    return sum(int(record["calls"]) for record in top if record["function"] == FUNCTION_NAME)


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--messages", type=int, default=50_000, help="messages to publish")
    parser.add_argument("--payload-bytes", type=int, default=64, help="size of each message")
    parser.add_argument("--max-scale", type=int, default=2, help="the function's max-scale")
    parser.add_argument(
        "--target-concurrency", type=int, default=16, help="the function's target-concurrency"
    )
    parser.add_argument("--settle-s", type=float, default=10.0, help="give up after this quiet")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    payload = json.dumps({"pad": "x" * max(0, args.payload_bytes - 11)}).encode()

    print(h.describe_machine())
    with h.scratch_dir(args.keep) as scratch, nats_server(scratch) as url:
        daemon = h.Daemon(scratch, extra_env={"FUNCMESH_NATS_URL": url})
        with daemon:
            deploy(daemon, max_scale=args.max_scale, target_concurrency=args.target_concurrency)
            metrics = Metrics(daemon)
            try:
                asyncio.run(publish(url, WARMUP_MESSAGES, payload))
                settle(metrics, expected_delivered=WARMUP_MESSAGES, quiet_s=args.settle_s)
                before = metrics.counts()
                cpu_before = h.cpu_seconds(daemon.pid)
                started = time.monotonic()
                publish_s = asyncio.run(publish(url, args.messages, payload))
                after, finished = settle(
                    metrics,
                    expected_delivered=before.delivered + args.messages,
                    quiet_s=args.settle_s,
                )
                cpu_s = h.cpu_seconds(daemon.pid) - cpu_before
                calls = function_calls(daemon)
            finally:
                metrics.close()
    report(args.messages, len(payload), publish_s, finished - started, before, after, cpu_s)
    print(f"function calls seen by the gateway (warm-up included): {calls}")


def report(
    messages: int,
    payload_bytes: int,
    publish_s: float,
    elapsed_s: float,
    before: Counts,
    after: Counts,
    cpu_s: float,
) -> None:
    delivered = after.delivered - before.delivered
    print(
        f"{messages} messages of {payload_bytes} bytes to one hello-world function "
        "through one NATSTrigger"
    )
    h.print_table(
        ("measure", "value"),
        [
            ("published", messages),
            ("publish time s", f"{publish_s:.2f}"),
            ("published / s", f"{messages / publish_s:,.0f}"),
            ("received by the daemon", f"{after.received - before.received:.0f}"),
            ("delivered", f"{delivered:.0f}"),
            ("retried", f"{after.retried - before.retried:.0f}"),
            ("given up", f"{after.failed - before.failed:.0f}"),
            ("dropped (slow consumer)", f"{after.dropped - before.dropped:.0f}"),
            ("lost (published - delivered)", f"{messages - delivered:.0f}"),
            ("first publish -> last delivery s", f"{elapsed_s:.2f}"),
            ("delivered / s", f"{delivered / elapsed_s:,.0f}"),
            ("daemon CPU s", f"{cpu_s:.1f}"),
        ],
    )


if __name__ == "__main__":
    main()
