"""The mesh's routing through a real ``funcmesh up``: Istio YAML applied unchanged, calls made
with a real HTTP client through the gateway and through a Service's VIP.

The canary is two Functions with ``app: hello`` and a ``version`` label behind one Service
``hello``, a DestinationRule with the two subsets and a VirtualService splitting 90/10: calls
scale the functions from zero, and the split is watched over many calls.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"

VERSION_CODE = """\
def handler(event, context):
    request = event["extensions"]["request"]
    query = request.query_string
    return "{version} " + request.path + ("?" + query if query else "")
"""

FLAKY_CODE = """\
calls = 0

def handler(event, context):
    global calls
    calls += 1
    if calls % 2:
        raise RuntimeError("every other call fails")
    return "ok"
"""

SLOW_CODE = """\
import time

def handler(event, context):
    time.sleep(2)
    return "late"
"""

SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector:
    app: hello
  ports:
  - name: http
    port: 8080
    targetPort: 8080
"""

CANARY_YAML = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: hello
spec:
  host: hello
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: hello
spec:
  hosts:
  - hello
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: hello
        subset: v2
  - match:
    - uri:
        prefix: /old/
    rewrite:
      uri: /new/
    route:
    - destination:
        host: hello
        subset: v1
    headers:
      response:
        set:
          x-rewritten: "yes"
  - match:
    - uri:
        exact: /broken
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: hello
        subset: v1
  - match:
    - uri:
        exact: /nowhere
    route:
    - destination:
        host: nowhere
  - route:
    - destination:
        host: hello
        subset: v1
      weight: 90
    - destination:
        host: hello
        subset: v2
      weight: 10
"""


def deploy(daemon: Daemon, tmp_path: Path, name: str, code: str, *flags: str) -> None:
    source = tmp_path / f"{name}.py"
    source.write_text(code)
    daemon.run(
        "function", "deploy", name, "--runtime", RUNTIME, "--handler", f"{name}.handler",
        "--from-file", str(source), *flags,
    )  # fmt: skip


def apply(daemon: Daemon, tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    daemon.run("apply", "-f", str(path))


def cluster_ip(daemon: Daemon, name: str) -> str:
    service = json.loads(daemon.run("get", "service", name, "-o", "json").stdout)
    return str(service["spec"]["clusterIP"])


@pytest.fixture(scope="module")
def canary(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("canary")
    for version in ("v1", "v2"):
        source = tmp_path / f"hello_{version}.py"
        source.write_text(VERSION_CODE.replace("{version}", version))
        daemon.run(
            "function", "deploy", f"hello-{version}", "--runtime", RUNTIME,
            "--handler", f"hello_{version}.handler", "--from-file", str(source),
            "--label", "app=hello", "--label", f"version={version}",
        )  # fmt: skip
    apply(daemon, tmp_path, "service", SERVICE_YAML)
    apply(daemon, tmp_path, "canary", CANARY_YAML)
    yield "hello"
    daemon.run("delete", "virtualservice", "hello", check=False)
    daemon.run("delete", "destinationrule", "hello", check=False)
    daemon.run("delete", "service", "hello", check=False)
    for version in ("v1", "v2"):
        daemon.run("function", "delete", f"hello-{version}", check=False)


def versions(client: httpx.Client, url: str, count: int, **kwargs: object) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = client.get(url, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        seen[response.text.split()[0]] += 1
    return seen


def test_a_weighted_split_sends_about_a_tenth_to_the_canary(daemon: Daemon, canary: str) -> None:
    with httpx.Client(timeout=30) as client:
        seen = versions(client, f"{daemon.gateway_url}/function/hello", 1000)
    assert set(seen) == {"v1", "v2"}
    # 10 % of 1,000 has a standard deviation of 0.95 %: 6-14 % is four of them
    assert 60 <= seen["v2"] <= 140, seen


def test_the_service_vip_takes_the_same_routes(daemon: Daemon, canary: str) -> None:
    url = f"http://{cluster_ip(daemon, 'hello')}:8080/x"
    with httpx.Client(timeout=30) as client:
        seen = versions(client, url, 300)
        jason = versions(client, url, 20, headers={"end-user": "jason"})
    assert jason == {"v2": 20}
    assert seen["v1"] > seen["v2"] > 0, seen


def test_a_header_match_picks_its_route(daemon: Daemon, canary: str) -> None:
    with httpx.Client(timeout=30) as client:
        seen = versions(
            client, f"{daemon.gateway_url}/function/hello", 30, headers={"end-user": "jason"}
        )
        other = versions(
            client, f"{daemon.gateway_url}/function/hello", 30, headers={"end-user": "jasonx"}
        )
    assert seen == {"v2": 30}
    assert other["v1"] >= 20


def test_a_prefix_rewrite_and_a_response_header(daemon: Daemon, canary: str) -> None:
    response = httpx.get(f"{daemon.gateway_url}/function/hello/old/page?q=1", timeout=30)
    assert response.status_code == 200
    assert response.text == "v1 /new/page?q=1"
    assert response.headers["x-rewritten"] == "yes"


def test_an_injected_abort_answers_its_status(daemon: Daemon, canary: str) -> None:
    response = httpx.get(f"{daemon.gateway_url}/function/hello/broken", timeout=30)
    assert response.status_code == 418
    assert "fault filter abort" in response.text


def test_a_destination_that_does_not_exist_is_no_healthy_upstream(
    daemon: Daemon, canary: str
) -> None:
    response = httpx.get(f"{daemon.gateway_url}/function/hello/nowhere", timeout=30)
    assert response.status_code == 503
    assert "no healthy upstream" in response.text
    assert "nowhere.default.svc.cluster.local" in response.text


def test_retries_hide_a_failure_that_a_second_attempt_does_not_have(
    daemon: Daemon, tmp_path: Path
) -> None:
    deploy(daemon, tmp_path, "flaky", FLAKY_CODE, "--label", "app=flaky")
    try:
        with httpx.Client(timeout=30) as client:
            url = f"{daemon.gateway_url}/function/flaky"
            plain = [client.get(url).status_code for _ in range(6)]
            assert sorted(set(plain)) == [200, 500], plain  # no rule: every other call fails
            apply(
                daemon,
                tmp_path,
                "retries",
                """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: flaky
