"""Which function an HTTP request target calls, and the target the function sees.

``/function/NAME`` calls NAME in namespace ``default``, ``/function/NAME.NS`` calls it in NS; the
rest of the path and the query go to the function (``/function/hello/a?x=1`` -> ``/a?x=1``).
Pure functions on the raw request target (recent results cached): no I/O, no knowledge of
backends or instances.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DEFAULT_NAMESPACE = "default"
# Calls repeat their targets, so parsed routes are kept: the most recent ones, short ones only
# (at most _CACHED_TARGETS * _CACHED_TARGET_BYTES of keys).
_CACHED_TARGETS = 1024
_CACHED_TARGET_BYTES = 256

_FUNCTION_TARGET = re.compile(rb"/function/([^/?.]+)(?:\.([^/?]+))?([/?].*)?", re.DOTALL)


@dataclass(slots=True, kw_only=True, init=False, unsafe_hash=True)
class FunctionRoute:
    """A request for one function, and the target (path and query) to send to it; a value,
    never changed once made.

    Not ``frozen``, and its ``__init__`` written out, for its cost: one is made per call, and
    compiled (``funcmesh.native``) this ``__init__`` runs in C, where a dataclass's generated
    one stays interpreted (a frozen one's sets each field through ``object.__setattr__``).
    """

    namespace: str
    name: str
    target: bytes

    def __init__(self, *, namespace: str, name: str, target: bytes) -> None:
        self.namespace = namespace
        self.name = name
        self.target = target

    @property
    def display_name(self) -> str:
        return f"{self.namespace}/{self.name}"


def origin_form(target: bytes) -> bytes:
    """The path and query of a request target; an absolute-form target loses scheme and host."""
    if target.startswith(b"/"):
        return target
    authority_start = target.find(b"://")
    if authority_start == -1:
        return target  # "*" or an authority-form target: routes nowhere
    authority_start += 3
    path_start = min(
        _find_or_end(target, b"/", authority_start), _find_or_end(target, b"?", authority_start)
    )
    return _with_leading_slash(target[path_start:])


def route_function(target: bytes) -> FunctionRoute | None:
    """The function that an origin-form target calls, or None when it is not a function call."""
    if len(target) <= _CACHED_TARGET_BYTES:
        return _route_cached(target)
    return _route(target)


@functools.lru_cache(maxsize=_CACHED_TARGETS)
def _route_cached(target: bytes) -> FunctionRoute | None:
    return _route(target)


def _route(target: bytes) -> FunctionRoute | None:
    match = _FUNCTION_TARGET.fullmatch(target)
    if match is None:
        return None
    name, namespace, rest = match.groups()
    return FunctionRoute(
        namespace=namespace.decode("latin-1") if namespace else DEFAULT_NAMESPACE,
        name=name.decode("latin-1"),
        target=_with_leading_slash(rest or b""),
    )


def is_health_check(target: bytes) -> bool:
    """True for the gateway's own ``/healthz``."""
    return target == b"/healthz" or target.startswith(b"/healthz?")


def _find_or_end(data: bytes, needle: bytes, start: int) -> int:
    index = data.find(needle, start)
    return len(data) if index == -1 else index


def _with_leading_slash(target: bytes) -> bytes:
    return target if target.startswith(b"/") else b"/" + target
