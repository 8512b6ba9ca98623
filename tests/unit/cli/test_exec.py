"""``exec`` gives CMD the pod's DNS settings (the resolv.conf and hosts its process sees) and its
mesh certificate files, in a mount namespace of CMD's own, which the machine never sees."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from funcmesh.cli.exec import PodFiles, _run, pod_files
from funcmesh.client.api import MeshCertificate

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
PATH = {"PATH": "/usr/bin:/bin"}


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-abc-xyz12", "namespace": "team"},
        "spec": {"dnsPolicy": "ClusterFirst", "containers": [{}], **spec},
        "status": {"podIP": "127.128.0.9"},
    }


DNS_CONFIG = {
    "nameservers": ["127.96.0.10"],
    "searches": ["team.svc.cluster.local", "svc.cluster.local", "cluster.local"],
    "options": [{"name": "ndots", "value": "5"}],
}


def test_a_pod_without_dns_config_keeps_the_machines_files() -> None:
    assert pod_files(pod()) is None
    assert pod_files(pod(dnsConfig=DNS_CONFIG, dnsPolicy="Default")) is None


def test_the_pods_files_are_written_again_from_the_pod() -> None:
    files = pod_files(pod(dnsConfig=DNS_CONFIG, hostname="front", subdomain="web"))

    assert files is not None
    assert files.hostname == "front"
    assert files.files["resolv.conf"] == (
        "search team.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 127.96.0.10\n"
        "options ndots:5\n"
    )
    assert files.files["hosts"].endswith("127.128.0.9\tfront.web.team.svc.cluster.local\tfront\n")


def test_a_pod_without_an_ip_gets_only_its_resolv_conf() -> None:
    without_ip = pod(dnsConfig=DNS_CONFIG)
    without_ip["status"] = {}

    files = pod_files(without_ip)

    assert files is not None
    assert set(files.files) == {"resolv.conf"}
    assert files.hostname == "web-abc-xyz12"


@needs_root
def test_cmd_sees_the_pods_files_and_host_name_and_the_machine_does_not(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    machine_resolv_conf = Path("/etc/resolv.conf").read_text()
    files = pod_files(pod(dnsConfig=DNS_CONFIG))
    assert files is not None
    out = tmp_path / "out"
    script = f"cat /etc/resolv.conf /etc/hosts > {out}; hostname >> {out}; exit 3"

    code = _run(["sh", "-c", script], env=PATH, cwd=None, etc=files)

    assert code == 3
    seen = out.read_text()
    assert "nameserver 127.96.0.10\n" in seen
    assert "127.128.0.9\tweb-abc-xyz12\n" in seen
    assert seen.endswith("web-abc-xyz12\n")
    assert Path("/etc/resolv.conf").read_text() == machine_resolv_conf
    assert socket.gethostname() != "web-abc-xyz12"
    assert capfd.readouterr().err == ""


@needs_root
def test_files_that_cannot_be_mounted_are_named_and_cmd_runs_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    files = PodFiles(files={"resolv.conf": "nameserver 127.96.0.10\n", "no-such": "x"}, hostname="")

    code = _run(["true"], env=PATH, cwd=None, etc=files)

    assert code == 0
    assert "note: not all of the pod's files apply to CMD: /etc/no-such:" in (
        capfd.readouterr().err
    )


CERTIFICATE = MeshCertificate(
    spiffe_id="spiffe://cluster.local/ns/team/sa/caller",
    certificate="-----BEGIN CERTIFICATE-----\nchain\n",
    private_key="-----BEGIN PRIVATE KEY-----\nkey\n",
    ca_certificate="-----BEGIN CERTIFICATE-----\nroot\n",
    not_after="2026-11-28T00:00:00Z",
)


@needs_root
def test_cmd_finds_the_identitys_certificate_files_where_the_pod_does(tmp_path: Path) -> None:
    """A root daemon's pod has its files on a tmpfs of its own: the machine sees the directory
    empty, and CMD sees the certificate ``exec`` mounted there (no DNS settings needed)."""
    certs_dir = tmp_path / "home" / "mesh-certs"
    certs_dir.mkdir(parents=True)
    out = tmp_path / "out"
    script = f"cd {certs_dir} && ls > {out} && cat cert-chain.pem key.pem root-cert.pem >> {out}"

    code = _run(["sh", "-c", script], env=PATH, cwd=None, certs=(str(certs_dir), CERTIFICATE))

    assert code == 0
    assert out.read_text() == (
        "cert-chain.pem\nkey.pem\nroot-cert.pem\n"
        + CERTIFICATE.certificate
        + CERTIFICATE.private_key
        + CERTIFICATE.ca_certificate
    )
    assert list(certs_dir.iterdir()) == []  # never on the machine


def test_a_missing_command_is_reported_with_the_pods_files_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = pod_files(pod(dnsConfig=DNS_CONFIG))
    assert files is not None

    assert _run(["no-such-command-here"], env=PATH, cwd=None, etc=files) == 127
    assert 'exec: "no-such-command-here": executable file not found' in capsys.readouterr().err
