"""Dependencies as a user gives them (``--dependencies requirements.txt``), installed offline.

The requirement is a wheel the test writes (PEP 427: a zip with the package and its dist-info),
named by its absolute path, so pip needs no index. A build is shared by every function with
the same requirements; a failed build says why and leaves the previous version serving.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon, work_dir_for

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
USES_DEP = "import tinydep\n\ndef handler(event, context):\n    return tinydep.GREETING\n"
MISSING_WHEEL = "/nonexistent/pkg.whl"


def build_wheel(directory: Path, *, name: str, version: str, module_text: str) -> Path:
    """A pure-Python wheel holding package ``name``; what ``pip wheel`` would make of it."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module_text,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: funcmesh-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            data = text.encode()
            wheel.writestr(member, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{member},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def requirements(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A requirements.txt naming one local wheel."""
    directory = tmp_path_factory.mktemp("wheels")
    wheel = build_wheel(
        directory, name="tinydep", version="1.0", module_text='GREETING = "hello from tinydep"\n'
    )
    path = directory / "requirements.txt"
    path.write_text(f"{wheel}\n")
    return path


def deploy(
    daemon: Daemon, tmp_path: Path, name: str, *, code: str, deps: Path, update: bool = False
) -> tuple[int, str]:
    source = tmp_path / f"{name}.py"
    source.write_text(code)
    verb = "update" if update else "deploy"
    flags = () if update else ("--runtime", RUNTIME, "--handler", f"{name}.handler")
    result = daemon.run(
        "function", verb, name, *flags, "--from-file", str(source), "--dependencies", str(deps),
        check=False,
    )  # fmt: skip
    return result.returncode, result.stderr


def call(daemon: Daemon, name: str) -> httpx.Response:
    return httpx.get(f"{daemon.gateway_url}/function/{name}", timeout=30)


def ready_condition(daemon: Daemon, name: str) -> dict[str, str]:
    obj = json.loads(daemon.run("get", "function", name, "-o", "json").stdout)
    [ready] = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    return dict(ready)


def status_column(daemon: Daemon, name: str) -> str:
    header, row, *_ = daemon.run("function", "ls", name).stdout.splitlines()
    return row[header.index("STATUS") :]


def built_environments(daemon: Daemon) -> dict[str, tuple[int, int]]:
    """Each finished dependency environment: (inode of its folder, mtime of its build log)."""
    deps = work_dir_for(daemon.home) / "deps"
    return {
        path.name: (path.stat().st_ino, (deps / f"{path.name}.log").stat().st_mtime_ns)
        for path in deps.iterdir()
        if path.is_dir() and not path.name.startswith(".")
    }


def test_requirements_are_installed_once_and_shared(
    daemon: Daemon, tmp_path: Path, requirements: Path
) -> None:
    assert deploy(daemon, tmp_path, "greeter", code=USES_DEP, deps=requirements) == (0, "")
    assert call(daemon, "greeter").text == "hello from tinydep"
    build_log = daemon.run("function", "logs", "greeter", "--build").stdout
    assert "Successfully installed tinydep-1.0" in build_log
    [built] = built_environments(daemon).items()

    assert deploy(daemon, tmp_path, "greeter-too", code=USES_DEP, deps=requirements) == (0, "")

    assert call(daemon, "greeter-too").text == "hello from tinydep"
    assert built_environments(daemon) == dict([built]), "the second function built again"
    assert (
        "Successfully installed"
        not in daemon.run("function", "logs", "greeter-too", "--build").stdout
    )


def test_a_failed_build_says_why_and_the_previous_version_keeps_serving(
    daemon: Daemon, tmp_path: Path, requirements: Path
) -> None:
    assert deploy(daemon, tmp_path, "steadfast", code=USES_DEP, deps=requirements) == (0, "")
    broken = tmp_path / "broken-requirements.txt"
    broken.write_text(f"{MISSING_WHEEL}\n")
    new_code = "def handler(event, context):\n    return 'version two'\n"

    code, stderr = deploy(daemon, tmp_path, "steadfast", code=new_code, deps=broken, update=True)

    assert code == 1
    first, *tail = stderr.splitlines()
    assert first == (
        f"error: function steadfast failed: BuildFailed: pip install for {RUNTIME} failed "
        "(exit code 1); the last lines of its output:"
    )
    assert any(MISSING_WHEEL in line for line in tail), stderr
    ready = ready_condition(daemon, "steadfast")
    assert (ready["status"], ready["reason"]) == ("False", "BuildFailed")
    pip_lines = ready["message"].splitlines()[1:]
    assert pip_lines, ready["message"]
    assert len(pip_lines) == len(set(pip_lines)), "pip's output is repeated in the status"
    assert status_column(daemon, "steadfast").startswith("BuildFailed: pip install")
    build_log = daemon.run("function", "logs", "steadfast", "--build").stdout
    assert MISSING_WHEEL in build_log

    answer = call(daemon, "steadfast")
    assert answer.status_code == 200
    assert answer.text == "hello from tinydep"


def test_a_function_whose_first_build_fails_answers_503(daemon: Daemon, tmp_path: Path) -> None:
    broken = tmp_path / "requirements.txt"
    broken.write_text(f"{MISSING_WHEEL}\n")

    code, stderr = deploy(daemon, tmp_path, "never-built", code=USES_DEP, deps=broken)

    assert code == 1
    assert stderr.startswith("error: function never-built failed: BuildFailed: ")
    assert status_column(daemon, "never-built").startswith("BuildFailed: pip install")
    answer = call(daemon, "never-built")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error.startswith("function default/never-built is not ready: BuildFailed: pip install")
