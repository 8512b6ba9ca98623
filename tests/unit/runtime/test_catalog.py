from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from funcmesh.errors import Invalid
from funcmesh.runtime.catalog import Runtime, RuntimeCatalog

OWN_ID = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def python(minor: int) -> Runtime:
    return Runtime.python(version=(3, minor), executable=Path(f"/opt/py3{minor}/bin/python3"))


NODE20 = Runtime.nodejs(major=20, executable=Path("/usr/bin/node"))
CATALOG = RuntimeCatalog.from_runtimes([NODE20, python(12), python(9), python(11)])


@pytest.mark.parametrize(
    ("asked", "given", "warned"),
    [
        ("python3.11", "python3.11", False),
        ("nodejs20", "nodejs20", False),
        ("python3.6", "python3.9", True),
        ("python3.7", "python3.9", True),
        ("python3.10", "python3.11", True),  # the closest newer wins over the closest older
        ("python3.13", "python3.12", True),  # nothing newer: the closest older
        ("python3", "python3.12", True),
        ("python3.11.4", "python3.11", True),
        ("nodejs8", "nodejs20", True),
        ("nodejs22", "nodejs20", True),
    ],
)
def test_resolve_finds_the_nearest_runtime(asked: str, given: str, warned: bool) -> None:
    resolution = CATALOG.resolve(asked)

    assert resolution.runtime.id == given
    expected = f"runtime {asked} is not available here; using {given}" if warned else None
    assert resolution.warning == expected


@pytest.mark.parametrize(
    ("catalog", "asked", "message"),
    [
        (
            CATALOG,
            "python2.7",
            "python2.7 is not supported: Python 2 reached end of life; use python3.x",
        ),
        (CATALOG, "python2", "python2 is not supported: Python 2 reached end of life"),
        (
            CATALOG,
            "ruby2.6",
            "Invalid runtime: ruby2.6. Supported runtimes are:"
            " python3.9, python3.11, python3.12, nodejs20",
        ),
        (CATALOG, "cobol", "Invalid runtime: cobol. Supported runtimes are: python3.9"),
        (CATALOG, "python4.0", "Invalid runtime: python4.0."),
        (CATALOG, "python3.x", "Invalid runtime: python3.x."),
        (CATALOG, "python3..1", "Invalid runtime: python3..1."),
        (CATALOG, "", "Invalid runtime: ."),
        (
            RuntimeCatalog.from_runtimes([python(11)]),
            "nodejs14",
            "Invalid runtime: nodejs14. Supported runtimes are: python3.11",
        ),
        (
            RuntimeCatalog.from_runtimes([]),
            "python3.11",
            "Supported runtimes are: none (no Python 3.8+ or Node.js found on this machine)",
        ),
    ],
)
def test_resolve_refuses_what_cannot_run(catalog: RuntimeCatalog, asked: str, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        catalog.resolve(asked)

    assert message in str(caught.value)
    assert [cause.field for cause in caught.value.causes] == ["spec.runtime"]


def test_runtimes_are_sorted_python_first_and_the_first_of_an_id_wins() -> None:
    other_311 = Runtime.python(version=(3, 11), executable=Path("/elsewhere/python3.11"))
    catalog = RuntimeCatalog.from_runtimes([NODE20, python(11), other_311, python(8)])

    assert catalog.ids == ("python3.8", "python3.11", "nodejs20")
    assert catalog.resolve("python3.11").runtime.executable == Path("/opt/py311/bin/python3")


def test_runtime_describes_its_files() -> None:
    assert (python(11).deps_file, python(11).suffix, python(11).language) == (
        "requirements.txt",
        ".py",
        "python",
    )
    assert (NODE20.deps_file, NODE20.suffix, NODE20.version) == ("package.json", ".js", (20,))


def write_program(path: Path, output: str, *, exit_code: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{output}'\nexit {exit_code}\n")
    path.chmod(0o755)
    return path


def test_discover_resolves_shims_and_probes_each_interpreter(tmp_path: Path) -> None:
    minors = [minor for minor in (9, 10, 12, 13) if f"python3.{minor}" != OWN_ID][:3]
    first, second, third = minors
    pyenv = tmp_path / "pyenv"
    # A pyenv shim: the newest matching version under versions/ is used instead.
    write_program(pyenv / "shims" / f"python3.{first}", "(9, 9)", exit_code=1)
    write_program(pyenv / "versions" / f"3.{first}.0/bin/python3.{first}", f"(3, {first})")
    newest = write_program(pyenv / f"versions/3.{first}.10/bin/python3.{first}", f"(3, {first})")
    # A shim that resolves to nothing: the next directory on PATH has the real one.
    write_program(pyenv / "shims" / f"python3.{second}", "(9, 9)", exit_code=1)
    real_second = write_program(tmp_path / "usr/bin" / f"python3.{second}", f"(3, {second})")
    # An interpreter whose probe fails is left out.
    write_program(tmp_path / "usr/bin" / f"python3.{third}", "boom", exit_code=1)
    node = write_program(tmp_path / "usr/bin" / "node", "v18.19.0")
    path_env = os.pathsep.join([str(pyenv / "shims"), str(tmp_path / "usr/bin")])

    catalog = RuntimeCatalog.discover(path_env=path_env)

    expected_ids = {OWN_ID, f"python3.{first}", f"python3.{second}", "nodejs18"}
    assert set(catalog.ids) == expected_ids
    assert catalog.resolve(f"python3.{first}").runtime.executable == newest
    assert catalog.resolve(f"python3.{second}").runtime.executable == real_second
    assert catalog.resolve("nodejs18").runtime.executable == node


def test_discover_uses_the_daemons_own_real_interpreter(tmp_path: Path) -> None:
    catalog = RuntimeCatalog.discover(path_env=str(tmp_path))

    own = catalog.resolve(OWN_ID).runtime
    assert catalog.ids == (OWN_ID,)
    base = getattr(sys, "_base_executable", sys.executable)
    assert own.executable == Path(os.path.realpath(base))
    assert own.executable.parent.name != "shims"


def test_discover_on_this_machine_finds_runnable_binaries_not_shims() -> None:
    catalog = RuntimeCatalog.discover(path_env=os.environ.get("PATH", ""))

    assert OWN_ID in catalog.ids
    for runtime in catalog.runtimes:
        assert runtime.executable.parent.name != "shims", runtime
        assert os.access(runtime.executable, os.X_OK), runtime
        if runtime.language == "python":
            assert runtime.version >= (3, 8)
