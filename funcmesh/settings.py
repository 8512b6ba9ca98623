"""Settings of the daemon and the CLI, as frozen values.

This is the only module that reads environment variables, and it reads them from a mapping it is
given (``os.environ`` at the entry points, a plain dict in tests). It does no other I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from funcmesh.errors import Invalid

DEFAULT_API_ADDR = "127.0.0.1:6443"
DEFAULT_GATEWAY_ADDR = "127.0.0.1:8080"
DEFAULT_GATEWAY_TLS_ADDR = "127.0.0.1:8443"
NATS_URL_SCHEMES = ("nats", "tls")


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A host and port to listen on or connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeSettings:
    """How instances are run."""

    pod_cidr: str = "127.128.0.0/16"
    worker_port: int = 8080
    max_queue_per_function: int = 1000
    queue_wait_s: float = 60.0
    log_bytes_per_function: int = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    """Everything ``funcmesh up`` needs to know before it starts."""

    home: Path
    work_dir: Path | None = None  # where code and dependency environments go (see app)
    api_addr: Address
    gateway_addr: Address
    gateway_tls_addr: Address  # HTTPTriggers with a tls-secret, certificate chosen by SNI
    max_body_bytes: int = 10 << 20
    drain_s: float = 10.0
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    nats_url: str | None = None  # the NATS server NATSTriggers subscribe at; None: none

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def kubeconfig_path(self) -> Path:
        return self.home / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.home / "pki"


def parse_address(text: str, *, what: str) -> Address:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6) or fail with a message naming ``what``."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise Invalid(f"{what} must be HOST:PORT, got {text!r}")
    return Address(host=host, port=int(port_text))


def default_home(env: Mapping[str, str]) -> Path:
    """``$FUNCMESH_HOME`` or ``~/.funcmesh``."""
    if env.get("FUNCMESH_HOME"):
        return Path(env["FUNCMESH_HOME"]).expanduser()
    return Path(env.get("HOME", "~")).expanduser() / ".funcmesh"


def load_daemon_settings(
    env: Mapping[str, str],
    *,
    api_addr: str | None = None,
    gateway_addr: str | None = None,
    nats_url: str | None = None,
    gateway_tls_addr: str | None = None,
) -> DaemonSettings:
    """Flags win over ``FUNCMESH_*`` variables, which win over the defaults."""
    api = api_addr or env.get("FUNCMESH_API_ADDR") or DEFAULT_API_ADDR
    gateway = gateway_addr or env.get("FUNCMESH_GATEWAY_ADDR") or DEFAULT_GATEWAY_ADDR
    gateway_tls = (
        gateway_tls_addr or env.get("FUNCMESH_GATEWAY_TLS_ADDR") or DEFAULT_GATEWAY_TLS_ADDR
    )
    work_dir = env.get("FUNCMESH_WORK_DIR")
    max_queue = env.get("FUNCMESH_MAX_QUEUE", "")
    if max_queue and not max_queue.isdigit():
        raise Invalid(f"FUNCMESH_MAX_QUEUE must be a whole number, got {max_queue!r}")
    runtime = (
        RuntimeSettings(max_queue_per_function=int(max_queue)) if max_queue else RuntimeSettings()
    )
    nats = nats_url or env.get("FUNCMESH_NATS_URL")
    return DaemonSettings(
        home=default_home(env),
        work_dir=Path(work_dir).expanduser() if work_dir else None,
        api_addr=parse_address(api, what="--api-addr"),
        gateway_addr=parse_address(gateway, what="--gateway-addr"),
        gateway_tls_addr=parse_address(gateway_tls, what="--gateway-tls-addr"),
        runtime=runtime,
        nats_url=parse_nats_url(nats) if nats else None,
    )


def parse_nats_url(text: str) -> str:
    """Check ``nats://[USER:PASSWORD@]HOST[:PORT]`` (or ``tls://``); the message never repeats
    credentials."""
    url = text.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or too big
    except ValueError as exc:
        raise Invalid(f"--nats-url must be nats://HOST:PORT: {exc}") from None
    if parts.scheme not in NATS_URL_SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        shown = f"{parts.scheme}://***@{url.rpartition('@')[2]}" if "@" in url else url
        raise Invalid(f"--nats-url must be nats://HOST:PORT (or tls://HOST:PORT), got {shown!r}")
    return url
