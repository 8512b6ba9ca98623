"""Archives unpacked safely: the ``+zip`` and ``+compressedtar`` part of preparing code.

:func:`unpack_archive` writes a zip or a (plain, gzip, bzip2 or xz) tar into a directory;
:func:`list_archive` reads only its member list, for checks that must not touch the disk.
Archives are untrusted input, so both refuse, naming the member: paths that are absolute or
climb out of the directory, special files (devices, fifos, sockets), and archives with more
members or more unpacked bytes than the limits allow. Unpacking also refuses links that point
outside the directory and members whose folder is such a link; hard links become copies.
Each refusal is an Invalid of ``spec.function``, where a Function carries its archive.
This module must not use the network, nor know about handlers, runtimes or dependency files:
which members must be present is for its caller to check.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from funcmesh.errors import Cause, Invalid

ArchiveFormat = Literal["zip", "tar"]

DEFAULT_MAX_UNPACKED_BYTES = 200 << 20
DEFAULT_MAX_MEMBERS = 100_000
_CHUNK_BYTES = 1 << 16
_MAX_LINK_TARGET_BYTES = 4096
_SPECIAL_FILE = "it is a special file (device, fifo or socket)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveLimits:
    """How much one archive may unpack: guards against archive bombs and inode floods."""

    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveListing:
    """Where an archive's members would land, read from its member list alone."""

    files: frozenset[str]  # normalised paths ("a/b.py") of files and links, not folders
    top_names: tuple[str, ...]  # sorted top-level entries, folders ending in "/"


def unpack_archive(
    archive: ArchiveFormat, raw: bytes, dest: Path, *, limits: ArchiveLimits
) -> None:
    """Write the members of ``raw`` into ``dest``, an existing empty directory, or Invalid.

    On Invalid, ``dest`` may hold some members: the caller discards it. An OSError is the
    disk's, not the archive's.
    """
    _UNPACKERS[archive](raw, _Extraction(dest, _Budget.of(limits)))


def list_archive(archive: ArchiveFormat, raw: bytes, *, limits: ArchiveLimits) -> ArchiveListing:
    """The members of ``raw`` without writing them, or Invalid.

    Member names, special files and the limits are checked (sizes as the archive declares them);
    link targets and member data are not: :func:`unpack_archive` checks those.
    """
    listing = _LISTERS[archive](raw, _Budget.of(limits))
    return ArchiveListing(files=frozenset(listing.files), top_names=tuple(listing.top_names()))


def _invalid(message: str) -> Invalid:
    return Invalid(message, [Cause(field="spec.function", message=message)])


@dataclass(slots=True, kw_only=True)
class _Budget:
    """What an archive may still unpack, charged member by member."""

    max_bytes: int
    max_members: int
    used_bytes: int = 0
    used_members: int = 0

    @classmethod
    def of(cls, limits: ArchiveLimits) -> _Budget:
        return cls(max_bytes=limits.max_unpacked_bytes, max_members=limits.max_members)

    def charge_member(self, name: str) -> None:
        self.used_members += 1
        if self.used_members > self.max_members:
            raise _refused(name, f"the archive has more than {self.max_members} members")

    def charge_bytes(self, name: str, size: int) -> None:
        self.used_bytes += size
        if self.used_bytes > self.max_bytes:
            raise _refused(
                name, f"the archive unpacks to more than {self.max_bytes} bytes (archive bomb?)"
            )


def _refused(name: str, reason: str) -> Invalid:
    return _invalid(f"refusing archive member {name!r}: {reason}")


