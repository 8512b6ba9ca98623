"""The data plane compiled with mypyc: the same Python modules, as C extensions, when built.

Every call through the gateway, a Service VIP or the mesh runs the modules in ``COMPILED``.
Interpreted, nine tenths of a call's instructions are CPython's (the bytecode loop, frames,
attribute lookups), not the sockets' or the HTTP parser's. mypyc compiles these modules, which
are already fully typed (``mypy --strict``), into C that calls between them directly and reads
attributes at fixed offsets: half the instructions per call (docs/benchmarks.md). Some
Python stays Python when compiled, and the modules avoid it on the per-call path: a dataclass's
generated ``__init__`` (hence the ``__init__``s written out), ``operator.attrgetter`` on a
compiled class, and module constants that are not ``Final``.

The compiled modules live in ``funcmesh/_native/`` (made by ``python -m funcmesh.native build``,
which ``scripts/setup`` runs, and never committed). They are used only when:

- ``enable()`` is called before any of them is imported (the daemon does it first thing);
- ``$FUNCMESH_PURE_PYTHON`` is not set;
- the build is of exactly these sources, with this Python: ``manifest.json`` holds each
  source's SHA-256, so an edit after the build falls back to the source (with a warning), never
  to stale code.

Without a build, funcmesh runs the same modules as Python: slower, not different.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
BUILD = PACKAGE / "_native"
MANIFEST = BUILD / "manifest.json"
DISABLE_ENV = "FUNCMESH_PURE_PYTHON"

# The modules every call runs through, compiled together (calls between them are C calls).
COMPILED = (
    "funcmesh.gateway.destinations",
    "funcmesh.gateway.direct_calls",
    "funcmesh.gateway.downstream",
    "funcmesh.gateway.mesh_access",
    "funcmesh.gateway.mesh_attempts",
    "funcmesh.gateway.mesh_calls",
    "funcmesh.gateway.mesh_plane",
    "funcmesh.gateway.mesh_records",
    "funcmesh.gateway.messages",
    "funcmesh.gateway.proxy",
    "funcmesh.gateway.relay",
    "funcmesh.gateway.routing",
    "funcmesh.gateway.server",
    "funcmesh.gateway.upstream",
    "funcmesh.gateway.upstream_pool",
    "funcmesh.mesh.access_lines",
    "funcmesh.mesh.balancers",
    "funcmesh.mesh.budget",
    "funcmesh.mesh.endpoint_sets",
    "funcmesh.mesh.routes",
    "funcmesh.mesh.table",
    "funcmesh.mesh.telemetry",
    "funcmesh.mesh.trace_context",
    "funcmesh.mesh.tracing",
)

_state: dict[str, bool] = {}
_why: dict[str, str] = {}  # why enable() left the source in use


def source_of(module: str) -> Path:
    return PACKAGE.parent / (module.replace(".", "/") + ".py")


def fingerprint() -> dict[str, object]:
    """What a build is valid for: this Python, and each compiled source's SHA-256."""
    return {
        "python": sys.implementation.cache_tag,
        "abi": importlib.machinery.EXTENSION_SUFFIXES[0],
        "sources": {
            module: hashlib.sha256(source_of(module).read_bytes()).hexdigest()
            for module in COMPILED
        },
    }


def active() -> bool:
    """Whether the compiled modules are the ones in use (after ``enable()``)."""
    return _state.get("active", False)


def describe() -> str:
    """For the record: ``compiled (mypyc)`` or why the data plane runs as pure Python."""
    if active():
        return "compiled (mypyc)"
    why = _why.get("why") or _unusable() or "funcmesh.native.enable() was not called"
    return f"pure Python ({why})"


