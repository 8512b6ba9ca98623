"""Benchmark: from ``function deploy`` (no dependencies) to the first successful call.

Starts ``funcmesh up`` and deploys hello-world functions, each with code of its own (so
nothing is served from the code cache), in two ways, alternating:

- the CLI as a user types it, ``funcmesh function deploy NAME --runtime python3.11 --handler
  ... --from-file F`` (it waits until the Function is Ready), then the first call through the
  gateway;
- the API: POST the Function, watch it until Ready, then the first call through the gateway.

The first deploy after the daemon starts also starts the Python zygote; it is shown on its own.
The CLI's own start (``--dryrun``, which talks to no server) is shown for reference.

    .venv/bin/python bench/deploy_latency.py [--rounds 10]

It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import harness as h

from funcmesh.client.api import ApiClient
from funcmesh.model.kinds import FUNCTION


@dataclass(frozen=True, slots=True, kw_only=True)
class Deploy:
    """Seconds from the start of a deploy to: Ready (seen by the deployer), first byte."""

    accepted_s: float  # API: the POST answered; CLI: the command exited (Ready)
    ready_s: float
    first_byte_s: float


def code_of(index: int) -> str:
    return f'def handler(event, context):\n    return "hello {index}"\n'


def deploy_by_cli(daemon: h.Daemon, scratch: Path, index: int) -> Deploy:
    name = f"cli-{index:03d}"
    source = scratch / f"{name.replace('-', '_')}.py"
    source.write_text(code_of(index))
    started = time.monotonic()
    daemon.cli(
        *("function", "deploy", name, "--runtime", "python3.11"),
        *("--handler", f"{source.stem}.handler", "--from-file", str(source)),
    )
    ready = time.monotonic()
    first_byte = first_call(daemon, name, index)
    return Deploy(
        accepted_s=ready - started, ready_s=ready - started, first_byte_s=first_byte - started
    )


def deploy_by_api(daemon: h.Daemon, client: ApiClient, index: int) -> Deploy:
    name = f"api-{index:03d}"
    obj = h.hello_function(name)
    obj["spec"]["function"] = code_of(index)
    started = time.monotonic()
    created = client.create(FUNCTION, obj)
    accepted = time.monotonic()
    events = client.watch(
        FUNCTION,
        "default",
        resource_version=created["metadata"]["resourceVersion"],
        field_selector=f"metadata.name={name}",
        timeout_s=60,
    )
    for event in events:
        if h.ready_state(event.object) == "ready":
            break
        if h.ready_state(event.object) == "failed":
            raise RuntimeError(f"{name} failed: {event.object.get('status')}")
    ready = time.monotonic()
    first_byte = first_call(daemon, name, index)
    return Deploy(
        accepted_s=accepted - started,
        ready_s=ready - started,
        first_byte_s=first_byte - started,
    )


def first_call(daemon: h.Daemon, name: str, index: int) -> float:
    """A new client connection, one call; the monotonic time of its first byte."""
    with h.HttpConnection(daemon.gateway_address) as connection:
        answer = connection.get(f"/function/{name}")
    if answer.status != 200 or answer.body != f"hello {index}".encode():
        raise RuntimeError(f"{name} answered {answer.status}: {answer.body[:200]!r}")
    return answer.first_byte_s


def cli_start_s(daemon: h.Daemon, scratch: Path) -> float:
    """The CLI's own cost: ``deploy --dryrun`` builds the Function and talks to no server."""
    source = scratch / "dry.py"
    source.write_text(code_of(0))
    times = []
    for _ in range(3):
        started = time.monotonic()
        daemon.cli(
            *("function", "deploy", "dry", "--runtime", "python3.11", "--handler", "dry.handler"),
            *("--from-file", str(source), "--dryrun"),
        )
        times.append(time.monotonic() - started)
    return statistics.median(times)


def coverage_hook_ms() -> float | None:
    """What a ``coverage`` .pth hook in this venv (scripts/test installs one) adds to every
    Python start, the CLI's included: the import time of coverage under ``site``."""
    result = subprocess.run(
        [str(h.FUNCMESH.with_name("python")), "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"^import time:\s+\d+ \|\s+(\d+) \|\s+coverage$", result.stderr, re.M)
    return int(match.group(1)) / 1000.0 if match else None


def print_deploys(label: str, deploys: Sequence[Deploy], *, accepted_label: str) -> None:
    def ms(values: Sequence[float]) -> list[str]:
        return h.summary_ms([v * 1000.0 for v in values])

    print(label)
    h.print_table(
        ("milliseconds from the start of the deploy", *h.SUMMARY_HEADER),
        [
            (accepted_label, *ms([d.accepted_s for d in deploys])),
            ("Ready seen", *ms([d.ready_s for d in deploys])),
            ("first byte of the first call", *ms([d.first_byte_s for d in deploys])),
        ],
    )


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon, daemon.api() as client:
        first = deploy_by_api(daemon, client, 999)
        print(
            f"first deploy after the daemon started (starts the zygote): "
            f"{first.first_byte_s * 1000:.0f} ms to the first byte\n"
        )
        by_cli, by_api = [], []
        for index in range(args.rounds):
            by_cli.append(deploy_by_cli(daemon, scratch, index))
            by_api.append(deploy_by_api(daemon, client, index))
        print_deploys(
            f"{args.rounds} deploys with `funcmesh function deploy` (waits for Ready):",
            by_cli,
            accepted_label="command exited",
        )
        print_deploys(
            f"{args.rounds} deploys through the API (POST, watch until Ready):",
            by_api,
            accepted_label="POST answered",
        )
        cli_s = cli_start_s(daemon, scratch)
        hook_ms = coverage_hook_ms()
        print(f"the CLI alone (deploy --dryrun, no server): {cli_s * 1000:.0f} ms")
        if hook_ms is not None:
            print(
                f"of every Python start in this venv, {hook_ms:.0f} ms import coverage "
                "(a .pth hook from scripts/test, absent from a `pip install`)"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="deploys each way (10)")
    measure(parser.parse_args(argv))


if __name__ == "__main__":
    main()
