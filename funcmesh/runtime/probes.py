"""Readiness and liveness probes of workload pods, as the kubelet runs them.

``check`` runs one probe once: ``httpGet`` (a status from 200 to 399 is a success; HTTPS without
certificate verification, like the kubelet), ``tcpSocket`` (the connection opens) or ``exec``
(the command, run in the pod's environment, exits 0), each within ``timeoutSeconds``.
``ProbeCounter`` turns results into a state with ``successThreshold`` and ``failureThreshold``
consecutive results. Running probes on a schedule is the replica's business
(``funcmesh.runtime.workloads``). This module must not start processes itself: exec probes go
through the runner it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from funcmesh.model.containers import Exec, HttpGet, Probe, ProbeAction, TcpSocket

USER_AGENT = "kube-probe/1.32"
MAX_STATUS_LINE_BYTES = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    ok: bool
    message: str = ""


ExecRunner = Callable[[tuple[str, ...], float], Awaitable[ProbeResult]]


async def check(
    action: ProbeAction, *, pod_ip: str, timeout_s: float, run_exec: ExecRunner
) -> ProbeResult:
    """Run one probe once."""
    if isinstance(action, Exec):
        return await run_exec(action.command, timeout_s)
    host = action.host or pod_ip
    try:
        async with asyncio.timeout(timeout_s):
            if isinstance(action, TcpSocket):
                return await _tcp_socket(host, action.port)
            return await _http_get(action, host)
    except TimeoutError:
        what = f"{host}:{action.port}"
        return ProbeResult(ok=False, message=f"{what}: timeout after {timeout_s:g}s")


async def _tcp_socket(host: str, port: int) -> ProbeResult:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return ProbeResult(ok=False, message=f"dial tcp {host}:{port}: {_reason(exc)}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(ok=True)


async def _http_get(action: HttpGet, host: str) -> ProbeResult:
    scheme = action.scheme.lower()
    url = f"{scheme}://{host}:{action.port}{action.path}"
    context = _insecure_context() if scheme == "https" else None
    try:
        reader, writer = await asyncio.open_connection(host, action.port, ssl=context)
    except OSError as exc:
        return ProbeResult(ok=False, message=f'Get "{url}": {_reason(exc)}')
    try:
        writer.write(_request(action, host))
        status_line = await reader.readline()
    except (OSError, ValueError) as exc:
        return ProbeResult(ok=False, message=f'Get "{url}": {_reason(exc)}')
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return ProbeResult(ok=False, message=f'Get "{url}": malformed HTTP response')
    status = int(parts[1])
    if 200 <= status < 400:
        return ProbeResult(ok=True)
    return ProbeResult(ok=False, message=f"HTTP probe failed with statuscode: {status}")


def _request(action: HttpGet, host: str) -> bytes:
    headers = {
        "Host": f"{host}:{action.port}",
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        "Connection": "close",
    }
    for name, value in action.headers:
        headers[name] = value
    lines = [f"GET {action.path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _insecure_context() -> ssl.SSLContext:
    """The kubelet does not verify a probe's certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class ProbeCounter:
    """The state a probe reports: flips after ``successThreshold`` consecutive successes or
    ``failureThreshold`` consecutive failures."""

    def __init__(self, probe: Probe, *, state: bool) -> None:
        self._probe = probe
        self.state = state
        self._successes = 0
        self._failures = 0

    def record(self, ok: bool) -> bool:
        """Count one result; whether the state changed."""
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            flip = not self.state and self._successes >= self._probe.success_threshold
        else:
            self._failures, self._successes = self._failures + 1, 0
            flip = self.state and self._failures >= self._probe.failure_threshold
        if flip:
            self.state = not self.state
        return flip
