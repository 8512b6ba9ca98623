"""Kubeless content types through ``funcmesh apply -f`` of hand-written YAML, against a real daemon.

Good code arrives as base64, a zip or a tar.gz of several modules, or a URL (a local web server
here), each with its sha256 checksum, and answers calls. Bad code is refused by the API before
anything is stored (HTTP 422): no Function appears, nothing is half-applied.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import Daemon, api_client

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
FUNCTIONS_PATH = "/apis/kubeless.io/v1beta1/namespaces/default/functions"
MAIN = b"from words import greeting\n\ndef handler(event, context):\n    return greeting()\n"
WORDS = b"def greeting():\n    return 'hello from two modules'\n"
SINGLE = b"def handler(event, context):\n    return 'hello from one file'\n"


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def manifest(
    name: str, *, content: str, content_type: str, checksum: str, handler: str = "main.handler"
) -> dict[str, Any]:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runtime": RUNTIME,
            "handler": handler,
            "function": content,
            "function-content-type": content_type,
            "checksum": checksum,
            "deps": "",
        },
    }


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args: Any) -> QuietHandler:
        return QuietHandler(*args, directory=str(root))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def apply(daemon: Daemon, tmp_path: Path, *objects: dict[str, Any], check: bool = True) -> Any:
    path = tmp_path / "functions.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return daemon.run("apply", "-f", str(path), check=check)


def settled_ready(daemon: Daemon, name: str, timeout_s: float = 20) -> dict[str, str]:
    """The function's Ready condition once the controller decided (True, or a failure)."""
    deadline = time.monotonic() + timeout_s
    while True:
        obj = json.loads(daemon.run("get", "function", name, "-o", "json").stdout)
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready: dict[str, str] = next((c for c in conditions if c["type"] == "Ready"), {})
        if ready.get("status") == "True" or ready.get("reason") not in (None, "Building"):
            return ready
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not settle: {obj.get('status')}")
        time.sleep(0.02)


def test_every_content_type_deploys_and_answers(
    daemon: Daemon, tmp_path: Path, web_root: tuple[Path, str]
) -> None:
    two_modules = {"main.py": MAIN, "words.py": WORDS}
    zipped, tarred = zip_of(two_modules), tar_gz_of(two_modules)
    root, base_url = web_root
    (root / "single.py").write_bytes(SINGLE)
    (root / "code.zip").write_bytes(zipped)
    functions = {
        "by-base64": (b64(SINGLE), "base64", sha256(SINGLE), "hello from one file"),
        "by-zip": (b64(zipped), "base64+zip", sha256(zipped), "hello from two modules"),
        "by-tar": (b64(tarred), "base64+compressedtar", sha256(tarred), "hello from two modules"),
        "by-url": (f"{base_url}/single.py", "url", sha256(SINGLE), "hello from one file"),
        "by-url-zip": (f"{base_url}/code.zip", "url+zip", sha256(zipped), "hello from two modules"),
    }
    objects = [
        manifest(name, content=content, content_type=content_type, checksum=checksum)
        for name, (content, content_type, checksum, _) in functions.items()
    ]

    applied = apply(daemon, tmp_path, *objects)

    assert applied.stdout.splitlines() == [
        f"function.kubeless.io/{name} created" for name in functions
    ]
    for name, (*_, expected) in functions.items():
        assert settled_ready(daemon, name)["status"] == "True"
        answer = httpx.get(f"{daemon.gateway_url}/function/{name}", timeout=30)
        assert (answer.status_code, answer.text) == (200, expected)


def test_url_content_with_a_wrong_checksum_fails_in_the_controller(
    daemon: Daemon, tmp_path: Path, web_root: tuple[Path, str]
) -> None:
    root, base_url = web_root
    (root / "single.py").write_bytes(b"def handler(event, context):\n    return 'tampered'\n")
    obj = manifest(
        "by-url-tampered", content=f"{base_url}/single.py", content_type="url",
        checksum=sha256(SINGLE), handler="single.handler",
    )  # fmt: skip

    apply(daemon, tmp_path, obj)  # a URL cannot be checked before it is fetched

    ready = settled_ready(daemon, "by-url-tampered")
    assert (ready["status"], ready["reason"]) == ("False", "Invalid")
    assert ready["message"].startswith(f"checksum mismatch: spec says {sha256(SINGLE)}")


BAD_CODE = [
    ("wrong-checksum", b64(SINGLE), "base64", sha256(b"something else"),
     "spec.checksum: checksum mismatch: spec says " + sha256(b"something else")),
    ("corrupt-zip", b64(zip_of({"main.py": MAIN})[:-30]), "base64+zip", "",
     "spec.function: corrupt zip archive"),
    ("not-base64", "this is *not* base64!", "base64", "",
     "spec.function: function content is not valid base64"),
    ("module-missing", b64(zip_of({"words.py": WORDS})), "base64+zip", "",
     'spec.handler: handler module "main" not found in the archive (it holds: words.py)'),
    ("tar-module-missing", b64(tar_gz_of({"src/main.py": MAIN})), "base64+compressedtar", "",
     "(it holds: src/); archive the contents of src/, not the folder itself"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "content_type", "checksum", "message"),
    BAD_CODE,
    ids=[case[0] for case in BAD_CODE],
)
def test_bad_code_is_refused_before_it_is_stored(
    daemon: Daemon,
    tmp_path: Path,
    name: str,
    content: str,
    content_type: str,
    checksum: str,
    message: str,
) -> None:
    obj = manifest(name, content=content, content_type=content_type, checksum=checksum)

    with api_client(daemon) as api:
        refused = api.post(FUNCTIONS_PATH, json=obj)
    applied = apply(daemon, tmp_path, obj, check=False)

    assert refused.status_code == 422
    status = refused.json()
    assert (status["kind"], status["reason"]) == ("Status", "Invalid")
    assert status["message"].startswith(f'Function "{name}" is invalid: ')
    assert message in status["message"]
    assert applied.returncode == 1
    assert applied.stdout == ""
    assert applied.stderr == f"error: {status['message']}\n"
    assert name not in daemon.run("get", "functions", "-o", "name").stdout


@pytest.mark.parametrize("name", ["Capital", "under_score", "-dash-first", "dot.ted", "x" * 64])
def test_names_that_are_not_dns_labels_are_refused(
    daemon: Daemon, tmp_path: Path, name: str
) -> None:
    obj = manifest(name, content=b64(SINGLE), content_type="base64", checksum=sha256(SINGLE))

    with api_client(daemon) as api:
        refused = api.post(FUNCTIONS_PATH, json=obj)
    applied = apply(daemon, tmp_path, obj, check=False)

    assert refused.status_code == 422
    assert refused.json()["details"]["causes"][0]["field"] == "metadata.name"
    assert applied.returncode == 1
    assert applied.stderr.startswith(f'error: Function "{name}" is invalid: metadata.name: ')
    assert daemon.run("get", "functions", "-o", "name").stdout.count(name[:20]) == 0
