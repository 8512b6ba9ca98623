"""Where Secret files go: on disk without private mounts, mount points with them, and the
payload a worker reads."""

from __future__ import annotations

import ast
import base64
import json
import os
import stat
from pathlib import Path

import pytest

from funcmesh.runtime import secret_files as secret_files_module
from funcmesh.runtime.secret_files import (
    SECRETS_SHIM,
    SecretFiles,
    SecretMountRefused,
    SecretVolume,
    payload_fd,
    secrets_payload,
)

KEY = ("default", "hello")
DB = SecretVolume(secret="db", mount_path="/db", files={"user": b"admin", "pw/current": b"s3"})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def on_disk(tmp_path: Path) -> SecretFiles:
    files = SecretFiles(root=tmp_path / "secrets", private_mounts=False)
    files.start()
    return files


@pytest.fixture
def mounting(tmp_path: Path) -> SecretFiles:
    files = SecretFiles(root=tmp_path / "work" / "secrets", private_mounts=True)
    files.start()
    return files


# --------------------------------------------------------------------------- files on disk


def test_without_private_mounts_the_files_are_written_privately(
    on_disk: SecretFiles, tmp_path: Path
) -> None:
    placement = on_disk.place(KEY, "abc123", [DB])
    directory = Path(placement.directory)
    assert directory == tmp_path / "secrets" / "default" / "hello" / "abc123"
    assert placement.volumes == ()  # nothing for the worker to mount
    assert (directory / "db" / "user").read_bytes() == b"admin"
    assert (directory / "db" / "pw" / "current").read_bytes() == b"s3"
    assert mode(directory / "db" / "user") == 0o400
    for private in (directory, directory / "db", directory / "db" / "pw", directory.parent):
        assert mode(private) == 0o700
    assert mode(tmp_path / "secrets") == 0o700


def test_a_revision_placed_twice_is_removed_after_the_second_release(
    on_disk: SecretFiles,
) -> None:
    first = Path(on_disk.place(KEY, "abc123", [DB]).directory)
    assert Path(on_disk.place(KEY, "abc123", [DB]).directory) == first
    newer = Path(on_disk.place(KEY, "def456", [DB]).directory)
    on_disk.release(KEY, "abc123")
    assert first.is_dir()
    on_disk.release(KEY, "abc123")
    assert not first.exists()
    assert newer.is_dir()


def test_releasing_a_function_removes_all_its_files(on_disk: SecretFiles, tmp_path: Path) -> None:
    on_disk.place(KEY, "abc123", [DB])
    on_disk.place(KEY, "def456", [DB])
    other = Path(on_disk.place(("default", "other"), "abc123", [DB]).directory)
    on_disk.release(KEY)
    assert not (tmp_path / "secrets" / "default" / "hello").exists()
    assert other.is_dir()
    on_disk.release(("default", "other"))
    assert list((tmp_path / "secrets").iterdir()) == []


def test_a_new_daemon_removes_what_the_last_one_left(tmp_path: Path) -> None:
    old = SecretFiles(root=tmp_path / "secrets", private_mounts=False)
    old.start()
    left = Path(old.place(KEY, "abc123", [DB]).directory)
    SecretFiles(root=tmp_path / "secrets", private_mounts=False).start()
    assert not left.exists()


def test_the_digest_follows_the_values_and_reveals_nothing(on_disk: SecretFiles) -> None:
    changed = SecretVolume(secret="db", mount_path="/db", files={"user": b"root"})
    same = on_disk.digest([DB], [("TOKEN", "t")])
    assert same == on_disk.digest([DB], [("TOKEN", "t")])
    assert same != on_disk.digest([changed], [("TOKEN", "t")])
    assert same != on_disk.digest([DB], [("TOKEN", "u")])
    other_daemon = SecretFiles(root=Path("/nonexistent"), private_mounts=False)
    assert same != other_daemon.digest([DB], [("TOKEN", "t")])  # keyed: no guessing


def test_volumes_never_show_their_values() -> None:
    assert "admin" not in repr(DB)
    assert "db" in repr(DB)


# --------------------------------------------------------------------------- mount points


def test_missing_mount_points_are_made_and_removed_when_unused(
    mounting: SecretFiles, tmp_path: Path
) -> None:
    target = tmp_path / "host" / "run" / "db"
    volume = SecretVolume(secret="db", mount_path=str(target), files={"user": b"admin"})
    placement = mounting.place(KEY, "abc123", [volume])
    assert placement.directory == str(tmp_path / "work" / "secrets" / "_mounted")
    assert placement.volumes == (volume,)  # the worker mounts them; nothing on disk
    assert target.is_dir()
    assert not any(Path(placement.directory).iterdir())
    assert mode(Path(placement.directory)) == 0o755
    recorded = json.loads((tmp_path / "work" / "secrets" / "_mountpoints").read_text())
    assert recorded == [str(tmp_path / "host"), str(tmp_path / "host" / "run"), str(target)]
    mounting.release(KEY, "abc123")
    assert not (tmp_path / "host").exists()


