"""Which mounts let workers that dropped to nobody read their interpreter
(``shims/_funcmesh_interpreter_mounts.py``): which directories block, what is covered, what
exposed. The rules take a fake "may this user pass" check, or the real one with a fake uid on
real directories; mounting itself is in tests/integration/test_interpreter_mounts.py."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import funcmesh.runtime

SHIM = Path(funcmesh.runtime.__file__).parent / "shims" / "_funcmesh_interpreter_mounts.py"
PYENV = "/root/.pyenv/versions/3.11.7"
STRANGER = 54321  # neither the owner nor the group of the test's directories


def load_shim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_funcmesh_interpreter_mounts", SHIM)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mounts = load_shim()
COVER, EXPOSE = mounts.COVER, mounts.EXPOSE


@pytest.mark.parametrize(
    ("paths", "blocked", "steps"),
    [
        pytest.param(["/usr/lib/python3.11", "/usr"], set(), [], id="nothing-blocks"),
        pytest.param(
            [PYENV, f"{PYENV}/lib/python3.11", f"{PYENV}/lib/python3.11/lib-dynload"],
            {"/root"},
            [(COVER, "/root"), (EXPOSE, PYENV)],
            id="pyenv-in-root",
        ),
        pytest.param(
            [PYENV, "/root/.pyenv", "/root/src/tool"],
            {"/root", "/root/.pyenv"},
            [(COVER, "/root"), (EXPOSE, "/root/src/tool"), (EXPOSE, PYENV)],
            id="a-blocked-needed-dir-is-skipped-what-it-holds-is-exposed",
        ),
        pytest.param(
            [PYENV, "/root/venv"],
            {"/root", "/root/.pyenv"},
            [(COVER, "/root"), (EXPOSE, "/root/venv"), (EXPOSE, PYENV)],
            id="topmost-blocker-only-one-cover",
        ),
        pytest.param(
            ["/root/venv", "/root/venv/lib/private/site"],
            {"/root", "/root/venv/lib/private"},
            [
                (COVER, "/root"),
                (EXPOSE, "/root/venv"),
                (COVER, "/root/venv/lib/private"),
                (EXPOSE, "/root/venv/lib/private/site"),
            ],
            id="blocker-inside-an-exposed-path",
        ),
        pytest.param(
            ["/root/venv", "/root/venv/lib/site"],
            {"/root"},
            [(COVER, "/root"), (EXPOSE, "/root/venv")],
            id="inside-an-exposed-path",
        ),
        pytest.param(
            ["/home/ann/py", "/root/py", "/opt/shared/py"],
            {"/home/ann", "/root"},
            [
                (COVER, "/root"),
                (EXPOSE, "/root/py"),
                (COVER, "/home/ann"),
                (EXPOSE, "/home/ann/py"),
            ],
            id="two-homes",
        ),
        pytest.param(["/srv/py"], {"/"}, [], id="root-is-never-covered"),
        pytest.param([f"{PYENV}/lib/python311.zip"], {"/root"}, None, id="a-file"),
    ],
)
def test_plan_covers_the_topmost_blocking_directory_and_exposes_the_needed_paths(
    paths: list[str], blocked: set[str], steps: list[tuple[str, str]] | None
) -> None:
    planned = mounts.plan(paths, lambda directory: directory not in blocked)

    expected = steps if steps is not None else [(COVER, "/root"), (EXPOSE, paths[0])]
    assert planned == expected


@pytest.fixture
def tree() -> Iterator[Path]:
    """A directory in /tmp everybody may pass (pytest's own are private to their user)."""
    base = Path(tempfile.mkdtemp(prefix="funcmesh-mounts-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "may"),
    [
        (0o700, "owner", STRANGER, True),
        (0o700, STRANGER, STRANGER, False),
        (0o710, STRANGER, "group", True),
        (0o750, STRANGER, STRANGER, False),
        (0o701, STRANGER, STRANGER, True),
        (0o601, "owner", STRANGER, False),  # the owner's bits, not the others', count for it
        (0o704, STRANGER, STRANGER, False),  # reading is not passing
    ],
)
def test_may_enter_as_reads_the_bits_of_owner_group_or_others(
    tree: Path, mode: int, uid: int | str, gid: int | str, may: bool
) -> None:
    directory = tree / "dir"
    directory.mkdir()
    directory.chmod(mode)
    info = directory.stat()
    check = mounts.may_enter_as(
        info.st_uid if uid == "owner" else uid, info.st_gid if gid == "group" else gid
    )

    assert check(str(directory)) is may
    assert check(str(tree / "missing")) is False


def test_plan_on_real_directories_with_a_stranger_uid(tree: Path) -> None:
    home = tree / "home"
    interpreter = home / ".pyenv" / "versions" / "3.11.7"
    (interpreter / "lib").mkdir(parents=True)
    shared = tree / "shared" / "python"
    shared.mkdir(parents=True)
    home.chmod(0o700)
    for directory in (home / ".pyenv", home / ".pyenv" / "versions", interpreter):
        directory.chmod(0o755)

    steps = mounts.plan(
        [str(interpreter), str(interpreter / "lib"), str(shared)],
        mounts.may_enter_as(STRANGER, STRANGER),
    )

    assert steps == [(COVER, str(home)), (EXPOSE, str(interpreter))]


def test_needed_paths_are_the_prefixes_and_sys_path_entries_that_exist(tree: Path) -> None:
    link = tree / "link"
    link.symlink_to(tree)

    paths = mounts.needed_paths([str(link), str(tree / "missing"), "relative/dir", ""])

    assert os.path.realpath(sys.base_prefix) in paths
    assert os.path.realpath(sys.prefix) in paths
    assert all(os.path.realpath(p) in paths for p in sys.path if p and os.path.exists(p))
    assert str(tree.resolve()) in paths  # the real path, not the link
    assert str(link) not in paths
    assert str(tree / "missing") not in paths
    assert not [p for p in paths if not os.path.isabs(p)]


def test_not_root_needs_nothing_and_warns_of_nothing() -> None:
    if os.geteuid() == 0:
        pytest.skip("as root, make_reachable mounts (tests/integration covers that)")

    assert mounts.make_reachable([]) is None
