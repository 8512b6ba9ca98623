"""How the zygote shim installs a worker's environment: the namespace's service variables,
prepared once in the zygote, then the worker's own variables, which win.

Each case runs in a fresh interpreter (installing replaces the process environment), and
checks both views a handler has: ``os.environ`` and the C ``environ`` that getenv and child
processes read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import funcmesh.runtime

SHIMS = Path(funcmesh.runtime.__file__).parent / "shims"

INSTALL = """
import ctypes, json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import _funcmesh_zygote as zygote
case = json.loads(sys.argv[2])
if case["slow"]:
    zygote._environ = None  # as without glibc's environ symbol
os.environ.clear()
shared = None
if case["links"] is not None:
    message = {"op": "links", "namespace": "team", "version": 1, "env": case["links"]}
    _, shared = zygote.SharedEnvironment.from_message(message, generation=1, raw=b"")
zygote.install_environment(case["own"], shared)
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
getenv = {key: (libc.getenv(key.encode()) or b"").decode() for key in case["probe"]}
child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
print(json.dumps({
    "python": dict(os.environ),
    "bytes": {k.decode(): v.decode() for k, v in os.environb.items()},
    "getenv": getenv,
    "child": dict(line.split("=", 1) for line in child.splitlines()),
}))
"""

REFUSE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import _funcmesh_zygote as zygote
try:
    zygote.SharedEnvironment.from_message(json.loads(sys.argv[2]), generation=1, raw=b"")
except ValueError as exc:
    print(exc)
"""


def install(
    own: dict[str, str], links: dict[str, str] | None, *, slow: bool = False
) -> dict[str, dict[str, str]]:
    case = {"own": own, "links": links, "slow": slow, "probe": sorted({*own, *(links or {})})}
    done = subprocess.run(
        [sys.executable, "-c", INSTALL, str(SHIMS), json.dumps(case)],
        capture_output=True,
        text=True,
        check=True,
        env={},
    )
    seen: dict[str, dict[str, str]] = json.loads(done.stdout)
    return seen


@pytest.mark.parametrize("slow", [False, True], ids=["one-step", "setenv-fallback"])
def test_own_variables_win_over_the_shared_ones_in_every_view(slow: bool) -> None:
    links = {f"SVC_{n}_SERVICE_HOST": f"127.96.0.{n}" for n in range(100)}
    links["MODE"] = "from-a-service"
    own = {"MODE": "mine", "POD_NAME": "hello-1"}
    seen = install(own, links, slow=slow)
    wanted = {**links, **own}
    assert seen["python"] == seen["bytes"] == seen["getenv"] == seen["child"] == wanted


def test_without_shared_variables_only_the_own_ones_are_set() -> None:
    seen = install({"POD_NAME": "hello-1"}, None)
    assert seen["python"] == seen["child"] == {"POD_NAME": "hello-1"}


def test_more_own_variables_than_the_ready_made_blocks_hold() -> None:
    own = {f"OWN_{n}": str(n) for n in range(200)}
    seen = install(own, {"WEB_SERVICE_HOST": "127.96.0.5", "OWN_7": "link"})
    assert (
        seen["python"]
        == seen["getenv"]
        == seen["child"]
        == {
            "WEB_SERVICE_HOST": "127.96.0.5",
            **own,
        }
    )


@pytest.mark.parametrize(
    "message",
    [
        {"op": "links", "namespace": "team", "version": "1", "env": {}},
        {"op": "links", "namespace": "team", "version": 1, "env": {"A": 1}},
        {"op": "links", "version": 1, "env": {}},
    ],
)
def test_malformed_links_are_refused(message: dict[str, object]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", REFUSE, str(SHIMS), json.dumps(message)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith(("a links message needs", "the service variables of"))
