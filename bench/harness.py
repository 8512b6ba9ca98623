"""What the funcmesh benchmarks share: a real daemon, its API, wrk, process memory, tables.

A benchmark script runs with the project's venv (``.venv/bin/python bench/NAME.py``) and uses
:func:`scratch_dir` and :class:`Daemon` to run ``funcmesh up`` exactly as a user does, on free
loopback ports, with a private ``FUNCMESH_HOME`` and a ``FUNCMESH_WORK_DIR`` that workers running
as ``nobody`` can reach. Functions go in through the real API client (or the CLI); calls go
through the gateway over plain sockets, timed with the system-wide monotonic clock, so times
taken here and inside the daemon lie on one time line.

Must not: assert or judge timings (scripts print numbers), leave a daemon or a worker behind,
or touch the user's own ``~/.funcmesh``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from funcmesh import native
from funcmesh.client.api import ApiClient
from funcmesh.client.kubeconfig import load_kubeconfig
from funcmesh.errors import AlreadyExists, FuncmeshError, NotFound
from funcmesh.model.conditions import find_condition
from funcmesh.model.kinds import ENDPOINTS, FUNCTION, ResourceType
from funcmesh.model.objects import RawObject

native.enable()  # before any data-plane module: in-process benchmarks run what the daemon runs

REPO = Path(__file__).resolve().parent.parent
FUNCMESH = Path(sys.executable).with_name("funcmesh")
HELLO_MODULE = "hello"
HELLO_CODE = 'def handler(event, context):\n    return "hello world"\n'
SCALING = "autoscaling.funcmesh.io/"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# ---- the daemon ----


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different free TCP ports (the probes stay bound until all are chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_udp_and_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP (the daemon's DNS server listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            return port


@contextlib.contextmanager
def scratch_dir(keep: bool = False) -> Iterator[Path]:
    """A directory under /tmp for one run: ``home/`` (private), ``work/`` (0711), the log."""
    path = Path(tempfile.mkdtemp(prefix="funcmesh-bench-"))
    try:
        path.chmod(0o711)  # workers of a root daemon run as nobody and must reach work/
        (path / "home").mkdir(mode=0o700)
        (path / "work").mkdir(mode=0o711)
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


class Daemon:
    """``funcmesh up`` on free loopback ports; ``start`` it, ``stop`` it, ``restart`` it."""

    def __init__(
        self,
        scratch: Path,
        *,
        launcher: Sequence[str] = (str(FUNCMESH),),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        if not FUNCMESH.exists():
            raise SystemExit(f"{FUNCMESH} is missing: run the benchmarks with .venv/bin/python")
        self.home = scratch / "home"
        self.work_dir = scratch / "work"
        self.log_path = scratch / "daemon.log"
        self.launcher = list(launcher)
        self.extra_env = dict(extra_env or {})
        self.api_port, self.gateway_port, self.gateway_tls_port = free_ports(3)
        self.api_url = f"https://127.0.0.1:{self.api_port}"
        self.gateway_address = ("127.0.0.1", self.gateway_port)
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.dns_port = free_udp_and_tcp_port()
        # ClusterIPs of their own, so a benchmark's VIPs never meet those of a user's daemon
        self.service_cidr = f"127.{random.randint(97, 126)}.{random.randint(0, 255)}.0/24"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of the daemon and of CLI commands aimed at it."""
        return {
            **os.environ,
            "FUNCMESH_HOME": str(self.home),
            "FUNCMESH_WORK_DIR": str(self.work_dir),
            "KUBECONFIG": str(self.home / "kubeconfig"),
            "FUNCMESH_DNS_ADDR": f"127.0.0.1:{self.dns_port}",
            "FUNCMESH_SERVICE_CIDR": self.service_cidr,
            **self.extra_env,
        }

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the daemon is not running")
        return self._process.pid

    def start(self) -> None:
        addresses = [
            *("up", "--api-addr", f"127.0.0.1:{self.api_port}"),
            *("--gateway-addr", f"127.0.0.1:{self.gateway_port}"),
            *("--gateway-tls-addr", f"127.0.0.1:{self.gateway_tls_port}"),
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [*self.launcher, *addresses],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_ready()

    def stop(self) -> None:
        """SIGTERM (drain, stop every instance), SIGKILL only if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"the daemon ignored SIGTERM for {STOP_TIMEOUT_S:g}s; killing it")
            process.kill()
            process.wait()

    def restart(self, *, launcher: Sequence[str] | None = None) -> None:
        self.stop()
        if launcher is not None:
            self.launcher = list(launcher)
        self.start()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``funcmesh ARGS`` as a user would, against this daemon."""
        result = subprocess.run(
            [str(FUNCMESH), *args], capture_output=True, text=True, env=self.env, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"funcmesh {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def api(self) -> ApiClient:
        """The funcmesh API client, set up from the daemon's kubeconfig as the CLI does."""
        return ApiClient.from_kubeconfig(load_kubeconfig(self.env))

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only /readyz, which carries no secret
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"funcmesh up exited:\n{self.log_tail()}")
            ready_url = f"{self.api_url}/readyz"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(ready_url, timeout=1, context=context),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"funcmesh up was not ready in {READY_TIMEOUT_S:g}s:\n{self.log_tail()}")


