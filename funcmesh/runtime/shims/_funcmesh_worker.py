"""Funcmesh Python worker: serves one Kubeless function over HTTP/1.1 on a listening socket.

Implements the Kubeless Python runtime contract (``handler(event, context)``, ``GET /healthz``,
``GET /metrics``) with the fixes funcmesh promises: every method reaches the handler, JSON bodies
are parsed whatever their charset parameter, lists/numbers/tuples/response objects map to
sensible answers, and a handler error answers 500 naming the exception. One thread per
connection, blocking I/O, hand-written parsing: this is the hot path of every function call.

The zygote forks a worker and calls :func:`load_function` and :meth:`Server.serve_forever`;
``python _funcmesh_worker.py`` serves a function the way a Kubeless runtime image does
(``MOD_NAME``, ``FUNC_HANDLER``, ``FUNC_PORT`` ...), so the same file runs in a container.

Must not: import anything outside the standard library (it runs in the user's interpreter,
Python 3.8 or newer), import the daemon, enforce timeouts (the daemon kills the process),
or print anything per request (the daemon records calls).
"""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import email.parser
import email.policy
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import unicodedata
from bisect import bisect_left
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, Iterator, Tuple

    Handler = Callable[[Dict[str, Any], Dict[str, Any]], Any]
    # A reply: status, Content-Type value, extra header block (CRLF-terminated lines), body.
    Reply = Tuple[int, bytes, bytes, bytes]

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 100 * 1024 * 1024  # Kubeless's FUNC_MEMFILE_MAX default
RECV_BYTES = 64 * 1024
DRAIN_TIMEOUT_S = 10.0
ACCEPT_RETRY_S = 0.1
MAX_METHOD_LABELS = 16
MEMORY_EXIT_STATUS = 213  # also in funcmesh/runtime/instances.py; unusual, so a handler's own exit is not mistaken for it
HISTOGRAM_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHIM_MODULES = frozenset(
    {
        "_funcmesh_worker",
        "_funcmesh_zygote",
        "_funcmesh_secrets",
        "_funcmesh_names",
        "_funcmesh_mtls",
        "_funcmesh_interpreter_mounts",
    }
)

TEXT_HTML = b"text/html; charset=UTF-8"
TEXT_PLAIN = b"text/plain; charset=utf-8"
APPLICATION_JSON = b"application/json"
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CLOSE = b"Connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BadRequest(Exception):
    """The request cannot be served; ``status`` is the answer (400, 413, 431, 501, 505)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    """The peer closed the connection in the middle of a request."""


# --------------------------------------------------------------------------- request objects


class MultiDict(collections.abc.Mapping):  # type: ignore[type-arg] # 3.8: no [str, Any]
    """Bottle-style multi-dict: ``d[k]`` and ``d.get(k)`` give the last value, ``getall`` all.

    Attribute access (``request.query.name``) returns ``""`` for a missing key, as bottle's
    FormsDict does.
    """

    __slots__ = ("_lists",)

    def __init__(self, pairs: Any = ()) -> None:
        lists: dict[str, list[Any]] = {}
        for key, value in pairs:
            if key in lists:
                lists[key].append(value)
            else:
                lists[key] = [value]
        self._lists = lists

    def __getitem__(self, key: str) -> Any:
        return self._lists[key][-1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lists)

    def __len__(self) -> int:
        return len(self._lists)

    def __repr__(self) -> str:
        return f"MultiDict({self.allitems()!r})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._lists.get(name)
        return values[-1] if values else ""

    def get(self, key: str, default: Any = None, index: int = -1, type: Any = None) -> Any:
        try:
            value = self._lists[key][index]
            return type(value) if type is not None else value
        except (KeyError, IndexError, ValueError):
            return default

    def getall(self, key: str) -> list[Any]:
        return list(self._lists.get(key, ()))

    getlist = getall
    getone = get

    def allitems(self) -> list[tuple[str, Any]]:
        return [(key, value) for key, values in self._lists.items() for value in values]


class Headers(collections.abc.Mapping):  # type: ignore[type-arg]
    """Case-insensitive read-only view of the request headers; names iterate Title-Cased."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values  # lower-case name -> value (repeated headers joined by ", ")

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return (name.title() for name in self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name.lower(), default)