spec:
  hosts: [flaky]
  http:
  - route:
    - destination: {host: flaky}
    retries: {attempts: 2, retryOn: 5xx}
""",
            )
            time.sleep(0.5)  # the mesh follows the store within a pass of the event loop
            retried = [client.get(url).status_code for _ in range(10)]
        assert retried == [200] * 10
    finally:
        daemon.run("delete", "virtualservice", "flaky", check=False)
        daemon.run("function", "delete", "flaky", check=False)


def test_a_route_timeout_answers_504_before_the_function_does(
    daemon: Daemon, tmp_path: Path
) -> None:
    deploy(daemon, tmp_path, "slow", SLOW_CODE)
    try:
        apply(
            daemon,
            tmp_path,
            "timeout",
            """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: slow
spec:
  hosts: [slow.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: slow}
    timeout: 0.3s
    retries: {attempts: 0}
""",
        )
        time.sleep(0.5)
        started = time.monotonic()
        response = httpx.get(f"{daemon.gateway_url}/function/slow", timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert elapsed < 1.5
    finally:
        daemon.run("delete", "virtualservice", "slow", check=False)
        daemon.run("function", "delete", "slow", check=False)


def ready_condition(daemon: Daemon, name: str) -> dict[str, str]:
    obj = json.loads(daemon.run("get", "virtualservice", name, "-o", "json").stdout)
    found = [c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"]
    return found[0] if found else {}


def test_a_missing_destination_is_reported_until_its_service_exists(
    daemon: Daemon, canary: str, tmp_path: Path
) -> None:
    deadline = time.monotonic() + 10
    while ready_condition(daemon, "hello").get("reason") != "DestinationNotFound":
        assert time.monotonic() < deadline, ready_condition(daemon, "hello")
        time.sleep(0.1)
    condition = ready_condition(daemon, "hello")
    assert condition["status"] == "False"
    assert "nowhere.default.svc.cluster.local" in condition["message"]
    apply(daemon, tmp_path, "nowhere", SERVICE_YAML.replace("name: hello", "name: nowhere"))
    try:
        deadline = time.monotonic() + 10
        while ready_condition(daemon, "hello").get("status") != "True":
            assert time.monotonic() < deadline, ready_condition(daemon, "hello")
            time.sleep(0.1)
    finally:
        daemon.run("delete", "service", "nowhere", check=False)


TRIGGER_ROUTES_YAML = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: hello-v1
spec:
  hosts: [hello-v1]
  http:
  - match:
    - uri: {prefix: /broken}
    fault:
      abort:
        httpStatus: 418
        percentage: {value: 100}
    route:
    - destination: {host: hello-v1}
  - route:
    - destination: {host: hello-v1}
      weight: 90
    - destination: {host: hello-v2}
      weight: 10
"""


