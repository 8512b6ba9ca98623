"""Byte-compiling a function's code for its runtime, once per code and runtime.

The function controller (``funcmesh.controllers.functions``) calls :func:`precompile` after it
has prepared a revision's code, so that workers find ``__pycache__`` ready. Must not load or
run the code, or report a syntax error (the load check does).
"""

from __future__ import annotations

import asyncio
import compileall
import sys
from pathlib import Path

from funcmesh.runtime.catalog import Runtime


async def precompile(code_dir: Path, runtime: Runtime) -> None:
    """Byte-compile the code for the runtime's interpreter, once per code and runtime.

    Workers may run as nobody and could not write ``__pycache__`` themselves: without this,
    every cold start would compile the handler again. The daemon compiles in a thread when its
    Python is the runtime's, else the runtime's interpreter does it. A syntax error is left
    for the load check to report.
    """
    marker = code_dir / f".compiled-{runtime.id}"
    if runtime.language != "python" or marker.exists():
        return
    if tuple(runtime.version[:2]) == sys.version_info[:2]:
        await asyncio.to_thread(compileall.compile_dir, str(code_dir), quiet=2)
    else:
        await _run_quietly(str(runtime.executable), "-m", "compileall", "-q", str(code_dir))
    marker.touch()


async def _run_quietly(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await process.wait()
    finally:
        if process.returncode is None:  # cancelled: the daemon is stopping
            process.kill()
            await process.wait()
