"""HTTP triggers and Secrets as a user runs them: the CLI against a real ``funcmesh up``, requests
through the real gateway with a Host header, basic auth from an htpasswd Secret, CORS."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from tests.e2e.conftest import Daemon, api_client

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
ECHO_PATH = (
    "def handler(event, context):\n"
    "    request = event['extensions']['request']\n"
    "    return 'path=' + request.fullpath + ' query=' + request.query_string\n"
)


@pytest.fixture(scope="module")
def echo(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("code") / "echo.py"
    path.write_text(ECHO_PATH)
    daemon.run(
        "function", "deploy", "echo", "--runtime", RUNTIME, "--handler", "echo.handler",
        "--from-file", str(path),
    )  # fmt: skip
    return "echo"


@pytest.fixture
def gateway(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.gateway_url, timeout=10) as client:
        yield client


def answer_when(
    gateway: httpx.Client, path: str, check: Callable[[httpx.Response], bool], **kwargs: Any
) -> httpx.Response:
    """The first answer that passes ``check``: the gateway's routes follow the store a moment
    after the API answered."""
    deadline = time.monotonic() + 5
    while not check(answer := gateway.get(path, **kwargs)):
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path}: still {answer.status_code} {answer.text[:200]}")
        time.sleep(0.02)
    return answer


def htpasswd_line(user: str, password: str) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:$2y${hashed[4:]}\n"


def test_trigger_routes_host_and_path_to_the_function(
    daemon: Daemon, echo: str, gateway: httpx.Client
) -> None:
    out = daemon.run(
        "trigger", "http", "create", "web", "--function-name", echo,
        "--hostname", "Shop.Example.com", "--path", "api",
    ).stdout  # fmt: skip
    assert "HTTP trigger web created in namespace default successfully!" in out

    answer = answer_when(gateway, "/api/items?x=1", _ok, headers={"Host": "shop.example.com:8080"})
    assert answer.text == "path=/api/items?x=1 query=x=1"
    assert gateway.get("/apix", headers={"Host": "shop.example.com"}).status_code == 404
    assert gateway.get("/api", headers={"Host": "other.example.com"}).status_code == 404

    rows = daemon.run("trigger", "http", "ls").stdout.splitlines()
    assert rows[0].split() == ["NAME", "NAMESPACE", "HOST", "PATH", "FUNCTION", "NAME"]
    assert rows[1].split() == ["web", "default", "Shop.Example.com", "/api", "echo"]
    table = daemon.run("get", "httptriggers").stdout.splitlines()
    assert table[0].split() == ["NAME", "FUNCTION", "HOST", "PATH", "AGE"]
    assert table[1].split()[:4] == ["web", "echo", "Shop.Example.com", "/api"]

    daemon.run("trigger", "http", "update", "web", "--path", "shop")
    answer_when(gateway, "/shop", _ok, headers={"Host": "shop.example.com"})
    with api_client(daemon) as client:
        path = "/apis/kubeless.io/v1beta1/namespaces/default/httptriggers/web"
        spec = client.get(path).json()["spec"]
    assert spec["host-name"] == "Shop.Example.com"  # update kept what it was not given

    daemon.run("trigger", "http", "delete", "web")
    answer_when(gateway, "/shop", _status(404), headers={"Host": "shop.example.com"})


def test_trigger_of_an_unknown_function_is_refused(daemon: Daemon) -> None:
    result = daemon.run("trigger", "http", "create", "t", "--function-name", "nope", check=False)
    assert result.returncode == 1
    assert 'function "nope" not found in namespace "default"' in result.stderr
    assert "\nt " not in daemon.run("trigger", "http", "ls", check=False).stdout


def test_basic_auth_answers_401_until_the_password_matches(
    daemon: Daemon, echo: str, gateway: httpx.Client, tmp_path: Path
) -> None:
    auth = tmp_path / "auth"
    apr1 = subprocess.run(
        ["openssl", "passwd", "-apr1", "-salt", "s4ltS4lt", "pw2"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    auth.write_text(htpasswd_line("foo", "bar") + f"ann:{apr1}\n")
    daemon.run("create", "secret", "generic", "basic-auth", "--from-file", str(auth))
    missing = daemon.run(
        "trigger", "http", "create", "private", "--function-name", echo,
        "--hostname", "private.test", "--basic-auth-secret", "no-such-secret", check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert 'needs a Secret "no-such-secret"' in missing.stderr
    daemon.run(
        "trigger", "http", "create", "private", "--function-name", echo,
        "--hostname", "private.test", "--basic-auth-secret", "basic-auth",
    )  # fmt: skip
    host = {"Host": "private.test"}

    refused = answer_when(gateway, "/", _status(401), headers=host)
    assert refused.headers["WWW-Authenticate"].startswith('Basic realm="default/private"')
    assert gateway.get("/", headers=host, auth=("foo", "wrong")).status_code == 401
    for _ in range(2):  # the second time from the cache of verified credentials
        assert gateway.get("/", headers=host, auth=("foo", "bar")).status_code == 200
    assert gateway.get("/", headers=host, auth=("ann", "pw2")).status_code == 200
    daemon.run("trigger", "http", "delete", "private")


def test_cors_preflight_and_headers(daemon: Daemon, echo: str, gateway: httpx.Client) -> None:
    daemon.run(
        "trigger", "http", "create", "cors", "--function-name", echo,
        "--hostname", "cors.test", "--cors-enable",
    )  # fmt: skip
    answer_when(gateway, "/x", _ok, headers={"Host": "cors.test"})
    preflight = gateway.options(
        "/x",
        headers={
            "Host": "cors.test",
            "Origin": "https://app.test",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    answer = gateway.get("/x", headers={"Host": "cors.test"})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    daemon.run("trigger", "http", "update", "cors", "--no-cors")
    answer_when(
        gateway, "/x", lambda a: "Access-Control-Allow-Origin" not in a.headers,
        headers={"Host": "cors.test"},
    )  # fmt: skip
    daemon.run("trigger", "http", "delete", "cors")


def test_secrets_are_created_and_listed_without_their_values(
    daemon: Daemon, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=secure.test", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True,
    )  # fmt: skip
    out = daemon.run(
        "create", "secret", "generic", "db", "--from-literal", "user=admin",
        "--from-literal", "password=s3cr3t-value",
    ).stdout  # fmt: skip
    assert out.strip() == "secret/db created"
    daemon.run("create", "secret", "tls", "site", "--cert", str(cert), "--key", str(key))

    listing = daemon.run("get", "secrets").stdout
    rows = {line.split()[0]: line.split() for line in listing.splitlines()}
    assert rows["NAME"] == ["NAME", "TYPE", "DATA", "AGE"]
    assert rows["db"][1:3] == ["Opaque", "2"]
    assert rows["site"][1:3] == ["kubernetes.io/tls", "2"]
    assert "s3cr3t" not in listing
    assert "s3cr3t" not in daemon.log_path.read_text()

    with api_client(daemon) as client:
        stored = client.get("/api/v1/namespaces/default/secrets/db").json()
    assert base64.b64decode(stored["data"]["password"]) == b"s3cr3t-value"


def test_string_data_is_merged_and_tls_secrets_need_their_keys(daemon: Daemon) -> None:
    plain = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "plain"}}
    half = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "half"}}
    with api_client(daemon) as client:
        created = client.post(
            "/api/v1/namespaces/default/secrets", json={**plain, "stringData": {"token": "abc"}}
        )
        refused = client.post(
            "/api/v1/namespaces/default/secrets",
            json={**half, "type": "kubernetes.io/tls", "stringData": {"tls.crt": "x"}},
        )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["data"] == {"token": base64.b64encode(b"abc").decode()}
    assert "stringData" not in body
    assert body["type"] == "Opaque"
    assert refused.status_code == 422
    assert "data[tls.key]" in refused.text


def _ok(answer: httpx.Response) -> bool:
    return answer.status_code == 200


def _status(status: int) -> Callable[[httpx.Response], bool]:
    return lambda answer: answer.status_code == status
