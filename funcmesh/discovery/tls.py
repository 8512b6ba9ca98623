"""TLS certificates by host name for the gateway's TLS listener, chosen by SNI.

``Certificates`` keeps one ``ssl.SSLContext`` per HTTPTrigger host that names a
``kubernetes.io/tls`` Secret (keys ``tls.crt`` and ``tls.key``). ``server_context()`` is the
context the listener is created with: it carries no certificate of its own, and its
``sni_callback`` swaps in the host's context. A handshake without SNI, or for a host no trigger
serves over TLS (exactly, or as ``*.`` one label up), fails with the ``unrecognized_name``
alert: the gateway never shows one host's
certificate to a client that asked for another. A context is rebuilt only when its PEM bytes
change. Keys reach OpenSSL through 0600 files in a private temporary directory that is removed
at once. Never logs or raises a key or certificate: only Secret names.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from funcmesh.errors import Invalid
from funcmesh.model.http_triggers import ANY_HOST, HttpTriggerSpec, normalise_host
from funcmesh.model.objects import RawObject
from funcmesh.model.secrets import TLS, secret_type_of, secret_value

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
CERT_KEY = "tls.crt"
PRIVATE_KEY = "tls.key"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPair:
    """The PEM certificate chain and private key of one host."""

    certificate: bytes
    private_key: bytes
    source: str  # the Secret, for messages: never its values


def tls_key_pairs(
    triggers: Iterable[HttpTriggerSpec], secrets: Mapping[Key, RawObject]
) -> dict[str, KeyPair]:
    """The key pair of each host whose trigger names a usable TLS Secret. Triggers without a
    host cannot be picked by SNI; of two triggers of one host, the first by namespace and name
    wins."""
    pairs: dict[str, KeyPair] = {}
    for trigger in sorted(triggers, key=lambda t: (t.namespace, t.name)):
        if not trigger.tls_secret or trigger.host == ANY_HOST or trigger.host in pairs:
            continue
        pair = _key_pair(trigger, secrets.get((trigger.namespace, trigger.tls_secret)))
        if pair is not None:
            pairs[trigger.host] = pair
    return pairs


def _key_pair(trigger: HttpTriggerSpec, secret: RawObject | None) -> KeyPair | None:
    where = f'TLS Secret "{trigger.tls_secret}" in namespace "{trigger.namespace}"'
    if secret is None:
        logger.warning("HTTP trigger %s/%s: the %s does not exist", *_names(trigger), where)
        return None
    certificate, private_key = secret_value(secret, CERT_KEY), secret_value(secret, PRIVATE_KEY)
    if secret_type_of(secret) != TLS or certificate is None or private_key is None:
        logger.warning(
            "HTTP trigger %s/%s: the %s is not of type %s with keys %s and %s",
            *_names(trigger),
            where,
            TLS,
            CERT_KEY,
            PRIVATE_KEY,
        )
        return None
    return KeyPair(certificate=certificate, private_key=private_key, source=where)


def _names(trigger: HttpTriggerSpec) -> tuple[str, str]:
    return trigger.namespace, trigger.name


def host_context(pair: KeyPair) -> ssl.SSLContext:
    """A server context serving ``pair``; Invalid when OpenSSL rejects it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="funcmesh-tls-") as private:  # mode 0700
        cert_path, key_path = Path(private, "tls.crt"), Path(private, "tls.key")
        for path, pem in ((cert_path, pair.certificate), (key_path, pair.private_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise Invalid(
                f"the {pair.source} holds no usable PEM certificate and key: {exc.reason}"
            ) from None
    return context


class Certificates:
    """The TLS context of each host, selected by SNI during the handshake."""

    def __init__(self) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._pairs: dict[str, KeyPair] = {}

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(self._contexts)

    def replace(self, pairs: Mapping[str, KeyPair]) -> None:
        """Serve exactly ``pairs``; contexts whose PEM bytes did not change are kept. Blocks on
        small file writes: call it from a worker thread."""
        contexts: dict[str, ssl.SSLContext] = {}
        kept: dict[str, KeyPair] = {}
        for host, pair in pairs.items():
            old = self._pairs.get(host)
            if old is not None and _same_pem(old, pair):
                contexts[host], kept[host] = self._contexts[host], old
                continue
            try:
                contexts[host] = host_context(pair)
            except Invalid as exc:
                logger.warning("host %s is not served over TLS: %s", host, exc)
                continue
            kept[host] = pair
        self._contexts, self._pairs = contexts, kept

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        if not server_name:
            return None
        name = normalise_host(server_name)
        exact = self._contexts.get(name)
        if exact is not None or "." not in name:
            return exact
        return self._contexts.get("*." + name.partition(".")[2])  # a wildcard host

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: no certificate of its own, one per host by SNI."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.sni_callback = self._select
        return context

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        selected = self.context_for(server_name)
        if selected is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = selected
        return None


def _same_pem(old: KeyPair, new: KeyPair) -> bool:
    return old.certificate == new.certificate and old.private_key == new.private_key
