from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.codec import dump_yaml, load_manifests
from funcmesh.model.durations import parse_duration_s
from funcmesh.model.quantity import parse_memory_bytes


def test_multi_document_yaml_and_lists() -> None:
    text = """
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: b}}
"""
    assert [o["metadata"]["name"] for o in load_manifests(text)] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: [1, 2", "line"),
        ("- 1\n- 2\n", "not an object"),
        ("kind: Function\n", "no apiVersion"),
    ],
)
def test_bad_manifests_say_why(text: str, words: str) -> None:
    with pytest.raises(Invalid, match=words):
        load_manifests(text, source="f.yaml")


def test_code_is_dumped_as_a_block() -> None:
    assert "function: |" in dump_yaml({"function": "def f():\n    pass\n"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("180", 180.0), ("1.5s", 1.5), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text, what="t") == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("128Mi", 128 << 20), ("1G", 10**9), ("64", 64), ("1.5Ki", 1536)]
)
def test_memory_quantities(text: str, size: int) -> None:
    assert parse_memory_bytes(text) == size


def test_bad_quantity() -> None:
    with pytest.raises(Invalid, match="128XB"):
        parse_memory_bytes("128XB")
