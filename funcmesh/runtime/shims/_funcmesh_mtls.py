"""Mesh mTLS for the plain-HTTP calls a Python function makes to cluster Services.

Every instance has a mesh identity (``spiffe://cluster.local/ns/<ns>/sa/<serviceAccount>``). Its
worker gets a read-only descriptor of its credentials: a memfd the daemon rewrites in place when
it renews the certificate, holding JSON with the certificate chain, the private key, the mesh
root, ``notAfter`` and ``renewAt`` (``funcmesh.runtime.mesh_credentials``), and the service
CIDR. Once a plain-HTTP connection stands, when its peer is a ClusterIP (in the service CIDR),
it is upgraded to mutual TLS with the instance's certificate. The name sent as SNI, and checked
against the VIP's certificate, is ``<svc>.<ns>.svc.cluster.local`` when the code named the
Service (the names shim says which Service a name resolved to); when it gave an address, no
SNI is sent and the certificate is checked against the mesh root only. The code sees the same
response as before; its calls now carry its identity. Its HTTPS calls are never touched.

Where the connection is upgraded, per client (each the narrowest place that knows both the
connected socket and that the code asked for plain HTTP):

- ``http.client.HTTPConnection.connect`` (urllib.request, http.client), never an
  ``HTTPSConnection`` or a tunnel through a proxy;
- ``urllib3.connection.HTTPConnection.connect`` (requests; urllib3 1.26 and 2.x override
  http.client's ``connect`` with their own, which is why requests needs its own patch), under
  the same rules;
- httpcore's ``HTTPConnection._connect`` and ``AsyncHTTPConnection._connect`` (httpx, sync and
  async, whatever the network backend: asyncio, trio or threads): for an ``http`` origin the
  stream it made is upgraded with the backend's own ``start_tls``, as httpcore does for https;
- aiohttp's ``TCPConnector._wrap_create_connection``: for a request without TLS the transport
  is upgraded with ``loop.start_tls`` and a fresh protocol, as aiohttp does for an https
  request through a proxy.

The three libraries are patched when the code imports them (``_funcmesh_worker.
patch_when_imported``): this shim never imports them, so a function without them pays nothing.

Which VIPs take mTLS changes at run time (a VirtualService or a STRICT PeerAuthentication
moves a Service from kernel NAT into the daemon's mesh entrance, deleting it moves it back),
so the shim does not keep a list: it tries TLS first. A VIP the mesh entrance serves answers
with a certificate of the mesh CA; any other (kernel NAT or a forwarder to a plain workload)
answers the ClientHello with an HTTP error, closes, or presents a certificate of another CA,
and the call is made again in plaintext on a new connection, which is what the code asked for.
That (address, port) is then called in plaintext for ``PLAIN_FOR_S`` before TLS is tried again.
A published list of mesh VIPs would save that one probe per half minute, but it would have to
follow every rule change into every worker (docs/mesh.md, "Identity, mTLS and access policy").

The credentials are read at the first call to a VIP, not at start (a cold start costs nothing
more): ``ssl`` loads a key from files only, so chain and key go to a private memfd, loaded
through ``/proc/self/fd/N`` and closed at once; nothing touches the disk. They are read again
once their ``renewAt`` has passed. The next socket connection to the same VIP resumes the TLS
session of the last one (http.client, urllib3); httpx and aiohttp handshake in full, but keep
their connections open. Not covered: sockets the code opens itself, and clients that connect
through none of the places above (pycurl, for one): their calls stay plaintext.

The same places make the connection leave from the instance's own pod IP (``POD_IP``, the
address its worker listens on) when its destination is a loopback address (a ClusterIP, a pod
IP, the gateway; a name counts when the cluster's DNS resolves it to such addresses): the
daemon then knows which workload called, from the peer address alone (Istio's
``source_workload``). urllib3 binds its plain-HTTP connections only (its HTTPS ones skip
``HTTPConnection.connect``), aiohttp when its connector has the ``socket_factory`` hook
(3.12+); the pod IP is tried once, at the first such call, and when it cannot be bound
(EADDRNOTAVAIL) connections are made without it. Sockets the code opens itself are not touched.

Standard library only, Python 3.8+: this runs inside users' interpreters.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from typing import Any, Callable, Optional

PAYLOAD_FORMAT = "funcmesh.io/mesh-credentials/v1"
MAX_PAYLOAD_BYTES = 1 << 16
PLAIN_FOR_S = 30.0  # an (address, port) that refused TLS is called in plaintext this long
HANDSHAKE_TIMEOUT_S = 2.0  # a plain server that waits for more than a ClientHello
REREAD_AFTER_S = 5.0  # after the payload's renewAt: the daemon renews at that time
REREAD_RETRY_S = 30.0  # when the payload was not renewed yet, or did not parse
READ_ATTEMPTS = 3  # a read racing the daemon's rewrite does not parse: read again
AGAIN_IN_PLAINTEXT = object()  # the upgrade failed and closed the socket
MAX_SESSIONS = 256  # TLS sessions kept for resumption, by (address, port, name)
POD_IP_ENV = "POD_IP"  # the instance's own address, which its worker listens on


class ResumableSocket(ssl.SSLSocket):
    """An SSLSocket that hands its TLS session to ``keep_session`` when it closes: with TLS
    1.3 the session ticket comes after the handshake, with the first answer, so the end of the
    connection is when the session is worth keeping. The next connection to the same VIP
    resumes it (no certificate signatures to make or check: about a third less CPU, for the
    caller and for the daemon)."""

    keep_session: Optional[Callable[[Any], None]] = None

    def _real_close(self) -> None:  # the one way every close of an SSLSocket goes
        keep = self.keep_session
        if keep is not None:
            self.keep_session = None
            try:
                session = self.session
                if session is not None and session.has_ticket:
                    keep(session)
            except (OSError, ValueError, AttributeError):
                pass
        super()._real_close()  # type: ignore[misc]


class Credentials:
    """Client contexts with the instance's certificate: one that checks the VIP's name, one for
    calls by address (mesh root only); when to read the payload again."""

    __slots__ = ("by_address", "by_name", "not_after", "renew_at", "sessions", "spiffe_id")

    def __init__(self, payload: dict[str, Any]) -> None:
        if payload.get("format") != PAYLOAD_FORMAT:
            raise ValueError("not funcmesh mesh credentials: %r" % payload.get("format"))
        pem = (payload["key"] + payload["certChain"]).encode("ascii")
        self.by_name = client_context(pem, payload["root"], check_hostname=True)
        self.by_address = client_context(pem, payload["root"], check_hostname=False)
        self.spiffe_id = str(payload["spiffeId"])
        self.not_after = float(payload["notAfter"])
        self.renew_at = float(payload["renewAt"])
        # sessions of these contexts only: renewed credentials start without any
        self.sessions: dict[tuple[str, int, Optional[str]], Any] = {}

    def keeper(self, key: tuple[str, int, Optional[str]]) -> Callable[[Any], None]:
        def keep(session: Any) -> None:
            if len(self.sessions) >= MAX_SESSIONS:
                self.sessions.clear()
            self.sessions[key] = session

        return keep


def read_payload(fd: int) -> dict[str, Any]:
    """The credentials in memfd ``fd`` (left open); ValueError if they do not parse (the daemon
    is rewriting them, or they are not there)."""
    data = os.pread(fd, MAX_PAYLOAD_BYTES, 0)
    payload = json.loads(data.decode("utf-8"))
    if not isinstance(payload, dict):
        raise ValueError("the mesh credentials are not a JSON object")
    return payload


def client_context(pem: bytes, root: str, *, check_hostname: bool) -> ssl.SSLContext:
    """TLS 1.2+, the mesh root as the only trust anchor, ``pem`` (key and chain) presented."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname  # verify_mode stays CERT_REQUIRED either way
    context.load_verify_locations(cadata=root)
    load_chain_from_memory(context, pem)
    context.sslsocket_class = ResumableSocket
    return context