class FileUpload:
    """One uploaded file of a multipart body, shaped like bottle's FileUpload."""

    __slots__ = ("file", "headers", "name", "raw_filename")

    def __init__(self, fileobj: io.BytesIO, name: str, raw_filename: str, headers: Headers) -> None:
        self.file = fileobj
        self.name = name
        self.raw_filename = raw_filename
        self.headers = headers

    def __repr__(self) -> str:
        return f"<FileUpload {self.name}={self.raw_filename!r}>"

    @property
    def content_type(self) -> str | None:
        content_type: str | None = self.headers.get("content-type")
        return content_type

    @property
    def content_length(self) -> int:
        return len(self.file.getbuffer())

    @property
    def filename(self) -> str:
        """The file name made safe for a file system, exactly as bottle sanitises it."""
        name = unicodedata.normalize("NFKD", self.raw_filename)
        name = name.encode("ascii", "ignore").decode("ascii")
        name = os.path.basename(name.replace("\\", os.path.sep))
        name = re.sub(r"[^a-zA-Z0-9-_.\s]", "", name).strip()
        name = re.sub(r"[-\s]+", "-", name).strip(".-")
        return name[:255] or "empty"

    def save(self, destination: Any, overwrite: bool = False) -> None:
        """Write the file to a path (a directory gets ``filename`` appended) or a file object."""
        self.file.seek(0)
        if hasattr(destination, "write"):
            shutil.copyfileobj(self.file, destination)
            return
        if os.path.isdir(destination):
            destination = os.path.join(destination, self.filename)
        with open(destination, "wb" if overwrite else "xb") as target:
            shutil.copyfileobj(self.file, target)


class Request:
    """What a Kubeless (bottle) function reads from ``event['extensions']['request']``."""

    __slots__ = (
        "_body",
        "_files",
        "_forms",
        "_json",
        "_peer",
        "_query",
        "_raw_path",
        "_target",
        "headers",
        "method",
        "query_string",
    )

    def __init__(
        self, method: str, target: str, headers: dict[str, str], body: bytes, peer: Any = None
    ) -> None:
        self.method = method
        raw_path, _, query_string = target.partition("?")
        self._raw_path = raw_path
        self.query_string = query_string
        self.headers = Headers(headers)
        self._target = target
        self._body = body
        self._peer = peer
        self._json: Any = _UNSET
        self._query: MultiDict | None = None
        self._forms: tuple[MultiDict, MultiDict] | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._target}>"

    @property
    def path(self) -> str:
        raw = self._raw_path
        return unquote(raw, errors="replace") if "%" in raw else raw

    @property
    def fullpath(self) -> str:
        return self._target

    @property
    def url(self) -> str:
        host = self.headers.get("host")
        if host is None:
            host = "{}:{}".format(*self._peer[:2]) if self._peer else "localhost"
        scheme = self.headers.get("x-forwarded-proto", "http")
        return f"{scheme}://{host}{self._target}"

    @property
    def remote_route(self) -> list[str]:
        forwarded = self.headers.get("x-forwarded-for")
        if forwarded:
            return [ip.strip() for ip in forwarded.split(",")]
        return [self._peer[0]] if self._peer else []

    @property
    def remote_addr(self) -> str | None:
        route = self.remote_route
        return route[0] if route else None

    @property
    def content_type(self) -> str:
        content_type: str = self.headers.get("content-type", "")
        return content_type.lower()

    @property
    def content_length(self) -> int:
        value = self.headers.get("content-length")
        return int(value) if value else (len(self._body) if self._body else -1)

    @property
    def body(self) -> io.BytesIO:
        return io.BytesIO(self._body)

    @property
    def json(self) -> Any:
        """The parsed body when the media type is application/json, else None."""
        if self._json is _UNSET:
            self._json = parse_json_body(self._body) if is_json(self.content_type) else None
        return self._json

    @property
    def query(self) -> MultiDict:
        if self._query is None:
            self._query = MultiDict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    GET = query

    @property
    def forms(self) -> MultiDict:
        return self._form_data()[0]

    @property
    def files(self) -> MultiDict:
        return self._form_data()[1]

    @property
    def POST(self) -> MultiDict:
        forms, files = self._form_data()
        return MultiDict(forms.allitems() + files.allitems())

    @property
    def params(self) -> MultiDict:
        return MultiDict(self.query.allitems() + self.forms.allitems())

    @property
    def cookies(self) -> MultiDict:
        jar: SimpleCookie = SimpleCookie()
        jar.load(self.headers.get("cookie", ""))
        return MultiDict((name, morsel.value) for name, morsel in jar.items())

    def get_header(self, name: str, default: Any = None) -> Any:
        return self.headers.get(name, default)

    def get_cookie(self, name: str, default: Any = None) -> Any:
        return self.cookies.get(name, default)

    def _form_data(self) -> tuple[MultiDict, MultiDict]:
        if self._forms is None:
            self._forms = parse_form_body(self._body, self.headers.get("content-type", ""))
        return self._forms


