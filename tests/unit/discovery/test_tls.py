"""TLS certificates by SNI: which key pair each host gets from its trigger's Secret, when a
context is rebuilt, and real handshakes over memory BIOs that show the host's certificate or
fail for a name no trigger serves."""

from __future__ import annotations

import base64
import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from funcmesh.discovery.tls import Certificates, KeyPair, tls_key_pairs
from funcmesh.model.http_triggers import HttpTriggerSpec
from funcmesh.model.objects import RawObject


def key_pair(host: str) -> KeyPair:
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
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        certificate=certificate.public_bytes(serialization.Encoding.PEM),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        source=f"test Secret for {host}",
    )


def trigger(name: str, host: str, tls_secret: str, namespace: str = "default") -> HttpTriggerSpec:
    return HttpTriggerSpec(
        namespace=namespace, name=name, function_name="f", host=host, path="/",
        basic_auth_secret="", tls_secret=tls_secret, cors_enable=False,
    )  # fmt: skip


def tls_secret(pair: KeyPair, secret_type: str = "kubernetes.io/tls") -> RawObject:
    data = {"tls.crt": pair.certificate, "tls.key": pair.private_key}
    return {
        "type": secret_type,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def handshake(certificates: Certificates, server_name: str | None) -> bytes:
    """The DER certificate the server shows to a client asking for ``server_name``."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = certificates.server_context().wrap_bio(to_server, to_client, server_side=True)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname, client_context.verify_mode = False, ssl.CERT_NONE
    client = client_context.wrap_bio(to_client, to_server, server_hostname=server_name)
    for _ in range(10):
        client_done = _step(client)
        try:
            server_done = _step(server)
        except ssl.SSLError:  # the server refused: the client reads its alert and raises
            _step(client)
            raise AssertionError("the server failed the handshake without an alert") from None
        if client_done and server_done:
            break
    certificate = client.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def _step(side: ssl.SSLObject) -> bool:
    """One step of ``side``'s handshake: True once it completed."""
    try:
        side.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def der(pair: KeyPair) -> bytes:
    return x509.load_pem_x509_certificate(pair.certificate).public_bytes(serialization.Encoding.DER)


SHOP, BLOG = key_pair("shop.test"), key_pair("blog.test")


def test_each_host_gets_the_key_pair_of_its_triggers_secret() -> None:
    triggers = [
        trigger("shop", "shop.test", "shop-tls"),
        trigger("a-rival", "shop.test", "blog-tls", namespace="other"),  # later namespace
        trigger("blog", "blog.test", "blog-tls"),
        trigger("any-host", "", "shop-tls"),  # no host: SNI cannot pick it
        trigger("plain", "plain.test", ""),
        trigger("missing", "missing.test", "no-such-secret"),
        trigger("opaque", "opaque.test", "opaque"),
    ]
    secrets = {
        ("default", "shop-tls"): tls_secret(SHOP),
        ("default", "blog-tls"): tls_secret(BLOG),
        ("other", "blog-tls"): tls_secret(BLOG),
        ("default", "opaque"): tls_secret(SHOP, secret_type="Opaque"),
    }

    pairs = tls_key_pairs(triggers, secrets)

    assert sorted(pairs) == ["blog.test", "shop.test"]
    assert pairs["shop.test"].certificate == SHOP.certificate
    assert pairs["blog.test"].private_key == BLOG.private_key


def test_the_handshake_shows_the_certificate_of_the_sni_host() -> None:
    certificates = Certificates()
    certificates.replace({"shop.test": SHOP, "blog.test": BLOG, "*.wild.test": BLOG})

    assert handshake(certificates, "shop.test") == der(SHOP)
    assert handshake(certificates, "BLOG.test") == der(BLOG)
    assert handshake(certificates, "a.wild.test") == der(BLOG)


@pytest.mark.parametrize("server_name", ["other.test", "wild.test", None])
def test_an_unknown_or_missing_name_fails_the_handshake(server_name: str | None) -> None:
    certificates = Certificates()
    certificates.replace({"shop.test": SHOP, "*.wild.test": BLOG})

    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
        handshake(certificates, server_name)


def test_a_context_is_rebuilt_only_when_its_pem_changes() -> None:
    certificates = Certificates()
    certificates.replace({"shop.test": SHOP})
    first = certificates.context_for("shop.test")

    certificates.replace({"shop.test": SHOP})
    assert certificates.context_for("shop.test") is first
    certificates.replace({"shop.test": BLOG})
    assert certificates.context_for("shop.test") is not first
    assert handshake(certificates, "shop.test") == der(BLOG)
    certificates.replace({})
    assert certificates.hosts == frozenset()


def test_an_unusable_key_pair_leaves_only_that_host_unserved() -> None:
    broken = KeyPair(certificate=SHOP.certificate, private_key=BLOG.private_key, source="x")
    certificates = Certificates()

    certificates.replace({"shop.test": broken, "blog.test": BLOG})

    assert certificates.hosts == frozenset({"blog.test"})
