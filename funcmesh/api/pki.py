"""The API server's credentials on disk: a private CA, the serving certificate and the kubeconfig.

``ensure_pki`` keeps a CA (``ca.key``, ``ca.crt``) and a serving certificate for the listen hosts
in one directory, reusing them across restarts and re-issuing them when the hosts change or they
are about to expire. ``ensure_kubeconfig`` writes the kubeconfig that both kubectl and the
funcmesh CLI read, keeping its bearer token across restarts. Every file is written atomically
(temporary file + rename); private keys and the kubeconfig are mode 0600, directories 0700.
These functions block (file I/O, key generation): call them before the event loop serves, or
through ``asyncio.to_thread``. This module must never log a key or a token.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from funcmesh.certificates import (
    certificate_builder,
    ensure_private_dir,
    key_pem,
    key_usage,
    write_private_file,
)
from funcmesh.errors import Invalid
from funcmesh.model.codec import dump_yaml, load_yaml_object

logger = logging.getLogger(__name__)

CA_VALIDITY = timedelta(days=3650)
SERVING_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
CLOCK_SKEW = timedelta(hours=1)
ALWAYS_SERVED_HOSTS = ("127.0.0.1", "localhost")
TOKEN_BYTES = 32

SanName = x509.DNSName | x509.IPAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingIdentity:
    """Where the serving certificate and key are, and the CA that clients must trust."""

    ca_cert_path: Path
    cert_path: Path
    key_path: Path
    ca_pem: str

    def server_ssl_context(self) -> ssl.SSLContext:
        """A TLS server context (TLS 1.2 or newer) presenting the serving certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def ensure_pki(pki_dir: Path, *, hosts: Sequence[str]) -> ServingIdentity:
    """Create or reuse the CA and a serving certificate valid for ``hosts``."""
    ensure_private_dir(pki_dir, enforce=True)
    ca_key, ca_cert = _ensure_ca(pki_dir)
    names = serving_names(hosts)
    _ensure_serving_cert(pki_dir, ca_key=ca_key, ca_cert=ca_cert, names=names)
    return ServingIdentity(
        ca_cert_path=pki_dir / "ca.crt",
        cert_path=pki_dir / "server.crt",
        key_path=pki_dir / "server.key",
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def serving_names(hosts: Sequence[str]) -> frozenset[SanName]:
    """Subject alternative names: IP SANs for addresses, DNS SANs for names."""
    names: set[SanName] = set()
    for host in (*hosts, *ALWAYS_SERVED_HOSTS):
        text = host.strip().strip("[]")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            if text:
                names.add(x509.DNSName(text.lower()))
            continue
        if not address.is_unspecified:  # 0.0.0.0 is a listen address, never a server name
            names.add(x509.IPAddress(address))
    return frozenset(names)


def _ensure_ca(pki_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = pki_dir / "ca.key", pki_dir / "ca.crt"
    loaded = _load_pair(key_path, cert_path)
    if loaded is not None and _valid_long_enough(loaded[1]):
        return loaded
    logger.info("creating a new certificate authority in %s", pki_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_certificate(key)
    write_private_file(key_path, key_pem(key))
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return key, cert


def _ensure_serving_cert(
    pki_dir: Path,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: frozenset[SanName],
) -> None:
    key_path, cert_path = pki_dir / "server.key", pki_dir / "server.crt"
    loaded = _load_pair(key_path, cert_path)
    if loaded is not None and _serving_cert_current(loaded[1], ca_cert=ca_cert, names=names):
        return
    logger.info("issuing the API serving certificate for %s", sorted(str(n.value) for n in names))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _serving_certificate(key, ca_key=ca_key, ca_cert=ca_cert, names=names)
    write_private_file(key_path, key_pem(key))
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _serving_cert_current(
    cert: x509.Certificate, *, ca_cert: x509.Certificate, names: frozenset[SanName]
) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return _valid_long_enough(cert) and frozenset(san) == names


def _valid_long_enough(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - datetime.now(UTC) > RENEW_BEFORE


def _load_pair(
    key_path: Path, cert_path: Path
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    """The key and certificate, or None when either is missing, unreadable or they differ."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("replacing unreadable %s or %s: %s", key_path, cert_path, exc)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        logger.warning("replacing %s: it does not belong to %s", key_path, cert_path)
        return None
    return key, cert


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "funcmesh-ca")])
    usage = key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
    builder = (
        certificate_builder(
            subject=name,
            issuer=name,
            public_key=key.public_key(),
            validity=CA_VALIDITY,
            skew=CLOCK_SKEW,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def _serving_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: frozenset[SanName],
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "funcmesh-apiserver")])
    ordered_names = sorted(names, key=lambda n: (type(n).__name__, str(n.value)))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        certificate_builder(
            subject=subject,
            issuer=ca_cert.subject,
            public_key=key.public_key(),
            validity=SERVING_VALIDITY,
            skew=CLOCK_SKEW,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(ordered_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


# kubeconfig


def ensure_kubeconfig(
    path: Path, *, server_url: str, ca_pem: str, context: str = "funcmesh"
) -> str:
    """Write the kubeconfig for ``server_url`` and return its bearer token.

    The cluster is named ``context``, the user ``<context>-admin``. A token already in the file
    is kept, so clients keep working across restarts; entries for other clusters are kept too.
    """
    user = f"{context}-admin"
    existing = _read_kubeconfig(path)
    token = _existing_token(existing, user) or secrets.token_urlsafe(TOKEN_BYTES)
    config = _kubeconfig(
        existing, server_url=server_url, ca_pem=ca_pem, context=context, user=user, token=token
    )
    text = dump_yaml(config)
    if _read_text(path) == text:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return token
    ensure_private_dir(path.parent, enforce=False)
    write_private_file(path, text.encode("utf-8"))
    logger.info("wrote the kubeconfig %s (server %s)", path, server_url)
    return token


def _kubeconfig(
    existing: dict[str, Any],
    *,
    server_url: str,
    ca_pem: str,
    context: str,
    user: str,
    token: str,
) -> dict[str, Any]:
    ca_data = base64.b64encode(ca_pem.encode("ascii")).decode("ascii")
    cluster = {"server": server_url, "certificate-authority-data": ca_data}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": _with_entry(existing, "clusters", context, {"cluster": cluster}),
        "users": _with_entry(existing, "users", user, {"user": {"token": token}}),
        "contexts": _with_entry(
            existing,
            "contexts",
            context,
            {"context": {"cluster": context, "user": user, "namespace": "default"}},
        ),
        "current-context": context,
        "preferences": existing.get("preferences") or {},
    }


def _with_entry(
    existing: dict[str, Any], section: str, name: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """The section's entries with ``name`` replaced by ``body`` (other names kept in order)."""
    entries = [e for e in _entries(existing, section) if e.get("name") != name]
    return [*entries, {"name": name, **body}]


def _entries(config: dict[str, Any], section: str) -> list[dict[str, Any]]:
    value = config.get(section)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _existing_token(config: dict[str, Any], user: str) -> str | None:
    for entry in _entries(config, "users"):
        token = (entry.get("user") or {}).get("token") if entry.get("name") == user else None
        if isinstance(token, str) and token.strip() == token and len(token) >= TOKEN_BYTES:
            return token
    return None


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if text is None:
        return {}
    try:
        return load_yaml_object(text, source=str(path))
    except Invalid as exc:
        logger.warning("replacing the unreadable kubeconfig %s: %s", path, exc)
        return {}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return None
