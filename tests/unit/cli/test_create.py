"""``create secret``: literals and files become a base64 Secret; bad flags say what is wrong."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from funcmesh.cli.create import build_secret, read_files, read_literals
from funcmesh.errors import Invalid


def test_literals_and_files_become_base64_data(tmp_path: Path) -> None:
    (tmp_path / "auth").write_bytes(b"foo:{SHA}x\n")
    (tmp_path / "other.bin").write_bytes(b"\x00\xff")
    data = {
        **read_literals(["user=admin", "empty=", "eq=a=b"]),
        **read_files([str(tmp_path / "auth"), f"blob={tmp_path / 'other.bin'}"]),
    }
    secret = build_secret("s", "ns", data, "Opaque")
    decoded = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert decoded == {
        "user": b"admin", "empty": b"", "eq": b"a=b", "auth": b"foo:{SHA}x\n", "blob": b"\x00\xff",
    }  # fmt: skip
    assert secret["type"] == "Opaque"


@pytest.mark.parametrize(
    ("literals", "message"),
    [(["novalue"], "needs KEY=VALUE"), (["=x"], "needs KEY=VALUE"), (["a=1", "a=2"], "twice")],
)
def test_bad_literals_are_refused(literals: list[str], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        read_literals(literals)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="cannot read .*missing"):
        read_files([str(tmp_path / "missing")])