def test_an_empty_directory_is_used_and_left_in_place(
    mounting: SecretFiles, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    volume = SecretVolume(secret="db", mount_path=str(tmp_path / "empty"), files={})
    mounting.place(KEY, "abc123", [volume])
    mounting.release(KEY)
    assert (tmp_path / "empty").is_dir()


def test_mount_points_in_use_by_another_function_stay(
    mounting: SecretFiles, tmp_path: Path
) -> None:
    volume = SecretVolume(secret="db", mount_path=str(tmp_path / "db"), files={})
    mounting.place(KEY, "abc123", [volume])
    mounting.place(("default", "other"), "fff000", [volume])
    mounting.release(KEY)
    assert (tmp_path / "db").is_dir()
    mounting.close()  # the daemon stops: nothing uses it any more
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: (p.mkdir(), (p / "config").write_text("x")), "is a directory that is not empty"),
        (lambda p: p.write_text("x"), "exists and is not a directory"),
        (lambda p: p.symlink_to("/etc"), "is a symbolic link"),
    ],
)
def test_a_mount_path_in_use_is_refused_not_hidden(
    mounting: SecretFiles, tmp_path: Path, make: object, words: str
) -> None:
    target = tmp_path / "taken"
    make(target)  # type: ignore[operator]
    volume = SecretVolume(secret="db", mount_path=str(target), files={})
    with pytest.raises(SecretMountRefused, match=words):
        mounting.place(KEY, "abc123", [volume])


def test_funcmesh_does_not_mount_inside_its_own_directory(
    mounting: SecretFiles, tmp_path: Path
) -> None:
    inside = tmp_path / "work" / "secrets" / "_mounted" / "x"
    with pytest.raises(SecretMountRefused, match="inside funcmesh's own directory"):
        mounting.place(KEY, "abc123", [SecretVolume(secret="s", mount_path=str(inside), files={})])


def test_a_mount_point_someone_filled_is_left_to_them(
    mounting: SecretFiles, tmp_path: Path
) -> None:
    volume = SecretVolume(secret="db", mount_path=str(tmp_path / "db"), files={})
    mounting.place(KEY, "abc123", [volume])
    (tmp_path / "db" / "theirs").write_text("x")
    mounting.release(KEY)
    assert (tmp_path / "db" / "theirs").exists()


def test_mount_points_of_a_killed_daemon_are_removed_by_the_next(tmp_path: Path) -> None:
    root = tmp_path / "work" / "secrets"
    old = SecretFiles(root=root, private_mounts=True)
    old.start()
    volume = SecretVolume(secret="db", mount_path=str(tmp_path / "db"), files={})
    old.place(KEY, "abc123", [volume])  # and then the daemon is killed
    SecretFiles(root=root, private_mounts=True).start()
    assert not (tmp_path / "db").exists()


def test_a_path_with_a_mount_on_it_is_seen() -> None:
    assert secret_files_module._mounted("/proc")
    assert not secret_files_module._mounted("/proc/self/fd")


# --------------------------------------------------------------------------- payload


def test_nothing_to_hand_over_means_no_payload() -> None:
    assert secrets_payload(env=(), directory=None, volumes=(), uid=None, gid=None) is None
    # files on disk already: only the env values travel
    payload = secrets_payload(env=[("T", "v")], directory="/d", volumes=(), uid=1, gid=1)
    assert payload is not None
    assert json.loads(payload) == {"env": {"T": "v"}, "mounts": None}


def test_the_payload_carries_the_volumes_to_mount() -> None:
    payload = secrets_payload(env=(), directory="/d", volumes=[DB], uid=65534, gid=65533)
    assert payload is not None
    mounts = json.loads(payload)["mounts"]
    assert (mounts["dir"], mounts["uid"], mounts["gid"]) == ("/d", 65534, 65533)
    [volume] = mounts["volumes"]
    assert (volume["secret"], volume["mount_path"]) == ("db", "/db")
    assert {k: base64.b64decode(v) for k, v in volume["files"].items()} == dict(DB.files)


def test_the_memfd_is_sealed_and_read_from_the_start() -> None:
    fd = payload_fd(b'{"env": {}}')
    try:
        assert os.read(fd, 100) == b'{"env": {}}'
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
        assert not os.get_inheritable(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
        assert target.startswith("/memfd:funcmesh-secrets")  # memory, not a file on disk
    finally:
        os.close(fd)


def test_the_mounting_shim_parses_as_python_3_8() -> None:
    source = SECRETS_SHIM.read_text()
    ast.parse(source, feature_version=(3, 8))
    assert "from __future__ import annotations" in source  # annotations are never evaluated