def load_chain_from_memory(context: ssl.SSLContext, pem: bytes) -> None:
    """``context.load_cert_chain`` from bytes: ssl reads files only, so a private memfd (no
    name, no disk; closed at once) read through /proc/self/fd, which a process may open even
    after dropping root (it is no longer dumpable then)."""
    fd = os.memfd_create("funcmesh-mesh-key", os.MFD_CLOEXEC)
    try:
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        context.load_cert_chain("/proc/self/fd/%d" % fd)
    finally:
        os.close(fd)


def is_loopback(ip: str) -> bool:
    """Whether ``ip`` is an IPv4 address in 127.0.0.0/8: where ClusterIPs and pod IPs live."""
    try:
        return socket.inet_aton(ip)[0] == 127
    except OSError:
        return False


def can_bind(ip: str) -> bool:
    """Whether a TCP socket can be bound to ``ip`` here (said once on stderr when not)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
        return True
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            print("funcmesh: calls to Services leave from 127.0.0.1: %s" % exc, file=sys.stderr)
        return False


def parse_cidr(cidr: str) -> tuple[int, int]:
    """(network, mask) of an IPv4 CIDR, as integers."""
    address, _, bits = cidr.partition("/")
    length = int(bits or 32)
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0
    return struct.unpack("!I", socket.inet_aton(address))[0] & mask, mask


class Attempt:
    """One try of mesh mTLS at a VIP: the context, the name to send (None: by address), the
    peer and the credentials the context belongs to."""

    __slots__ = ("context", "credentials", "name", "peer")

    def __init__(
        self,
        context: ssl.SSLContext,
        name: Optional[str],
        peer: tuple[str, int],
        credentials: Credentials,
    ) -> None:
        self.context = context
        self.name = name
        self.peer = peer
        self.credentials = credentials

    @property
    def session_key(self) -> tuple[str, int, Optional[str]]:
        return (self.peer[0], self.peer[1], self.name)


class Originator:
    """Decides which connections to upgrade, and does it."""

    def __init__(
        self,
        fd: int,
        cidr: str,
        service_name: Optional[Callable[[str], Optional[str]]] = None,
        *,
        clock: Callable[[], float] = time.time,
        pod_ip: str = "",
        resolve: Optional[Callable[[str], list[str]]] = None,
    ) -> None:
        self.fd = fd
        self.network, self.mask = parse_cidr(cidr)
        self.service_name = service_name  # host -> "<svc>.<ns>.svc.<zone>" or None
        self.pod_ip = pod_ip  # connections to loopback addresses leave from it ("": never)
        self.resolve = resolve  # a cluster name -> its addresses, [] for other names
        self.bindable: Optional[bool] = None  # whether pod_ip can be bound: tried once
        self.clock = clock
        self.credentials: Optional[Credentials] = None
        self.read_after = 0.0  # when to read the payload (again)
        self.plain_until: dict[tuple[str, int], float] = {}
        self.complained = False
        self.lock = threading.Lock()

    def is_vip(self, ip: str) -> bool:
        try:
            packed = socket.inet_aton(ip)
        except OSError:
            return False  # IPv6: no ClusterIP
        return struct.unpack("!I", packed)[0] & self.mask == self.network

    def source_for(self, host: Any) -> Optional[tuple[str, int]]:
        """``(pod IP, 0)``, the address to bind a connection to ``host`` to when ``host`` is
        a loopback address or a cluster name with only such addresses; None to leave it be."""
        if not self.pod_ip or not isinstance(host, str) or not host:
            return None
        try:
            if socket.inet_aton(host)[0] != 127:
                return None
        except OSError:  # a name (or IPv6): loopback when the cluster's DNS says so
            if self.resolve is None or ":" in host:
                return None
            addresses = self.resolve(host)
            if not addresses or not all(is_loopback(address) for address in addresses):
                return None
        if self.bindable is None:
            self.bindable = can_bind(self.pod_ip)
        return (self.pod_ip, 0) if self.bindable else None

    def socket_for(self, addr_info: Any) -> socket.socket:
        """A socket for ``addr_info`` (aiohappyeyeballs' socket factory), bound to the pod IP
        when the destination is a loopback address."""
        family, kind, proto, _, address = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        if family == socket.AF_INET and self.source_for(address[0]) is not None:
            try:
                sock.bind((self.pod_ip, 0))
            except OSError:
                pass  # connected without it, as every client here is
        return sock

    def attempt(self, peer: Any, host: Any) -> Optional[Attempt]:
        """How to try mTLS with ``peer`` (a connected socket's address), which the code called
        ``host``; None to leave the connection as it is."""
        try:
            ip, port = peer[0], int(peer[1])
        except (TypeError, IndexError, ValueError):
            return None  # a Unix socket, or no address at all
        now = self.clock()
        if not isinstance(ip, str) or not self.is_vip(ip):
            return None
        if self.plain_until.get((ip, port), 0.0) > now:
            return None
        credentials = self.current(now)
        if credentials is None:
            return None
        name = None
        if self.service_name is not None and isinstance(host, str) and host:
            name = self.service_name(host)
        context = credentials.by_name if name else credentials.by_address
        return Attempt(context, name, (ip, port), credentials)

    def refused(self, attempt: Attempt) -> None:
        """The peer of ``attempt`` is no mesh entrance: plaintext for it a while."""
        if len(self.plain_until) > 1024:
            self.plain_until.clear()
        self.plain_until[attempt.peer] = self.clock() + PLAIN_FOR_S

    def upgrade(self, sock: socket.socket, host: str) -> Any:
        """``sock`` (connected) upgraded to mTLS; None to use it as it is;
        ``AGAIN_IN_PLAINTEXT`` when the upgrade failed (``sock`` is closed then)."""
        try:
            peer = sock.getpeername()
        except (OSError, ValueError):
            return None
        attempt = self.attempt(peer, host)
        if attempt is None:
            return None
        timeout = sock.gettimeout()
        sock.settimeout(handshake_timeout(timeout))
        key = attempt.session_key
        try:
            session = attempt.credentials.sessions.pop(key, None)  # good for one resumption
            secure = attempt.context.wrap_socket(
                sock, server_hostname=attempt.name, session=session
            )
        except (OSError, ValueError):  # not the mesh entrance (ssl.SSLError is an OSError)
            sock.close()
            self.refused(attempt)
            return AGAIN_IN_PLAINTEXT
        secure.settimeout(timeout)
        secure.keep_session = attempt.credentials.keeper(key)
        return secure

    def current(self, now: float) -> Optional[Credentials]:
        """The credentials, read first or again when due; None when there are none (said once
        on stderr, the function's log)."""
        credentials = self.credentials
        if now < self.read_after and (credentials is None or now < credentials.not_after):
            return credentials
        with self.lock:
            if now >= self.read_after:
                self.reload(now)
        credentials = self.credentials
        return credentials if credentials is not None and now < credentials.not_after else None

    def reload(self, now: float) -> None:
        previous = self.credentials
        for attempt in range(READ_ATTEMPTS):
            try:
                payload = read_payload(self.fd)
                if previous is not None and float(payload["renewAt"]) <= previous.renew_at:
                    break  # not renewed yet: keep what we have
                self.credentials = Credentials(payload)
                self.read_after = self.credentials.renew_at + REREAD_AFTER_S
                return
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if attempt + 1 == READ_ATTEMPTS:
                    self.complain("cannot read the mesh credentials: %s" % exc)
                else:
                    time.sleep(0.01)
        self.read_after = now + REREAD_RETRY_S

    def complain(self, message: str) -> None:
        if not self.complained:
            self.complained = True
            print("funcmesh: %s; calls to Services go in plaintext" % message, file=sys.stderr)


def handshake_timeout(timeout: Optional[float]) -> float:
    """The TLS probe's time limit: the call's own, at most ``HANDSHAKE_TIMEOUT_S``."""
    return HANDSHAKE_TIMEOUT_S if timeout is None else min(timeout, HANDSHAKE_TIMEOUT_S)


# --------------------------------------------------------------------------- the clients


def originate_connect(connection: Any, secure_class: Any, originator: Originator) -> bool:
    """Wrap ``connection.connect``: http.client's and urllib3's ``HTTPConnection`` both keep the
    connected socket in ``self.sock`` and the host the code named in ``self.host``. False when
    it is wrapped already."""
    original_connect = connection.connect
    if getattr(original_connect, "_funcmesh", False):
        return False

    def open_from_pod(self: Any) -> None:
        source = None
        if getattr(self, "source_address", "") is None:
            source = originator.source_for(self.host)
        if source is None:
            return original_connect(self)
        self.source_address = source  # for this connect only: the code's object is its own
        try:
            return original_connect(self)
        finally:
            self.source_address = None

    def connect(self: Any) -> None:
        open_from_pod(self)
        if getattr(self, "_tunnel_host", None) or (
            secure_class is not None and isinstance(self, secure_class)
        ):
            return  # through a proxy, or HTTPS the code asked for itself
        upgraded = originator.upgrade(self.sock, self.host)
        if upgraded is AGAIN_IN_PLAINTEXT:
            open_from_pod(self)
        elif upgraded is not None:
            self.sock = upgraded

    mark(connect, original_connect)
    connection.connect = connect
    return True


def originate_urllib3(module: Any, originator: Originator) -> None:
    """urllib3 (requests): ``urllib3.connection``."""
    originate_connect(module.HTTPConnection, getattr(module, "HTTPSConnection", None), originator)


def httpcore_attempt(originator: Originator, connection: Any, stream: Any) -> Optional[Attempt]:
    origin = connection._origin
    if origin.scheme != b"http" or getattr(connection, "_uds", None):
        return None
    return originator.attempt(stream.get_extra_info("server_addr"), origin.host.decode("ascii"))


def bind_httpcore(originator: Originator, connection: Any) -> bool:
    """Make an httpcore connection's next connect leave from the pod IP when its origin is a
    loopback address (``local_address``, which every network backend honours); True when
    set, to be undone with ``connection._local_address = None`` once connected."""
    if getattr(connection, "_local_address", "") is not None or getattr(connection, "_uds", None):
        return False
    source = originator.source_for(connection._origin.host.decode("ascii"))
    if source is None:
        return False
    connection._local_address = source[0]
    return True


def probe_timeout(request: Any) -> float:
    """An httpcore request's connect timeout, kept to ``HANDSHAKE_TIMEOUT_S``."""
    timeouts = request.extensions.get("timeout") or {}
    return handshake_timeout(timeouts.get("connect"))


def originate_httpcore(module: Any, originator: Originator) -> None:
    """httpx, sync: ``httpcore._sync.connection``. The stream is upgraded by its own backend's
    ``start_tls``, which closes it when the handshake fails."""
    connection = module.HTTPConnection
    original_connect = connection._connect
    if getattr(original_connect, "_funcmesh", False):
        return
    failures = httpcore_failures(module)

    def _connect(self: Any, request: Any) -> Any:
        bound = bind_httpcore(originator, self)
        try:
            stream = original_connect(self, request)
            attempt = httpcore_attempt(originator, self, stream)
            if attempt is None:
                return stream
            try:
                return stream.start_tls(
                    attempt.context, server_hostname=attempt.name, timeout=probe_timeout(request)
                )
            except failures:
                originator.refused(attempt)
                return original_connect(self, request)
        finally:
            if bound:
                self._local_address = None

    mark(_connect, original_connect)
    connection._connect = _connect


def originate_httpcore_async(module: Any, originator: Originator) -> None:
    """httpx, async (asyncio or trio through anyio): ``httpcore._async.connection``."""
    connection = module.AsyncHTTPConnection
    original_connect = connection._connect
    if getattr(original_connect, "_funcmesh", False):
        return
    failures = httpcore_failures(module)

    async def _connect(self: Any, request: Any) -> Any:
        bound = bind_httpcore(originator, self)
        try:
            stream = await original_connect(self, request)
            attempt = httpcore_attempt(originator, self, stream)
            if attempt is None:
                return stream
            try:
                return await stream.start_tls(
                    attempt.context, server_hostname=attempt.name, timeout=probe_timeout(request)
                )
            except failures:
                originator.refused(attempt)
                return await original_connect(self, request)
        finally:
            if bound:
                self._local_address = None

    mark(_connect, original_connect)
    connection._connect = _connect


def httpcore_failures(module: Any) -> tuple[type[BaseException], ...]:
    """What a failed ``start_tls`` raises: httpcore's connect errors (it maps the backends'),
    and OSError and ValueError in case a backend lets one through."""
    mapped = [getattr(module, name, None) for name in ("ConnectError", "ConnectTimeout")]
    return tuple(kind for kind in mapped if isinstance(kind, type)) + (OSError, ValueError)


def originate_aiohttp(module: Any, originator: Originator) -> None:
    """aiohttp: ``aiohttp.connector``. ``_wrap_create_connection(protocol_factory, ...,
    ssl=..., req=...)`` makes every direct connection; without ``ssl`` the request is plain
    HTTP. Its transport is upgraded with ``loop.start_tls`` and a fresh protocol from the same
    factory (``start_tls`` hands the protocol a new transport; aiohttp's own TLS upgrade does
    the same)."""
    import asyncio

    connector = module.TCPConnector
    original_wrap = connector._wrap_create_connection
    if getattr(original_wrap, "_funcmesh", False):
        return
    failures = (OSError, ValueError, asyncio.TimeoutError)

    async def _wrap_create_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        # aiohttp 3.12+: sockets made as its own are, bound to the pod IP where it applies,
        # unless the code chose a local address or a factory of its own
        unset = getattr(self, "_socket_factory", "") is None
        if unset and originator.pod_ip and not getattr(self, "_local_addr_infos", None):
            self._socket_factory = originator.socket_for
        transport, protocol = await original_wrap(self, *args, **kwargs)
        if kwargs.get("ssl") or not args:
            return transport, protocol
        host = getattr(kwargs.get("req"), "host", None)
        attempt = originator.attempt(transport.get_extra_info("peername"), host)
        if attempt is None:
            return transport, protocol
        fresh = args[0]()
        try:
            secure = await asyncio.get_running_loop().start_tls(
                transport,
                fresh,
                attempt.context,
                server_hostname=attempt.name,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            )
            if secure is None:
                raise ConnectionAbortedError("the connection closed during the handshake")
        except failures:  # start_tls closed the transport
            transport.close()
            originator.refused(attempt)
            return await original_wrap(self, *args, **kwargs)
        fresh.connection_made(secure)
        return secure, fresh

    mark(_wrap_create_connection, original_wrap)
    connector._wrap_create_connection = _wrap_create_connection


# Where each client is adapted, by the module that defines the class the patch changes.
CLIENT_MODULES = (
    ("urllib3.connection", originate_urllib3),
    ("httpcore._sync.connection", originate_httpcore),
    ("httpcore._async.connection", originate_httpcore_async),
    ("aiohttp.connector", originate_aiohttp),
)


def mark(wrapper: Callable[..., Any], original: Callable[..., Any]) -> None:
    wrapper._funcmesh = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]


def install(
    fd: int,
    cidr: str,
    resolver: Any = None,
    *,
    clock: Callable[[], float] = time.time,
    when_imported: Optional[Callable[[str, Callable[[Any], None]], None]] = None,
    pod_ip: Optional[str] = None,
) -> Optional[Originator]:
    """Upgrade the plain connections to mesh VIPs of ``http.client`` now, and of urllib3,
    httpcore and aiohttp once the code imports them (see the module). ``resolver`` is the names
    shim's ClusterResolver (None: every call to a VIP is by address); ``when_imported`` is
    ``_funcmesh_worker.patch_when_imported`` unless given; ``pod_ip`` (``$POD_IP`` unless
    given) where their connections to loopback addresses leave from. Idempotent."""
    import http.client

    if getattr(http.client.HTTPConnection.connect, "_funcmesh", False):
        return None
    if when_imported is None:
        from _funcmesh_worker import patch_when_imported as when_imported
    os.set_inheritable(fd, False)
    service_name = None if resolver is None else resolver.service_name
    originator = Originator(
        fd,
        cidr,
        service_name,
        clock=clock,
        pod_ip=os.environ.get(POD_IP_ENV, "") if pod_ip is None else pod_ip,
        resolve=getattr(resolver, "resolve", None),
    )
    secure_class = getattr(http.client, "HTTPSConnection", None)
    originate_connect(http.client.HTTPConnection, secure_class, originator)
    for name, originate in CLIENT_MODULES:
        when_imported(name, functools.partial(originate, originator=originator))
    return originator
