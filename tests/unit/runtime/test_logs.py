from __future__ import annotations

import asyncio

import pytest

from funcmesh.errors import NotFound
from funcmesh.runtime.logs import LineSplitter, LogBook, LogRing


def test_ring_keeps_newest_lines_within_budget() -> None:
    ring = LogRing(budget_bytes=30)
    for index in range(10):
        ring.append(f"line {index:02d}")  # 7 bytes each
    assert ring.tail(None) == ["line 06", "line 07", "line 08", "line 09"]
    assert ring.tail(2) == ["line 08", "line 09"]
    assert ring.tail(0) == []


def test_splitter_joins_partial_lines_and_flushes_at_eof() -> None:
    lines: list[str] = []
    splitter = LineSplitter(lines.append)
    splitter.data_received(b"hel")
    splitter.data_received(b"lo\nwor")
    assert lines == ["hello"]
    splitter.eof_received()
    assert lines == ["hello", "wor"]


def test_instance_output_is_kept_per_function_and_per_pod() -> None:
    book = LogBook()
    book.instance_sink("default", "hello", "hello-abc")("printed")
    book.note("default", "hello", "instance hello-abc exited with code 1")
    function_lines = book.read_function_log("default", "hello", tail_lines=None, build=False)
    assert function_lines[0].endswith(" hello-abc printed")
    assert "[funcmesh] instance hello-abc exited" in function_lines[1]
    assert book.read_pod_log("default", "hello-abc", tail_lines=None)[0].endswith(" printed")
    book.forget_pod("default", "hello-abc")
    with pytest.raises(NotFound):
        book.read_pod_log("default", "hello-abc", tail_lines=None)


async def test_followers_see_new_lines_until_closed() -> None:
    book = LogBook()
    follower = book.follow_function_log("default", "hello", build=True)
    received = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)
    book.build_line("default", "hello", "Collecting six")
    assert (await asyncio.wait_for(received, 2)).endswith("Collecting six")
    book.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(follower), 2)
