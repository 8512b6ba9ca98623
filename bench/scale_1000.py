"""Benchmark: one daemon with 1,000 functions: ``function ls`` time and the idle daemon's memory.

Starts ``funcmesh up``, notes its memory, creates 1,000 hello-world Functions through the API in
batches (parallel requests; each batch Ready before the next) with the annotation
``autoscaling.funcmesh.io/scale-to-zero-after: 1s``, so that the instances that check each new
function loads go away again, waits until every instance has stopped, and then times
``funcmesh function ls`` as a user runs it (its output is checked to list every function), the
API list behind it, and reads the idle daemon's memory (RSS, PSS and USS from
/proc/PID/smaps_rollup, and the peak RSS so far, VmHWM).

    .venv/bin/python bench/scale_1000.py [--functions 1000] [--batch 50] [--parallel 8]

Batches, because a check instance that has not loaded within scale-to-zero-after is stopped by
the idle sweep and its Function reported LoadFailed (seen with 1,000 at once). It prints; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import harness as h

from funcmesh.model.kinds import FUNCTION


def timed_s(action: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.monotonic()
        action()
        times.append(time.monotonic() - started)
    return times


def memory_row(label: str, pid: int) -> tuple[str, ...]:
    memory = h.memory_of(pid)
    return (
        label,
        h.megabytes(memory.rss_bytes),
        h.megabytes(memory.pss_bytes),
        h.megabytes(memory.uss_bytes),
        h.megabytes(h.peak_rss_bytes(pid)),
    )


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    names = [f"fn-{i:04d}" for i in range(args.functions)]
    idle = h.scaling(scale_to_zero_after="1s")
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon, daemon.api() as client:
        h.wait_quiet(daemon.pid)
        memory = [memory_row("daemon, no functions", daemon.pid)]
        started = time.monotonic()
        for first in range(0, len(names), args.batch):
            batch = names[first : first + args.batch]
            functions = [h.hello_function(n, annotations=idle) for n in batch]
            h.create_all(client, functions, parallel=args.parallel)
            h.wait_all_ready(client, batch, timeout_s=120)
        ready_s = time.monotonic() - started
        h.wait_for(
            lambda: not h.worker_pids(daemon.pid),
            timeout_s=120,
            interval_s=0.5,
            what="every check instance to stop",
        )
        stopped_s = time.monotonic() - started
        h.wait_quiet(daemon.pid)
        print(
            f"{len(names)} Functions created in batches of {args.batch} ({args.parallel} requests "
            f"at once), all Ready after {ready_s:.1f}s, every instance stopped after "
            f"{stopped_s:.1f}s\n"
        )

        def cli_ls() -> None:
            lines = daemon.cli("function", "ls").stdout.splitlines()
            if len(lines) != len(names) + 1:
                raise RuntimeError(f"function ls printed {len(lines)} lines")

        rows = [
            ("funcmesh function ls (the CLI)", timed_s(cli_ls, args.repeat)),
            ("  API list as a Table", timed_s(lambda: client.table(FUNCTION, "default"), 5)),
            ("  API list as objects", timed_s(lambda: client.list(FUNCTION, "default"), 5)),
            ("funcmesh --help (CLI start only)", timed_s(lambda: daemon.cli("--help"), 3)),
        ]
        h.print_table(
            ("command", "runs", "median ms", "min ms", "max ms"),
            [
                (
                    label,
                    str(len(times)),
                    f"{statistics.median(times) * 1000:.0f}",
                    f"{min(times) * 1000:.0f}",
                    f"{max(times) * 1000:.0f}",
                )
                for label, times in rows
            ],
        )
        memory.append(memory_row(f"daemon, {len(names)} functions, idle", daemon.pid))
        memory += [memory_row("zygote", pid) for pid in h.children(daemon.pid)]
        h.print_table(("process", "RSS MiB", "PSS MiB", "USS MiB", "peak RSS MiB"), memory)


def main(argv: Sequence[str] | None = None) -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--functions", type=int, default=1000, help="functions (1000)")
    parser.add_argument("--batch", type=int, default=50, help="functions per batch (50)")
    parser.add_argument("--parallel", type=int, default=8, help="API requests at once (8)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of function ls (5)")
    measure(parser.parse_args(argv))


if __name__ == "__main__":
    main()
