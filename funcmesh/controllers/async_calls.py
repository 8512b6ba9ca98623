"""Runs accepted async calls: claims them from the store, calls them, records and reports.

``AsyncCallRunner.submit`` stores a call (the gateway's seam); a loop claims Pending calls, at
most ``max_concurrent`` at a time, each marked Running durably before its function is called
through the Invoker, so a call the daemon died during is recorded Interrupted on the next start
and never runs twice. With a callback URL the result is POSTed there (``X-Call-Id``,
``X-Function-Status``, ``X-Function-Name``), retried with backoff, then recorded as failed.
It does not speak HTTP to instances and does not parse the gateway's requests.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from funcmesh.controllers.invoker import FunctionCaller
from funcmesh.errors import FuncmeshError
from funcmesh.store.calls import FAILED, SUCCEEDED, CallRecord, CallStore, NewCall, Outcome

logger = logging.getLogger(__name__)

MAX_RESULT_BYTES = 1 << 20
CALLBACK_ATTEMPTS = 4
CALLBACK_BACKOFF_S = 0.5
CALLBACK_TIMEOUT_S = 10.0
RETENTION_S = 24 * 3600.0  # an ended call can be read this long, then it is deleted
PURGE_INTERVAL_S = 600.0


class AsyncCallRunner:
    """Stores submitted calls and runs them in the background until ``close``."""

    def __init__(
        self,
        calls: CallStore,
        *,
        max_concurrent: int = 16,
        callback_attempts: int = CALLBACK_ATTEMPTS,
        callback_backoff_s: float = CALLBACK_BACKOFF_S,
        retention_s: float = RETENTION_S,
        purge_interval_s: float = PURGE_INTERVAL_S,
    ) -> None:
        self._calls = calls
        self._max_concurrent = max_concurrent
        self._callback_attempts = callback_attempts
        self._callback_backoff_s = callback_backoff_s
        self._retention_s = retention_s
        self._purge_interval_s = purge_interval_s
        self._purge_task: asyncio.Task[None] | None = None
        self._caller: FunctionCaller | None = None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def prepare(self) -> None:
        """Before the gateway takes calls: the table exists and interrupted calls are marked."""
        await self._calls.prepare()
        interrupted = await self._calls.interrupt_running()
        if interrupted:
            logger.warning("%d async calls were running when the daemon stopped", interrupted)

    def start(self, caller: FunctionCaller) -> None:
        """Run pending calls (also those accepted before a restart) through ``caller``."""
        self._caller = caller
        self._loop_task = asyncio.get_running_loop().create_task(self._claim_forever())
        self._purge_task = asyncio.get_running_loop().create_task(self._purge_forever())

    async def submit(
        self,
        *,
        namespace: str,
        name: str,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        callback_url: str | None,
    ) -> str:
        """Store a call durably; its id. It runs once the runner has started."""
        new = NewCall(
            namespace=namespace,
            name=name,
            method=method,
            path=path,
            headers=headers,
            body=body,
            callback_url=callback_url,
        )
        call_id = await self._calls.add(new)
        self._wake.set()
        return call_id

    async def close(self, drain_s: float) -> None:
        """Stop claiming; let running calls finish for up to ``drain_s``, then cancel them
        (they are recorded Interrupted on the next start)."""
        for task in (self._loop_task, self._purge_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._running:
            await asyncio.wait(set(self._running), timeout=drain_s)
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _claim_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                claimed = await self._calls.claim(self._max_concurrent - len(self._running))
            except Exception:  # the loop's boundary: log, and try again on the next wake-up
                logger.exception("claiming async calls failed")
                claimed = []
            for call in claimed:
                task = asyncio.get_running_loop().create_task(self._run_guarded(call))
                self._running.add(task)
                task.add_done_callback(self._ended)
            if not claimed or len(self._running) >= self._max_concurrent:
                await self._wake.wait()

    async def _purge_forever(self) -> None:
        """Delete calls that ended more than ``retention_s`` ago: at start, then periodically."""
        while True:
            try:
                purged = await self._calls.purge_ended(ended_before=time.time() - self._retention_s)
                if purged:
                    logger.info("deleted %d async calls older than the retention", purged)
            except Exception:  # the loop's boundary: log, and try again later
                logger.exception("purging old async calls failed")
            await asyncio.sleep(self._purge_interval_s)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()

    async def _run_guarded(self, call: CallRecord) -> None:
        try:
            await self._run(call)
        except Exception:
            logger.exception("async call %s of %s failed", call.id, call.function)

    async def _run(self, call: CallRecord) -> None:
        outcome = await self._invoke(call)
        await self._calls.finish(call.id, outcome)
        logger.info("async call %s of %s: %s", call.id, call.function, outcome.phase)
        if call.callback_url:
            error = await self._deliver(call, outcome)
            await self._calls.record_callback(call.id, delivered=error is None, error=error)

    async def _invoke(self, call: CallRecord) -> Outcome:
        assert self._caller is not None
        try:
            answer = await self._caller.call(
                call.namespace,
                call.name,
                method=call.method,
                body=call.body,
                headers=dict(call.headers),
                path=call.path,
            )
        except FuncmeshError as exc:
            return Outcome(phase=FAILED, status_code=None, result=None, error=str(exc))
        return Outcome(
            phase=SUCCEEDED if answer.ok else FAILED,
            status_code=answer.status,
            result=answer.body[:MAX_RESULT_BYTES],
        )

    async def _deliver(self, call: CallRecord, outcome: Outcome) -> str | None:
        """POST the result to the callback URL; None when delivered, else the last error."""
        assert call.callback_url is not None
        headers = {
            "X-Call-Id": call.id,
            "X-Function-Status": str(outcome.status_code or 0),
            "X-Function-Name": call.function,
            "Content-Type": "application/octet-stream",
        }
        error = "not attempted"
        for attempt in range(self._callback_attempts):
            if attempt:
                await asyncio.sleep(self._callback_backoff_s * 2 ** (attempt - 1))
            try:
                status = await post(call.callback_url, outcome.result or b"", headers)
            except (OSError, TimeoutError, ValueError) as exc:
                error = f"callback to {call.callback_url} failed: {exc or type(exc).__name__}"
                continue
            if status < 500:
                return None if status < 400 else f"callback answered {status}"
            error = f"callback answered {status}"
        logger.warning("async call %s: %s", call.id, error)
        return error


async def post(
    url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float = CALLBACK_TIMEOUT_S
) -> int:
    """POST ``body`` to an http(s) URL with one short-lived HTTP/1.1 connection; the status."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"callback URL {url!r} is not an http(s) URL")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if "\r" not in v and "\n" not in v]
    lines.append("Connection: close")
    async with asyncio.timeout(timeout_s):
        context = ssl.create_default_context() if tls else None
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
    fields = status_line.split()
    if len(fields) < 2 or not fields[1].isdigit():
        raise ValueError(f"callback answered no HTTP status: {status_line[:80]!r}")
    return int(fields[1])
