"""Fixtures shared by the mTLS shim's tests: one mesh CA per module, an instance's credential,
a mesh entrance that takes only mTLS and a plain workload."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from funcmesh.mesh.identity import MeshIdentity
from funcmesh.runtime.mesh_credentials import MeshCredential, credentials_payload
from tests.unit.runtime.test_mtls_shim import LOOPBACK, Server, _http_answer, _serve


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> MeshIdentity:
    return MeshIdentity.open(tmp_path_factory.mktemp("mesh"))


@pytest.fixture
def credential(identity: MeshIdentity) -> Iterator[MeshCredential]:
    issued = identity.issue("default", "caller")
    renew_at_s = time.time() + 3600
    made = MeshCredential(
        ("default", "caller"),
        payload=credentials_payload(issued, renew_at_s=renew_at_s),
        renew_at_s=renew_at_s,
        service_cidr=LOOPBACK,
    )
    yield made
    made.close()


@pytest.fixture
def mesh_vip(identity: MeshIdentity) -> Iterator[Server]:
    """The mesh entrance: mTLS with a certificate of the mesh CA."""
    yield from _serve(identity.server_context(), _http_answer)


@pytest.fixture
def workload() -> Iterator[Server]:
    """A plain HTTP server, as behind kernel NAT: a ClientHello gets a 400."""
    yield from _serve(None, _http_answer)
