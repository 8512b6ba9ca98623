"""Function code on disk: the Kubeless "prepare" step, done safely in Python.

A Function's ``spec.function`` arrives as ``text``, ``base64`` or ``url``, each optionally
``+zip`` or ``+compressedtar`` (and ``+deps``: the archive brings its own dependency file).
:func:`prepare_code` decodes or downloads it, checks the ``sha256:`` checksum, and writes
``<module><suffix>`` or the unpacked archive into a directory named by :func:`content_digest`.
The directory appears whole or not at all: it is built next to its final place and renamed.
Archives are untrusted input: members that would land outside the directory, links pointing
outside it, device files and archive bombs are refused with the member named.
:func:`check_content` is the part of that which needs no disk and no network (decoding, the
checksum, an archive's member list), so the API can refuse bad content before storing it.
``prepare_code`` blocks (callers run it in a thread); nothing here imports or runs the code.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import io
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from funcmesh.errors import Cause, Invalid

logger = logging.getLogger(__name__)

Encoding = Literal["text", "base64", "url"]
ArchiveFormat = Literal["zip", "tar"]
FetchUrl = Callable[[str], bytes]

DEFAULT_MAX_UNPACKED_BYTES = 200 << 20
DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_DOWNLOAD_BYTES = 200 << 20
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK_BYTES = 1 << 16
_MAX_LINK_TARGET_BYTES = 4096
_LISTED_ENTRIES = 10
_ENCODINGS: dict[str, Encoding] = {"": "text", "text": "text", "base64": "base64", "url": "url"}
_ARCHIVES: dict[str, ArchiveFormat] = {"zip": "zip", "compressedtar": "tar"}
_SHA256 = re.compile(r"sha256:([0-9a-fA-F]{64})")
_PACKAGE_MARKERS = {".py": "__init__.py", ".js": "index.js"}
_DIGEST_FORMAT = b"funcmesh-code-v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentType:
    """A parsed ``function-content-type``."""

    encoding: Encoding
    archive: ArchiveFormat | None = None
    bundles_deps: bool = False


def parse_content_type(content_type: str) -> ContentType:
    """``text``, ``base64`` or ``url`` (empty is text), optionally ``+zip``, ``+compressedtar``.

    ``+deps`` says that the archive carries its own dependency file.
    """
    first, *extras = content_type.split("+")
    archives = [_ARCHIVES[extra] for extra in extras if extra in _ARCHIVES]
    known = all(extra in _ARCHIVES or extra == "deps" for extra in extras)
    if first not in _ENCODINGS or not known or len(archives) > 1 or len(set(extras)) < len(extras):
        raise _invalid(
            "spec.function-content-type",
            f'unknown function-content-type "{content_type}": expected text, base64 or url,'
            " optionally +zip or +compressedtar",
        )
    bundles_deps = "deps" in extras
    if bundles_deps and not archives:
        raise _invalid(
            "spec.function-content-type",
            f'function-content-type "{content_type}": +deps needs +zip or +compressedtar'
            " (the archive carries the dependency file)",
        )
    archive = archives[0] if archives else None
    return ContentType(encoding=_ENCODINGS[first], archive=archive, bundles_deps=bundles_deps)


def parse_checksum(checksum: str) -> str | None:
    """The lower-case sha256 hex digest of ``sha256:<hex>``, or None when empty (allowed)."""
    if not checksum:
        return None
    match = _SHA256.fullmatch(checksum)
    if match is None:
        algorithm = checksum.partition(":")[0] if ":" in checksum else ""
        reason = (
            f'unsupported checksum algorithm "{algorithm}"'
            if algorithm and algorithm != "sha256"
            else f'malformed checksum "{checksum[:80]}"'
        )
        raise _invalid("spec.checksum", f"{reason}: expected sha256:<64 hex digits>")
    return match[1].lower()


def verify_checksum(raw: bytes, checksum: str) -> None:
    """Invalid unless ``raw`` has the checksum (an empty checksum accepts anything)."""
    expected = parse_checksum(checksum)
    actual = hashlib.sha256(raw).hexdigest()
    if expected is not None and expected != actual:
        raise _invalid(
            "spec.checksum",
            f"checksum mismatch: spec says sha256:{expected}, content is sha256:{actual}",
        )


def content_digest(
    *, content: str | bytes, content_type: str, checksum: str, module: str, suffix: str
) -> str:
    """sha256 hex of everything that determines the prepared code: names its directory."""
    digest = hashlib.sha256(_DIGEST_FORMAT)
    fields = (content, content_type, checksum, module, suffix)
    for value in fields:
        data = value.encode() if isinstance(value, str) else value
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def decode_raw(
    content: str | bytes, content_type: str, *, fetch_url: FetchUrl | None = None
) -> bytes:
    """The file's bytes: UTF-8 of text, decoded base64, or the body downloaded from the URL."""
    encoding = parse_content_type(content_type).encoding
    if encoding == "text":
        return content.encode() if isinstance(content, str) else content
    text = content.decode() if isinstance(content, bytes) else content
    if encoding == "base64":
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error as exc:
            raise _invalid("spec.function", f"function content is not valid base64: {exc}") from exc
    return _fetch(text.strip(), fetch_url or download)


