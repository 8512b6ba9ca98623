"""``_funcmesh_worker.patch_when_imported``, the worker shim's way of adapting a library without
importing it, with a small package written for each test and imported for real."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.unit.runtime.test_worker_shim import worker

LIBRARY = "fmhooklib"


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Path]:
    """A package ``fmhooklib`` with a module ``conn`` (class Connection), importable; the
    import hook and the package gone afterwards."""
    package = tmp_path / LIBRARY
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "conn.py").write_text(
        "class Connection:\n    def connect(self):\n        return 'plain'\n"
    )
    sys.path.insert(0, str(tmp_path))
    meta_path = list(sys.meta_path)
    yield package
    sys.meta_path[:] = meta_path
    sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name.partition(".")[0] == LIBRARY]:
        del sys.modules[name]


def secure(module: Any) -> None:
    module.Connection.connect = lambda self: "secure"


def test_a_module_is_patched_when_the_code_imports_it(library: Path) -> None:
    worker.patch_when_imported(f"{LIBRARY}.conn", secure)
    assert f"{LIBRARY}.conn" not in sys.modules  # registering imports nothing

    conn = importlib.import_module(f"{LIBRARY}.conn")

    assert conn.Connection().connect() == "secure"
    # the module names its own loader again: inspect, importlib.resources see no difference
    assert type(conn.__loader__) is importlib.machinery.SourceFileLoader
    assert conn.__spec__ is not None
    assert conn.__spec__.loader is conn.__loader__


def test_a_module_imported_already_is_patched_at_once(library: Path) -> None:
    conn = importlib.import_module(f"{LIBRARY}.conn")
    assert conn.Connection().connect() == "plain"

    worker.patch_when_imported(f"{LIBRARY}.conn", secure)

    assert conn.Connection().connect() == "secure"


def test_a_reloaded_module_is_patched_again(library: Path) -> None:
    worker.patch_when_imported(f"{LIBRARY}.conn", secure)
    conn = importlib.import_module(f"{LIBRARY}.conn")

    reloaded = importlib.reload(conn)

    assert reloaded.Connection().connect() == "secure"


def test_a_patch_that_fails_leaves_the_import_working_and_says_so(
    library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(module: ModuleType) -> None:
        raise AttributeError("no Connector here")

    worker.patch_when_imported(f"{LIBRARY}.conn", broken)
    worker.patch_when_imported(f"{LIBRARY}.conn", secure)

    conn = importlib.import_module(f"{LIBRARY}.conn")

    assert conn.Connection().connect() == "secure"  # the next patch still applies
    said = capsys.readouterr().err
    assert said == f"funcmesh: cannot adapt {LIBRARY}.conn (AttributeError: no Connector here)\n"


def test_one_hook_serves_every_registration_and_other_imports_pass_by(library: Path) -> None:
    worker.patch_when_imported(f"{LIBRARY}.conn", secure)
    worker.patch_when_imported(f"{LIBRARY}.other", secure)

    hooks = [finder for finder in sys.meta_path if getattr(finder, "funcmesh_hook", False)]
    package = importlib.import_module(LIBRARY)  # no patch for it: found by the others

    assert len(hooks) == 1
    assert type(package.__loader__) is importlib.machinery.SourceFileLoader
    assert importlib.import_module(f"{LIBRARY}.conn").Connection().connect() == "secure"
