"""The small parts of X.509 and private files that the API's CA and the mesh's CA share.

Pure building blocks over ``cryptography`` (key usages, PEM encodings, a certificate builder with
a serial number and a validity window that tolerates clock skew) and two file helpers (a private
directory, a file replaced atomically with a mode). Which certificates to make, and where they
live, is each CA's own business: ``funcmesh.api.pki`` and ``funcmesh.mesh.identity``.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def certificate_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    validity: timedelta,
    skew: timedelta,
    now: datetime | None = None,
) -> x509.CertificateBuilder:
    """A builder with the names, the key, a random serial and ``validity`` from now, valid from
    ``skew`` before now (clocks of the machines that check it may be behind)."""
    now = now or datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - skew)
        .not_valid_after(now + validity)
    )


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_private_dir(path: Path, *, enforce: bool) -> None:
    """Create ``path`` (and parents) with mode 0700; with ``enforce``, tighten an existing one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if enforce and path.stat().st_mode & 0o077:
        path.chmod(0o700)


def write_private_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` atomically with ``data``, created ``mode``; readers see the old or the
    new file, whole."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
