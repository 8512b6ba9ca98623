"""Fetching a function's code or dependency file from a URL, as ``kubeless function deploy`` does.

The CLI downloads a ``--from-file https://...`` itself to compute the checksum (the Function keeps
the URL). This module only downloads; it must not interpret the bytes.
"""

from __future__ import annotations

import logging

import httpx

from funcmesh.errors import FuncmeshError

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0
MAX_DOWNLOAD_BYTES = 64 << 20


def fetch_url(url: str, *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The body of ``GET url`` (redirects followed), or FuncmeshError saying why not."""
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as response:
            if not response.is_success:
                raise FuncmeshError(
                    f"cannot download {url}: {response.status_code} {response.reason_phrase}"
                )
            return _read_bounded(response, url)
    except httpx.HTTPError as exc:
        raise FuncmeshError(f"cannot download {url}: {exc or type(exc).__name__}") from exc


def _read_bounded(response: httpx.Response, url: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_DOWNLOAD_BYTES:
            raise FuncmeshError(f"cannot download {url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
        chunks.append(chunk)
    logger.debug("downloaded %d bytes from %s", size, url)
    return b"".join(chunks)