class _Extraction:
    """Writes archive members under ``root``, refusing any that would reach outside it."""

    def __init__(self, root: Path, budget: _Budget) -> None:
        self._root = Path(os.path.realpath(root))
        self._budget = budget

    def add_dir(self, name: str) -> None:
        target = self._place(name)
        if target is not None:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)

    def add_file(self, name: str, source: IO[bytes], *, executable: bool) -> None:
        target = self._place(name)
        if target is None:
            raise _refused(name, "a file needs a name")
        self._clear(name, target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(target, flags, 0o755 if executable else 0o644), "wb") as sink:
            while chunk := source.read(_CHUNK_BYTES):
                self._budget.charge_bytes(name, len(chunk))
                sink.write(chunk)

    def add_symlink(self, name: str, link_target: str) -> None:
        """Only links that stay inside: leading ``..`` may climb, never a ``..`` after a name.

        Climbing starts from the real directory of the link, so links made earlier cannot
        lift it; and a target that only descends after its climb stays inside even if later
        members turn its components into links, since those obey the same rule.
        """
        target = self._place(name)
        parts = [part for part in link_target.split("/") if part not in ("", ".")]
        climbs = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
        landing = Path(os.path.realpath(target.parent)) if target is not None else self._root
        for _ in range(climbs):
            landing = landing.parent
        escapes = link_target.startswith("/") or ".." in parts[climbs:] or "\x00" in link_target
        if target is None or escapes or not landing.is_relative_to(self._root):
            raise _refused(name, f"it links to {link_target!r}, outside the function's directory")
        self._clear(name, target)
        target.symlink_to(link_target)

    def add_hardlink(self, name: str, link_name: str) -> None:
        """A hard link becomes a copy of the earlier member it names."""
        try:
            source = _locate(self._root, link_name)
        except Invalid:
            source = None
        if source is None or source.is_symlink() or not source.is_file():
            raise _refused(name, f"it links to {link_name!r}, which is no earlier file member")
        with source.open("rb") as stream:
            self.add_file(name, stream, executable=os.access(source, os.X_OK))

    def _place(self, name: str) -> Path | None:
        """Where ``name`` goes, its folder made (None for the archive root itself)."""
        self._budget.charge_member(name)
        target = _locate(self._root, name)
        if target is None:
            return None
        try:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise _refused(name, "a file or a link of its folder's name exists already") from exc
        if not Path(os.path.realpath(target.parent)).is_relative_to(self._root):
            raise _refused(name, "its path goes through a link that leaves the directory")
        return target

    def _clear(self, name: str, target: Path) -> None:
        """A later member replaces an earlier file, as tar and unzip -o do, but never a link.

        Other links were checked against the real path of their folder, which a replaced
        link could change.
        """
        if target.is_symlink() or target.is_dir():
            kind = "link" if target.is_symlink() else "directory"
            raise _refused(name, f"a {kind} of that name exists already")
        target.unlink(missing_ok=True)


def _locate(root: Path, name: str) -> Path | None:
    """The path of member ``name`` under ``root`` (None for the root), or Invalid."""
    parts = _member_parts(name)
    return root.joinpath(*parts) if parts else None


def _member_parts(name: str) -> list[str]:
    """The path components of member ``name`` (none for the root); Invalid if it leaves it."""
    if name.startswith("/") or "\x00" in name:
        raise _refused(name, "absolute paths are not allowed")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refused(name, "its path leaves the function's directory")
    return parts


@dataclass(slots=True, kw_only=True)
class _Listing:
    """Where an archive's members would land, gathered for :func:`list_archive`."""

    budget: _Budget
    files: set[str] = field(default_factory=set)  # "a/b.py": files and links
    top: dict[str, bool] = field(default_factory=dict)  # top-level name -> is a folder

    def add(self, name: str, *, is_dir: bool) -> None:
        self.budget.charge_member(name)
        parts = _member_parts(name)
        if not parts:
            return
        self.top[parts[0]] = self.top.get(parts[0], False) or is_dir or len(parts) > 1
        if not is_dir:
            self.files.add("/".join(parts))

    def top_names(self) -> list[str]:
        return [f"{name}/" if folder else name for name, folder in sorted(self.top.items())]


