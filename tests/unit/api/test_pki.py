"""The CA, the serving certificate and the kubeconfig on disk."""

from __future__ import annotations

import base64
import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from funcmesh.api.pki import ensure_kubeconfig, ensure_pki

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def san_of(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in names}


def test_creates_a_ca_and_a_serving_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    identity = ensure_pki(pki, hosts=["0.0.0.0", "10.1.2.3", "api.example.test"])
    assert mode(pki) == 0o700
    assert mode(pki / "ca.key") == 0o600
    assert mode(pki / "server.key") == 0o600
    assert san_of(identity.cert_path) == {"127.0.0.1", "localhost", "10.1.2.3", "api.example.test"}
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(identity.ca_pem.encode())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert identity.server_ssl_context() is not None


def test_reuses_the_files_across_restarts(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, hosts=["127.0.0.1"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = ensure_pki(tmp_path, hosts=["127.0.0.1"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert second == first


def test_reissues_the_serving_certificate_when_the_hosts_change(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, hosts=["127.0.0.1"])
    old_key = first.key_path.read_bytes()
    second = ensure_pki(tmp_path, hosts=["127.0.0.2"])
    assert second.ca_pem == first.ca_pem
    assert "127.0.0.2" in san_of(second.cert_path)
    assert second.key_path.read_bytes() != old_key


def test_reissues_a_serving_certificate_that_expires_soon(tmp_path: Path) -> None:
    identity = ensure_pki(tmp_path, hosts=["127.0.0.1"])
    ca_key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), None)
    server_key = serialization.load_pem_private_key(identity.key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(server_key, ec.EllipticCurvePrivateKey)
    current = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    now = datetime.now(UTC)
    soon = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(current.issuer)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(
            current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    identity.cert_path.write_bytes(soon.public_bytes(serialization.Encoding.PEM))
    ensure_pki(tmp_path, hosts=["127.0.0.1"])
    renewed = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    assert renewed.not_valid_after_utc - now > timedelta(days=300)


def test_replaces_an_unreadable_ca(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = ensure_pki(tmp_path, hosts=["127.0.0.1"])
    (tmp_path / "ca.crt").write_text("garbage")
    second = ensure_pki(tmp_path, hosts=["127.0.0.1"])
    assert second.ca_pem != first.ca_pem
    cert = x509.load_pem_x509_certificate(second.cert_path.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(second.ca_pem.encode()))
    assert "replacing unreadable" in caplog.text


def test_ip_sans_are_addresses(tmp_path: Path) -> None:
    identity = ensure_pki(tmp_path, hosts=["::1"])
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("::1") in names.get_values_for_type(x509.IPAddress)
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]


def load(path: Path) -> dict[str, object]:
    value = yaml.safe_load(path.read_text())
    assert isinstance(value, dict)
    return value


def test_kubeconfig_for_kubectl_and_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "home" / "kubeconfig"
    token = ensure_kubeconfig(path, server_url="https://127.0.0.1:6443", ca_pem=CA_PEM)
    assert len(token) >= 43
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert load(path) == {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "funcmesh",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": base64.b64encode(CA_PEM.encode()).decode(),
                },
            }
        ],
        "users": [{"name": "funcmesh-admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "funcmesh",
                "context": {
                    "cluster": "funcmesh",
                    "user": "funcmesh-admin",
                    "namespace": "default",
                },
            }
        ],
        "current-context": "funcmesh",
        "preferences": {},
    }


def test_kubeconfig_keeps_the_token_and_follows_the_server(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    token = ensure_kubeconfig(path, server_url="https://127.0.0.1:6443", ca_pem=CA_PEM)
    again = ensure_kubeconfig(path, server_url="https://127.0.0.1:7443", ca_pem=CA_PEM)
    assert again == token
    assert "https://127.0.0.1:7443" in path.read_text()
    assert "6443" not in path.read_text()


def test_kubeconfig_keeps_other_clusters(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    ensure_kubeconfig(path, server_url="https://127.0.0.1:6443", ca_pem=CA_PEM, context="other")
    ensure_kubeconfig(path, server_url="https://127.0.0.1:6443", ca_pem=CA_PEM)
    config = load(path)
    clusters = config["clusters"]
    assert isinstance(clusters, list)
    assert [c["name"] for c in clusters] == ["other", "funcmesh"]
    assert config["current-context"] == "funcmesh"


def test_unreadable_kubeconfig_gets_a_new_token(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("{{{ not yaml")
    token = ensure_kubeconfig(path, server_url="https://127.0.0.1:6443", ca_pem=CA_PEM)
    assert token in path.read_text()
    assert mode(path) == 0o600
