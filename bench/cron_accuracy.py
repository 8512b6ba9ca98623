"""Benchmark: how close to its scheduled second each run of an ``@every 1s`` CronJobTrigger fires.

Starts ``funcmesh up``, deploys a Python function that notes the wall-clock time each call
reaches it together with the call's ``Event-Time`` (the scheduled second), and creates a
CronJobTrigger ``@every 1s`` for it. For ``--duration-s`` seconds (default 300) it collects,
per run, two lateness figures in milliseconds after the scheduled second: when the daemon fired
the run (``status.lastRuns[].firedTime``, read every few seconds) and when the call reached the
function (through the gateway and the worker). It also counts the seconds that saw no run and
the seconds that saw more than one (both should be zero).

    .venv/bin/python bench/cron_accuracy.py [--duration-s 300] [--keep]

It prints; it asserts nothing.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import harness as h

from funcmesh.client.api import ApiClient
from funcmesh.model.kinds import CRONJOB_TRIGGER, FUNCTION

FUNCTION_NAME = "noter"
TRIGGER_NAME = "every-second"
STATUS_POLL_S = 3.0  # lastRuns keeps 10 runs: read it well before they roll over
NOTER = """\
import json, time

def handler(event, context):
    arrived = time.time()
    with open({path!r}, "a") as notes:
        notes.write(json.dumps({{"arrived": arrived, "scheduled": event["event-time"]}}) + "\\n")
    return "noted"
"""


def noter_function(notes: Path) -> dict[str, Any]:
    function = h.hello_function(FUNCTION_NAME)
    function["spec"]["handler"] = f"{FUNCTION_NAME}.handler"
    function["spec"]["function"] = NOTER.format(path=str(notes))
    return function


def trigger() -> dict[str, Any]:
    return {
        "apiVersion": CRONJOB_TRIGGER.api_version,
        "kind": CRONJOB_TRIGGER.kind,
        "metadata": {"name": TRIGGER_NAME, "namespace": "default"},
        "spec": {"function-name": FUNCTION_NAME, "schedule": "@every 1s"},
    }


def seconds_of(text: str) -> float:
    """Unix time of ``2024-05-03 11:31:53+00:00`` or ``2024-05-03T11:31:53.004Z``."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def collect_fired(client: ApiClient, fired: dict[float, float]) -> None:
    """Merge the fired times of the trigger's last runs into ``fired`` (scheduled -> fired)."""
    status = client.get(CRONJOB_TRIGGER, "default", TRIGGER_NAME).get("status") or {}
    for run in status.get("lastRuns") or []:
        if "firedTime" in run:
            fired[seconds_of(run["scheduleTime"])] = seconds_of(run["firedTime"])


def run_for(client: ApiClient, duration_s: float) -> tuple[dict[float, float], float, float]:
    """Create the trigger, watch it for ``duration_s``, delete it; fired times and the window."""
    client.create(CRONJOB_TRIGGER, trigger())
    started_s = time.time()
    fired: dict[float, float] = {}
    next_progress_s = started_s + 60
    while (now_s := time.time()) < started_s + duration_s:
        time.sleep(min(STATUS_POLL_S, started_s + duration_s - now_s))
        collect_fired(client, fired)
        if time.time() >= next_progress_s:
            print(f"  ... {time.time() - started_s:.0f}s, {len(fired)} runs so far", flush=True)
            next_progress_s += 60
    collect_fired(client, fired)
    client.delete(CRONJOB_TRIGGER, "default", TRIGGER_NAME)
    return fired, started_s, started_s + duration_s


def report(
    notes: list[dict[str, Any]], fired: dict[float, float], window: tuple[float, float]
) -> None:
    start_s, end_s = window
    arrivals: dict[float, list[float]] = {}
    for note in notes:
        arrivals.setdefault(seconds_of(note["scheduled"]), []).append(note["arrived"])
    # whole seconds inside the window (the first and the last may be cut by the window's edges)
    expected = range(int(start_s) + 2, int(end_s) - 1)
    missing = [second for second in expected if second not in arrivals]
    doubled = [second for second, times in arrivals.items() if len(times) > 1]
    arrived_ms = [(times[0] - second) * 1000 for second, times in arrivals.items()]
    fired_ms = [(fired_s - second) * 1000 for second, fired_s in fired.items()]
    print(f"{len(arrivals)} runs in {end_s - start_s:.0f}s; seconds without a run: "
          f"{len(missing)}, seconds with more than one: {len(doubled)}")  # fmt: skip
    h.print_table(
        ("lateness after the scheduled second", "runs", *h.SUMMARY_HEADER, "min ms", "> 100 ms"),
        [
            _row("fired by the daemon (status.firedTime)", fired_ms),
            _row("reached the function (its own clock)", arrived_ms),
        ],
    )
    latest = sorted(fired, key=lambda second: fired[second] - second, reverse=True)[:5]
    h.print_table(
        ("the latest fires", "at s", "fired ms", "reached ms"),
        [
            (
                "",
                f"{second - start_s:.0f}",
                f"{(fired[second] - second) * 1000:.2f}",
                f"{(arrivals[second][0] - second) * 1000:.2f}" if second in arrivals else "-",
            )
            for second in latest
        ],
    )
    load1, load5, _ = os.getloadavg()
    print(f"load average at the end: {load1:.2f}/{load5:.2f}")


def _row(label: str, values_ms: list[float]) -> list[str]:
    if not values_ms:
        return [label, "0", *["-"] * (len(h.SUMMARY_HEADER) + 2)]
    over = sum(1 for value in values_ms if value > 100)
    return [
        label,
        str(len(values_ms)),
        *h.summary_ms(values_ms),
        f"{min(values_ms):.2f}",
        str(over),
    ]


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--duration-s", type=float, default=300.0, help="how long (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    print(h.describe_machine())
    with h.scratch_dir(keep=args.keep) as scratch:
        shared = scratch / "work" / "notes"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)  # the function may run as nobody
        notes_path = shared / "notes.jsonl"
        with h.Daemon(scratch) as daemon, daemon.api() as client:
            client.create(FUNCTION, noter_function(notes_path))
            h.wait_all_ready(client, [FUNCTION_NAME])
            print(f"@every 1s for {args.duration_s:g}s ...", flush=True)
            fired, start_s, end_s = run_for(client, args.duration_s)
        notes = [json.loads(line) for line in notes_path.read_text().splitlines()]
        report(notes, fired, (start_s, end_s))


if __name__ == "__main__":
    main()