_UNSET = object()


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def parse_json_body(body: bytes) -> Any:
    """Parse a JSON body; an empty body is None (as bottle has it), invalid JSON a 400."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"invalid JSON body: {exc}") from None


def parse_form_body(body: bytes, content_type: str) -> tuple[MultiDict, MultiDict]:
    """Form fields and uploaded files of a urlencoded or multipart body (else both empty)."""
    kind = media_type(content_type)
    if kind == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        return MultiDict(parse_qsl(text, keep_blank_values=True)), MultiDict()
    if kind.startswith("multipart/") and body:
        return parse_multipart(body, content_type)
    return MultiDict(), MultiDict()


def parse_multipart(body: bytes, content_type: str) -> tuple[MultiDict, MultiDict]:
    """Split a multipart body with the email package: text fields and FileUploads."""
    envelope = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    parser = email.parser.BytesParser(policy=email.policy.HTTP)  # type: ignore[arg-type]
    message: Any = parser.parsebytes(envelope + body)  # an EmailMessage, with iter_parts()
    if not message.is_multipart():
        return MultiDict(), MultiDict()
    fields: list[tuple[str, str]] = []
    files: list[tuple[str, FileUpload]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        name = _undo_surrogates(name)
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is None:
            charset = part.get_content_charset() or "utf-8"
            fields.append((name, payload.decode(charset, "replace")))
        else:
            headers = Headers({key.lower(): str(value) for key, value in part.items()})
            upload = FileUpload(io.BytesIO(payload), name, _undo_surrogates(filename), headers)
            files.append((name, upload))
    return MultiDict(fields), MultiDict(files)


def _undo_surrogates(text: str) -> str:
    """The email parser keeps raw UTF-8 header bytes as surrogates; browsers send UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("ascii", "surrogateescape").decode("utf-8", "replace")


def build_event(request: Request) -> dict[str, Any]:
    """The Kubeless event; raises BadRequest for an invalid JSON body."""
    get = request.headers.get
    content_type = get("content-type")
    data: Any = request._body
    if content_type is not None and is_json(content_type):
        data = request.json
    return {
        "data": data,
        "event-id": get("event-id"),
        "event-type": get("event-type"),
        "event-time": get("event-time"),
        "event-namespace": get("event-namespace"),
        "extensions": {"request": request},
    }


# --------------------------------------------------------------------------- result mapping


def map_result(result: Any) -> Reply:
    """Turn what a handler returned into a reply; raises for values that cannot be sent."""
    if type(result) is str:
        return 200, TEXT_HTML, b"", result.encode("utf-8")
    if type(result) is tuple and _is_status_tuple(result):
        headers = result[2] if len(result) == 3 else None
        return _reply(result[0], result[1], headers)
    if hasattr(result, "status_code") and hasattr(result, "body"):
        return _reply(result.body, result.status_code, getattr(result, "headers", None))
    content_type, body = encode_body(result)
    return 200, content_type, b"", body


def encode_body(value: Any) -> tuple[bytes, bytes]:
    """Content type and bytes of a body value: text and bytes as HTML, the rest as JSON."""
    if isinstance(value, str):
        return TEXT_HTML, value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return TEXT_HTML, bytes(value)
    if value is None:
        return TEXT_HTML, b""
    return APPLICATION_JSON, json.dumps(value).encode("utf-8")


def _is_status_tuple(result: tuple[Any, ...]) -> bool:
    return len(result) in (2, 3) and type(result[1]) is int and 100 <= result[1] <= 599


def _reply(body: Any, status: Any, headers: Any) -> Reply:
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(f"invalid HTTP status {status!r}: use an integer from 200 to 599")
    content_type, data = encode_body(body)
    content_type, extra = encode_headers(headers, content_type)
    return status, content_type, extra, data


def encode_headers(headers: Any, content_type: bytes) -> tuple[bytes, bytes]:
    """The Content-Type and the other header lines of a handler's response headers.

    Accepts a dict, a list of pairs, or an object with ``allitems()`` (bottle) or ``items()``.
    Framing headers are ours: Content-Length, Connection and Transfer-Encoding are dropped.
    """
    if headers is None:
        return content_type, b""
    if hasattr(headers, "allitems"):
        pairs = headers.allitems()
    elif hasattr(headers, "items"):
        pairs = headers.items()
    else:
        pairs = headers
    lines = []
    for name, value in pairs:
        name, value = str(name), str(value)
        if not _TOKEN.match(name) or "\r" in value or "\n" in value:
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        lower = name.lower()
        if lower == "content-type":
            content_type = value.encode("latin-1")
        elif lower not in ("content-length", "connection", "transfer-encoding", "keep-alive"):
            lines.append((f"{name}: {value}\r\n").encode("latin-1"))
    return content_type, b"".join(lines)


def describe_exception(exc: BaseException) -> str:
    """``TypeName: message`` (SyntaxError's message already carries file and line)."""
    message = str(exc)
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def error_reply(status: int, text: str) -> Reply:
    return status, TEXT_PLAIN, b"", text.encode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- metrics


class _MethodStats:
    __slots__ = ("buckets", "calls", "duration_sum_s", "failures")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.duration_sum_s = 0.0
        self.buckets = [0] * (len(HISTOGRAM_BUCKETS_S) + 1)  # per bucket, not cumulative


