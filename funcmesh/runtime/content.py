"""Function code on disk: the Kubeless "prepare" step, done safely in Python.

A Function's ``spec.function`` arrives as ``text``, ``base64`` or ``url``, each optionally
``+zip`` or ``+compressedtar`` (and ``+deps``: the archive brings its own dependency file).
:func:`prepare_code` decodes or downloads it, checks the ``sha256:`` checksum, and writes
``<module><suffix>`` or the unpacked archive into a directory named by :func:`content_digest`.
The directory appears whole or not at all: it is built next to its final place and renamed.
Archives are untrusted input: :mod:`funcmesh.runtime.archives` unpacks them safely; this module
checks that the handler module (and a ``+deps`` archive's dependency file) is among the members.
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
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from funcmesh.errors import Cause, Invalid
from funcmesh.runtime.archives import (
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_UNPACKED_BYTES,
    ArchiveFormat,
    ArchiveLimits,
    ArchiveListing,
    list_archive,
    unpack_archive,
)

logger = logging.getLogger(__name__)

Encoding = Literal["text", "base64", "url"]
FetchUrl = Callable[[str], bytes]

DEFAULT_MAX_DOWNLOAD_BYTES = 200 << 20
DOWNLOAD_TIMEOUT_S = 30.0
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
        limits = ArchiveLimits(max_unpacked_bytes=max_unpacked_bytes, max_members=max_members)
        try:
            _write_code(raw, kind, staging, module=module, suffix=suffix, limits=limits)
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
    limits = ArchiveLimits(max_unpacked_bytes=max_unpacked_bytes, max_members=max_members)
    listing = list_archive(kind.archive, raw, limits=limits)
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
    raw: bytes, kind: ContentType, staging: Path, *, module: str, suffix: str, limits: ArchiveLimits
) -> None:
    """A single file is named after the handler module, whatever it was called when uploaded."""
    if kind.archive is None:
        (staging / f"{module}{suffix}").write_bytes(raw)
        return
    unpack_archive(kind.archive, raw, staging, limits=limits)
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


def _check_module_listed(listing: ArchiveListing, *, module: str, suffix: str) -> None:
    marker = _PACKAGE_MARKERS.get(suffix)
    files = listing.files
    if f"{module}{suffix}" in files or (marker and f"{module}/{marker}" in files):
        return
    names = listing.top_names
    wrapped = len(names) == 1 and f"{names[0]}{module}{suffix}" in files
    raise _module_missing(module, names, wrapped_in=names[0] if wrapped else None)


def _module_missing(module: str, names: Sequence[str], *, wrapped_in: str | None) -> Invalid:
    """``names``: the archive's top-level entries, folders ending in ``/``."""
    listed = ", ".join(names[:_LISTED_ENTRIES]) + (", ..." if len(names) > _LISTED_ENTRIES else "")
    message = (
        f'handler module "{module}" not found in the archive (it holds: {listed or "nothing"})'
    )
    if wrapped_in is not None:
        message += f"; archive the contents of {wrapped_in}, not the folder itself"
    return _invalid("spec.handler", message)
