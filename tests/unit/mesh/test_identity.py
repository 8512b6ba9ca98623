"""The mesh CA: certificates for identities (SPIFFE SAN, lifetime, reuse), the principal of a
peer, and real TLS handshakes against the VIPs' server context over loopback sockets."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from funcmesh.errors import Invalid
from funcmesh.mesh.identity import (
    DEFAULT_TTL_S,
    Issued,
    MeshIdentity,
    principal_of,
    requested_server_name,
)

FRONTEND = "cluster.local/ns/default/sa/frontend"
SEEN_NAMES: list[str] = []


class Clock:
    def __init__(self) -> None:
        self.now_s = time.time()

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def identity(tmp_path: Path, clock: Clock) -> MeshIdentity:
    return MeshIdentity.open(tmp_path / "mesh", clock=clock)


def test_the_ca_is_kept_private_and_reused_across_opens(tmp_path: Path) -> None:
    first = MeshIdentity.open(tmp_path / "mesh")
    assert (tmp_path / "mesh").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "mesh" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "mesh" / "ca.crt").stat().st_mode & 0o777 == 0o644
    assert MeshIdentity.open(tmp_path / "mesh").ca_pem == first.ca_pem
    (tmp_path / "mesh" / "ca.key").write_text("garbage")
    assert MeshIdentity.open(tmp_path / "mesh").ca_pem != first.ca_pem


def test_a_certificate_names_its_identity_and_lives_a_day(identity: MeshIdentity) -> None:
    issued = identity.issue("default", "frontend")
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://cluster.local/ns/default/sa/frontend"]
    assert issued.spiffe_id == uris[0]
    life = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < life <= timedelta(hours=24)
    assert issued.not_after == cert.not_valid_after_utc
    ca = x509.load_pem_x509_certificate(identity.ca_pem.encode())
    cert.verify_directly_issued_by(ca)
    assert issued.ca_pem == identity.ca_pem
    assert "PRIVATE KEY" in issued.key_pem


def test_a_shorter_lifetime_can_be_asked(identity: MeshIdentity) -> None:
    issued = identity.issue("default", "frontend", ttl_s=3600)
    life = issued.not_after - datetime.now(UTC)
    assert timedelta(minutes=59) < life <= timedelta(hours=1)


def test_the_certificate_is_reused_until_two_thirds_of_its_life(
    identity: MeshIdentity, clock: Clock
) -> None:
    first = identity.issue("default", "frontend")
    assert identity.issue("default", "frontend") is first
    assert identity.issue("default", "backend") is not first
    clock.now_s += DEFAULT_TTL_S * 0.66
    assert identity.issue("default", "frontend") is first
    clock.now_s += DEFAULT_TTL_S * 0.01
    renewed = identity.issue("default", "frontend")
    assert renewed is not first
    assert renewed.not_after > first.not_after


@pytest.mark.parametrize(
    ("namespace", "service_account", "ttl_s", "problem"),
    [
        ("Default", "frontend", DEFAULT_TTL_S, "namespace"),
        ("default", "", DEFAULT_TTL_S, "serviceAccount"),
        ("default", "front end", DEFAULT_TTL_S, "serviceAccount"),
        ("default", "frontend", 10, "ttl"),
        ("default", "frontend", 365 * 86400, "ttl"),
    ],
)
def test_bad_identities_are_refused(
    identity: MeshIdentity, namespace: str, service_account: str, ttl_s: float, problem: str
) -> None:
    with pytest.raises(Invalid, match=problem):
        identity.issue(namespace, service_account, ttl_s=ttl_s)


@pytest.mark.parametrize(
    ("peercert", "principal"),
    [
        (None, ""),
        ({}, ""),
        ({"subjectAltName": (("DNS", "hello"),)}, ""),
        ({"subjectAltName": (("URI", "https://example.com/x"),)}, ""),
        (
            {"subjectAltName": (("DNS", "x"), ("URI", "spiffe://cluster.local/ns/a/sa/b"))},
            "cluster.local/ns/a/sa/b",
        ),
    ],
)
def test_principal_of_a_peer_certificate(peercert: dict[str, Any] | None, principal: str) -> None:
    assert principal_of(peercert) == principal


# real handshakes


def client_context(ca_pem: str, issued: Issued | None, tmp_path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem)
    if issued is not None:
        chain = tmp_path / f"client-{time.monotonic_ns()}.pem"
        chain.write_text(issued.key_pem + issued.cert_pem)
        context.load_cert_chain(chain)
    return context


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_name: str | None
) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """Both sides of one handshake over a socket pair: (server error, client error, the
    client certificate the server saw). The SNI the server saw goes to ``SEEN_NAMES``."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    result: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                result["peer"] = tls.getpeercert()
                result["sni"] = requested_server_name(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result["server"] = str(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    client_error = None
    try:
        with client.wrap_socket(right, server_hostname=server_name) as tls:
            tls.recv(2)  # TLS 1.3: the server's verdict on the client arrives after it
    except (ssl.SSLError, OSError) as exc:
        client_error = str(exc)
    finally:
        right.close()
        thread.join(10)
        left.close()
    SEEN_NAMES.append(result.get("sni", ""))
    return result.get("server"), client_error, result.get("peer")


@pytest.fixture
def server(identity: MeshIdentity) -> ssl.SSLContext:
    return identity.server_context()


def test_a_mesh_certificate_is_accepted_and_names_the_caller(
    identity: MeshIdentity, server: ssl.SSLContext, tmp_path: Path
) -> None:
    client = client_context(identity.ca_pem, identity.issue("default", "frontend"), tmp_path)
    server_error, client_error, peer = handshake(server, client, "hello.default.svc.cluster.local")
    assert (server_error, client_error) == (None, None)
    assert principal_of(peer) == FRONTEND
    assert SEEN_NAMES[-1] == "hello.default.svc.cluster.local"


@pytest.mark.parametrize(
    "server_name",
    ["hello.default.svc.cluster.local", "hello.shop.svc", "Hello.Shop.svc.cluster.local"],
)
def test_the_server_certificate_matches_the_service_name(
    identity: MeshIdentity, server: ssl.SSLContext, tmp_path: Path, server_name: str
) -> None:
    client = client_context(identity.ca_pem, identity.issue("shop", "web"), tmp_path)
    assert handshake(server, client, server_name)[:2] == (None, None)


def test_without_sni_only_the_ca_can_be_checked(
    identity: MeshIdentity, server: ssl.SSLContext, tmp_path: Path
) -> None:
    client = client_context(identity.ca_pem, identity.issue("default", "frontend"), tmp_path)
    client.check_hostname = False
    server_error, client_error, peer = handshake(server, client, None)
    assert (server_error, client_error) == (None, None)
    assert principal_of(peer) == FRONTEND
    assert SEEN_NAMES[-1] == ""


def test_a_certificate_of_another_ca_is_refused(
    identity: MeshIdentity, server: ssl.SSLContext, tmp_path: Path
) -> None:
    foreign = MeshIdentity.open(tmp_path / "other-ca").issue("default", "frontend")
    client = client_context(identity.ca_pem, foreign, tmp_path)
    server_error, client_error, _ = handshake(server, client, "hello.default.svc.cluster.local")
    assert server_error is not None
    assert "certificate verify failed" in server_error
    assert client_error is not None


def test_a_client_without_certificate_is_refused(
    identity: MeshIdentity, server: ssl.SSLContext, tmp_path: Path
) -> None:
    client = client_context(identity.ca_pem, None, tmp_path)
    server_error, client_error, _ = handshake(server, client, "hello.default.svc.cluster.local")
    assert server_error is not None
    assert "peer did not return a certificate" in server_error
    assert client_error is not None


def test_a_client_that_trusts_another_ca_refuses_the_server(
    identity: MeshIdentity, server: ssl.SSLContext, tmp_path: Path
) -> None:
    other = MeshIdentity.open(tmp_path / "other-ca")
    client = client_context(other.ca_pem, identity.issue("default", "frontend"), tmp_path)
    _, client_error, _ = handshake(server, client, "hello.default.svc.cluster.local")
    assert client_error is not None
    assert "certificate verify failed" in client_error


def test_the_server_speaks_tls_1_2_or_newer(server: ssl.SSLContext) -> None:
    # OpenSSL 3 refuses older versions at its default security level anyway; this is the
    # floor that stays if a machine's OpenSSL allows them.
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED


def test_server_certificates_are_renewed(
    identity: MeshIdentity, clock: Clock, tmp_path: Path
) -> None:
    clock.now_s -= DEFAULT_TTL_S * 0.7  # certificates made then are still valid now
    server = identity.server_context()

    def server_certificate() -> x509.Certificate:
        client = client_context(identity.ca_pem, identity.issue("default", "a"), tmp_path)
        left, right = socket.socketpair()
        seen: list[bytes] = []

        def serve() -> None:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve)
        thread.start()
        with client.wrap_socket(right, server_hostname="a.default.svc.cluster.local") as tls:
            tls.recv(2)
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            seen.append(der)
        thread.join(10)
        left.close()
        return x509.load_der_x509_certificate(seen[0])

    first = server_certificate()
    assert isinstance(first.public_key(), ec.EllipticCurvePublicKey)
    assert server_certificate().serial_number == first.serial_number
    clock.now_s = time.time()
    assert server_certificate().serial_number != first.serial_number
