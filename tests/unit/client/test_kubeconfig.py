from __future__ import annotations

import base64
from pathlib import Path

import pytest

from funcmesh.client.kubeconfig import KubeconfigMissing, load_kubeconfig, locate_kubeconfig
from funcmesh.errors import Invalid

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def kubeconfig_text(*, namespace: str = "", token_line: str = "token: secret-token") -> str:
    ca_data = base64.b64encode(CA_PEM.encode()).decode()
    ns_line = f"\n    namespace: {namespace}" if namespace else ""
    return f"""
apiVersion: v1
kind: Config
current-context: funcmesh
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: {ca_data}
- name: other
  cluster:
    server: https://10.0.0.1:6443
    insecure-skip-tls-verify: true
contexts:
- name: funcmesh
  context:
    cluster: local
    user: admin{ns_line}
- name: elsewhere
  context:
    cluster: other
    user: admin
    namespace: team-a
users:
- name: admin
  user:
    {token_line}
"""


@pytest.mark.parametrize(
    ("env", "explicit", "expected"),
    [
        ({"HOME": "/home/u"}, None, "/home/u/.funcmesh/kubeconfig"),
        ({"HOME": "/home/u", "FUNCMESH_HOME": "/srv/fm"}, None, "/srv/fm/kubeconfig"),
        ({"HOME": "/h", "FUNCMESH_HOME": "/srv/fm", "KUBECONFIG": "/k/a:/k/b"}, None, "/k/a"),
        ({"HOME": "/h", "KUBECONFIG": ":/k/b"}, None, "/k/b"),
        ({"HOME": "/h", "KUBECONFIG": "/k/a"}, "/flag/config", "/flag/config"),
    ],
)
def test_kubeconfig_path_precedence(
    env: dict[str, str], explicit: str | None, expected: str
) -> None:
    assert locate_kubeconfig(env, explicit=explicit).path == Path(expected)


def test_missing_default_kubeconfig_says_to_start_the_daemon(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigMissing) as caught:
        load_kubeconfig({"HOME": str(tmp_path)})
    assert str(caught.value) == (
        "no kubeconfig at ~/.funcmesh/kubeconfig: start the daemon with funcmesh up "
        "(or pass --kubeconfig)"
    )


def test_missing_explicit_kubeconfig_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigMissing, match="check the --kubeconfig path"):
        load_kubeconfig({"HOME": "/nowhere"}, explicit=str(tmp_path / "nope"))


def test_current_context_gives_server_ca_token(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(namespace="dev"))
    config = load_kubeconfig({"KUBECONFIG": str(path)})
    assert config.server == "https://127.0.0.1:6443"
    assert config.ca_pem == CA_PEM
    assert config.token == "secret-token"
    assert config.namespace == "dev"
    assert config.insecure_skip_tls_verify is False


def test_context_flag_picks_another_context(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text())
    config = load_kubeconfig({}, explicit=str(path), context="elsewhere")
    assert (config.server, config.namespace, config.ca_pem) == (
        "https://10.0.0.1:6443",
        "team-a",
        None,
    )
    assert config.insecure_skip_tls_verify is True


def test_unknown_context_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text())
    with pytest.raises(Invalid, match=r'context "nope" not found .*funcmesh, elsewhere'):
        load_kubeconfig({}, explicit=str(path), context="nope")


def test_token_file_is_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(token_line="tokenFile: token"))
    assert load_kubeconfig({}, explicit=str(path)).token == "from-file"


def test_invalid_yaml_is_reported_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("clusters: [\n")
    with pytest.raises(Invalid, match="kubeconfig .*kubeconfig: invalid YAML"):
        load_kubeconfig({}, explicit=str(path))
