"""HTTP triggers over TLS as a user runs them: a ``kubernetes.io/tls`` Secret made with the CLI,
a trigger with ``--tls-secret``, and real handshakes with Python's ``ssl`` client against the
gateway's TLS listener, which picks the certificate by SNI."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import (
    FUNCMESH,
    Daemon,
    api_client,
    free_dns_port,
    free_ports,
    service_cidr_for,
    work_dir_for,
)

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
PROTO = (
    "def handler(event, context):\n"
    "    request = event['extensions']['request']\n"
    "    return 'proto=' + request.headers.get('X-Forwarded-Proto', '?')\n"
)
HOST = "secure.example"


def self_signed(host: str) -> tuple[bytes, bytes]:
    """A PEM certificate for ``host`` and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def https_get(daemon: Daemon, server_name: str | None, trusted_pem: bytes) -> str:
    """``GET /`` for HOST over TLS with SNI ``server_name``, trusting only ``trusted_pem``."""
    context = ssl.create_default_context(cadata=trusted_pem.decode())
    if server_name is None:
        context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", daemon.gateway_tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def https_get_when_served(daemon: Daemon, trusted_pem: bytes) -> str:
    """The first answer the gateway gives once it serves the certificate: its TLS contexts
    follow the store a moment after the API answered."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return https_get(daemon, HOST, trusted_pem)
        except (ssl.SSLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture(scope="module")
def certificate(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tmp_path = tmp_path_factory.mktemp("tls")
    cert_pem, key_pem = self_signed(HOST)
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    code = tmp_path / "proto.py"
    code.write_text(PROTO)
    daemon.run(
        "create", "secret", "tls", "secure-tls",
        "--cert", str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key"),
    )  # fmt: skip
    daemon.run(
        "function", "deploy", "proto", "--runtime", RUNTIME, "--handler", "proto.handler",
        "--from-file", str(code),
    )  # fmt: skip
    daemon.run(
        "trigger", "http", "create", "secure", "--function-name", "proto",
        "--hostname", HOST, "--tls-secret", "secure-tls",
    )  # fmt: skip
    return cert_pem


def test_tls_handshake_by_sni_reaches_the_function(daemon: Daemon, certificate: bytes) -> None:
    answer = https_get_when_served(daemon, certificate)

    status_line, _, rest = answer.partition("\r\n")
    assert status_line == "HTTP/1.1 200 OK", answer[:300]
    assert rest.endswith("proto=https")


def test_unknown_or_missing_sni_is_refused(daemon: Daemon, certificate: bytes) -> None:
    https_get_when_served(daemon, certificate)

    for server_name in ("other.example", None):
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no certificate shown
            https_get(daemon, server_name, certificate)


def test_a_changed_secret_serves_the_new_certificate(daemon: Daemon, certificate: bytes) -> None:
    https_get_when_served(daemon, certificate)
    new_cert, new_key = self_signed(HOST)
    path = "/api/v1/namespaces/default/secrets/secure-tls"
    with api_client(daemon) as client:
        secret = client.get(path).json()
        secret["data"] = {}
        secret["stringData"] = {"tls.crt": new_cert.decode(), "tls.key": new_key.decode()}
        client.put(path, json=secret).raise_for_status()

    answer = https_get_when_served(daemon, new_cert)  # trusting only the new certificate

    assert answer.endswith("proto=https")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(daemon, HOST, certificate)


def test_a_busy_tls_address_names_its_flag(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        tls_port = busy.getsockname()[1]
        api_port, gateway_port = free_ports(2)
        result = subprocess.run(
            [
                FUNCMESH, "up", "--api-addr", f"127.0.0.1:{api_port}",
                "--gateway-addr", f"127.0.0.1:{gateway_port}",
                "--gateway-tls-addr", f"127.0.0.1:{tls_port}",
                "--dns-addr", f"127.0.0.1:{free_dns_port()}",
            ],
            env={
                **os.environ,
                "FUNCMESH_HOME": str(tmp_path / "home"),
                "FUNCMESH_WORK_DIR": str(work_dir_for(tmp_path / "home")),
                "FUNCMESH_SERVICE_CIDR": service_cidr_for(tmp_path / "home"),
            },
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    assert result.returncode == 1
    assert f"gateway TLS on 127.0.0.1:{tls_port}" in result.stderr
    assert "(see --gateway-tls-addr)" in result.stderr
