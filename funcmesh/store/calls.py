"""Async function calls, kept durably in the store's SQLite file (table ``calls``).

A call is accepted as ``Pending``, claimed as ``Running`` (committed before the function is
called), and ends ``Succeeded``, ``Failed`` or ``Interrupted`` (it was running when the daemon
died: it is never run again, so no call runs twice). Statements run on the store's thread; the
rows never enter the objects change feed. This module knows nothing about HTTP or functions.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from funcmesh.errors import NotFound
from funcmesh.store.sqlite import Store

PENDING, RUNNING, SUCCEEDED, FAILED, INTERRUPTED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Interrupted",
)
DELIVERED = "Delivered"  # callback outcome; FAILED is the other one

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL, name TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    headers TEXT NOT NULL, body BLOB NOT NULL, callback_url TEXT,
    phase TEXT NOT NULL, accepted_at REAL NOT NULL, started_at REAL, finished_at REAL,
    status_code INTEGER, result BLOB, error TEXT, callback TEXT, callback_error TEXT
);
CREATE INDEX IF NOT EXISTS calls_by_phase ON calls (phase, seq);
"""
_COLUMNS = (
    "id, namespace, name, method, path, headers, body, callback_url, phase, accepted_at,"
    " started_at, finished_at, status_code, result, error, callback, callback_error"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewCall:
    """What an accepted async call asks for."""

    namespace: str
    name: str
    method: str
    path: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    callback_url: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """One async call as stored: its request, where it is, and its outcome once it has one."""

    id: str
    namespace: str
    name: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    callback_url: str | None
    phase: str
    accepted_at: float
    started_at: float | None
    finished_at: float | None
    status_code: int | None
    result: bytes | None
    error: str | None
    callback: str | None
    callback_error: str | None

    @property
    def function(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a call ended: the function's answer, or why there is none."""

    phase: str
    status_code: int | None
    result: bytes | None
    error: str | None = None


class CallStore:
    """The ``calls`` table; every method is one transaction on the store's thread."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def prepare(self) -> None:
        """Create the table if this database has none yet."""
        await self._store.run_sql(lambda db: db.executescript(_SCHEMA))

    async def add(self, call: NewCall) -> str:
        """Store a call as Pending; its id."""
        call_id = uuid.uuid4().hex
        row = (
            call_id,
            call.namespace,
            call.name,
            call.method,
            call.path,
            json.dumps(list(call.headers)),
            call.body,
            call.callback_url,
            PENDING,
            time.time(),
        )

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO calls (id, namespace, name, method, path, headers, body,"
                " callback_url, phase, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._store.run_sql(insert)
        return call_id

    async def get(self, call_id: str) -> CallRecord:
        def select(db: sqlite3.Connection) -> tuple[object, ...] | None:
            query = f"SELECT {_COLUMNS} FROM calls WHERE id=?"
            row: tuple[object, ...] | None = db.execute(query, (call_id,)).fetchone()
            return row

        row = await self._store.run_sql(select)
        if row is None:
            raise NotFound(f'call "{call_id}" not found')
        return _record(row)

    async def claim(self, limit: int) -> list[CallRecord]:
        """Mark up to ``limit`` Pending calls Running (oldest first, committed) and return them."""

        def claim_rows(db: sqlite3.Connection) -> list[tuple[object, ...]]:
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM calls WHERE phase=? ORDER BY seq LIMIT ?",
                    (PENDING, limit),
                ).fetchall()
                now = time.time()
                db.executemany(
                    "UPDATE calls SET phase=?, started_at=? WHERE id=?",
                    [(RUNNING, now, row[0]) for row in rows],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return [(*row[:8], RUNNING, row[9], now, *row[11:]) for row in rows]

        if limit <= 0:
            return []
        return [_record(row) for row in await self._store.run_sql(claim_rows)]

    async def finish(self, call_id: str, outcome: Outcome) -> None:
        values = (
            outcome.phase,
            time.time(),
            outcome.status_code,
            outcome.result,
            outcome.error,
            call_id,
        )
        await self._store.run_sql(
            lambda db: db.execute(
                "UPDATE calls SET phase=?, finished_at=?, status_code=?, result=?, error=?"
                " WHERE id=?",
                values,
            )
        )

    async def record_callback(self, call_id: str, *, delivered: bool, error: str | None) -> None:
        values = (DELIVERED if delivered else FAILED, error, call_id)
        await self._store.run_sql(
            lambda db: db.execute(
                "UPDATE calls SET callback=?, callback_error=? WHERE id=?", values
            )
        )

    async def interrupt_running(self) -> int:
        """Mark every Running call Interrupted (the daemon died during them); how many."""
        values = (INTERRUPTED, time.time(), "the daemon stopped while the call ran", RUNNING)

        def interrupt(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE calls SET phase=?, finished_at=?, error=? WHERE phase=?", values
            )
            return cursor.rowcount

        return await self._store.run_sql(interrupt)

    async def purge_ended(self, *, ended_before: float) -> int:
        """Delete the calls that ended (any phase but Pending and Running) before the Unix
        time ``ended_before``; how many went."""
        values = (PENDING, RUNNING, ended_before)

        def purge(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM calls WHERE phase NOT IN (?, ?) AND finished_at < ?", values
            )
            return cursor.rowcount

        return await self._store.run_sql(purge)


def _record(row: Sequence[object]) -> CallRecord:
    (
        call_id,
        namespace,
        name,
        method,
        path,
        headers,
        body,
        callback_url,
        phase,
        accepted_at,
        started_at,
        finished_at,
        status_code,
        result,
        error,
        callback,
        callback_error,
    ) = row
    return CallRecord(
        id=str(call_id),
        namespace=str(namespace),
        name=str(name),
        method=str(method),
        path=str(path),
        headers=tuple((str(k), str(v)) for k, v in json.loads(str(headers))),
        body=bytes(body) if isinstance(body, bytes) else b"",
        callback_url=None if callback_url is None else str(callback_url),
        phase=str(phase),
        accepted_at=float(str(accepted_at)),
        started_at=None if started_at is None else float(str(started_at)),
        finished_at=None if finished_at is None else float(str(finished_at)),
        status_code=None if status_code is None else int(str(status_code)),
        result=bytes(result) if isinstance(result, bytes) else None,
        error=None if error is None else str(error),
        callback=None if callback is None else str(callback),
        callback_error=None if callback_error is None else str(callback_error),
    )
