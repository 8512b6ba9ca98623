"""Benchmark: how fast a function scales out under load, and back in when the load stops.

Starts ``funcmesh up``, deploys a function that sleeps 50 ms and sets its rule with
``funcmesh autoscale create ramp --min 0 --max MAX`` (concurrency metric, target 1) plus
``autoscaling.funcmesh.io/scale-to-zero-after`` (short). Then 50 callers (threads, one keep-alive
connection each) call it through the gateway while the API's pod list is sampled: the time from
the first call to ``MAX`` instances, and the calls/s completed while 1, 2, ... instances ran.
Then a steady phase per max-scale (1, 2, 5, MAX) gives throughput per instance count, and after
the load stops, the time until the function is back at min-scale (0).

With ``--metric cpu|qps --value V`` the rule is ``autoscale create ramp --min 0 --max MAX
--metric M --value V`` instead, the function takes up to 50 calls at once
(``target-concurrency: 50``, so concurrency alone never starts a second instance and every
instance beyond the first comes from the metric), and for cpu its handler burns 50 ms of CPU
instead of sleeping. The ramp then runs for ``--ramp-s`` and shows when each instance count was
first seen; the steady phase (a concurrency matter) is skipped.

    .venv/bin/python bench/autoscale_ramp.py [--max-scale 10] [--idle 2s] [--steady-s 3]
    .venv/bin/python bench/autoscale_ramp.py --metric qps --value 100 [--ramp-s 8]
    .venv/bin/python bench/autoscale_ramp.py --metric cpu --value 50

Callers, daemon and workers share the machine's cores. It prints; it asserts nothing.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field

import harness as h
import httpx

from funcmesh.client.api import ApiClient
from funcmesh.model.kinds import FUNCTION, POD

NAME = "ramp"
CALLERS = 50
SLEEP_CODE = "import time\n\ndef handler(event, context):\n    time.sleep(0.05)\n    return 'ok'\n"
BURN_CODE = (
    "import time\n\n"
    "def handler(event, context):\n"
    "    end = time.thread_time() + 0.05\n"  # 50 ms of this call's own CPU, however shared
    "    while time.thread_time() < end:\n"
    "        pass\n"
    "    return 'ok'\n"
)
SAMPLE_INTERVAL_S = 0.02


@dataclass(slots=True, kw_only=True)
class Load:
    """50 callers; ``done`` holds the monotonic completion time of every successful call."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    done: list[float] = field(default_factory=list)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._call) for _ in range(CALLERS)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _call(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    answer = client.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures[type(exc).__name__] += 1
                    continue
                if answer.status_code == 200:
                    self.done.append(time.monotonic())
                else:
                    self.failures[str(answer.status_code)] += 1


def instance_count(daemon: h.Daemon) -> int:
    with daemon.api() as client:
        return len(client.list(POD, "default", selector=f"function={NAME}").items)