@contextlib.contextmanager
def _zip_errors() -> Iterator[None]:
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _invalid(f"corrupt zip archive: {exc}") from exc
    except (NotImplementedError, RuntimeError) as exc:  # exotic compression, encryption
        raise _invalid(f"unsupported zip archive: {exc}") from exc


def _zip_member_kind(info: zipfile.ZipInfo) -> Literal["dir", "link", "file"]:
    mode = info.external_attr >> 16
    if info.is_dir() or stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    # No file type: made on a system without Unix modes, or by zipfile.writestr(name, data).
    if stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):
        return "file"
    raise _refused(info.filename, _SPECIAL_FILE)


def _unpack_zip(raw: bytes, extraction: _Extraction) -> None:
    with _zip_errors(), zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for info in archive.infolist():
            _unpack_zip_member(archive, info, extraction)


def _list_zip(raw: bytes, budget: _Budget) -> _Listing:
    listing = _Listing(budget=budget)
    with _zip_errors(), zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for info in archive.infolist():
            listing.add(info.filename, is_dir=_zip_member_kind(info) == "dir")
            budget.charge_bytes(info.filename, info.file_size)  # as declared: nothing inflates
    return listing


def _unpack_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: _Extraction) -> None:
    kind = _zip_member_kind(info)
    if kind == "dir":
        out.add_dir(info.filename)
    elif kind == "link":
        with archive.open(info) as stream:
            link_target = stream.read(_MAX_LINK_TARGET_BYTES).decode("utf-8", "replace")
        out.add_symlink(info.filename, link_target)
    else:
        with archive.open(info) as stream:
            executable = bool((info.external_attr >> 16) & 0o111)
            out.add_file(info.filename, stream, executable=executable)


@contextlib.contextmanager
def _tar_errors() -> Iterator[None]:
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _invalid(f"corrupt tar archive: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None:  # the disk failed, not the archive
            raise
        raise _invalid(f"corrupt tar archive: {exc}") from exc


def _unpack_tar(raw: bytes, extraction: _Extraction) -> None:
    with _tar_errors(), _open_tar(raw) as archive:
        for member in archive:
            _unpack_tar_member(archive, member, extraction)


def _list_tar(raw: bytes, budget: _Budget) -> _Listing:
    """Reading the member list of a compressed tar inflates it, within the budget: each
    member's declared size is charged before the stream moves past its data."""
    listing = _Listing(budget=budget)
    with _tar_errors(), _open_tar(raw) as archive:
        for member in archive:
            if not (member.isdir() or member.issym() or member.islnk() or member.isreg()):
                raise _refused(member.name, _SPECIAL_FILE)
            listing.add(member.name, is_dir=member.isdir())
            if member.isreg():
                budget.charge_bytes(member.name, member.size)
    return listing


def _open_tar(raw: bytes) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:*")
    except tarfile.ReadError as exc:
        message = "corrupt tar archive: not a tar file (plain, gzip, bzip2 or xz)"
        raise _invalid(message) from exc


def _unpack_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, out: _Extraction) -> None:
    if member.isdir():
        out.add_dir(member.name)
    elif member.issym():
        out.add_symlink(member.name, member.linkname)
    elif member.islnk():
        out.add_hardlink(member.name, member.linkname)
    elif member.isreg():
        stream = archive.extractfile(member)
        if stream is None:
            raise _refused(member.name, "its data cannot be read")
        with stream:
            out.add_file(member.name, stream, executable=bool(member.mode & 0o111))
    else:
        raise _refused(member.name, _SPECIAL_FILE)


_UNPACKERS: dict[ArchiveFormat, Callable[[bytes, _Extraction], None]] = {
    "zip": _unpack_zip,
    "tar": _unpack_tar,
}
_LISTERS: dict[ArchiveFormat, Callable[[bytes, _Budget], _Listing]] = {
    "zip": _list_zip,
    "tar": _list_tar,
}
