from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from funcmesh.cli.sources import content_type_of, read_dependencies, read_source
from funcmesh.errors import Invalid

BINARY = bytes(range(256))


def no_fetch(url: str) -> bytes:
    raise AssertionError(f"unexpected download of {url}")


@pytest.mark.parametrize(
    ("location", "data", "expected"),
    [
        ("hello.py", b"def f(e, c):\n    return 1\n", "text"),
        ("hello.js", "módulo = 'ünïcode'".encode(), "text"),
        ("empty.py", b"", "text"),
        ("blob.bin", BINARY, "base64"),
        ("code.zip", BINARY, "base64+zip"),
        ("code.tar.gz", BINARY, "base64+compressedtar"),
        ("code.tgz", BINARY, "base64+compressedtar"),
        ("code.tar.xz", BINARY, "base64+compressedtar"),
        ("code.tar.bz2", BINARY, "base64+compressedtar"),
        ("code.tar", BINARY, "base64"),
        ("https://example.com/hello.py", b"", "url"),
        ("http://example.com/fn.zip?token=abc", b"", "url+zip"),
        ("https://example.com/fn.tgz", b"", "url+compressedtar"),
    ],
)
def test_content_type_follows_kubeless(location: str, data: bytes, expected: str) -> None:
    assert content_type_of(location, data) == expected


def test_text_file_is_stored_as_is_with_its_checksum(tmp_path: Path) -> None:
    code = b'def handler(event, context):\n    return "hello world"\n'
    (tmp_path / "hello.py").write_bytes(code)
    source = read_source(str(tmp_path / "hello.py"), fetch=no_fetch)
    assert source.content == code.decode()
    assert source.content_type == "text"
    assert source.checksum == "sha256:" + hashlib.sha256(code).hexdigest()


def test_zip_is_base64_and_the_checksum_is_of_the_raw_bytes(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.py", "def handler(e, c):\n    return 1\n")
    raw = buffer.getvalue()
    (tmp_path / "fn.zip").write_bytes(raw)
    source = read_source(str(tmp_path / "fn.zip"), fetch=no_fetch)
    assert source.content_type == "base64+zip"
    assert base64.b64decode(source.content) == raw
    assert source.checksum == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_compressed_tar(tmp_path: Path) -> None:
    path = tmp_path / "fn.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        member = tmp_path / "hello.py"
        member.write_text("x = 1\n")
        archive.add(member, arcname="hello.py")
    source = read_source(str(path), fetch=no_fetch)
    assert source.content_type == "base64+compressedtar"
    assert base64.b64decode(source.content) == path.read_bytes()


def test_url_keeps_the_url_and_checksums_the_download() -> None:
    downloaded = b"def handler(e, c):\n    return 2\n"
    url = "https://example.com/functions/hello.py"
    source = read_source(url, fetch=lambda wanted: downloaded if wanted == url else b"")
    assert source.content == url
    assert source.content_type == "url"
    assert source.checksum == "sha256:" + hashlib.sha256(downloaded).hexdigest()


@pytest.mark.parametrize(
    ("relative", "words"),
    [("missing.py", "no such file"), (".", "is a directory")],
)
def test_unreadable_code_is_a_clear_error(relative: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(Invalid, match=words) as caught:
        read_source(str(tmp_path / relative), fetch=no_fetch)
    assert str(caught.value).startswith("--from-file ")


def test_dependencies_must_be_text(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    assert read_dependencies(str(tmp_path / "requirements.txt"), fetch=no_fetch) == "six==1.16.0\n"
    (tmp_path / "deps.bin").write_bytes(BINARY)
    with pytest.raises(Invalid, match="not a text file"):
        read_dependencies(str(tmp_path / "deps.bin"), fetch=no_fetch)