def test_an_http_trigger_takes_its_functions_virtual_service(
    daemon: Daemon, canary: str, tmp_path: Path
) -> None:
    """The trigger names hello-v1; the VirtualService of hello-v1 splits its calls 90/10 with
    hello-v2 and aborts /broken, as it does for /function/hello-v1."""
    daemon.run(
        "trigger", "http", "create", "shop", "--function-name", "hello-v1",
        "--hostname", "shop.example.com",
    )  # fmt: skip
    headers = {"Host": "shop.example.com"}
    try:
        with httpx.Client(base_url=daemon.gateway_url, timeout=30, headers=headers) as client:
            deadline = time.monotonic() + 10
            while client.get("/cart").status_code != 200:  # the trigger reaches the gateway
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert versions(client, "/cart", 20) == {"v1": 20}  # no rule: the function itself
            apply(daemon, tmp_path, "trigger-routes", TRIGGER_ROUTES_YAML)
            deadline = time.monotonic() + 10
            while (broken := client.get("/broken")).status_code != 418:
                assert time.monotonic() < deadline, broken.text
                time.sleep(0.05)
            seen = versions(client, "/cart?q=1", 500)
        assert "fault filter abort" in broken.text
        # 10 % of 500 has a standard deviation of 1.3 %: 5-15 % is almost four of them
        assert 25 <= seen["v2"] <= 75, seen
    finally:
        daemon.run("delete", "virtualservice", "hello-v1", check=False)
        daemon.run("trigger", "http", "delete", "shop", check=False)


IDLE_FUNCTION_YAML = """\
apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: idle
  labels: {app: idle}
  annotations:
    autoscaling.funcmesh.io/scale-to-zero-after: 1s
spec:
  runtime: RUNTIME
  handler: idle.handler
  function-content-type: text
  function: |
    def handler(event, context):
        return 'idle at ' + event['extensions']['request'].path
---
apiVersion: v1
kind: Service
metadata:
  name: storefront
spec:
  selector: {app: idle}
  ports:
  - port: 80
    targetPort: 8080
"""


def function_ready(daemon: Daemon, name: str) -> bool:
    function = json.loads(daemon.run("get", "function", name, "-o", "json").stdout)
    conditions = function.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def idle_pods(daemon: Daemon) -> list[str]:
    rows = daemon.run("get", "pods").stdout.splitlines()[1:]
    return [row.split()[0] for row in rows if row.startswith("idle-")]


def test_a_service_in_front_of_a_function_at_zero_starts_it(daemon: Daemon, tmp_path: Path) -> None:
    """No mesh rule: the Service's VIP still reaches its function scaled to zero (kernel NAT
    would reach warm instances only, and refuse now)."""
    apply(daemon, tmp_path, "idle", IDLE_FUNCTION_YAML.replace("RUNTIME", RUNTIME))
    try:
        url = f"http://{cluster_ip(daemon, 'storefront')}:80/shelf"
        deadline = time.monotonic() + 60
        while not function_ready(daemon, "idle"):  # built, and its handler loaded once
            assert time.monotonic() < deadline, "the function did not become ready"
            time.sleep(0.1)
        while idle_pods(daemon):
            assert time.monotonic() < deadline, "the function did not scale to zero"
            time.sleep(0.1)
        response = httpx.get(url, timeout=30)
        assert (response.status_code, response.text) == (200, "idle at /shelf")
        assert len(idle_pods(daemon)) == 1  # the call started it
    finally:
        daemon.run("delete", "service", "storefront", check=False)
        daemon.run("function", "delete", "idle", check=False)
