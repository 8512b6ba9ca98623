"""A real ``funcmesh up`` for end-to-end tests, and a way to run the CLI as a user types it."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from funcmesh.gateway.vip_nat import table_name

FUNCMESH = str(Path(sys.executable).with_name("funcmesh"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different free TCP ports: the probes stay bound until all are chosen, so the
    kernel cannot hand the same port out twice (one port for two listeners: a flaky start)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP (the DNS server listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            return port


def random_service_cidr() -> str:
    """A /24 of its own for each test daemon's ClusterIPs (its VIPs bind them), away from the
    default 127.96.0.0/16 and the pod network 127.128.0.0/16."""
    return f"127.{random.randint(97, 126)}.{random.randint(0, 255)}.0/24"


# One service CIDR per home: a daemon restarted on the same home keeps its ClusterIPs (and
# replaces the nftables table its predecessor left when it was killed with SIGKILL).
SERVICE_CIDRS: dict[Path, str] = {}


def service_cidr_for(home: Path) -> str:
    return SERVICE_CIDRS.setdefault(home, random_service_cidr())


@dataclass
class Daemon:
    home: Path
    api_url: str
    gateway_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    gateway_tls_port: int = 0  # the TLS listener (HTTPTriggers with a tls-secret)
    service_cidr: str = ""  # where its ClusterIPs come from (FUNCMESH_SERVICE_CIDR)
    dns_port: int = 0  # its DNS server, UDP and TCP on 127.0.0.1 (--dns-addr)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FUNCMESH_HOME": str(self.home),
            "KUBECONFIG": str(self.home / "kubeconfig"),
        }

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [FUNCMESH, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"funcmesh {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\n"
                f"daemon log tail:\n{self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout_s)


WORK_DIRS: set[Path] = set()


def work_dir_for(home: Path) -> Path:
    """A work directory workers (running as nobody under a root daemon) can reach: pytest's
    own temporary directories are private to root."""
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"funcmesh-e2e-{digest}"
    path.mkdir(mode=0o711, exist_ok=True)
    WORK_DIRS.add(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _remove_work_dirs() -> Iterator[None]:
    yield
    for path in WORK_DIRS:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _remove_nat_tables() -> Iterator[None]:
    """Delete the nftables tables of daemons the tests killed with SIGKILL (a daemon deletes
    its own at a normal stop): nothing of the tests stays in the machine's firewall."""
    yield
    nft = shutil.which("nft")
    if nft is None or os.geteuid() != 0:
        return
    listed = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, check=False)
    names = {table_name(cidr) for cidr in SERVICE_CIDRS.values()}
    for line in listed.stdout.splitlines():
        family, _, name = line.removeprefix("table ").partition(" ")
        if name in names:
            subprocess.run([nft, "delete", "table", family, name], check=False)


def start_daemon(home: Path, *, log_path: Path, extra_env: dict[str, str] | None = None) -> Daemon:
    api_port, gateway_port, gateway_tls_port = free_ports(3)
    dns_port = free_dns_port()
    while dns_port in (api_port, gateway_port, gateway_tls_port):
        dns_port = free_dns_port()
    env = {
        **os.environ,
        "FUNCMESH_HOME": str(home),
        "FUNCMESH_WORK_DIR": str(work_dir_for(home)),
        "FUNCMESH_SERVICE_CIDR": service_cidr_for(home),
        **(extra_env or {}),
    }
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            FUNCMESH,
            "up",
            "--api-addr",
            f"127.0.0.1:{api_port}",
            "--gateway-addr",
            f"127.0.0.1:{gateway_port}",
            "--gateway-tls-addr",
            f"127.0.0.1:{gateway_tls_port}",
            "--dns-addr",
            f"127.0.0.1:{dns_port}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    daemon = Daemon(
        home=home,
        api_url=f"https://127.0.0.1:{api_port}",
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        process=process,
        log_path=log_path,
        gateway_tls_port=gateway_tls_port,
        service_cidr=env["FUNCMESH_SERVICE_CIDR"],
        dns_port=dns_port,
    )
    wait_ready(daemon)
    return daemon


def wait_ready(daemon: Daemon, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only for polling /readyz, which carries no secret
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(
                f"funcmesh up exited {daemon.process.returncode}:\n{daemon.log_tail()}"
            )
        try:
            with urllib.request.urlopen(
                f"{daemon.api_url}/readyz", context=context, timeout=1
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    daemon.stop(signal.SIGKILL)
    raise AssertionError(f"funcmesh up did not become ready:\n{daemon.log_tail()}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("funcmesh-home")
    running = start_daemon(home / "home", log_path=home / "daemon.log")
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"funcmesh up exited {code} on SIGTERM:\n{running.log_tail()}"


@pytest.fixture
def policies(daemon: Daemon) -> Iterator[list[tuple[str, str]]]:
    """(kind, name) of the objects (mesh policies) a test applies: deleted after it."""
    applied: list[tuple[str, str]] = []
    yield applied
    for kind, name in applied:
        daemon.run("delete", kind, name, check=False)


def api_client(daemon: Daemon, *, token: bool = True) -> httpx.Client:
    """An HTTPS client for the daemon's API, trusting its CA, with the kubeconfig's token."""
    config = yaml.safe_load((daemon.home / "kubeconfig").read_text())
    ca_pem = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    context = ssl.create_default_context(cadata=ca_pem.decode())
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {config['users'][0]['user']['token']}"
    return httpx.Client(base_url=daemon.api_url, verify=context, headers=headers, timeout=30)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (workers are grandchildren: daemon -> zygote -> worker)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living
