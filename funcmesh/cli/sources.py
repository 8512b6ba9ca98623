"""Function code and dependency files as Kubeless stores them (kubeless.md 1.3).

``--from-file`` becomes ``function``, ``function-content-type`` and ``checksum`` exactly as
Kubeless's ``GetContentType``/``ParseContent`` make them: a URL gives ``url`` (the Function keeps
the URL, the checksum is of the downloaded bytes), valid UTF-8 gives ``text``, anything else
``base64``; ``+zip`` / ``+compressedtar`` follow the file name. Downloading is a seam (``Fetch``);
this module must not talk to the API.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from funcmesh.errors import Invalid

Fetch = Callable[[str], bytes]

ZIP_SUFFIX = ".zip"
COMPRESSED_TAR_SUFFIXES = (
    ".tar.gz",
    ".taz",
    ".tgz",
    ".tar.bz2",
    ".tb2",
    ".tbz",
    ".tbz2",
    ".tz2",
    ".tar.xz",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionSource:
    """The three spec fields that carry a function's code."""

    content: str
    content_type: str
    checksum: str


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def content_type_of(location: str, data: bytes) -> str:
    """``text``, ``base64`` or ``url``, plus ``+zip`` or ``+compressedtar`` by the name."""
    if is_url(location):
        return "url" + archive_suffix(urlsplit(location).path)
    return ("text" if _is_utf8(data) else "base64") + archive_suffix(location)


def archive_suffix(name: str) -> str:
    if name.endswith(ZIP_SUFFIX):
        return "+zip"
    if name.endswith(COMPRESSED_TAR_SUFFIXES):
        return "+compressedtar"
    return ""


def checksum_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_source(location: str, *, fetch: Fetch) -> FunctionSource:
    """The spec fields for ``--from-file location`` (a path or an http(s) URL)."""
    data = read_bytes(location, fetch=fetch, flag="--from-file")
    content_type = content_type_of(location, data)
    if content_type.startswith("url"):
        content = location
    elif content_type.startswith("text"):
        content = data.decode("utf-8")
    else:
        content = base64.b64encode(data).decode("ascii")
    return FunctionSource(content=content, content_type=content_type, checksum=checksum_of(data))


def read_dependencies(location: str, *, fetch: Fetch) -> str:
    """The text of ``--dependencies location`` (requirements.txt, package.json)."""
    data = read_bytes(location, fetch=fetch, flag="--dependencies")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(
            f"--dependencies {location} is not a text file: expected requirements.txt or "
            "package.json"
        ) from None


def read_bytes(location: str, *, fetch: Fetch, flag: str) -> bytes:
    if is_url(location):
        return fetch(location)
    path = Path(location).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise Invalid(f"{flag} {location}: no such file") from None
    except IsADirectoryError:
        raise Invalid(f"{flag} {location} is a directory: name a file, or a .zip of it") from None
    except OSError as exc:
        raise Invalid(f"{flag} {location}: cannot read it ({exc.strerror or exc})") from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