class Metrics:
    """Kubeless's three function metrics per HTTP method, in Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[str, _MethodStats] = {}

    def observe(self, method: str, duration_s: float, failed: bool) -> None:
        bucket = bisect_left(HISTOGRAM_BUCKETS_S, duration_s)
        with self._lock:
            stats = self._methods.get(method)
            if stats is None:
                if len(self._methods) >= MAX_METHOD_LABELS:
                    method = "OTHER"  # an unbounded label set would grow without limit
                stats = self._methods.setdefault(method, _MethodStats())
            stats.calls += 1
            stats.failures += failed
            stats.duration_sum_s += duration_s
            stats.buckets[bucket] += 1

    def render(self) -> bytes:
        with self._lock:
            snapshot = [
                (m, s.calls, s.failures, s.duration_sum_s, list(s.buckets))
                for m, s in sorted(self._methods.items())
            ]
        out = [
            "# HELP function_duration_seconds Duration of user function in seconds",
            "# TYPE function_duration_seconds histogram",
        ]
        for method, calls, _, duration_sum_s, buckets in snapshot:
            label = f'method="{_escape_label(method)}"'
            cumulative = 0
            for bound, count in zip((*HISTOGRAM_BUCKETS_S, None), buckets):
                cumulative += count
                le = "+Inf" if bound is None else repr(bound)
                out.append(f'function_duration_seconds_bucket{{{label},le="{le}"}} {cumulative}')
            out.append(f"function_duration_seconds_count{{{label}}} {calls}")
            out.append(f"function_duration_seconds_sum{{{label}}} {duration_sum_s!r}")
        for name, help_text, index in (
            ("function_calls_total", "Number of calls to user function", 1),
            ("function_failures_total", "Number of exceptions in user function", 2),
        ):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} counter")
            for row in snapshot:
                out.append(f'{name}{{method="{_escape_label(row[0])}"}} {row[index]}')
        return ("\n".join(out) + "\n").encode("utf-8")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --------------------------------------------------------------------------- trace context

# The trace headers of the request a handler is serving, kept for the duration of the call so
# the HTTP requests it makes carry them (``propagate_trace_context``). The gateway wrote this
# hop's span into them, so a call the handler makes through the mesh becomes that span's child:
# one trace across functions without the handler copying a header. Not a span of its own.
TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
_TRACE_HEADER_NAMES = frozenset(TRACE_HEADERS)
_trace_context: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "funcmesh_trace_context", default=()
)


def trace_context_of(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The trace headers among a request's (lower-case names), in a fixed order."""
    return tuple([(name, headers[name]) for name in TRACE_HEADERS if name in headers])


def propagate_trace_context() -> None:
    """Make the HTTP clients a handler uses add the trace headers of the call being served to
    every request that carries none of its own: ``http.client`` (under urllib, and urllib3 and so
    requests), httpcore (httpx) and aiohttp, in the handler's thread and in the threads it starts
    or hands work to (``threading.Thread``, ``ThreadPoolExecutor``, and so asyncio's
    ``run_in_executor``). Idempotent.

    The context lives in a ContextVar, which a new thread does not inherit (before Python 3.14):
    ``Thread.start`` and ``ThreadPoolExecutor.submit`` take the trace context of the thread that
    calls them along, and the thread or the work item runs with it. Only that variable travels:
    the code's own ContextVars keep the standard library's semantics. httpx and aiohttp are
    changed when the code imports them (``patch_when_imported``), never imported here.
    """
    import http.client

    connection = http.client.HTTPConnection
    if getattr(connection.endheaders, "_funcmesh", False):
        return
    _trace_http_client(connection)
    _carry_into_threads(threading.Thread)
    patch_when_imported("concurrent.futures.thread", _carry_into_pools)
    patch_when_imported("httpcore._sync.connection_pool", _trace_httpcore)
    patch_when_imported("httpcore._async.connection_pool", _trace_httpcore)
    patch_when_imported("aiohttp.client_reqrep", _trace_aiohttp)


def _trace_http_client(connection: Any) -> None:
    original_putrequest = connection.putrequest
    original_putheader = connection.putheader
    original_endheaders = connection.endheaders

    def putrequest(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> None:
        self._funcmesh_traced = False  # no trace header yet in this request
        original_putrequest(self, method, url, *args, **kwargs)

    def putheader(self: Any, header: Any, *values: Any) -> None:
        name = header.decode("latin-1") if isinstance(header, bytes) else str(header)
        if name.lower() in _TRACE_HEADER_NAMES:
            self._funcmesh_traced = True
        original_putheader(self, header, *values)

    def endheaders(self: Any, message_body: Any = None, **kwargs: Any) -> None:
        context = _trace_context.get()
        if context and not getattr(self, "_funcmesh_traced", True):
            for name, value in context:
                original_putheader(self, name, value)
        self._funcmesh_traced = True
        original_endheaders(self, message_body, **kwargs)

    for name, wrapper in (
        ("putrequest", putrequest),
        ("putheader", putheader),
        ("endheaders", endheaders),
    ):
        _replace(connection, name, wrapper)


def _replace(owner: Any, name: str, wrapper: Callable[..., Any]) -> bool:
    """Put ``wrapper`` in the place of ``owner.name``, marked; False when it is ours already."""
    original = getattr(owner, name)
    if getattr(original, "_funcmesh", False):
        return False
    wrapper._funcmesh = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)
    return True


