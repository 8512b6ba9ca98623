from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from funcmesh.errors import Invalid
from funcmesh.runtime.archives import (
    ArchiveFormat,
    ArchiveLimits,
    list_archive,
    unpack_archive,
)

# None: a folder. Names as archivers write them: "./" prefixes, folders with and without "/".
MEMBERS: dict[str, bytes | None] = {
    "./pkg/": None,
    "./pkg/__init__.py": b"",
    "main.py": b"print('hi')\n",
    "lib/util.py": b"X = 1\n",
    "empty": None,
}
FORMATS: tuple[ArchiveFormat, ...] = ("zip", "tar")


def archive_of(archive: ArchiveFormat, members: dict[str, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    if archive == "zip":
        with zipfile.ZipFile(buffer, "w") as out:
            for name, data in members.items():
                out.writestr(name.rstrip("/") + "/" if data is None else name, data or b"")
        return buffer.getvalue()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize("archive", FORMATS)
def test_listing_names_files_and_top_level_entries(archive: ArchiveFormat) -> None:
    listing = list_archive(archive, archive_of(archive, MEMBERS), limits=ArchiveLimits())

    assert listing.files == {"pkg/__init__.py", "main.py", "lib/util.py"}
    assert listing.top_names == ("empty/", "lib/", "main.py", "pkg/")


@pytest.mark.parametrize("archive", FORMATS)
def test_unpacking_writes_what_the_listing_promised(archive: ArchiveFormat, tmp_path: Path) -> None:
    raw = archive_of(archive, MEMBERS)

    unpack_archive(archive, raw, tmp_path, limits=ArchiveLimits())

    assert files_under(tmp_path) == list_archive(archive, raw, limits=ArchiveLimits()).files
    assert (tmp_path / "main.py").read_bytes() == b"print('hi')\n"
    assert (tmp_path / "empty").is_dir()


@pytest.mark.parametrize("archive", FORMATS)
def test_an_archive_exactly_at_the_limits_unpacks(archive: ArchiveFormat, tmp_path: Path) -> None:
    limits = ArchiveLimits(max_members=5, max_unpacked_bytes=18)  # MEMBERS: 5 members, 18 bytes
    raw = archive_of(archive, MEMBERS)

    unpack_archive(archive, raw, tmp_path, limits=limits)

    assert files_under(tmp_path) == list_archive(archive, raw, limits=limits).files


@pytest.mark.parametrize("archive", FORMATS)
@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (ArchiveLimits(max_members=4), "the archive has more than 4 members"),
        (ArchiveLimits(max_unpacked_bytes=17), r"the archive unpacks to more than 17 bytes"),
    ],
)
def test_listing_and_unpacking_refuse_an_archive_over_the_limits(
    archive: ArchiveFormat, limits: ArchiveLimits, message: str, tmp_path: Path
) -> None:
    raw = archive_of(archive, MEMBERS)

    with pytest.raises(Invalid, match=message) as listed:
        list_archive(archive, raw, limits=limits)
    with pytest.raises(Invalid, match=message):
        unpack_archive(archive, raw, tmp_path, limits=limits)

    assert [cause.field for cause in listed.value.causes] == ["spec.function"]
