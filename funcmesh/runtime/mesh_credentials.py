"""The mesh certificates of the instances funcmesh starts: one memfd per identity, kept current.

Every instance has the mesh identity ``spiffe://cluster.local/ns/<ns>/sa/<serviceAccount>``.
The mesh CA (``funcmesh.mesh.identity.MeshIdentity``, seen here as a ``CertificateIssuer``:
the runtime sits below the mesh) signs its certificate. ``MeshCredentials`` keeps, per
identity, the certificate chain, private key and mesh root as one JSON payload in a memfd
(``credentials_payload``), and rewrites that memfd in place when it renews the certificate (two
thirds into its life, as the CA does), so that every process holding a descriptor of it reads
the new one. Nothing is issued, encoded or sent per cold start:

- Python workers: a read-only descriptor rides along with each spawn request, like the Secrets
  memfd, and the zygote passes it on unread (its memory, which every later worker inherits,
  never holds a key). The worker reads it when its code first calls a mesh VIP, and again once
  the renewal time written in it has passed (``shims/_funcmesh_mtls.py``).
- Node.js instances ask for the payload over their control socket on their first mesh call,
  and again after its renewal time (``funcmesh.runtime.node_processes``).
- Workload replicas: their launcher gets the descriptor and writes Istio's three files for the
  command, rewriting them after each renewal (``shims/_funcmesh_workload.py``).

The memfd is mode 0600 (only the daemon's user may open it again through /proc) and handed out
read-only, so a worker running as nobody reads its own identity's credentials and cannot change
them for the other instances of that identity.

Must not: log or raise a key, block the event loop (issuing runs in a thread), or import the
mesh package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final, Protocol

from funcmesh.errors import FuncmeshError

logger = logging.getLogger(__name__)

PAYLOAD_FORMAT: Final = "funcmesh.io/mesh-credentials/v1"
RENEW_AFTER: Final = 2 / 3  # of the life left when issued: the CA renews from then on
RENEW_SLACK_S: Final = 1.0  # after the CA would renew: it then surely does
RETRY_S: Final = 60.0  # after a renewal that failed (or gave the same certificate)


class IssuedCertificate(Protocol):
    """A workload certificate (``funcmesh.mesh.identity.Issued``)."""

    @property
    def spiffe_id(self) -> str: ...

    @property
    def cert_pem(self) -> str: ...

    @property
    def key_pem(self) -> str: ...

    @property
    def ca_pem(self) -> str: ...

    @property
    def not_after(self) -> datetime: ...


class CertificateIssuer(Protocol):
    """The mesh CA (``MeshIdentity``): a certificate per identity, the same one until it is
    due for renewal. Blocks (key generation): called in a thread."""

    def issue(self, namespace: str, service_account: str) -> IssuedCertificate: ...


def credentials_payload(issued: IssuedCertificate, *, renew_at_s: float) -> bytes:
    """What an instance reads: JSON with the certificate chain, its key, the mesh root, when
    the certificate expires and from when a newer one may be there (seconds since the epoch)."""
    payload = {
        "format": PAYLOAD_FORMAT,
        "spiffeId": issued.spiffe_id,
        "certChain": issued.cert_pem,
        "key": issued.key_pem,
        "root": issued.ca_pem,
        "notAfter": issued.not_after.timestamp(),
        "renewAt": renew_at_s,
    }
    return json.dumps(payload).encode()


class MeshCredential:
    """One identity's credentials: a memfd rewritten in place at each renewal, a read-only
    descriptor of it to hand out (``reader_fd``), and the payload it holds now."""

    __slots__ = (
        "_fd",
        "identity",
        "not_after_s",
        "payload",
        "reader_fd",
        "renew_at_s",
        "service_cidr",
    )

    def __init__(
        self,
        identity: tuple[str, str],
        *,
        payload: bytes,
        renew_at_s: float,
        service_cidr: str,
    ) -> None:
        self.identity = identity  # (namespace, service account)
        self.service_cidr = service_cidr  # the ClusterIPs whose plain-HTTP calls get mTLS
        self._fd = os.memfd_create(f"funcmesh-mesh-{identity[0]}-{identity[1]}", os.MFD_CLOEXEC)
        try:
            os.fchmod(self._fd, 0o600)
            self.reader_fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self._fd)
            raise
        self.payload = b""
        self.renew_at_s = self.not_after_s = 0.0
        self.replace(payload, renew_at_s=renew_at_s)

    def __repr__(self) -> str:
        return f"<MeshCredential {self.identity[0]}/{self.identity[1]}>"

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://cluster.local/ns/{self.identity[0]}/sa/{self.identity[1]}"

    def replace(self, payload: bytes, *, renew_at_s: float) -> None:
        """Make ``payload`` the memfd's content: one write at offset 0, then the rest cut off
        (a reader racing it sees JSON that does not parse, and reads again)."""
        os.pwrite(self._fd, payload, 0)
        os.ftruncate(self._fd, len(payload))
        self.payload = payload
        self.renew_at_s = renew_at_s
        self.not_after_s = float(json.loads(payload)["notAfter"])

    def close(self) -> None:
        for fd in (self.reader_fd, self._fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class MeshCredentials:
    """The credentials of every identity instances have had, renewed before they expire."""

    def __init__(
        self,
        issuer: CertificateIssuer,
        *,
        service_cidr: str,
        clock: Callable[[], float] = time.time,
        renew_slack_s: float = RENEW_SLACK_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self.service_cidr = service_cidr  # the shims upgrade calls to VIPs in it
        self._issuer = issuer
        self._clock = clock
        self._renew_slack_s = renew_slack_s
        self._retry_s = retry_s
        self._credentials: dict[tuple[str, str], MeshCredential] = {}
        self._making: dict[tuple[str, str], asyncio.Task[MeshCredential | None]] = {}
        self._failed: set[tuple[str, str]] = set()  # identities logged as failing already
        self._changed = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    async def credential(self, namespace: str, service_account: str) -> MeshCredential | None:
        """The credentials of ``namespace/service_account``, made on first use (in a thread);
        None when the CA cannot issue them (the instance then calls in plaintext)."""
        key = (namespace, service_account)
        found = self._credentials.get(key)
        if found is not None or self._closed:
            return found
        making = self._making.get(key)
        if making is None:  # one issue per identity, however many instances start at once
            making = self._making[key] = asyncio.create_task(
                self._make(key), name=f"mesh-credential-{namespace}-{service_account}"
            )
            making.add_done_callback(lambda _: self._making.pop(key, None))
        return await asyncio.shield(making)

    async def close(self) -> None:
        """Stop renewing and close every memfd (instances keep the descriptors they have)."""
        self._closed = True
        tasks = [*self._making.values(), *([self._renewer] if self._renewer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for credential in self._credentials.values():
            credential.close()
        self._credentials.clear()

    async def _make(self, key: tuple[str, str]) -> MeshCredential | None:
        try:
            payload, renew_at_s = await self._issue(key)
        except (FuncmeshError, OSError, ValueError) as exc:  # costs mTLS, not the start
            if key not in self._failed:
                self._failed.add(key)
                logger.warning("no mesh certificate for %s/%s: %s", *key, exc)
            return None
        if self._closed:
            return None
        credential = self._credentials[key] = MeshCredential(
            key, payload=payload, renew_at_s=renew_at_s, service_cidr=self.service_cidr
        )
        self._changed.set()
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="mesh-credentials")
        return credential

    async def _issue(self, key: tuple[str, str]) -> tuple[bytes, float]:
        """A certificate for ``key`` from the CA, as a payload, and when to renew it."""
        issued_at_s = self._clock()
        issued = await asyncio.to_thread(self._issuer.issue, *key)
        life_s = max(issued.not_after.timestamp() - issued_at_s, 0.0)
        renew_at_s = issued_at_s + life_s * RENEW_AFTER + self._renew_slack_s
        return credentials_payload(issued, renew_at_s=renew_at_s), renew_at_s

    async def _renew_forever(self) -> None:
        """Sleep until a certificate is due, renew the due ones, and so on."""
        while not self._closed:
            due_s = min(c.renew_at_s for c in self._credentials.values())
            self._changed.clear()
            # asyncio.timeout, not wait_for: a close that comes as the event is set must not
            # be swallowed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(due_s - self._clock(), 0.0)):
                    await self._changed.wait()
            for credential in list(self._credentials.values()):
                if credential.renew_at_s <= self._clock():
                    await self._renew(credential)

    async def _renew(self, credential: MeshCredential) -> None:
        try:
            payload, renew_at_s = await self._issue(credential.identity)
        except (FuncmeshError, OSError, ValueError) as exc:  # again in a minute
            logger.warning(
                "renewing the mesh certificate of %s/%s failed: %s", *credential.identity, exc
            )
            credential.renew_at_s = self._clock() + self._retry_s
            return
        if float(json.loads(payload)["notAfter"]) <= credential.not_after_s:
            credential.renew_at_s = self._clock() + self._retry_s  # the CA gave the same one again
            return
        credential.replace(payload, renew_at_s=renew_at_s)
        logger.info("renewed the mesh certificate of %s/%s", *credential.identity)
