from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.server
import io
import os
import socket
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from funcmesh.errors import Invalid
from funcmesh.runtime.content import (
    ContentType,
    check_content,
    content_digest,
    download,
    parse_content_type,
    prepare_code,
    read_bundled_deps,
)

HELLO = b"def hello(event, context):\n    return 'hello world'\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    target: str
    hard: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Special:
    kind: bytes  # tarfile.CHRTYPE, FIFOTYPE, ...


Entry = bytes | Link | Special | None  # None: a directory


def zip_of(entries: dict[str, Entry]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, entry in entries.items():
            info = zipfile.ZipInfo(name)
            if isinstance(entry, Link):
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, entry.target)
            elif isinstance(entry, Special):
                info.external_attr = (stat.S_IFIFO | 0o644) << 16
                archive.writestr(info, b"")
            elif entry is None:
                archive.writestr(name.rstrip("/") + "/", b"")
            else:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                archive.writestr(info, entry, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def tar_of(entries: dict[str, Entry], *, mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, entry in entries.items():
            info = tarfile.TarInfo(name)
            data = None
            if isinstance(entry, Link):
                info.type = tarfile.LNKTYPE if entry.hard else tarfile.SYMTYPE
                info.linkname = entry.target
            elif isinstance(entry, Special):
                info.type = entry.kind
            elif entry is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size, info.mode, data = len(entry), 0o755, io.BytesIO(entry)
            archive.addfile(info, data)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def prepare(
    tmp_path: Path,
    content: str | bytes,
    content_type: str,
    *,
    checksum: str = "",
    module: str = "hello",
    **limits: int,
) -> Path:
    return prepare_code(
        content=content,
        content_type=content_type,
        checksum=checksum,
        module=module,
        suffix=".py",
        dest=tmp_path / "code" / "abc",
        fetch_url=None,
        **limits,
    )


def files_under(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_nothing_left(tmp_path: Path) -> None:
    """A refused preparation leaves no code directory and no staging directory."""
    left = [path.name for path in (tmp_path / "code").iterdir() if not path.name.endswith(".lock")]
    assert left == []


LIB = b"VALUE = 42\n"


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (HELLO.decode(), "text", {"hello.py": HELLO}),
        (HELLO.decode(), "", {"hello.py": HELLO}),
        ("print('héllo')\n", "text", {"hello.py": "print('héllo')\n".encode()}),
        (b64(HELLO), "base64", {"hello.py": HELLO}),
        # base64 wrapped over lines, as in a YAML block scalar
        ("\n".join(b64(HELLO * 4)[i : i + 20] for i in range(0, 400, 20)), "base64",
         {"hello.py": HELLO * 4}),
        (b64(zip_of({"hello.py": HELLO, "lib/": None, "lib/util.py": LIB})), "base64+zip",
         {"hello.py": HELLO, "lib/util.py": LIB}),
        (b64(zip_of({"hello/__init__.py": HELLO})), "base64+zip", {"hello/__init__.py": HELLO}),
        (b64(tar_of({"hello.py": HELLO, "lib/util.py": LIB}, mode="w:gz")),
         "base64+compressedtar", {"hello.py": HELLO, "lib/util.py": LIB}),
        (b64(tar_of({"hello.py": HELLO}, mode="w:bz2")), "base64+compressedtar",
         {"hello.py": HELLO}),
        (b64(tar_of({"hello.py": HELLO}, mode="w:xz")), "base64+compressedtar",
         {"hello.py": HELLO}),
        (b64(tar_of({"./hello.py": HELLO}, mode="w")), "base64+compressedtar",
         {"hello.py": HELLO}),
        (b64(tar_of({"hello.py": HELLO, "copy.py": Link(target="hello.py", hard=True)})),
         "base64+compressedtar", {"copy.py": HELLO, "hello.py": HELLO}),
        # a later member replaces an earlier one, as with tar and unzip -o
        (b64(tar_of({"hello.py": b"old", "lib": Link(target="."), "lib/hello.py": HELLO})),
         "base64+compressedtar", {"hello.py": HELLO}),
        (b64(zip_of({"hello.py": HELLO, "requirements.txt": b"six\n"})), "base64+zip+deps",
         {"hello.py": HELLO, "requirements.txt": b"six\n"}),
    ],
)  # fmt: skip
def test_prepare_writes_the_code(
    tmp_path: Path, content: str, content_type: str, expected: dict[str, bytes]
) -> None:
    code_dir = prepare(tmp_path, content, content_type)

    assert code_dir == tmp_path / "code" / "abc"
    assert files_under(code_dir) == expected


def test_zip_members_without_a_file_type_are_files(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.py", HELLO)  # mode 0o600, no S_IFREG bits
        archive.writestr(zipfile.ZipInfo("lib/util.py"), LIB)  # no mode at all

    code_dir = prepare(tmp_path, b64(buffer.getvalue()), "base64+zip")

    assert files_under(code_dir) == {"hello.py": HELLO, "lib/util.py": LIB}


def test_symlinks_inside_the_directory_work(tmp_path: Path) -> None:
    archive = tar_of(
        {
            "src/impl.py": HELLO,
            "src/pkg/up.py": Link(target="../impl.py"),
            "hello.py": Link(target="./src/pkg/up.py"),
        }
    )

    code_dir = prepare(tmp_path, b64(archive), "base64+compressedtar")

    assert (code_dir / "hello.py").is_symlink()
    assert (code_dir / "hello.py").read_bytes() == HELLO


def test_executable_bit_is_kept_for_tar_members(tmp_path: Path) -> None:
    code_dir = prepare(tmp_path, b64(tar_of({"hello.py": HELLO})), "base64+compressedtar")

    assert os.access(code_dir / "hello.py", os.X_OK)
    assert os.access(code_dir, os.R_OK | os.X_OK)


@pytest.mark.parametrize(
    ("content_type", "bundles_deps"),
    [("base64+zip+deps", True), ("url+compressedtar+deps", True), ("base64+zip", False)],
)
def test_parse_content_type_tells_whether_the_archive_brings_deps(
    content_type: str, bundles_deps: bool
) -> None:
    assert parse_content_type(content_type).bundles_deps is bundles_deps


def test_read_bundled_deps(tmp_path: Path) -> None:
    archive = zip_of({"hello.py": HELLO, "requirements.txt": b"six==1.16.0\n"})
    code_dir = prepare(tmp_path, b64(archive), "base64+zip+deps")

    assert read_bundled_deps(code_dir, "requirements.txt") == "six==1.16.0\n"
    with pytest.raises(Invalid, match="has \\+deps but the archive holds no package.json"):
        read_bundled_deps(code_dir, "package.json")


def test_parse_content_type_values() -> None:
    assert parse_content_type("") == ContentType(encoding="text")
    assert parse_content_type("url+compressedtar") == ContentType(encoding="url", archive="tar")


ZIP = zip_of({"hello.py": HELLO})


def zlib_payload(archive: bytes) -> bytes:
    """The compressed bytes of the first member, to corrupt them in place."""
    with zipfile.ZipFile(io.BytesIO(archive)) as parsed:
        info = parsed.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    return archive[start : start + info.compress_size]


BAD_CONTENT_FIELDS = ("content", "content_type", "checksum", "message")
BAD_CONTENT = [
    (HELLO.decode(), "x", "",
     'unknown function-content-type "x": expected text, base64 or url,'
     " optionally +zip or +compressedtar"),
    (b64(ZIP), "base64+gzip", "", 'unknown function-content-type "base64+gzip"'),
    (b64(ZIP), "base64+zip+compressedtar", "", "unknown function-content-type"),
    (b64(ZIP), "base64+zip+zip", "", "unknown function-content-type"),
    (b64(ZIP), "Base64", "", "unknown function-content-type"),
    (HELLO.decode(), "text+deps", "", "+deps needs +zip or +compressedtar"),
    (HELLO.decode(), "text", sha256(b"other"),
     f"checksum mismatch: spec says {sha256(b'other')}, content is {sha256(HELLO)}"),
    (b64(HELLO), "base64", "md5:" + "0" * 32,
     'unsupported checksum algorithm "md5": expected sha256:<64 hex digits>'),
    (HELLO.decode(), "text", "sha256:xyz", 'malformed checksum "sha256:xyz"'),
    (HELLO.decode(), "text", "0" * 64, "malformed checksum"),
    ("@@not base64@@", "base64", "", "function content is not valid base64"),
    ("file:///etc/passwd", "url", "", "needs an http:// or https:// address"),
    (b64(b"not a zip at all"), "base64+zip", "",
     "corrupt zip archive: File is not a zip file"),
    (b64(ZIP[: len(ZIP) // 2]), "base64+zip", "", "corrupt zip archive"),
    (b64(b"hello"), "base64+compressedtar", "",
     "corrupt tar archive: not a tar file (plain, gzip, bzip2 or xz)"),
    (b64(tar_of({"hello.py": HELLO * 1000})[:200]), "base64+compressedtar", "",
     "corrupt tar archive"),
    (b64(zip_of({"a.py": b"", "b/c.py": b""})), "base64+zip", "",
     'handler module "hello" not found in the archive (it holds: a.py, b/)'),
    (b64(zip_of({})), "base64+zip", "",
     'handler module "hello" not found in the archive (it holds: nothing)'),
    (b64(zip_of({"myfunc/hello.py": HELLO})), "base64+zip", "",
     "(it holds: myfunc/); archive the contents of myfunc/, not the folder itself"),
    (b64(zip_of({"myfunc/hello.py": HELLO, "myfunc/": None})), "base64+zip", "",
     "archive the contents of myfunc/, not the folder itself"),
    (b64(tar_of({"./lib/x.py": b"", "./README": b""})), "base64+compressedtar", "",
     'handler module "hello" not found in the archive (it holds: README, lib/)'),
]  # fmt: skip
# Member data is only read when the code is prepared: admission cannot see this one.
CORRUPT_MEMBER_DATA = (
    b64(ZIP.replace(zlib_payload(ZIP), b"\x00" * len(zlib_payload(ZIP)))),
    "base64+zip",
    "",
    "corrupt zip archive",
)


@pytest.mark.parametrize(BAD_CONTENT_FIELDS, [*BAD_CONTENT, CORRUPT_MEMBER_DATA])
def test_prepare_refuses_bad_content(
    tmp_path: Path, content: str, content_type: str, checksum: str, message: str
) -> None:
    with pytest.raises(Invalid) as caught:
        prepare(tmp_path, content, content_type, checksum=checksum)

    assert message in str(caught.value)
    assert caught.value.causes, "a refusal names the field at fault"
    assert not (tmp_path / "code" / "abc").exists()


def check(content: str, content_type: str, *, checksum: str = "", **limits: int) -> None:
    check_content(
        content=content,
        content_type=content_type,
        checksum=checksum,
        module="hello",
        suffix=".py",
        deps_file="requirements.txt",
        **limits,
    )


@pytest.mark.parametrize(BAD_CONTENT_FIELDS, BAD_CONTENT)
def test_check_refuses_what_prepare_would_refuse(
    content: str, content_type: str, checksum: str, message: str
) -> None:
    with pytest.raises(Invalid) as caught:
        check(content, content_type, checksum=checksum)

    assert message in str(caught.value)
    assert caught.value.causes, "a refusal names the field at fault"


@pytest.mark.parametrize(
    ("content", "content_type", "checksum"),
    [
        (HELLO.decode(), "text", sha256(HELLO)),
        (b64(HELLO), "base64", sha256(HELLO)),
        (b64(ZIP), "base64+zip", sha256(ZIP)),
        (b64(zip_of({"hello/": None, "hello/__init__.py": HELLO})), "base64+zip", ""),
        (b64(zip_of({"hello.py": HELLO, "requirements.txt": b"six\n"})), "base64+zip+deps", ""),
        (b64(tar_of({"./hello.py": HELLO, "./lib/util.py": LIB})), "base64+compressedtar", ""),
        (b64(tar_of({"src/hello.py": HELLO, "hello.py": Link(target="src/hello.py")})),
         "base64+compressedtar", ""),
        # not downloaded at admission: nothing listens there
        ("http://127.0.0.1:9/hello.py", "url", sha256(b"unknowable")),
    ],
)  # fmt: skip
def test_check_accepts_content_that_prepares(
    content: str, content_type: str, checksum: str
) -> None:
    check(content, content_type, checksum=checksum)


@pytest.mark.parametrize(
    ("archive", "content_type", "message"),
    [
        (zip_of({"hello.py": HELLO, "../evil.py": b"x"}), "base64+zip",
         "refusing archive member '../evil.py': its path leaves the function's directory"),
        (tar_of({"hello.py": HELLO, "/etc/evil.py": b"x"}), "base64+compressedtar",
         "refusing archive member '/etc/evil.py': absolute paths are not allowed"),
        (tar_of({"hello.py": HELLO, "pipe": Special(kind=tarfile.FIFOTYPE)}),
         "base64+compressedtar", "refusing archive member 'pipe': it is a special file"),
        (zip_of({"hello.py": HELLO, "fifo": Special(kind=b"")}), "base64+zip",
         "refusing archive member 'fifo': it is a special file"),
        (zip_of({"hello.py": HELLO, "zeros.bin": b"\0" * (1 << 20)}), "base64+zip",
         "'zeros.bin': the archive unpacks to more than 65536 bytes"),
        (tar_of({"hello.py": HELLO, "zeros.bin": b"\0" * (1 << 20)}), "base64+compressedtar",
         "'zeros.bin': the archive unpacks to more than 65536 bytes"),
        (zip_of({f"f{i}.py": b"" for i in range(5)}), "base64+zip",
         "'f3.py': the archive has more than 3 members"),
    ],
)  # fmt: skip
def test_check_refuses_archives_by_their_member_list(
    archive: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(Invalid, match="refusing archive member") as caught:
        check(b64(archive), content_type, max_unpacked_bytes=64 << 10, max_members=3)

    assert message in str(caught.value)


def test_checksum_is_checked_over_the_decoded_bytes(tmp_path: Path) -> None:
    checksum = "sha256:" + hashlib.sha256(ZIP).hexdigest().upper()

    code_dir = prepare(tmp_path, b64(ZIP), "base64+zip", checksum=checksum)

    assert files_under(code_dir) == {"hello.py": HELLO}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"../evil.py": b"x", "hello.py": HELLO},
         "refusing archive member '../evil.py': its path leaves the function's directory"),
        ({"a/../../evil.py": b"x"}, "'a/../../evil.py': its path leaves"),
        ({"/etc/evil.py": b"x"}, "refusing archive member '/etc/evil.py': absolute paths"),
        ({"hello.py": Link(target="/etc/passwd")},
         "refusing archive member 'hello.py': it links to '/etc/passwd', outside"),
        ({"hello.py": Link(target="../../etc/passwd")}, "it links to '../../etc/passwd', outside"),
        ({"a/b.py": Link(target="../x/../../y")}, "it links to '../x/../../y', outside"),
        # a link to "." makes its children's ".." climb out of the directory on disk
        ({"up": Link(target="."), "up/out": Link(target="../escape")},
         "refusing archive member 'up/out': it links to '../escape', outside"),
        # replacing a link would move the folder that later links were checked against
        ({"a": Link(target="deep/er"), "deep/er/": None, "a/l": Link(target="../../x"),
          "./a": Link(target=".")},
         "refusing archive member './a': a link of that name exists already"),
        ({"hello.py": HELLO, "evil": Link(target="/etc/passwd", hard=True)},
         "refusing archive member 'evil': it links to '/etc/passwd', which is no earlier file"),
        ({"hello.py": HELLO, "evil": Link(target="nothere.py", hard=True)},
         "'evil': it links to 'nothere.py', which is no earlier file member"),
        ({"dev/null": Special(kind=tarfile.CHRTYPE)},
         "refusing archive member 'dev/null': it is a special file"),
        ({"pipe": Special(kind=tarfile.FIFOTYPE)}, "'pipe': it is a special file"),
        ({"lib/x.py": b"", "lib": b"a file now"},
         "refusing archive member 'lib': a directory of that name exists already"),
        ({"lib": b"a file", "lib/x.py": b""},
         "refusing archive member 'lib/x.py': a file or a link of its folder's name exists"),
    ],
)  # fmt: skip
def test_tar_members_that_escape_are_refused(
    tmp_path: Path, entries: dict[str, Entry], message: str
) -> None:
    with pytest.raises(Invalid) as caught:
        prepare(tmp_path, b64(tar_of(entries)), "base64+compressedtar")

    assert message in str(caught.value)
    assert_nothing_left(tmp_path)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"../evil.py": b"x"}, "refusing archive member '../evil.py': its path leaves"),
        ({"/abs.py": b"x"}, "refusing archive member '/abs.py': absolute paths"),
        ({"hello.py": Link(target="/etc/passwd")}, "it links to '/etc/passwd', outside"),
        ({"fifo": Special(kind=b"")}, "refusing archive member 'fifo': it is a special file"),
    ],
)
def test_zip_members_that_escape_are_refused(
    tmp_path: Path, entries: dict[str, Entry], message: str
) -> None:
    with pytest.raises(Invalid, match="refusing archive member") as caught:
        prepare(tmp_path, b64(zip_of(entries)), "base64+zip")

    assert message in str(caught.value)
    assert_nothing_left(tmp_path)


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    bomb = zip_of({"hello.py": HELLO, "zeros.bin": b"\0" * (1 << 20)})
    assert len(bomb) < 4096

    with pytest.raises(Invalid, match="'zeros.bin': the archive unpacks to more than 65536 bytes"):
        prepare(tmp_path, b64(bomb), "base64+zip", max_unpacked_bytes=64 << 10)
    assert_nothing_left(tmp_path)


