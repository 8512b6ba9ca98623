"""``GET /funcmesh/v1/mesh/accesslog``: the access log lines that ``funcmesh mesh logs`` shows.

Plain text, one line per request through the mesh, oldest first: every line the daemon keeps,
or the last ``tailLines=N``; with ``follow=true`` the answer stays open (chunked) and carries
new lines as they come, until the client goes away or the server stops. Served beside
``/funcmesh/v1/server-config`` because the log belongs to no stored object. A server built
without an access log answers 404 saying so.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from funcmesh.api.streams import tail_lines, until_stopped
from funcmesh.errors import NotFound
from funcmesh.mesh.access_log import AccessLog

PATH = "/funcmesh/v1/mesh/accesslog"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
_TRUE = frozenset({"true", "1"})


class MeshAccessLogEndpoint:
    """Serves the access log of the mesh, or 404 when the daemon keeps none."""

    def __init__(self, access_log: AccessLog | None, *, stop: asyncio.Event) -> None:
        self._access_log = access_log
        self._stop = stop

    async def serve(self, request: web.Request) -> web.StreamResponse:
        access_log = self._access_log
        if access_log is None:
            raise NotFound("the mesh access log is not enabled on this server")
        tail = tail_lines(request.query.get("tailLines"))
        backlog = access_log.lines(tail=tail)
        if request.query.get("follow", "").lower() not in _TRUE:
            return web.Response(text=_text(backlog), content_type="text/plain")
        after_seq = backlog[-1][0] if backlog else access_log.last_seq
        response = web.StreamResponse(headers={"Content-Type": TEXT_CONTENT_TYPE})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            await response.write(_text(backlog).encode())
            batches = until_stopped(access_log.follow(after_seq), stop=self._stop)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    await response.write(_text(batch).encode())
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        return response


def _text(lines: list[tuple[int, str]]) -> str:
    return "".join(f"{line}\n" for _, line in lines)
