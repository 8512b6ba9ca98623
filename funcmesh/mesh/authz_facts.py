"""The facts an AuthorizationPolicy reads: who calls (``Peer``) and what it asks
(``RequestFacts``), as Istio sees them.

A peer is known by its mesh identity, the principal "cluster.local/ns/NS/sa/SA" of its
certificate; a caller without one has no principal and no namespace (Istio learns the
namespace from the certificate only), and its address. ``RequestFacts.parse`` builds the
request's facts from the raw request parts after Istio's default ``BASE`` path normalization
(istio.io/latest/docs/reference/config/security/normalization/):

- the path is compared without its query string ("Istio authorization policy removes
  everything after the ? when comparing to the path");
- the percent-encodings of the unreserved characters (``- . _ ~``, digits, letters) are
  decoded once, backslashes become slashes, dot segments are removed (RFC 3986); slashes are
  not merged (that is the MERGE_SLASHES option, off by default);
- "%00" in the path, or a method not in upper case, is refused with 400 before any policy.

Istio sends the normalized path on to the backend ("The normalized request will be used for
both the evaluation of authorization policies and the request that is ultimately sent to the
backend server"), so the data plane should forward ``RequestFacts.path`` (plus the query) when
it checked one. No I/O, no logging, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# the unreserved characters' escapes that BASE decodes: - . 0-9 A-Z _ a-z ~
_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|3[0-9]|[4-6][0-9a-fA-F]|7[0-9aAeE])")
_DECODED_UNRESERVED = frozenset(
    "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """The caller: its mesh identity ("" without a certificate; Istio's metrics then say
    "unknown"), its namespace as that identity says ("" when unknown) and its address."""

    principal: str = ""
    namespace: str = ""
    ip: str = ""

    @classmethod
    def of(cls, principal: str, ip: str) -> Peer:
        """The caller with ``principal`` ("cluster.local/ns/NS/sa/SA", or "") at ``ip``."""
        return cls(principal=principal, namespace=namespace_of_principal(principal), ip=ip)


def namespace_of_principal(principal: str) -> str:
    """NS of "TRUST_DOMAIN/ns/NS/sa/SA", "" when the principal names none."""
    _, found, rest = principal.partition("/ns/")
    return rest.partition("/")[0] if found else ""


@dataclass(slots=True, kw_only=True)
class RequestFacts:
    """What a request asks: ``path`` without the query string (and normalized, see
    ``parse``), the destination ``port`` it arrived on, its raw headers (looked up by
    ``header`` through a table built on first use)."""

    method: str
    path: str
    port: int
    host: str = ""
    headers: Sequence[tuple[bytes, bytes]] = ()
    _table: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def parse(
        cls,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        *,
        port: int,
        host: str = "",
    ) -> RequestFacts | None:
        """The facts of a request with an origin-form ``target``, or None when Istio refuses
        it with 400 before any policy: a method not in upper case, a path with "%00"."""
        text = method.decode("latin-1")
        path = normalize_path(
            target.partition(b"?")[0].partition(b"#")[0].decode("utf-8", "surrogateescape")
        )
        if path is None or text != text.upper():
            return None
        return cls(method=text, path=path, port=port, host=host, headers=headers)

    def header(self, name: str) -> str:
        """The value of header ``name`` (lower case); a header sent several times gives its
        values joined with ","; "" when absent."""
        table = self._table
        if table is None:
            table = self._table = _header_table(self.headers)
        return table.get(name, "")


def _header_table(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        old = table.get(name)
        table[name] = value if old is None else f"{old},{value}"
    return table


def normalize_path(path: str) -> str | None:
    """``path`` as Istio's default (BASE) normalization makes it, or None for a path Istio
    refuses with 400 ("%00"). "/a/%2e%2E/b" -> "/b", "/a\\b" -> "/a/b", "/a//b" unchanged."""
    if "%" in path:
        if "%00" in path:
            return None
        path = _UNRESERVED_ESCAPE.sub(_decode_unreserved, path)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "/." in path and path.startswith("/"):
        path = _remove_dot_segments(path)
    return path


def _decode_unreserved(escape: re.Match[str]) -> str:
    char = chr(int(escape[1], 16))
    return char if char in _DECODED_UNRESERVED else escape[0]


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path."""
    parts = path[1:].split("/")
    out: list[str] = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if part == "..":
            if out:
                out.pop()
        elif part != ".":
            out.append(part)
            continue
        if i == last:
            out.append("")  # "/a/b/.." -> "/a/": the path still names a directory
    return "/" + "/".join(out)