def _in_trace_context(
    context: tuple[tuple[str, str], ...], function: Callable[..., Any]
) -> Callable[..., Any]:
    """``function`` made to run with ``context`` as the trace context (and the previous one
    after it: a pool's thread runs work of many calls)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        token = _trace_context.set(context)
        try:
            return function(*args, **kwargs)
        finally:
            _trace_context.reset(token)

    return call


def _carry_into_threads(thread_class: Any) -> None:
    original_start = thread_class.start

    def start(self: Any) -> None:
        context = _trace_context.get()
        if context:  # the worker's own threads start outside any call: untouched
            self.run = _in_trace_context(context, self.run)  # the instance's: subclasses too
        original_start(self)

    _replace(thread_class, "start", start)


def _carry_into_pools(module: Any) -> None:
    executor = module.ThreadPoolExecutor
    original_submit = executor.submit

    def submit(self: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # also without a context: the pool's thread may have started with another call's
        return original_submit(self, _in_trace_context(_trace_context.get(), fn), *args, **kwargs)

    _replace(executor, "submit", submit)


def _traced_header_list(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | None:
    """``headers`` (raw pairs) with the trace context's added; None to leave them as they are."""
    context = _trace_context.get()
    if not context:
        return None
    for name, _ in headers:
        if name.decode("latin-1").lower() in _TRACE_HEADER_NAMES:
            return None
    return [*headers, *[(n.encode("ascii"), v.encode("latin-1")) for n, v in context]]


def _trace_httpcore(module: Any) -> None:
    """httpcore's connection pools (httpx's transports): the request of each attempt."""
    pool = getattr(module, "ConnectionPool", None)
    if pool is not None:
        original = pool.handle_request

        def handle_request(self: Any, request: Any) -> Any:
            traced = _traced_header_list(request.headers)
            if traced is not None:
                request.headers = traced
            return original(self, request)

        _replace(pool, "handle_request", handle_request)
    pool = getattr(module, "AsyncConnectionPool", None)
    if pool is not None:
        original_async = pool.handle_async_request

        async def handle_async_request(self: Any, request: Any) -> Any:
            traced = _traced_header_list(request.headers)
            if traced is not None:
                request.headers = traced
            return await original_async(self, request)

        _replace(pool, "handle_async_request", handle_async_request)


def _trace_aiohttp(module: Any) -> None:
    """aiohttp's ClientRequest: its headers, once the code's are in."""
    request_class = module.ClientRequest
    original_update_headers = request_class.update_headers

    def update_headers(self: Any, headers: Any) -> None:
        original_update_headers(self, headers)
        context = _trace_context.get()
        if context and not any(name in self.headers for name in TRACE_HEADERS):
            for name, value in context:
                self.headers.add(name, value)

    _replace(request_class, "update_headers", update_headers)


# --------------------------------------------------------------------------- library hooks


def patch_when_imported(name: str, patch: Callable[[ModuleType], None]) -> None:
    """Run ``patch(module)`` once the module ``name`` has run: at once when it is imported
    already, else when the code imports it (and again when it reloads it).

    The shims adapt libraries such as requests, httpx and aiohttp this way without importing
    them: a function that does not use one pays nothing for it (registering costs a cold start
    microseconds). A patch that fails (another version of the library) is said on stderr, the
    function's log, and leaves the module as it is: the code's import must never fail because
    of us.
    """
    hook = _import_hook()
    hook.patches.setdefault(name, []).append(patch)
    module = sys.modules.get(name)
    if module is not None:
        _apply_patches(name, [patch], module)


class _PatchOnImport:
    """A ``sys.meta_path`` finder for the modules with patches: it finds them the way the
    finders after it do, and hands their loader over to a :class:`_PatchingLoader`."""

    funcmesh_hook = True  # one hook per process, shared by every shim that patches

    def __init__(self) -> None:
        self.patches: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patches = self.patches.get(fullname)
        if patches is None:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None or getattr(finder, "funcmesh_hook", False):
                continue  # ourselves
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(fullname, spec.loader, patches)
                return spec
        return None


