"""The instances' mesh credentials: one memfd per identity, made once however many instances
start at once, read-only for them, rewritten in place when the certificate is renewed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from funcmesh.errors import Invalid
from funcmesh.mesh.identity import MeshIdentity
from funcmesh.runtime.mesh_credentials import PAYLOAD_FORMAT, MeshCredential, MeshCredentials

CIDR = "127.96.0.0/16"


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    spiffe_id: str
    cert_pem: str
    key_pem: str
    ca_pem: str
    not_after: datetime


class FakeCA:
    """Issues certificates living ``life_s``, numbered; ``fail`` makes it refuse, ``same``
    gives the last one again (as the real CA does before two thirds of a life)."""

    def __init__(self, life_s: float = 3600.0) -> None:
        self.life_s = life_s
        self.issued: list[tuple[str, str]] = []
        self.certificates: list[Certificate] = []
        self.fail = False
        self.same = False

    def issue(self, namespace: str, service_account: str) -> Certificate:
        if self.fail:
            raise Invalid("cannot issue a mesh certificate: serviceAccount: bad")
        if self.same and self.certificates:
            return self.certificates[-1]
        self.issued.append((namespace, service_account))
        number = len(self.issued)
        certificate = Certificate(
            spiffe_id=f"spiffe://cluster.local/ns/{namespace}/sa/{service_account}",
            cert_pem=f"CERT {number}",
            key_pem=f"KEY {number}",
            ca_pem="ROOT",
            not_after=datetime.fromtimestamp(time.time() + self.life_s, UTC),
        )
        self.certificates.append(certificate)
        return certificate


def read(fd: int) -> dict[str, object]:
    document: dict[str, object] = json.loads(os.pread(fd, 65536, 0))
    return document


async def test_an_identity_gets_one_memfd_however_many_instances_start_at_once() -> None:
    ca = FakeCA()
    credentials = MeshCredentials(ca, service_cidr=CIDR)
    try:
        found = await asyncio.gather(*(credentials.credential("shop", "cart") for _ in range(5)))
        other = await credentials.credential("shop", "default")
    finally:
        await credentials.close()

    assert len({id(c) for c in found}) == 1
    assert ca.issued == [("shop", "cart"), ("shop", "default")]
    credential = found[0]
    assert isinstance(credential, MeshCredential)
    assert other is not None
    assert credential.service_cidr == CIDR
    assert credential.spiffe_id == "spiffe://cluster.local/ns/shop/sa/cart"


async def test_the_payload_names_everything_an_instance_needs() -> None:
    credentials = MeshCredentials(FakeCA(), service_cidr=CIDR)
    try:
        credential = await credentials.credential("default", "caller")
        assert credential is not None
        payload = read(credential.reader_fd)
    finally:
        await credentials.close()

    assert payload["format"] == PAYLOAD_FORMAT
    assert payload["spiffeId"] == "spiffe://cluster.local/ns/default/sa/caller"
    assert (payload["certChain"], payload["key"], payload["root"]) == ("CERT 1", "KEY 1", "ROOT")
    assert isinstance(payload["notAfter"], float)
    assert isinstance(payload["renewAt"], float)
    assert time.time() < payload["renewAt"] < payload["notAfter"]


async def test_instances_get_a_read_only_descriptor_nobody_else_can_reopen() -> None:
    credentials = MeshCredentials(FakeCA(), service_cidr=CIDR)
    try:
        credential = await credentials.credential("default", "caller")
        assert credential is not None
        fd = credential.reader_fd
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.write(fd, b"forged")
        assert os.fstat(fd).st_mode & 0o777 == 0o600
        assert not os.get_inheritable(fd)
    finally:
        await credentials.close()


async def test_a_renewal_rewrites_the_memfd_that_instances_hold() -> None:
    ca = FakeCA(life_s=0.15)  # renewed 0.1 s after it was issued
    credentials = MeshCredentials(ca, service_cidr=CIDR, renew_slack_s=0.0)
    try:
        credential = await credentials.credential("default", "caller")
        assert credential is not None
        held = os.dup(credential.reader_fd)  # as a worker holds it
        deadline = time.monotonic() + 5
        while read(held)["key"] == "KEY 1":
            assert time.monotonic() < deadline, "no renewal"
            await asyncio.sleep(0.01)
        renewed = read(held)
    finally:
        await credentials.close()
        os.close(held)

    assert renewed["key"] in ("KEY 2", "KEY 3")
    assert credential.payload == json.dumps(renewed).encode()


async def test_the_same_certificate_again_is_no_renewal_and_is_asked_for_later() -> None:
    ca = FakeCA(life_s=0.15)
    credentials = MeshCredentials(ca, service_cidr=CIDR, renew_slack_s=0.0, retry_s=30.0)
    try:
        credential = await credentials.credential("default", "caller")
        assert credential is not None
        ca.same = True
        deadline = time.monotonic() + 5
        while credential.renew_at_s < time.time() + 10:  # until the retry is scheduled
            assert time.monotonic() < deadline, "no renewal attempt"
            await asyncio.sleep(0.01)
    finally:
        await credentials.close()

    assert read_payload_key(credential) == "KEY 1"


def read_payload_key(credential: MeshCredential) -> object:
    return json.loads(credential.payload)["key"]


async def test_a_ca_that_cannot_issue_costs_mtls_not_the_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = FakeCA()
    ca.fail = True
    credentials = MeshCredentials(ca, service_cidr=CIDR)
    with caplog.at_level(logging.WARNING):
        first = await credentials.credential("default", "caller")
        second = await credentials.credential("default", "caller")
    await credentials.close()

    assert first is None
    assert second is None
    said = [r.getMessage() for r in caplog.records if "no mesh certificate" in r.getMessage()]
    assert said == ["no mesh certificate for default/caller: cannot issue a mesh certificate: "
                    "serviceAccount: bad"]  # fmt: skip


async def test_with_the_real_ca_the_payload_holds_a_certificate_of_the_identity(
    tmp_path: Path,
) -> None:
    identity = MeshIdentity.open(tmp_path / "mesh")
    credentials = MeshCredentials(identity, service_cidr=CIDR)
    try:
        credential = await credentials.credential("default", "caller")
        assert credential is not None
        payload = read(credential.reader_fd)
    finally:
        await credentials.close()

    assert payload["root"] == identity.ca_pem
    assert str(payload["certChain"]).startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in str(payload["key"])
    life_s = float(str(payload["notAfter"])) - time.time()
    renew_in_s = float(str(payload["renewAt"])) - time.time()
    assert 23 * 3600 < life_s <= 24 * 3600
    assert abs(renew_in_s - life_s * 2 / 3) < 5  # as the CA renews: two thirds into its life


async def test_close_closes_the_memfds() -> None:
    credentials = MeshCredentials(FakeCA(), service_cidr=CIDR)
    credential = await credentials.credential("default", "caller")
    assert credential is not None
    await credentials.close()

    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(credential.reader_fd)
    assert await credentials.credential("default", "other") is None
