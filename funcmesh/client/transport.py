"""How the client reaches the API: TLS verification, and transport failures as clear errors.

``tls_verification`` turns the kubeconfig's CA (or ``insecure-skip-tls-verify``) into what httpx
verifies the server with; ``transport_error`` translates an httpx failure (refused, unknown
host, TLS mismatch, timeout) into a FuncmeshError whose message says what to do. Must not send
requests itself, print, or know about the CLI.
"""

from __future__ import annotations

import socket
import ssl
from typing import TypeVar

import httpx

from funcmesh.errors import FuncmeshError, Invalid, Unavailable

E = TypeVar("E", bound=BaseException)


def tls_verification(ca_pem: str | None, *, verify_tls: bool) -> ssl.SSLContext | bool:
    """What httpx verifies the server with: the kubeconfig's CA, the system's, or nothing."""
    if not verify_tls:
        return False
    if ca_pem is None:
        return True
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise Invalid(
            f"the certificate authority in the kubeconfig is not a valid PEM certificate ({exc})"
        ) from exc


def transport_error(exc: httpx.HTTPError, *, server: str, timeout_s: float) -> FuncmeshError:
    """The error to raise for a request to the API at ``server`` that failed in transport."""
    where = f"the funcmesh API at {server}"
    tls = _cause_of_type(exc, ssl.SSLError)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return Unavailable(
            f"TLS verification of {where} failed ({tls.verify_message}): the kubeconfig's CA "
            "does not match the server's certificate; use the kubeconfig funcmesh up wrote"
        )
    if tls is not None:
        return Unavailable(
            f"TLS handshake with {where} failed ({tls.reason or tls}): does it speak https?"
        )
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Unavailable(f"cannot reach {where} ({_reason(exc)}): is funcmesh up running?")
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(f"{where} did not answer within {timeout_s:g} s")
    if isinstance(exc, httpx.TransportError):
        return Unavailable(f"the connection to {where} failed ({_reason(exc)})")
    return FuncmeshError(f"request to {where} failed: {exc}")


def _cause_of_type(exc: BaseException, kind: type[E]) -> E | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(exc: httpx.HTTPError) -> str:
    """``connection refused``, ``unknown host``, ``timed out``: the root cause in a few words."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if _cause_of_type(exc, ConnectionRefusedError) is not None:
        return "connection refused"
    if _cause_of_type(exc, socket.gaierror) is not None:
        return "unknown host"
    os_error = _cause_of_type(exc, OSError)
    if os_error is not None and os_error.strerror:
        return os_error.strerror.lower()
    return str(exc) or type(exc).__name__