def test_tar_bomb_is_refused(tmp_path: Path) -> None:
    bomb = tar_of({"a.bin": b"\0" * (40 << 10), "b.bin": b"\0" * (40 << 10)})

    with pytest.raises(Invalid, match="'b.bin': the archive unpacks to more than 65536 bytes"):
        prepare(tmp_path, b64(bomb), "base64+compressedtar", max_unpacked_bytes=64 << 10)


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = zip_of({f"f{i}.py": b"" for i in range(5)})

    with pytest.raises(Invalid, match="'f3.py': the archive has more than 3 members"):
        prepare(tmp_path, b64(archive), "base64+zip", max_members=3)


def test_module_name_cannot_be_a_path(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match='handler module "../x" is not a valid file name'):
        prepare(tmp_path, HELLO.decode(), "text", module="../x")


class Fetcher:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.body


def test_prepared_code_is_kept_and_not_fetched_again(tmp_path: Path) -> None:
    fetch = Fetcher(HELLO)
    dest = tmp_path / "code" / "abc"
    for _ in range(2):
        prepare_code(
            content="https://example.invalid/x.py", content_type="url", checksum="",
            module="hello", suffix=".py", dest=dest, fetch_url=fetch,
        )  # fmt: skip

    assert fetch.urls == ["https://example.invalid/x.py"]
    assert files_under(dest) == {"hello.py": HELLO}


