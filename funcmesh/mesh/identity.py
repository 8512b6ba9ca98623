"""The mesh's certificate authority: workload certificates for mesh identities, and the TLS
side of the Services' VIPs.

Every workload has the identity ``spiffe://cluster.local/ns/<ns>/sa/<serviceAccount>``
(Istio's), which AuthorizationPolicies write as the principal ``cluster.local/ns/NS/sa/SA``.
``MeshIdentity`` keeps a CA of its own in one directory (``ca.key`` 0600, ``ca.crt``; EC P-256,
separate from the API server's CA: a mesh certificate is no credential for the API) and:

- ``issue`` signs a short-lived certificate (24 h by default) for an identity, with the
  SPIFFE URI SAN and both client and server use, as Istio's are; one is reused for the same
  identity until two thirds of its life have passed, so callers asking often cost nothing;
- ``server_context`` is the ``ssl.SSLContext`` of the VIPs: TLS 1.2 or newer, a client
  certificate *required* and verified against the mesh CA only (TLS on a VIP always means
  mutual TLS: a client without a certificate, or with one of another CA, fails the
  handshake), and a server certificate chosen by SNI: for ``<svc>.<ns>.svc.cluster.local``
  one valid for ``*.<ns>.svc.cluster.local`` (and ``*.<ns>.svc``) with the URI SAN of the
  namespace's ``default`` service account. Clients verify the mesh CA and that host name; a
  client that sends no SNI (it connects by ClusterIP) gets a certificate for
  ``*.svc.cluster.local``, and can only check the CA. Server certificates are renewed like
  workload ones;
- ``principal_of`` reads the principal from a verified peer certificate.

Opening and issuing block (file I/O, key generation: about a millisecond per certificate):
open before the loop serves or in a thread. Never logs a key.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from funcmesh.certificates import cert_pem, key_pem, key_usage, write_private_file
from funcmesh.errors import Invalid
from funcmesh.mesh.hosts import CLUSTER_DOMAIN
from funcmesh.model.names import dns1123_label_error, dns1123_subdomain_error

TRUST_DOMAIN = "cluster.local"
SPIFFE_PREFIX = "spiffe://"
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_TTL_S = 24 * 3600.0
MAX_TTL_S = 30 * 24 * 3600.0
RENEW_AFTER = 2 / 3  # of a certificate's life: then a new one is issued
CA_VALIDITY = timedelta(days=3650)
CLOCK_SKEW = timedelta(minutes=5)
CACHE_ENTRIES = 1024  # identities (and SNI namespaces) kept; a full cache starts again empty
# The SNI each mTLS connection asked for, by its SSL object (OpenSSL tells the server only in
# the servername callback): the access log's REQUESTED_SERVER_NAME.
_SERVER_NAMES: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
_SERVICE_NAME = re.compile(r"^[a-z0-9-]{1,63}\.([a-z0-9-]{1,63})\.svc(\.cluster\.local)?\.?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Issued:
    """A workload certificate, its private key and the mesh CA, in PEM; when it expires."""

    spiffe_id: str
    cert_pem: str
    key_pem: str
    ca_pem: str
    not_after: datetime


def spiffe_id(namespace: str, service_account: str) -> str:
    return f"{SPIFFE_PREFIX}{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def principal_of(peercert: Mapping[str, Any] | None) -> str:
    """The principal ("cluster.local/ns/NS/sa/SA") of a verified peer certificate, as
    ``SSLObject.getpeercert()`` gives it: its first ``spiffe://`` URI SAN; "" when it has
    none (or there is no certificate)."""
    if not peercert:
        return ""
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith(SPIFFE_PREFIX):
            return value[len(SPIFFE_PREFIX) :]
    return ""


def requested_server_name(ssl_object: object) -> str:
    """The SNI the client of a connection through ``server_context`` sent ("" if none)."""
    return _SERVER_NAMES.get(ssl_object, "")


class MeshIdentity:
    """The mesh CA in one directory, the certificates it issues and the VIPs' TLS context."""

    def __init__(
        self,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._directory = directory
        self._key = key
        self._cert = cert
        self._clock = clock
        self.ca_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self._issued: dict[tuple[str, str, float], tuple[float, Issued]] = {}
        self._serving: dict[str, tuple[float, ssl.SSLContext]] = {}  # by namespace ("": none)

    @classmethod
    def open(cls, directory: Path, *, clock: Callable[[], float] = time.time) -> MeshIdentity:
        """The CA kept in ``directory`` (created with mode 0700), made on first use and made
        again when it is unreadable or expires within a year."""
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # as $HOME/pki is
        directory.mkdir(mode=0o700, exist_ok=True)
        if directory.stat().st_mode & 0o077:
            directory.chmod(0o700)
        loaded = _load_ca(directory, now=datetime.fromtimestamp(clock(), UTC))
        if loaded is None:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _ca_certificate(key, now=datetime.fromtimestamp(clock(), UTC))
            write_private_file(directory / "ca.key", key_pem(key))
            write_private_file(directory / "ca.crt", cert_pem(cert), mode=0o644)
            loaded = key, cert
        return cls(directory, *loaded, clock=clock)

    @property
    def ca_cert_path(self) -> Path:
        return self._directory / "ca.crt"

    def issue(
        self, namespace: str, service_account: str, *, ttl_s: float = DEFAULT_TTL_S
    ) -> Issued:
        """A certificate for ``spiffe://cluster.local/ns/<namespace>/sa/<service_account>``
        valid ``ttl_s``: the one issued before while less than 2/3 of its life has passed."""
        check_identity(namespace, service_account, ttl_s=ttl_s)
        now_s = self._clock()
        key = (namespace, service_account, ttl_s)
        cached = self._issued.get(key)
        if cached is not None and now_s < cached[0]:
            return cached[1]
        identity = spiffe_id(namespace, service_account)
        private_key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(
            private_key.public_key(),
            subject=f"{namespace}/{service_account}",
            uris=(identity,),
            dns_names=(),
            ttl_s=ttl_s,
        )
        issued = Issued(
            spiffe_id=identity,
            cert_pem=cert_pem(cert).decode("ascii"),
            key_pem=key_pem(private_key).decode("ascii"),
            ca_pem=self.ca_pem,
            not_after=cert.not_valid_after_utc,
        )
        if len(self._issued) >= CACHE_ENTRIES:
            self._issued.clear()
        self._issued[key] = (now_s + ttl_s * RENEW_AFTER, issued)
        return issued

    # the VIPs' side

    def server_context(self) -> ssl.SSLContext:
        """The TLS server context of the VIPs (see the module's docstring): mutual TLS with
        mesh identities only, a server certificate chosen by the client's SNI."""
        context = self._serving_context("")
        context.sni_callback = self._choose_certificate
        return context

    def _choose_certificate(
        self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        """OpenSSL's servername callback: the certificate for the namespace the SNI names."""
        if server_name:
            _SERVER_NAMES[connection] = server_name
        match = _SERVICE_NAME.match(server_name.lower()) if server_name else None
        namespace = match[1] if match else ""
        entry = self._serving.get(namespace)
        if namespace and (entry is None or self._clock() >= entry[0]):
            self._serving_context(namespace)
        elif not namespace and entry is not None and self._clock() >= entry[0]:
            self._serving_context("")  # renews the default certificate in place
        connection.context = self._serving[namespace][1]

    def _serving_context(self, namespace: str) -> ssl.SSLContext:
        """The context for ``namespace``'s Services ("": no SNI), made or renewed."""
        old = self._serving.get(namespace)
        context = old[1] if old is not None else _mtls_server_context(self.ca_pem)
        if namespace:
            domain = f"{namespace}.svc.{CLUSTER_DOMAIN}"
            names: tuple[str, ...] = (f"*.{domain}", f"*.{namespace}.svc")
            uris: tuple[str, ...] = (spiffe_id(namespace, DEFAULT_SERVICE_ACCOUNT),)
        else:
            names, uris = (f"*.svc.{CLUSTER_DOMAIN}",), ()
        private_key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(
            private_key.public_key(),
            subject=names[0],
            uris=uris,
            dns_names=names,
            ttl_s=DEFAULT_TTL_S,
        )
        _load_chain(context, self._directory, cert=cert, key=private_key)
        if old is None and len(self._serving) >= CACHE_ENTRIES:
            default = self._serving.get("")
            self._serving = {"": default} if default is not None else {}
        self._serving[namespace] = (self._clock() + DEFAULT_TTL_S * RENEW_AFTER, context)
        return context

    def _sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        subject: str,
        uris: tuple[str, ...],
        dns_names: tuple[str, ...],
        ttl_s: float,
    ) -> x509.Certificate:
        now = datetime.fromtimestamp(self._clock(), UTC)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        names += [x509.DNSName(name) for name in dns_names]
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        usage = key_usage(digital_signature=True)
        purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + timedelta(seconds=ttl_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        return builder.sign(self._key, hashes.SHA256())


def check_identity(namespace: str, service_account: str, *, ttl_s: float = DEFAULT_TTL_S) -> None:
    """Raise Invalid, naming each problem, unless a certificate can be issued for this."""
    problems = [
        f"namespace: {error}" for error in [dns1123_label_error(namespace)] if error is not None
    ]
    if (error := dns1123_subdomain_error(service_account)) is not None:
        problems.append(f"serviceAccount: {error}")
    if not 60 <= ttl_s <= MAX_TTL_S:
        problems.append(f"ttl: must be between 60 s and 30 days, got {ttl_s:g} s")
    if problems:
        raise Invalid("cannot issue a mesh certificate: " + "; ".join(problems))


def _mtls_server_context(ca_pem: str) -> ssl.SSLContext:
    """TLS 1.2+, a client certificate required and verified against the mesh CA only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _load_chain(
    context: ssl.SSLContext, directory: Path, *, cert: x509.Certificate, key: Any
) -> None:
    """Give ``context`` this certificate and key. ``ssl`` loads them from files only: a
    private temporary file in the CA's directory, removed at once."""
    fd, name = tempfile.mkstemp(prefix=".serving-", suffix=".pem", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(key_pem(key) + cert_pem(cert))
        context.load_cert_chain(name)
    finally:
        os.unlink(name)


def _load_ca(
    directory: Path, *, now: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    try:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    except (OSError, ValueError, TypeError):
        return None  # missing or unreadable: a new CA
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    if cert.not_valid_after_utc - now < timedelta(days=365):
        return None
    return key, cert


def _ca_certificate(key: ec.EllipticCurvePrivateKey, *, now: datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
            x509.NameAttribute(NameOID.COMMON_NAME, "funcmesh-mesh-ca"),
        ]
    )
    usage = key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