def sample_until(client: ApiClient, *, count: int, timeout_s: float) -> list[tuple[float, int]]:
    """(monotonic time, instance count) samples until ``count`` instances or the timeout."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pods = client.list(POD, "default", selector=f"function={NAME}").items
        samples.append((time.monotonic(), len(pods)))
        if len(pods) >= count:
            break
        time.sleep(SAMPLE_INTERVAL_S)
    return samples


def deploy(daemon: h.Daemon, *, idle: str, metric: str) -> None:
    annotations = h.scaling(scale_to_zero_after=idle)
    if metric != "concurrency":
        annotations |= h.scaling(target_concurrency=str(CALLERS))
    function = h.hello_function(NAME, annotations=annotations)
    function["spec"]["function"] = BURN_CODE if metric == "cpu" else SLEEP_CODE
    with daemon.api() as client:
        client.create(FUNCTION, function)
        h.wait_all_ready(client, [NAME])


def ramp(daemon: h.Daemon, *, max_scale: int) -> None:
    daemon.cli("autoscale", "create", NAME, "--min", "0", "--max", str(max_scale))
    wait_for_zero(daemon)
    load = Load(url=f"{daemon.gateway_url}/function/{NAME}")
    with daemon.api() as client:
        client.version()  # connect (TLS) before the load competes for the cores
        started = time.monotonic()
        load.start()
        try:
            samples = sample_until(client, count=max_scale, timeout_s=10)
            until = time.monotonic() + 1.0  # a second at max-scale, for the table's last row
            while time.monotonic() < until:
                pods = client.list(POD, "default", selector=f"function={NAME}").items
                samples.append((time.monotonic(), len(pods)))
                time.sleep(SAMPLE_INTERVAL_S)
        finally:
            load.finish()
    reached = [t for t, count in samples if count >= max_scale]
    print(f"time from first call to {max_scale} instances: ", end="")
    print(f"{(reached[0] - started) * 1000:.0f} ms" if reached else "not reached in 10 s")
    print(f"most instances seen at once: {max(count for _, count in samples)}")
    print(
        f"{len(samples)} samples of the pod list, first after "
        f"{(samples[0][0] - started) * 1000:.0f} ms\n"
    )
    print_ramp_table(samples, load.done)
    if load.failures:
        print(f"failed calls during the ramp: {dict(load.failures)}\n")


def ramp_on_metric(daemon: h.Daemon, *, max_scale: int, rule: list[str], ramp_s: float) -> None:
    """The ramp under a cpu or qps rule: the count it settles at is the metric's to decide."""
    daemon.cli("autoscale", "create", NAME, "--min", "0", "--max", str(max_scale), *rule)
    wait_for_zero(daemon)
    load = Load(url=f"{daemon.gateway_url}/function/{NAME}")
    samples: list[tuple[float, int]] = []
    with daemon.api() as client:
        client.version()
        started = time.monotonic()
        load.start()
        try:
            while time.monotonic() < started + ramp_s:
                pods = client.list(POD, "default", selector=f"function={NAME}").items
                samples.append((time.monotonic(), len(pods)))
                time.sleep(SAMPLE_INTERVAL_S)
        finally:
            load.finish()
    print_first_seen(samples, started=started, done=load.done)
    settled = [count for at, count in samples if at >= started + ramp_s / 2]
    print(
        f"{len(samples)} samples of the pod list over {ramp_s:g} s; most instances at once: "
        f"{max(count for _, count in samples)}; over the second half: "
        f"{min(settled)}-{max(settled)}\n"
    )
    print_ramp_table(samples, load.done)
    if load.failures:
        print(f"failed calls during the ramp: {dict(load.failures)}\n")


def print_first_seen(
    samples: list[tuple[float, int]], *, started: float, done: list[float]
) -> None:
    """When each instance count was first seen, after the callers started and after the first
    answer (with 50 calls sharing one instance's core, the first answer can take a while)."""
    first_seen: dict[int, float] = {}
    for at, count in samples:
        first_seen.setdefault(count, at)
    answered = min(done, default=started)
    print(f"first call answered {(answered - started) * 1000:.0f} ms after the callers started\n")
    h.print_table(
        ("instances", "first seen: ms after the start", "ms after the first answer"),
        [
            (count, f"{(at - started) * 1000:.0f}", f"{(at - answered) * 1000:.0f}")
            for count, at in sorted(first_seen.items())
        ],
    )


def wait_for_zero(daemon: h.Daemon) -> None:
    h.wait_for(lambda: instance_count(daemon) == 0, timeout_s=120, what="zero instances")


def print_ramp_table(samples: list[tuple[float, int]], done: list[float]) -> None:
    """Calls/s completed while each instance count was observed (between samples)."""
    seconds: dict[int, float] = collections.defaultdict(float)
    calls: dict[int, int] = collections.defaultdict(int)
    for (begin, count), (end, _) in itertools.pairwise(samples):
        seconds[count] += end - begin
        calls[count] += sum(1 for t in done if begin <= t < end)
    rows = [
        (
            count,
            f"{seconds[count] * 1000:.0f}",
            calls[count],
            f"{calls[count] / seconds[count]:.0f}",
        )
        for count in sorted(seconds)
        if seconds[count] > 0
    ]
    h.print_table(("instances", "observed ms", "calls", "calls/s"), rows)