def download(url: str, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> bytes:
    """GET ``url`` (30 s timeout, redirects followed); OSError when that fails."""
    request = urllib.request.Request(url, headers={"User-Agent": "funcmesh"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        body: bytes = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise OSError(f"the file is larger than {max_bytes} bytes")
    return body


def prepare_code(
    *,
    content: str | bytes,
    content_type: str,
    checksum: str,
    module: str,
    suffix: str,
    dest: Path,
    fetch_url: FetchUrl | None,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Write the function's code into ``dest`` (kept if it exists already) and return it."""
    kind = parse_content_type(content_type)
    parse_checksum(checksum)
    _check_module_name(module)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        if dest.is_dir():  # prepared by whoever held the lock before us
            return dest
        _remove_leftovers(dest)
        raw = decode_raw(content, content_type, fetch_url=fetch_url)
        verify_checksum(raw, checksum)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            budget = _Budget(max_bytes=max_unpacked_bytes, max_members=max_members)
            _write_code(raw, kind, staging, module=module, suffix=suffix, budget=budget)
            staging.chmod(0o755)
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("prepared function code in %s", dest)
    return dest


def check_content(
    *,
    content: str | bytes,
    content_type: str,
    checksum: str,
    module: str,
    suffix: str,
    deps_file: str = "",
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Invalid unless the code would prepare, as far as that shows without writing anything.

    Decodes the content, verifies the checksum and lists an archive's members: names that leave
    the directory, special files, the budget, the handler module and the ``+deps`` file are
    checked; links and member data are left to :func:`prepare_code`. Only a URL's scheme is
    checked: it is downloaded when the code is prepared. The cost is one decode and one hash
    of the content, plus the archive's listing.
    """
    kind = parse_content_type(content_type)
    parse_checksum(checksum)
    _check_module_name(module)
    if kind.encoding == "url":
        _check_url(content.decode() if isinstance(content, bytes) else content)
        return
    raw = decode_raw(content, content_type)
    verify_checksum(raw, checksum)
    if kind.archive is None:
        return
    budget = _Budget(max_bytes=max_unpacked_bytes, max_members=max_members)
    listing = _LISTERS[kind.archive](raw, budget)
    _check_module_listed(listing, module=module, suffix=suffix)
    if kind.bundles_deps and deps_file not in listing.files:
        raise _no_bundled_deps(deps_file)


def read_bundled_deps(code_dir: Path, deps_file: str) -> str:
    """The dependency file a ``+deps`` archive carries (Invalid when it has none)."""
    try:
        return (code_dir / deps_file).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise _no_bundled_deps(deps_file) from exc
    except UnicodeDecodeError as exc:
        raise _invalid("spec.function", f"{deps_file} in the archive is not UTF-8") from exc


def _write_code(
    raw: bytes, kind: ContentType, staging: Path, *, module: str, suffix: str, budget: _Budget
) -> None:
    """A single file is named after the handler module, whatever it was called when uploaded."""
    if kind.archive is None:
        (staging / f"{module}{suffix}").write_bytes(raw)
        return
    _UNPACKERS[kind.archive](raw, _Extraction(staging, budget))
    _check_module_present(staging, module=module, suffix=suffix)


def _invalid(field: str, message: str) -> Invalid:
    return Invalid(message, [Cause(field=field, message=message)])


def _no_bundled_deps(deps_file: str) -> Invalid:
    message = f"function-content-type has +deps but the archive holds no {deps_file}"
    return _invalid("spec.function-content-type", message)


def _check_url(url: str) -> None:
    if not url.strip().startswith(("http://", "https://")):
        message = f"function-content-type url needs an http:// or https:// address, got {url!r}"
        raise _invalid("spec.function", message)


def _fetch(url: str, fetch_url: FetchUrl) -> bytes:
    _check_url(url)
    try:
        return fetch_url(url)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response and its socket
        reason = f"HTTP {exc.code} {exc.reason}"
        raise _invalid("spec.function", f"could not download {url}: {reason}") from exc
    except OSError as exc:  # urllib's URLError is an OSError too
        detail = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _invalid("spec.function", f"could not download {url}: {detail}") from exc


def _check_module_name(module: str) -> None:
    if module in ("", ".", "..") or "/" in module or "\x00" in module:
        raise _invalid("spec.handler", f'handler module "{module}" is not a valid file name')


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """Hold a lock that serialises preparers of ``dest``; the kernel drops it if we crash."""
    fd = os.open(dest.parent / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_leftovers(dest: Path) -> None:
    """Staging dirs of ``dest`` found while we hold its lock belong to a crashed preparer."""
    for leftover in dest.parent.glob(f".{dest.name}.*.tmp"):
        logger.info("removing %s, left by an interrupted preparation", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _check_module_present(root: Path, *, module: str, suffix: str) -> None:
    marker = _PACKAGE_MARKERS.get(suffix)
    if (root / f"{module}{suffix}").is_file() or (marker and (root / module / marker).is_file()):
        return
    entries = sorted(root.iterdir())
    names = [f"{entry.name}/" if entry.is_dir() else entry.name for entry in entries]
    wrapped = len(entries) == 1 and (entries[0] / f"{module}{suffix}").is_file()
    raise _module_missing(module, names, wrapped_in=names[0] if wrapped else None)


def _check_module_listed(listing: _Listing, *, module: str, suffix: str) -> None:
    marker = _PACKAGE_MARKERS.get(suffix)
    files = listing.files
    if f"{module}{suffix}" in files or (marker and f"{module}/{marker}" in files):
        return
    names = listing.top_names()
    wrapped = len(names) == 1 and f"{names[0]}{module}{suffix}" in files
    raise _module_missing(module, names, wrapped_in=names[0] if wrapped else None)


def _module_missing(module: str, names: list[str], *, wrapped_in: str | None) -> Invalid:
    """``names``: the archive's top-level entries, folders ending in ``/``."""
    listed = ", ".join(names[:_LISTED_ENTRIES]) + (", ..." if len(names) > _LISTED_ENTRIES else "")
    message = (
        f'handler module "{module}" not found in the archive (it holds: {listed or "nothing"})'
    )
    if wrapped_in is not None:
        message += f"; archive the contents of {wrapped_in}, not the folder itself"
    return _invalid("spec.handler", message)


@dataclass(slots=True, kw_only=True)
class _Budget:
    """What an archive may still unpack: guards against zip bombs and inode floods."""

    max_bytes: int
    max_members: int
    used_bytes: int = 0
    used_members: int = 0

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
    return _invalid("spec.function", f"refusing archive member {name!r}: {reason}")


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
    """Where an archive's members would land, without writing them: for :func:`check_content`."""

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


_SPECIAL_FILE = "it is a special file (device, fifo or socket)"


@contextlib.contextmanager
def _zip_errors() -> Iterator[None]:
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _invalid("spec.function", f"corrupt zip archive: {exc}") from exc
    except (NotImplementedError, RuntimeError) as exc:  # exotic compression, encryption
        raise _invalid("spec.function", f"unsupported zip archive: {exc}") from exc


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
        raise _invalid("spec.function", f"corrupt tar archive: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None:  # the disk failed, not the archive
            raise
        raise _invalid("spec.function", f"corrupt tar archive: {exc}") from exc


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
        raise _invalid("spec.function", message) from exc


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