class _PatchingLoader:
    """The module's own loader, then the patches; afterwards the module names its own loader
    again (``inspect``, ``importlib.resources`` and ``reload`` see no difference)."""

    def __init__(
        self, name: str, loader: Any, patches: list[Callable[[ModuleType], None]]
    ) -> None:
        self.name = name
        self.loader = loader
        self.patches = patches

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader
        _apply_patches(self.name, self.patches, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def _import_hook() -> _PatchOnImport:
    for finder in sys.meta_path:
        if getattr(finder, "funcmesh_hook", False):  # also another copy of this module's
            return finder  # type: ignore[no-any-return]
    hook = _PatchOnImport()
    sys.meta_path.insert(0, hook)
    return hook


def _apply_patches(name: str, patches: list[Callable[[ModuleType], None]], module: Any) -> None:
    for patch in patches:
        try:
            patch(module)
        except Exception as exc:  # noqa: BLE001 -- the code's import must go on (see above)
            print(f"funcmesh: cannot adapt {name} ({type(exc).__name__}: {exc})", file=sys.stderr)


# --------------------------------------------------------------------------- the function


class FunctionApp:
    """The loaded handler and its context, or the error that kept it from loading."""

    def __init__(
        self, handler: Handler | None, context: dict[str, Any], load_error: str | None = None
    ) -> None:
        self.handler = handler
        self.context = context
        self.load_error = load_error
        self.metrics = Metrics()

    def call(self, request: Request) -> Reply:
        """Run the handler for one request; MemoryError propagates (the process must go)."""
        try:
            event = build_event(request)
        except BadRequest as exc:
            return error_reply(exc.status, str(exc))
        started = time.perf_counter()
        failed = False
        trace = trace_context_of(request.headers._values)
        token = _trace_context.set(trace) if trace else None
        try:
            reply = map_result(self.handler(event, self.context))  # type: ignore[misc]
        except MemoryError:
            self.metrics.observe(request.method, time.perf_counter() - started, True)
            raise
        except BaseException as exc:  # noqa: BLE001 -- any handler failure is a 500, even exit()
            traceback.print_exc()
            failed = True
            reply = error_reply(500, describe_exception(exc))
        finally:
            if token is not None:
                _trace_context.reset(token)
        self.metrics.observe(request.method, time.perf_counter() - started, failed)
        return reply

    def memory_error_reply(self) -> Reply:
        limit = self.context.get("memory-limit", "0")
        return error_reply(502, f"memory limit exceeded ({limit}): MemoryError")


def make_context(
    function_name: str, timeout_s: float, runtime: str, memory_limit: str
) -> dict[str, Any]:
    return {
        "function-name": function_name,
        "timeout": float(timeout_s),
        "runtime": runtime,
        "memory-limit": memory_limit,
    }


def load_function(module_name: str, function_name: str) -> Handler:
    """Import the handler module (sys.path is set by the caller) and return the function."""
    import importlib

    top = module_name.partition(".")[0]
    if top in SHIM_MODULES:
        raise ImportError(
            f"module name {top!r} is reserved by the funcmesh runtime; rename the handler file"
        )
    if top in sys.modules:
        raise ImportError(
            f"module name {top!r} clashes with the standard library module the runtime has already "
            "imported; rename the handler file"
        )
    module = importlib.import_module(module_name)
    try:
        handler = getattr(module, function_name)
    except AttributeError:
        raise AttributeError(
            f"module {module_name!r} has no function {function_name!r} "
            f"(handler {module_name}.{function_name})"
        ) from None
    if not callable(handler):
        raise TypeError(
            f"{module_name}.{function_name} is a {type(handler).__name__}, not a function"
        )
    return handler  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- HTTP server


def parse_head(head: bytes) -> tuple[str, str, bool, dict[str, str]]:
    """Method, target, HTTP/1.1?, headers (lower-case names) of a request head without CRLFCRLF."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method_bytes, target_bytes, version = parts
    if version == b"HTTP/1.1":
        http11 = True
    elif version == b"HTTP/1.0":
        http11 = False
    else:
        raise BadRequest("unsupported HTTP version", 505)
    method = method_bytes.decode("latin-1")
    if not _TOKEN.match(method) or not target_bytes:
        raise BadRequest("malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1] in b" \t" or name[0] in b" \t":
            raise BadRequest("malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key in headers:
            text = headers[key] + ("; " if key == "cookie" else ", ") + text
        headers[key] = text
    return method, target_bytes.decode("latin-1"), http11, headers


def origin_form(target: str) -> str:
    """``/path?query`` of a request target, also when a proxy sent the absolute form."""
    if target[0] != "/" and "://" in target:
        rest = target.partition("://")[2]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    return target


class _Connection:
    __slots__ = ("busy", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.busy = False


class Server:
    """Accepts connections on a listening socket, one thread each; drains on SIGTERM."""

    def __init__(self, listener: socket.socket, app: FunctionApp) -> None:
        self._listener = listener
        self._app = app
        self._stopping = False
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._connections: set[_Connection] = set()

    # -- main thread

    def serve_forever(self) -> int:
        """Serve until SIGTERM or SIGINT, drain in-flight requests, return the exit status."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._request_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # the zygote blocked them
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(wake_read, select.POLLIN)
        while not self._stopping:
            for fd, _ in poller.poll():
                if fd == wake_read:
                    _drain_pipe(wake_read)
                elif not self._stopping:
                    self._accept()
        return self._drain()

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stopping = True

    def _accept(self) -> None:
        try:
            sock, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # the listener may be non-blocking (it is shared with the daemon)
        except OSError as exc:  # EMFILE and friends: say so, back off, keep serving
            print(f"funcmesh worker: accept failed: {exc}", file=sys.stderr)
            time.sleep(ACCEPT_RETRY_S)
            return
        thread = threading.Thread(target=self.serve_connection, args=(sock, peer))
        thread.daemon = True
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of memory or threads
            print(f"funcmesh worker: connection refused: {exc}", file=sys.stderr)
            _close_quietly(sock)

    def _drain(self) -> int:
        # shutdown(), not just close(): the daemon holds a copy of the listening socket, and
        # connections must be refused now instead of waiting in a backlog nobody accepts from.
        _shutdown(self._listener, socket.SHUT_RDWR)
        self._listener.close()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        with self._drained:
            for connection in self._connections:
                if not connection.busy:
                    _shutdown(connection.sock, socket.SHUT_RD)
            while any(c.busy for c in self._connections):
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                self._drained.wait(remaining_s)
        _flush_stdio()
        return 0

    # -- connection threads

    def serve_connection(self, sock: socket.socket, peer: Any) -> None:
        """Serve one accepted connection until it closes; the body of a connection thread."""
        connection = _Connection(sock)
        with self._lock:
            self._connections.add(connection)
        try:
            self._handle_requests(connection, peer)
        except (ClientGone, ConnectionError, TimeoutError):
            pass
        except MemoryError:
            self._exit_after_memory_error(connection.sock)
        except Exception:  # noqa: BLE001 -- a bug here must cost one connection, not the worker
            traceback.print_exc()
        finally:
            connection.busy = False
            with self._drained:
                self._connections.discard(connection)
                if self._stopping:
                    self._drained.notify_all()
            _close_quietly(connection.sock)

    def _handle_requests(self, connection: _Connection, peer: Any) -> None:
        sock = connection.sock
        recv = sock.recv
        app = self._app
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._refuse(sock, BadRequest("request head too large", 431))
                    return
                chunk = recv(RECV_BYTES)
                if not chunk:
                    if buf:
                        raise ClientGone()
                    return
                buf = buf + chunk if buf else chunk
                end = buf.find(b"\r\n\r\n")
            connection.busy = True
            try:
                method, target, http11, headers = parse_head(buf[:end])
                body, buf = self._read_body(sock, headers, buf[end + 4 :], http11)
            except BadRequest as exc:
                self._refuse(sock, exc)
                return
            keep_alive = _wants_keep_alive(headers.get("connection"), http11)
            reply = self._dispatch(app, method, origin_form(target), headers, body, peer)
            keep_alive = keep_alive and not self._stopping
            _send_reply(sock, reply, keep_alive, method == "HEAD")
            connection.busy = False  # cleared before reading _stopping: see _drain
            if not keep_alive or self._stopping:
                return

    @staticmethod
    def _dispatch(
        app: FunctionApp, method: str, target: str, headers: dict[str, str], body: bytes, peer: Any
    ) -> Reply:
        if method == "GET" or method == "HEAD":
            path = target.partition("?")[0]
            if path == "/healthz":
                return 200, TEXT_PLAIN, b"", b"OK"
            if path == "/metrics" and app.load_error is None:
                return 200, METRICS_CONTENT_TYPE, b"", app.metrics.render()
        if app.load_error is not None:
            return error_reply(500, app.load_error)
        return app.call(Request(method, target, headers, body, peer))

    @staticmethod
    def _read_body(
        sock: socket.socket, headers: dict[str, str], buf: bytes, http11: bool
    ) -> tuple[bytes, bytes]:
        """The request body and what follows it in the buffer."""
        transfer_encoding = headers.get("transfer-encoding")
        if transfer_encoding is not None:
            if "content-length" in headers:
                raise BadRequest("both Content-Length and Transfer-Encoding sent")
            if transfer_encoding.lower() != "chunked":
                raise BadRequest(f"unsupported Transfer-Encoding {transfer_encoding!r}", 501)
            if http11 and headers.get("expect", "").lower() == "100-continue":
                sock.sendall(_CONTINUE)
            return _read_chunked(sock.recv, buf)
        length_text = headers.get("content-length")
        if length_text is None:
            return b"", buf
        if not (length_text.isdigit() and length_text.isascii()):
            raise BadRequest(f"invalid Content-Length {length_text!r}")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"request body larger than {MAX_BODY_BYTES} bytes", 413)
        if len(buf) < length and http11 and headers.get("expect", "").lower() == "100-continue":
            sock.sendall(_CONTINUE)
        buf = _fill(sock.recv, buf, length)
        return buf[:length], buf[length:]

    @staticmethod
    def _refuse(sock: socket.socket, exc: BadRequest) -> None:
        _send_reply(sock, error_reply(exc.status, str(exc)), False, False)

    def _exit_after_memory_error(self, sock: socket.socket) -> None:
        """Answer 502 and end the process: after MemoryError nothing in it can be trusted."""
        try:
            _send_reply(sock, self._app.memory_error_reply(), False, False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        print("funcmesh worker: MemoryError, exiting", file=sys.stderr)
        _flush_stdio()
        os._exit(MEMORY_EXIT_STATUS)


def _wants_keep_alive(connection_header: str | None, http11: bool) -> bool:
    if connection_header is None:
        return http11
    tokens = connection_header.lower()
    if http11:
        return "close" not in tokens
    return "keep-alive" in tokens


def _send_reply(sock: socket.socket, reply: Reply, keep_alive: bool, head_only: bool) -> None:
    status, content_type, extra, body = reply
    status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    framing = _KEEP_ALIVE if keep_alive else _CLOSE
    if status == 204 or status == 304:
        head = b"%sContent-Type: %s\r\n%s%s\r\n" % (status_line, content_type, framing, extra)
        sock.sendall(head)
        return
    head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status_line,
        content_type,
        len(body),
        framing,
        extra,
    )
    if head_only:
        sock.sendall(head)
    elif len(body) <= RECV_BYTES:
        sock.sendall(head + body)
    else:
        sock.sendall(head)
        sock.sendall(body)