def steady(daemon: h.Daemon, *, max_scales: list[int], steady_s: float) -> None:
    rows = []
    for max_scale in max_scales:
        daemon.cli("autoscale", "create", NAME, "--min", "0", "--max", str(max_scale))
        wait_for_zero(daemon)  # a lowered max-scale does not stop busy instances (see docs)
        load = Load(url=f"{daemon.gateway_url}/function/{NAME}")
        load.start()
        try:
            h.wait_for(
                lambda m=max_scale: instance_count(daemon) >= m, timeout_s=10, what="max-scale"
            )
            begin = time.monotonic()
            time.sleep(steady_s)
            end = time.monotonic()
        finally:
            load.finish()
        calls = sum(1 for t in load.done if begin <= t < end)
        ideal = max_scale / 0.05
        rows.append((max_scale, f"{calls / (end - begin):.0f}", f"{ideal:.0f}"))
    h.print_table(("max-scale (instances)", "calls/s", "ideal calls/s (n / 50 ms)"), rows)


def scale_in(daemon: h.Daemon, *, idle: str) -> None:
    load = Load(url=f"{daemon.gateway_url}/function/{NAME}")
    load.start()
    with contextlib.suppress(RuntimeError):
        h.wait_for(lambda: instance_count(daemon) > 1, timeout_s=10, what="instances")
    before = instance_count(daemon)
    load.finish()
    stopped = time.monotonic()
    took_s = h.wait_for(lambda: instance_count(daemon) == 0, timeout_s=120, what="min-scale")
    print(
        f"after the load stopped: {before} instances -> 0 (min-scale) in {took_s * 1000:.0f} ms "
        f"(scale-to-zero-after {idle}; measured {time.monotonic() - stopped:.2f} s)\n"
    )


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--max-scale", type=int, default=10)
    parser.add_argument("--idle", default="2s", help="scale-to-zero-after")
    parser.add_argument("--steady-s", type=float, default=3.0)
    parser.add_argument("--metric", choices=("concurrency", "cpu", "qps"), default="concurrency")
    parser.add_argument("--value", help="target per instance: cpu percent of a core, qps calls/s")
    parser.add_argument("--ramp-s", type=float, default=8.0, help="ramp length for cpu and qps")
    args = parser.parse_args()
    if args.metric != "concurrency" and args.value is None:
        parser.error(f"--metric {args.metric} needs --value")
    print(h.describe_machine(), "\n")
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon:
        deploy(daemon, idle=args.idle, metric=args.metric)
        if args.metric == "concurrency":
            print(f"## ramp: {CALLERS} callers, handler sleeps 50 ms, max-scale {args.max_scale}\n")
            ramp(daemon, max_scale=args.max_scale)
            print(f"## steady throughput per instance count ({args.steady_s:g} s each)\n")
            scales = sorted({1, 2, 5, args.max_scale})
            steady(daemon, max_scales=scales, steady_s=args.steady_s)
        else:
            work = "burns 50 ms of CPU" if args.metric == "cpu" else "sleeps 50 ms"
            print(
                f"## ramp: {CALLERS} callers, handler {work}, target-concurrency {CALLERS}, "
                f"--metric {args.metric} --value {args.value}, max-scale {args.max_scale}\n"
            )
            rule = ["--metric", args.metric, "--value", args.value]
            ramp_on_metric(daemon, max_scale=args.max_scale, rule=rule, ramp_s=args.ramp_s)
        print("## back to min-scale\n")
        scale_in(daemon, idle=args.idle)


if __name__ == "__main__":
    main()
