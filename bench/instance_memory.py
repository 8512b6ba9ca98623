"""Benchmark: memory of an idle, warm hello-world instance (USS, PSS, RSS).

Starts ``funcmesh up``, deploys N hello-world functions (the deploy-time check starts one
instance each), calls each once, waits until the daemon is idle, and reads
``/proc/PID/smaps_rollup`` of every worker: USS (Private_Clean + Private_Dirty, what the
instance alone costs: it is freed when the instance stops), PSS (its fair share of the pages
shared with the zygote and the other instances) and RSS (every page it maps, shared ones
included: summing RSS over instances overcounts). Then one instance serves 10 concurrent
connections for a moment and is read again (a thread per connection).

    .venv/bin/python bench/instance_memory.py [--functions 20]

Workers are the zygote's children that hold a pod's listening socket; the zygote's spare child
(forked ahead of the next cold start) is shown on its own. It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import harness as h

BUSY = "busy"


def memory_rows(label: str, memories: Sequence[h.Memory]) -> list[tuple[str, ...]]:
    if not memories:
        return []

    def cells(values: list[int]) -> tuple[str, str, str]:
        return (
            h.megabytes(statistics.median(values)),
            h.megabytes(min(values)),
            h.megabytes(max(values)),
        )

    uss = cells([m.uss_bytes for m in memories])
    pss = cells([m.pss_bytes for m in memories])
    rss = cells([m.rss_bytes for m in memories])
    return [(label, str(len(memories)), *uss, *pss, rss[0])]


HEADER = (
    "process",
    "n",
    "USS MiB",
    "min",
    "max",
    "PSS MiB",
    "min",
    "max",
    "RSS MiB",
)


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    names = [f"mem-{i:03d}" for i in range(args.functions)]
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon:
        with daemon.api() as client:
            busy = h.hello_function(
                BUSY, annotations=h.scaling(target_concurrency="10", max_scale="1")
            )
            h.create_all(client, [*(h.hello_function(n) for n in names), busy])
            h.wait_all_ready(client, [*names, BUSY])
        with h.HttpConnection(daemon.gateway_address) as connection:
            for name in [*names, BUSY]:
                connection.get(f"/function/{name}")
        h.wait_quiet(daemon.pid)
        workers, spares = h.zygote_children(daemon.pid)
        zygotes = h.children(daemon.pid)
        idle = [h.memory_of(pid) for pid in workers]
        rows = memory_rows("worker, idle after one call", idle)
        rows += memory_rows("zygote's spare child", [h.memory_of(pid) for pid in spares])
        rows += memory_rows("zygote", [h.memory_of(pid) for pid in zygotes])
        rows += memory_rows("daemon", [h.memory_of(daemon.pid)])
        h.run_wrk(f"{daemon.gateway_url}/function/{BUSY}", connections=10, threads=2, duration_s=2)
        h.wait_quiet(daemon.pid)
        (pod,) = h.running_pods(daemon, BUSY)
        busy_worker = h.worker_listening_on(daemon.pid, pod["IP"])
        rows += memory_rows("worker after 10 concurrent connections", [h.memory_of(busy_worker)])
        print()
        h.print_table(HEADER, rows)
        total_uss = sum(m.uss_bytes for m in idle)
        total_pss = sum(m.pss_bytes for m in idle)
        print(
            f"{len(idle)} idle instances: USS {h.megabytes(total_uss)} MiB in all, "
            f"PSS {h.megabytes(total_pss)} MiB in all"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--functions", type=int, default=20, help="idle instances (20)")
    measure(parser.parse_args(argv))


if __name__ == "__main__":
    main()