# ---- functions ----


def hello_function(name: str, *, annotations: Mapping[str, str] | None = None) -> RawObject:
    """A Kubeless Function with the hello-world handler; every one shares code and (no) deps."""
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"created-by": "kubeless", "function": name},
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "runtime": "python3.11",
            "handler": f"{HELLO_MODULE}.handler",
            "function": HELLO_CODE,
            "function-content-type": "text",
            "deps": "",
        },
    }


def scaling(**values: str) -> dict[str, str]:
    """Scaling annotations: ``scaling(max_scale="2")`` -> ``{autoscaling.../max-scale: "2"}``."""
    return {SCALING + key.replace("_", "-"): value for key, value in values.items()}


def create_all(client: ApiClient, functions: Sequence[RawObject], *, parallel: int = 8) -> None:
    """POST every Function, ``parallel`` at a time (an existing one is left as it is)."""

    def create(obj: RawObject) -> None:
        with contextlib.suppress(AlreadyExists):
            client.create(FUNCTION, obj)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(create, functions))


def ready_state(obj: RawObject) -> str:
    """``ready``, ``failed`` or ``pending`` for the object's current generation."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation", 1)
    if status.get("observedGeneration") != generation:
        return "pending"
    ready = find_condition(status, "Ready")
    if ready is None:
        return "pending"
    if ready.get("status") == "True":
        return "ready"
    return (
        "failed" if ready.get("reason") in {"BuildFailed", "LoadFailed", "Invalid"} else "pending"
    )


def wait_all_ready(client: ApiClient, names: Iterable[str], *, timeout_s: float = 120.0) -> None:
    """Poll the Function list until every named one is Ready; raise if one failed."""
    waiting = set(names)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for obj in client.list(FUNCTION, "default").items:
            name = obj["metadata"]["name"]
            state = ready_state(obj)
            if name in waiting and state == "failed":
                raise RuntimeError(f"function {name} failed: {obj.get('status')}")
            if state == "ready":
                waiting.discard(name)
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} functions not ready after {timeout_s:g}s")
        if waiting:
            time.sleep(0.1)


def wait_for(
    predicate: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.1
) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"gave up after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


# ---- processes and memory ----


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def children(pid: int, table: Mapping[int, tuple[int, str]] | None = None) -> list[int]:
    rows = table if table is not None else process_table()
    return sorted(
        child for child, (parent, state) in rows.items() if parent == pid and state != "Z"
    )


def zygote_children(daemon_pid: int) -> tuple[list[int], list[int]]:
    """(workers, spares) of a daemon: the zygotes are its children, and their children are
    workers (holding their pod's listening socket) or the one spare each keeps forked ahead."""
    table = process_table()
    found = [w for zygote in children(daemon_pid, table) for w in children(zygote, table)]
    listeners = listening_sockets()
    workers = [pid for pid in found if _socket_inodes(pid) & listeners.keys()]
    return workers, [pid for pid in found if pid not in workers]


def worker_pids(daemon_pid: int) -> list[int]:
    return zygote_children(daemon_pid)[0]


def spare_pids(daemon_pid: int) -> list[int]:
    return zygote_children(daemon_pid)[1]


def worker_listening_on(daemon_pid: int, ip: str) -> int:
    """The pid of the daemon's worker listening on ``ip`` (a pod IP)."""
    inodes = {inode for inode, (host, _) in listening_sockets().items() if host == ip}
    for pid in worker_pids(daemon_pid):
        if _socket_inodes(pid) & inodes:
            return pid
    raise RuntimeError(f"no worker of daemon {daemon_pid} listens on {ip}")


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Socket inode -> (IPv4 address, port) of every listening TCP socket (/proc/net/tcp)."""
    found: dict[int, tuple[str, int]] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":  # TCP_LISTEN
            address, port = fields[1].split(":")
            ip = socket.inet_ntoa(int(address, 16).to_bytes(4, "little"))
            found[int(fields[9])] = (ip, int(port, 16))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def running_pods(daemon: Daemon, function: str) -> list[dict[str, str]]:
    """The function's running pods as ``funcmesh get pods -o wide`` shows them (NAME, IP ...)."""
    lines = daemon.cli("get", "pods", "-o", "wide").stdout.splitlines()
    if not lines:
        return []
    header = lines[0].split()
    pods = [dict(zip(header, line.split(), strict=False)) for line in lines[1:]]
    return [p for p in pods if p["NAME"].startswith(f"{function}-") and p["STATUS"] == "Running"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """One process's memory in bytes: resident, proportional and unique set sizes."""

    rss_bytes: int
    pss_bytes: int
    uss_bytes: int


def memory_of(pid: int) -> Memory:
    """From /proc/PID/smaps_rollup: USS = Private_Clean + Private_Dirty."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        match = re.match(r"^(\w+):\s+(\d+) kB", line)
        if match:
            fields[match.group(1)] = int(match.group(2)) * 1024
    return Memory(
        rss_bytes=fields["Rss"],
        pss_bytes=fields["Pss"],
        uss_bytes=fields["Private_Clean"] + fields["Private_Dirty"],
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def peak_rss_bytes(pid: int) -> int:
    """The most the process ever had resident (VmHWM in /proc/PID/status)."""
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return int(match.group(1)) * 1024


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid`` in nanoseconds (/proc/PID/task/*/schedstat);
    0 once the process is gone."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


def wait_quiet(pid: int, *, quiet_s: float = 0.5, timeout_s: float = 60.0) -> float:
    """Wait until ``pid`` used (almost) no CPU for ``quiet_s``: the daemon settled after a
    burst of work (deploys, a restart). Returns the seconds waited."""
    started = time.monotonic()
    last = cpu_seconds(pid)
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"process {pid} was still busy after {timeout_s:g}s")
        time.sleep(0.05)
        now = cpu_seconds(pid)
        if now - last > 2.0 / CLOCK_TICKS_PER_S:
            quiet_since = time.monotonic()
        last = now
    return time.monotonic() - started


# ---- HTTP over one keep-alive connection, timed ----


@dataclass(frozen=True, slots=True, kw_only=True)
class Timed:
    """One call: when the request was sent, when the first and last bytes came back."""

    sent_s: float
    first_byte_s: float
    done_s: float
    status: int
    body: bytes

    @property
    def ttfb_ms(self) -> float:
        return (self.first_byte_s - self.sent_s) * 1000.0


class HttpConnection:
    """A blocking HTTP/1.1 client for GETs on one keep-alive connection; no parsing beyond
    the status and Content-Length, so the client adds next to nothing to what it times."""

    def __init__(self, address: tuple[str, int], *, timeout_s: float = 30.0) -> None:
        self._address = address
        self._sock = socket.create_connection(address, timeout=timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> HttpConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, path: str) -> Timed:
        request = f"GET {path} HTTP/1.1\r\nHost: {self._address[0]}\r\n\r\n".encode()
        sent_s = time.monotonic()
        self._sock.sendall(request)
        self._buffer = self._recv_more(self._buffer)
        first_byte_s = time.monotonic()
        while b"\r\n\r\n" not in self._buffer:
            self._buffer = self._recv_more(self._buffer)
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(rest) < length:
            rest = self._recv_more(rest)
        self._buffer = rest[length:]
        return Timed(
            sent_s=sent_s,
            first_byte_s=first_byte_s,
            done_s=time.monotonic(),
            status=int(head.split(b" ", 2)[1]),
            body=rest[:length],
        )

    def _recv_more(self, data: bytes) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"{self._address} closed the connection")
        return data + chunk


# ---- wrk ----


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, *, connections: int, threads: int, duration_s: float) -> LoadResult:
    """``wrk -tT -cC -dDs --latency URL`` (``apt-get install -y wrk``)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    threads = min(threads, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def parse_wrk(text: str) -> LoadResult:
    def latency_ms(percentile: str) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {percentile}% latency in wrk output:\n{text}")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rate is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{text}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        requests_per_s=float(rate.group(1)),
        p50_ms=latency_ms("50"),
        p99_ms=latency_ms("99"),
        errors=errors,
    )


# ---- command lines, numbers and tables ----


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the script's docstring: first paragraph, then the rest."""
    paragraphs = textwrap.dedent(doc or "").strip().split("\n\n")
    return argparse.ArgumentParser(
        description=paragraphs[0],
        epilog="\n\n".join(paragraphs[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.5 is the median)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> list[str]:
    """p50, p90, p99, max and mean of millisecond values, formatted."""
    cuts = [percentile(values, q) for q in (0.5, 0.9, 0.99)]
    return [f"{v:.2f}" for v in (*cuts, max(values), statistics.fmean(values))]


SUMMARY_HEADER = ("p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms")


def print_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    lines = [list(map(str, header)), *(list(map(str, row)) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for number, line in enumerate(lines):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if number == 0:
            print("  ".join("-" * w for w in widths))
    print(flush=True)


def describe_machine() -> str:
    """One line for the record: when, where, and what else was busy (the numbers depend on it)."""
    others = len(_other_daemons())
    load1, load5, _ = os.getloadavg()
    return (
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, funcmesh {_commit()}, "
        f"{platform.node()}: "
        f"{os.cpu_count()} cores shared by load generator and daemon, "
        f"Python {platform.python_version()}, load average {load1:.2f}/{load5:.2f}, "
        f"{others} other funcmesh daemon(s) running, data plane {native.describe()}"
    )


def _commit() -> str:
    """The checkout's commit (``+`` when files differ from it), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if changes else "")


def _other_daemons() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(command) > 2 and command[1].endswith(b"/funcmesh") and command[2] == b"up":
                found.append(int(entry.name))
    return found


def megabytes(value_bytes: float) -> str:
    return f"{value_bytes / (1 << 20):.1f}"


# ---- Services, Endpoints, Deployments and metrics through the API ----


def http_service(
    name: str,
    *,
    port: int,
    target_port: int | None = None,
    selector: Mapping[str, str] | None = None,
) -> RawObject:
    """A ClusterIP Service with one port named ``http`` (Istio's convention: the mesh routes
    its requests); without ``selector``, its Endpoints are written by hand."""
    spec: dict[str, Any] = {
        "ports": [{"name": "http", "port": port, "targetPort": target_port or port}]
    }
    if selector is not None:
        spec["selector"] = dict(selector)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def node_deployment(
    name: str,
    source: str,
    *,
    labels: Mapping[str, str],
    port: int,
    env: Mapping[str, str] | None = None,
    replicas: int = 1,
) -> RawObject:
    """A Deployment running ``node -e SOURCE`` (which listens on $HOST:$PORT), ready once its
    port accepts connections."""
    container = {
        "name": name,
        "image": "node:20",
        "command": ["node", "-e", source],
        "env": [{"name": key, "value": value} for key, value in (env or {}).items()],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}},
        },
    }


def ready_endpoints(client: ApiClient, service: str) -> dict[str, str]:
    """Pod IP -> pod name ("" for a hand-written address) of a Service's ready endpoints."""
    try:
        endpoints = client.get(ENDPOINTS, "default", service)
    except NotFound:
        return {}
    return {
        address["ip"]: (address.get("targetRef") or {}).get("name", "")
        for subset in endpoints.get("subsets") or []
        for address in subset.get("addresses") or []
    }


def create_objects(
    client: ApiClient, kind: ResourceType, objects: Sequence[RawObject], *, parallel: int = 8
) -> list[str]:
    """POST every object of ``kind``, ``parallel`` at a time; the errors, one line each."""

    def create(obj: RawObject) -> str | None:
        try:
            client.create(kind, obj)
        except FuncmeshError as exc:
            return f"{obj['metadata']['name']}: {exc}"
        return None

    with ThreadPoolExecutor(parallel) as pool:
        return [error for error in pool.map(create, objects) if error is not None]


def api_text(daemon: Daemon, path: str) -> str:
    """GET ``path`` on the daemon's API (``/metrics``) as text, with the kubeconfig's token."""
    config = load_kubeconfig(daemon.env)
    context = ssl.create_default_context(cadata=config.ca_pem)
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    with httpx.Client(
        base_url=config.server, verify=context, headers=headers, trust_env=False, timeout=30
    ) as http:
        response = http.get(path)
        response.raise_for_status()
        return response.text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` in Prometheus ``text`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