def test_leftovers_of_an_interrupted_preparation_are_removed(tmp_path: Path) -> None:
    leftover = tmp_path / "code" / ".abc.x1y2.tmp"
    leftover.mkdir(parents=True)
    (leftover / "hello.py").write_text("half-written")

    code_dir = prepare(tmp_path, HELLO.decode(), "text")

    assert files_under(code_dir) == {"hello.py": HELLO}
    assert not leftover.exists()


def test_preparation_holds_a_lock_while_it_works(tmp_path: Path) -> None:
    lock_path = tmp_path / "code" / ".abc.lock"
    held: list[bool] = []

    def fetch(url: str) -> bytes:
        with lock_path.open("rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return HELLO

    prepare_code(
        content="http://127.0.0.1:9/x.py", content_type="url", checksum="", module="hello",
        suffix=".py", dest=tmp_path / "code" / "abc", fetch_url=fetch,
    )  # fmt: skip

    assert held == [True]


def test_content_digest_covers_every_field() -> None:
    base = dict(content="x", content_type="text", checksum="", module="hello", suffix=".py")
    variants = [
        base,
        {**base, "content": "y"},
        {**base, "content_type": "base64"},
        {**base, "checksum": sha256(b"x")},
        {**base, "module": "hello2"},
        {**base, "suffix": ".js"},
        {**base, "content": "xt", "content_type": "ext"},  # no ambiguity across fields
    ]

    digests = [content_digest(**variant) for variant in variants]

    assert len(set(digests)) == len(variants)
    assert digests[0] == content_digest(**base)
    assert all(len(digest) == 64 for digest in digests)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args: object) -> QuietHandler:
        return QuietHandler(*args, directory=str(root))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_url_content_is_downloaded_and_checked(tmp_path: Path, web_root: tuple[Path, str]) -> None:
    root, base_url = web_root
    (root / "anything.py").write_bytes(HELLO)
    archive = tar_of({"hello.py": HELLO, "lib/util.py": LIB}, mode="w:bz2")
    (root / "code.tar.bz2").write_bytes(archive)

    single = prepare_code(
        content=f"{base_url}/anything.py", content_type="url", checksum=sha256(HELLO),
        module="hello", suffix=".py", dest=tmp_path / "one", fetch_url=download,
    )  # fmt: skip
    unpacked = prepare_code(
        content=f"{base_url}/code.tar.bz2", content_type="url+compressedtar",
        checksum=sha256(archive), module="hello", suffix=".py", dest=tmp_path / "two",
        fetch_url=None,
    )  # fmt: skip

    assert files_under(single) == {"hello.py": HELLO}
    assert files_under(unpacked) == {"hello.py": HELLO, "lib/util.py": LIB}


def test_url_download_failures_are_explained(tmp_path: Path, web_root: tuple[Path, str]) -> None:
    _, base_url = web_root

    with pytest.raises(Invalid) as missing:
        prepare(tmp_path, f"{base_url}/missing.py", "url")
    with closed_port() as port, pytest.raises(Invalid) as refused:
        prepare(tmp_path, f"http://127.0.0.1:{port}/x.py", "url")

    expected = f"could not download {base_url}/missing.py: HTTP 404 File not found"
    assert str(missing.value) == expected
    assert "Connection refused" in str(refused.value)
    assert_nothing_left(tmp_path)


def test_url_download_checks_the_checksum(tmp_path: Path, web_root: tuple[Path, str]) -> None:
    root, base_url = web_root
    (root / "hello.py").write_bytes(b"tampered")

    with pytest.raises(Invalid, match="checksum mismatch"):
        prepare(tmp_path, f"{base_url}/hello.py", "url", checksum=sha256(HELLO))


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections to it are refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]
