"""``funcmesh.native``: the data plane runs compiled only from a build of its current sources,
and its modules keep clear of what mypyc compiles wrongly."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from funcmesh import native
from funcmesh.gateway.messages import Request
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.mesh.tracing import Span

PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from funcmesh import native
{before}
print("enabled", native.enable())
import funcmesh.gateway.relay, funcmesh.mesh.telemetry
print("relay_file", funcmesh.gateway.relay.__file__)
print("describe", native.describe())
"""


def probe(before: str = "", **env: str) -> str:
    """What a fresh interpreter prints when it enables the build (after running ``before``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNCMESH_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        capture_output=True,
        text=True,
        env=clean | env,
        check=True,
        timeout=60,
    )
    return result.stdout


def assert_source_in_use(out: str) -> None:
    """The probe fell back: ``enable()`` said no and the data plane came from its source."""
    assert "enabled False" in out
    assert out.split("relay_file ", 1)[1].splitlines()[0].endswith("funcmesh/gateway/relay.py")


built = pytest.mark.skipif(
    not native.MANIFEST.is_file(), reason="no build: python -m funcmesh.native build"
)


@built
def test_a_build_of_the_current_sources_is_used() -> None:
    out = probe()
    assert "enabled True" in out
    assert f"INFO data plane: compiled (mypyc), {len(native.COMPILED)} modules" in out
    relay = out.split("relay_file ", 1)[1].splitlines()[0]
    assert relay.startswith(str(native.BUILD))
    assert relay.endswith(".so")
    assert "describe compiled (mypyc)" in out


@built
def test_a_build_older_than_its_sources_is_not_used() -> None:
    stale = "native.fingerprint = lambda: {'sources': 'edited since'}"
    out = probe(stale)
    assert "WARNING data plane: pure Python (its build is older than its sources" in out
    assert_source_in_use(out)


def test_pure_python_when_asked() -> None:
    out = probe(FUNCMESH_PURE_PYTHON="1")
    assert "INFO data plane: pure Python ($FUNCMESH_PURE_PYTHON is set)" in out
    assert_source_in_use(out)


@built
def test_never_a_mix_of_compiled_and_source_modules() -> None:
    out = probe("import funcmesh.gateway.messages")
    assert "WARNING data plane: pure Python (funcmesh.gateway.messages, " in out
    assert "imported before funcmesh.native.enable()" in out
    assert_source_in_use(out)


def damaged_copy(tmp_path: Path, damage: str) -> str:
    """Probe code that points ``native`` at a copy of the build, damaged by ``damage``."""
    copy = tmp_path / "_native"
    return (
        f"import pathlib, shutil; shutil.copytree({str(native.BUILD)!r}, {str(copy)!r})\n"
        f"native.BUILD = pathlib.Path({str(copy)!r})\n"
        "native.MANIFEST = native.BUILD / 'manifest.json'\n"
        f"{damage}\n"
    )


@built
def test_a_build_missing_a_module_is_not_used(tmp_path: Path) -> None:
    lose = "next((native.BUILD / 'funcmesh/gateway').glob('relay.*')).unlink()"
    out = probe(damaged_copy(tmp_path, lose))
    assert "WARNING data plane: pure Python (the build lacks funcmesh.gateway.relay" in out
    assert_source_in_use(out)


@built
def test_a_build_that_does_not_load_is_not_used(tmp_path: Path) -> None:
    truncate = "next(native.BUILD.glob('*__mypyc.*')).write_bytes(b'not an ELF file')"
    out = probe(damaged_copy(tmp_path, truncate))
    assert "WARNING data plane: pure Python (the build does not load: " in out
    assert "describe pure Python (the build does not load: " in out
    assert_source_in_use(out)


@built
def test_building_again_without_a_change_leaves_the_build_alone() -> None:
    if json.loads(native.MANIFEST.read_text()) != native.fingerprint():
        pytest.skip("the build is older than its sources: scripts/setup rebuilds it")
    before = native.MANIFEST.stat().st_mtime_ns
    assert native.build() is False
    assert native.MANIFEST.stat().st_mtime_ns == before


def test_every_compiled_module_has_its_source() -> None:
    for module in native.COMPILED:
        assert native.source_of(module).is_file(), module


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [node for node in ast.walk(tree) if isinstance(node, kinds)]


def mypyc_hazards(source: str) -> list[str]:
    """Constructs mypyc 1.14 compiles into code that behaves differently from Python's."""
    found = []
    for function in _functions(ast.parse(source)):
        types: dict[str, set[str]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                types.setdefault(node.name, set()).add(ast.unparse(node.type))
            if isinstance(node, ast.AsyncWith):
                found.append(f"{function.name}: async with (exceptions skip the except clauses)")
            if isinstance(function, ast.AsyncFunctionDef) and isinstance(node, ast.Try):
                returns = any(
                    isinstance(inner, ast.Return)
                    for handler in node.handlers
                    for inner in ast.walk(handler)
                )
                if node.finalbody and returns:
                    found.append(f"{function.name}: return in an except clause with a finally")
        found += [
            f"{function.name}: except ... as {name} for {sorted(kinds)}"
            for name, kinds in types.items()
            if len(kinds) > 1
        ]
    return found


def test_the_compiled_modules_avoid_what_mypyc_compiles_wrongly() -> None:
    hazards = {
        module: found
        for module in native.COMPILED
        if (found := mypyc_hazards(native.source_of(module).read_text()))
    }
    assert hazards == {}


@pytest.mark.parametrize(
    ("source", "hazard"),
    [
        (
            "async def f():\n    async with g():\n        pass\n",
            "f: async with (exceptions skip the except clauses)",
        ),
        (
            "async def f():\n    try:\n        pass\n    except E:\n        return\n"
            "    finally:\n        pass\n",
            "f: return in an except clause with a finally",
        ),
        (
            "def f():\n    try:\n        pass\n    except A as e:\n        pass\n"
            "    except B as e:\n        pass\n",
            "f: except ... as e for ['A', 'B']",
        ),
    ],
)
def test_each_hazard_is_found(source: str, hazard: str) -> None:
    assert mypyc_hazards(source) == [hazard]


def test_safe_forms_are_not_hazards() -> None:
    source = Path(__file__).read_text()  # this file: sync code, one name per except type
    assert mypyc_hazards(source) == []
    nested = (
        "async def f():\n    try:\n        try:\n            pass\n        finally:\n"
        "            pass\n    except E:\n        return\n"
    )
    assert mypyc_hazards(nested) == []


def sample(kind: object, index: int) -> object:
    """A value of type ``kind`` that tells field number ``index`` from the others."""
    if isinstance(kind, types.UnionType):  # X | None: an X
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    origin = typing.get_origin(kind) or kind
    makers: dict[object, object] = {
        bytes: b"v%d" % index,
        str: f"v{index}",
        bool: index % 2 == 0,
        int: 1000 + index,
        float: index + 0.5,
        list: [(b"h%d" % index, b"v")],
        dict: {f"k{index}": index},
    }
    return makers.get(origin)


@pytest.mark.parametrize("cls", [RequestRecord, Request, FunctionRoute, Span])
def test_a_written_out_init_sets_every_field_from_its_own_argument(cls: type) -> None:
    """The objects made per call write their ``__init__`` out (mypyc leaves a dataclass's
    generated one interpreted): a field it forgets, or fills from another argument, shows."""
    hints = typing.get_type_hints(cls)
    values = {
        field.name: sample(hints[field.name], index)
        for index, field in enumerate(dataclasses.fields(cls))
    }
    made = cls(**values)
    assert {name: getattr(made, name) for name in values} == values