def _fill(recv: Callable[[int], bytes], buf: bytes, size: int) -> bytes:
    """``buf`` extended from the socket until it holds at least ``size`` bytes."""
    if len(buf) >= size:
        return buf
    parts = [buf]
    have = len(buf)
    while have < size:
        chunk = recv(max(RECV_BYTES, size - have))
        if not chunk:
            raise ClientGone()
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _read_line(recv: Callable[[int], bytes], buf: bytes) -> tuple[bytes, bytes]:
    end = buf.find(b"\r\n")
    while end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise BadRequest("chunk header or trailer line too long")
        chunk = recv(RECV_BYTES)
        if not chunk:
            raise ClientGone()
        buf += chunk
        end = buf.find(b"\r\n")
    return buf[:end], buf[end + 2 :]


def _read_chunked(recv: Callable[[int], bytes], buf: bytes) -> tuple[bytes, bytes]:
    """Decode a chunked body (extensions ignored, trailers dropped)."""
    parts = []
    total = 0
    while True:
        line, buf = _read_line(recv, buf)
        size_text = line.partition(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(
                "invalid chunk size {!r}".format(size_text.decode("latin-1"))
            ) from None
        if size < 0 or size_text[:1] in (b"+", b"-"):
            raise BadRequest("invalid chunk size {!r}".format(size_text.decode("latin-1")))
        if size == 0:
            break
        total += size
        if total > MAX_BODY_BYTES:
            raise BadRequest(f"request body larger than {MAX_BODY_BYTES} bytes", 413)
        buf = _fill(recv, buf, size + 2)
        if buf[size : size + 2] != b"\r\n":
            raise BadRequest("chunk data not followed by CRLF")
        parts.append(buf[:size])
        buf = buf[size + 2 :]
    while True:  # trailer section, ends with an empty line
        line, buf = _read_line(recv, buf)
        if not line:
            return b"".join(parts), buf


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()


def rehearse() -> None:
    """Serve two requests to ourselves over a socketpair, in this thread.

    Run by a freshly forked zygote child before it is assigned a function: the memory pages
    that serving touches get copied then, off the critical path of the first real request.
    No thread is started: its malloc arena and cached stack would eat into RLIMIT_AS later.
    """
    app = FunctionApp(lambda event, context: {"data": event["data"]}, make_context("", 1, "", "0"))
    server = Server(None, app)  # type: ignore[arg-type]
    ours, theirs = socket.socketpair()
    ours.sendall(
        b"POST /?a=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    ours.shutdown(socket.SHUT_WR)
    server.serve_connection(theirs, None)
    while ours.recv(RECV_BYTES):
        pass
    ours.close()


# --------------------------------------------------------------------------- stand-alone


def main() -> int:
    """Serve like a Kubeless runtime container: MOD_NAME, FUNC_HANDLER, FUNC_PORT, ..."""
    env = os.environ
    code_dir = env.get("KUBELESS_INSTALL_VOLUME", "/kubeless")
    module_name, function_name = env.get("MOD_NAME", ""), env.get("FUNC_HANDLER", "")
    context = make_context(
        env.get("FUNCMESH_FUNCTION_NAME") or function_name,
        float(env.get("FUNC_TIMEOUT") or 180),
        env.get("FUNC_RUNTIME", ""),
        env.get("FUNC_MEMORY_LIMIT", "0"),
    )
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [code_dir] + [p for p in sys.path if os.path.abspath(p or ".") != here]
    handler, load_error = None, None
    try:
        handler = load_function(module_name, function_name)
    except BaseException as exc:  # noqa: BLE001 -- serve the reason instead of crash-looping
        traceback.print_exc()
        load_error = describe_exception(exc)
    listener = socket.create_server(("", int(env.get("FUNC_PORT") or 8080)), backlog=1024)
    propagate_trace_context()
    return Server(listener, FunctionApp(handler, context, load_error)).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