def enable() -> bool:
    """Use the compiled modules if a build of the current sources exists; True if in use.

    Safe to call more than once. Must run before any module in ``COMPILED`` is imported: a
    compiled module calls the others' compiled code directly, so a mix of the two would hold
    two copies of their classes."""
    if "active" in _state:
        return _state["active"]
    _state["active"] = False
    reason = _unusable()
    if reason:
        return _use_source(reason)
    shared = _shared_library()
    assert shared is not None  # _unusable() checked
    name = shared.name.split(".", 1)[0]
    spec = importlib.util.spec_from_file_location(name, shared)
    assert spec is not None  # an extension module always has a spec and a loader
    assert spec.loader is not None
    try:
        library = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(library)
    except ImportError as error:  # a damaged build: run the source, say why
        return _use_source(f"the build does not load: {error}")
    sys.modules[name] = library
    for package in {module.rpartition(".")[0] for module in COMPILED}:
        parent = importlib.import_module(package)  # its __init__ imports no compiled module
        compiled_dir = str(BUILD / package.replace(".", "/"))
        if compiled_dir not in parent.__path__:
            parent.__path__.insert(0, compiled_dir)
    _state["active"] = True
    logger.info("data plane: compiled (mypyc), %d modules", len(COMPILED))
    return True


def _use_source(reason: str) -> bool:
    """Leave the source in use, and say why (a warning unless nothing was built or wanted)."""
    _why["why"] = reason
    level = logging.INFO if reason in (_OFF, _ABSENT) else logging.WARNING
    logger.log(level, "data plane: pure Python (%s)", reason)
    return False


def _extension_of(module: str) -> Path:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return BUILD / (module.replace(".", "/") + suffix)


def _shared_library() -> Path | None:
    """The build's one library of C code (each module's own extension only points into it)."""
    return next(BUILD.glob("*__mypyc.*"), None)


_OFF = f"${DISABLE_ENV} is set"
_ABSENT = "not built: python -m funcmesh.native build"


def _unusable() -> str:
    """Why the build cannot be used, or "" if it can."""
    if os.environ.get(DISABLE_ENV):
        return _OFF
    if not MANIFEST.is_file() or _shared_library() is None:
        return _ABSENT
    missing = [module for module in COMPILED if not _extension_of(module).is_file()]
    if missing:  # one module as source among compiled ones would be a mix
        return f"the build lacks {', '.join(missing)} (scripts/setup rebuilds it)"
    loaded = [module for module in COMPILED if module in sys.modules]
    if loaded:
        return f"{', '.join(loaded)} imported before funcmesh.native.enable()"
    if _built() != fingerprint():
        return "its build is older than its sources (scripts/setup rebuilds it)"
    return ""


def _built() -> object:
    """The fingerprint the build recorded (None if unreadable: a build cut short)."""
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None


def build() -> bool:
    """Compile ``COMPILED`` into ``funcmesh/_native`` (needs mypy, setuptools and a C compiler);
    False if the build there is already of the current sources."""
    import shutil
    import tempfile

    from mypyc.build import mypycify
    from setuptools import Distribution

    fingerprint_now = fingerprint()
    if _built() == fingerprint_now:
        return False
    shutil.rmtree(BUILD, ignore_errors=True)
    root = PACKAGE.parent
    with tempfile.TemporaryDirectory(prefix="funcmesh-native-") as temp:
        cwd = os.getcwd()
        os.chdir(root)  # mypyc names modules by their path from here
        try:
            sources = [str(source_of(module).relative_to(root)) for module in COMPILED]
            extensions = mypycify(sources, opt_level="3", target_dir=str(Path(temp) / "c"))
            distribution = Distribution({"name": "funcmesh-native", "ext_modules": extensions})
            command = distribution.get_command_obj("build_ext")
            command.build_lib = str(BUILD)
            command.build_temp = str(Path(temp) / "objects")
            command.parallel = os.cpu_count() or 1
            command.ensure_finalized()
            command.run()
        finally:
            os.chdir(cwd)
    MANIFEST.write_text(json.dumps(fingerprint_now, indent=1, sort_keys=True) + "\n")
    return True


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        raise SystemExit("usage: python -m funcmesh.native build")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    done = build()
    print(f"{'compiled' if done else 'up to date:'} {len(COMPILED)} modules in {BUILD}")
