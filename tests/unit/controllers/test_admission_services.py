"""Admission of Services (normal form and ClusterIP) and Endpoints (checked)."""

from __future__ import annotations

import pytest

from funcmesh.controllers.admission import Admission
from funcmesh.controllers.service_ips import ClusterIPs
from funcmesh.errors import Invalid, Unavailable
from funcmesh.model.kinds import ENDPOINTS, SERVICE
from funcmesh.runtime.catalog import RuntimeCatalog

CATALOG = RuntimeCatalog.from_runtimes([])


def test_a_service_gets_its_cluster_ip_in_admission() -> None:
    admission = Admission(CATALOG, service_ips=ClusterIPs("127.96.0.0/16"))
    obj = {"metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}
    admitted = admission.admit(SERVICE, obj, None)
    assert admitted["spec"]["clusterIP"].startswith("127.96.")
    assert admitted["spec"]["clusterIPs"] == [admitted["spec"]["clusterIP"]]


def test_services_need_the_allocator() -> None:
    obj = {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}
    with pytest.raises(Unavailable, match="ClusterIP allocator"):
        Admission(CATALOG).admit(SERVICE, obj, None)


def test_endpoints_are_checked() -> None:
    bad = {"metadata": {"name": "db"}, "subsets": [{"addresses": [{"ip": "localhost"}]}]}
    with pytest.raises(Invalid, match=r'Endpoints "db" is invalid: .*valid IP'):
        Admission(CATALOG).admit(ENDPOINTS, bad, None)
