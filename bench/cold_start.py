"""Benchmark: cold start of a hello-world Python function, through the gateway, to first byte.

Deploys N functions with the same code (so code and dependencies are prepared once), restarts
the daemon so that no instance runs (a restart does not re-check generations that loaded
before, so the deploy-time check instances are gone and none are started), starts the zygote
with one call to a spare function, then calls each function once over one keep-alive client
connection: every one of those calls is a scale-from-zero start. Then each function is called
once more, warm, for comparison. ``--gap-ms`` pauses before every call, cold or warm, so both
start from an idle machine (the zygote forks its next spare child about 10 ms after a spawn;
``--gap-ms 0`` shows a burst, where some of those forks are on the critical path). The CPU
time the daemon, the zygote and the new workers used during the cold calls is shown too.

Every function has a Service, so each worker gets the Kubernetes service variables of all of
them (eight per Service). ``--no-service-links`` deploys the functions with Kubernetes'
``enableServiceLinks: false`` in their pod template, which leaves those variables out: the
difference between the two runs is what the variables cost.

The split: a second pass runs the same daemon code with timers wrapped around
``FunctionPool.acquire`` and ``Zygote.spawn`` (this file, ``--role=daemon``); the daemon and
this client read the same monotonic clock, so each cold call splits into gateway-in (request
sent -> acquire starts), acquire (pod address bound, zygote hand-off), and worker (acquire
done -> first byte: the spare takes the request, drops privileges, imports the handler,
accepts, answers, and the gateway relays it).

    .venv/bin/python bench/cold_start.py [--functions 200] [--gap-ms 50] [--no-split]
                                         [--no-service-links]

It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import atexit
import json
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h

WARMUP_FUNCTION = "warmup"


def deploy(daemon: h.Daemon, names: Sequence[str], *, service_links: bool = True) -> None:
    functions = [h.hello_function(n) for n in [WARMUP_FUNCTION, *names]]
    if not service_links:
        for function in functions:
            template = {"spec": {"enableServiceLinks": False}}
            function["spec"]["deployment"] = {"spec": {"template": template}}
    with daemon.api() as client:
        h.create_all(client, functions)
        h.wait_all_ready(client, [WARMUP_FUNCTION, *names])


def prepare_cold(daemon: h.Daemon, launcher: Sequence[str]) -> None:
    """Restart: no instance runs after it; then start the zygote (and its spare) with one call."""
    daemon.restart(launcher=launcher)
    h.wait_quiet(daemon.pid)
    if h.worker_pids(daemon.pid):
        raise RuntimeError("instances are running after the restart: the calls would be warm")
    with h.HttpConnection(daemon.gateway_address) as connection:
        answer = connection.get(f"/function/{WARMUP_FUNCTION}")
        if answer.status != 200:
            raise RuntimeError(f"warm-up call answered {answer.status}: {answer.body!r}")
    h.wait_for(
        lambda: bool(h.spare_pids(daemon.pid)), timeout_s=10, what="the zygote's spare child"
    )
    h.wait_quiet(daemon.pid)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pass:
    """One pass over every function: a cold call each, then a warm call each, and the CPU time
    the daemon, the zygote and the new workers used during the cold calls."""

    names: Sequence[str]
    cold: Sequence[h.Timed]
    warm: Sequence[h.Timed]
    cpu_ms: Mapping[str, float]


def call_each(daemon: h.Daemon, names: Sequence[str], gap_s: float) -> Pass:
    """Call every function once (cold), then each once more (warm), ``gap_s`` before each."""
    zygotes = h.children(daemon.pid)
    before = set(h.worker_pids(daemon.pid))
    cpu_before = {"daemon": h.cpu_ns(daemon.pid), "zygote": sum(map(h.cpu_ns, zygotes))}
    with h.HttpConnection(daemon.gateway_address) as connection:
        cold = [_call(connection, name, gap_s) for name in names]
        cpu_after = {"daemon": h.cpu_ns(daemon.pid), "zygote": sum(map(h.cpu_ns, zygotes))}
        workers = set(h.worker_pids(daemon.pid)) - before
        cpu_after["workers"] = sum(map(h.cpu_ns, workers))
        warm = [_call(connection, name, gap_s) for name in names]
    cpu_ms = {
        who: (cpu_after[who] - cpu_before.get(who, 0)) / 1e6 / len(names) for who in cpu_after
    }
    return Pass(names=names, cold=cold, warm=warm, cpu_ms=cpu_ms)


def _call(connection: h.HttpConnection, name: str, gap_s: float) -> h.Timed:
    time.sleep(gap_s)
    answer = connection.get(f"/function/{name}")
    if answer.status != 200 or answer.body != b"hello world":
        raise RuntimeError(f"{name} answered {answer.status}: {answer.body[:200]!r}")
    return answer


def print_latencies(result: Pass) -> None:
    cold = [c.ttfb_ms for c in result.cold]
    warm = [w.ttfb_ms for w in result.warm]
    added = [c - w for c, w in zip(cold, warm, strict=True)]
    h.print_table(
        ("call, time to first byte", *h.SUMMARY_HEADER),
        [
            ("cold: scale from zero", *h.summary_ms(cold)),
            ("warm: the same function again", *h.summary_ms(warm)),
            ("cold minus warm, per function", *h.summary_ms(added)),
        ],
    )
    cpu = ", ".join(f"{who} {ms:.2f} ms" for who, ms in result.cpu_ms.items())
    print(f"CPU time per cold start: {cpu} (a worker's includes its rehearsal as a spare)\n")


def print_split(result: Pass, records: dict[str, dict[str, Any]]) -> None:
    by_function = {r["function"]: r for r in records.values() if "acquire_start" in r}
    parts: dict[str, list[float]] = {
        "gateway in: sent -> acquire": [],
        "acquire (bind, zygote hand-off)": [],
        "  of it, Zygote.spawn": [],
        "worker: acquire done -> first byte": [],
        "acquire done -> 'ready' report": [],
    }
    for name, cold in zip(result.names, result.cold, strict=True):
        record = by_function.get(name)
        if record is None or "spawn_end" not in record:
            continue
        values = (
            record["acquire_start"] - cold.sent_s,
            record["acquire_end"] - record["acquire_start"],
            record["spawn_end"] - record["spawn_start"],
            cold.first_byte_s - record["acquire_end"],
            record.get("ready", float("nan")) - record["acquire_end"],
        )
        for key, value in zip(parts, values, strict=True):
            parts[key].append(value * 1000.0)
    if not parts["worker: acquire done -> first byte"]:
        print("no split recorded")
        return
    rows = [(label, *h.summary_ms(values)) for label, values in parts.items()]
    h.print_table(("where a cold call's time goes", *h.SUMMARY_HEADER), rows)


def measure(args: argparse.Namespace) -> None:
    names = [f"cold-{i:04d}" for i in range(args.functions)]
    print(h.describe_machine())
    with h.scratch_dir(keep=args.keep) as scratch:
        daemon = h.Daemon(scratch)
        with daemon:
            started = time.monotonic()
            deploy(daemon, names, service_links=not args.no_service_links)
            links = "without" if args.no_service_links else "with"
            print(
                f"deployed {len(names) + 1} functions in {time.monotonic() - started:.1f}s, "
                f"{links} service variables"
            )
            prepare_cold(daemon, [str(h.FUNCMESH)])
            result = call_each(daemon, names, args.gap_ms / 1000.0)
            print(f"\n{len(names)} cold starts, {args.gap_ms:g} ms apart, `funcmesh up`:")
            print_latencies(result)
            if args.no_split:
                return
            record_path = scratch / "split.json"
            launcher = [sys.executable, __file__, "--role=daemon", f"--record={record_path}"]
            prepare_cold(daemon, launcher)
            result = call_each(daemon, names, args.gap_ms / 1000.0)
            daemon.stop()
            records = json.loads(record_path.read_text())
            print(f"the same with timers in the daemon ({len(names)} cold starts):")
            print_latencies(result)
            print_split(result, records)


# ---- the instrumented daemon (--role=daemon) ----


def serve_instrumented(funcmesh_args: list[str], record_path: Path) -> None:
    """``funcmesh up`` with timers around acquire and spawn, written to ``record_path`` at exit."""
    from funcmesh.cli.main import main as funcmesh_main
    from funcmesh.runtime.instances import Lease
    from funcmesh.runtime.pool import FunctionPool
    from funcmesh.runtime.workers import SpawnRequest, WorkerProcess
    from funcmesh.runtime.zygote import Zygote

    records: dict[str, dict[str, Any]] = {}
    original_acquire = FunctionPool.acquire
    original_spawn = Zygote.spawn

    async def timed_acquire(self: FunctionPool) -> Lease:
        started, cold_starts = time.monotonic(), self.stats.cold_starts
        lease = await original_acquire(self)
        if self.stats.cold_starts != cold_starts:
            record = records.setdefault(lease.instance_id, {})
            record.update(function=self.name, acquire_start=started, acquire_end=time.monotonic())
        return lease

    async def timed_spawn(
        self: Zygote,
        request: SpawnRequest,
        *,
        listen_socket: socket.socket,
        log_fd: int,
        secrets_fd: int | None = None,
    ) -> WorkerProcess:
        started = time.monotonic()
        process = await original_spawn(
            self, request, listen_socket=listen_socket, log_fd=log_fd, secrets_fd=secrets_fd
        )
        record = records.setdefault(request.pod_name, {})
        record.update(spawn_start=started, spawn_end=time.monotonic())
        process.ready.add_done_callback(lambda _: record.update(ready=time.monotonic()))
        return process

    FunctionPool.acquire = timed_acquire  # type: ignore[method-assign]
    Zygote.spawn = timed_spawn  # type: ignore[method-assign]
    atexit.register(lambda: record_path.write_text(json.dumps(records)))
    sys.argv = ["funcmesh", *funcmesh_args]
    funcmesh_main()


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--functions", type=int, default=200, help="cold starts (default 200)")
    parser.add_argument(
        "--gap-ms", type=float, default=50.0, help="pause before each cold call (default 50)"
    )
    parser.add_argument("--no-split", action="store_true", help="skip the instrumented pass")
    parser.add_argument(
        "--no-service-links",
        action="store_true",
        help="deploy with enableServiceLinks: false (no Kubernetes service variables)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--role", choices=["bench", "daemon"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role == "daemon":
        serve_instrumented(rest, args.record)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    else:
        measure(args)


if __name__ == "__main__":
    main()
