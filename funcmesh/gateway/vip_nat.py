"""Kernel NAT for Service VIPs: kube-proxy's iptables/nftables mode, done with nftables.

``NatTable`` owns one nftables table, ``table ip funcmesh_<service CIDR>`` (each daemon's CIDR is
its own, so is its table), holding a NAT chain on the output hook (every client here is a local
process, over loopback) with one DNAT rule per (cluster IP, port, protocol) it is given: a new
connection to the VIP is rewritten by the kernel to one of the ready endpoints, chosen at random
(``numgen random``, as kube-proxy does), so no process sits between the client and the pod. A
first rule lets everything outside the service CIDR pass untouched; a second keeps connection
tracking on while the table exists, so that established connections keep their translation.

Changes are applied as one atomic ``nft -f -`` transaction (add the table and chain if missing,
flush the chain, add every rule), run as an asyncio subprocess: one run at a time, started at
once when idle and at most one per ``min_interval_s``, so a burst of endpoint changes costs one
run. For UDP, the conntrack entries of flows whose endpoint left, or whose VIP port changed path,
are deleted afterwards (``conntrack -D``, as kube-proxy does): otherwise a client that keeps its
source port would stay bound to the old destination.

A pod about to stop is ``drain``ed first: its address leaves every rule at once, before its
process gets SIGTERM, so that no new connection is sent to a process that is going away (with
DNAT a refused connection is not retried elsewhere, unlike in the daemon's VIP listeners).

``open_nat_table`` probes (root, ``nft`` creates and deletes a scratch table), replaces a table of
the same name that a daemon killed with SIGKILL left behind, and returns the table; ``close``
deletes it. Which VIP ports the kernel serves is decided in ``vips`` (``served_by_kernel``): this
module knows nothing of Services and changes nothing else on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from funcmesh.errors import Unavailable

logger = logging.getLogger(__name__)

NatAddress = tuple[str, int, str]  # (cluster IP, port, TCP | UDP)
Endpoint = tuple[str, int]  # (ip, port)
Key = tuple[str, str]  # (namespace, name) of the Service
CHAIN = "services"
MIN_INTERVAL_S = 0.01
DRAIN_HOLD_S = 10.0  # a drained address stays out of the rules this long (its endpoint goes)
RETRY_S = (1.0, 30.0)  # after a failed transaction: first wait, doubling up to the second
PROTOCOLS = frozenset({"TCP", "UDP"})
KEEP_TRACKING = "established connections keep their translation"
TOOLS_PATH = "/usr/sbin:/sbin"  # where Debian puts nft and conntrack (not on every PATH)


class NatFailed(Exception):
    """``nft`` or ``conntrack`` did not do what it was asked; the message is theirs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatTools:
    """The programs the kernel path runs; without ``conntrack`` UDP stays in the daemon."""

    nft: str
    conntrack: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rule:
    endpoints: tuple[Endpoint, ...]
    comment: str  # namespace/name of the Service, shown by `nft list table`


def table_name(service_cidr: str) -> str:
    """``funcmesh_127_96_0_0_16`` for ``127.96.0.0/16``."""
    return "funcmesh_" + re.sub(r"[^0-9A-Za-z]", "_", service_cidr)


async def open_nat_table(
    service_cidr: str, *, search_path: str = TOOLS_PATH, min_interval_s: float = MIN_INTERVAL_S
) -> NatTable:
    """The daemon's NAT table, started (a leftover of the same name replaced), or Unavailable
    saying why the kernel path cannot be used here. ``nft`` and ``conntrack`` are looked for
    in ``search_path``."""
    if os.geteuid() != 0:
        raise Unavailable("the daemon does not run as root")
    nft = shutil.which("nft", path=search_path)
    if nft is None:
        raise Unavailable("nft is not installed (Debian package nftables)")
    scratch = f"funcmesh_probe_{os.getpid()}"
    try:
        await _run([nft, "-f", "-"], stdin=f"add table ip {scratch}\ndelete table ip {scratch}\n")
    except (NatFailed, OSError) as exc:
        raise Unavailable(f"nft cannot create a table: {exc}") from exc
    conntrack = shutil.which("conntrack", path=search_path)
    if conntrack is not None:
        try:
            await _run([conntrack, "-C"])
        except (NatFailed, OSError) as exc:
            logger.info("conntrack does not work (%s): UDP VIPs stay in the daemon", exc)
            conntrack = None
    table = NatTable(
        service_cidr, tools=NatTools(nft=nft, conntrack=conntrack), min_interval_s=min_interval_s
    )
    try:
        await table.start()
    except (NatFailed, OSError) as exc:
        raise Unavailable(f"nft cannot create the table ip {table.name}: {exc}") from exc
    return table


class NatTable:
    """One nftables table of DNAT rules, kept equal to what ``put`` was last told."""

    def __init__(
        self, service_cidr: str, *, tools: NatTools, min_interval_s: float = MIN_INTERVAL_S
    ) -> None:
        self.name = table_name(service_cidr)
        self.network = service_cidr
        self.protocols = PROTOCOLS if tools.conntrack else frozenset({"TCP"})
        self._network = ipaddress.IPv4Network(service_cidr)
        self._tools = tools
        self._min_interval_s = min_interval_s
        self._by_key: dict[Key, dict[NatAddress, _Rule]] = {}
        self._draining: dict[str, asyncio.TimerHandle] = {}  # pod IP -> end of its hold
        self._applied: dict[NatAddress, _Rule] = {}
        self._generation = 0
        self._dirty = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._worker: asyncio.Task[None] | None = None
        self._logged: set[str] = set()

    async def start(self) -> None:
        """Replace any table of this name (a predecessor's) by an empty one; follow ``put``."""
        await self._nft(f"add table ip {self.name}\ndelete table ip {self.name}\n" + self._head())
        self._worker = asyncio.create_task(self._apply_changes(), name=f"nft-{self.name}")

    async def close(self) -> None:
        """Stop applying and delete the table: new connections to its VIPs are refused (or go
        to a VIP listener), and established ones stop flowing unless another NAT rule on the
        machine keeps connection tracking on."""
        for hold in self._draining.values():
            hold.cancel()
        self._draining.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        try:
            await self._nft(f"add table ip {self.name}\ndelete table ip {self.name}\n")
        except (NatFailed, OSError) as exc:
            logger.error("could not delete the nftables table ip %s: %s", self.name, exc)

    def can_serve(self, ip: str, protocol: str) -> bool:
        """Whether a VIP ``ip`` (in the service CIDR) and ``protocol`` can have a rule here."""
        try:
            return protocol in self.protocols and ipaddress.IPv4Address(ip) in self._network
        except ValueError:
            return False

    def put(self, key: Key, rules: Mapping[NatAddress, tuple[Endpoint, ...]]) -> None:
        """Make the rules of Service ``key`` these (none: no rule, so its VIPs refuse); applied
        by the kernel shortly after (``settled``)."""
        comment = _comment(key)
        wanted = {
            address: _Rule(endpoints=usable, comment=comment)
            for address, endpoints in rules.items()
            if (usable := self._usable(address, endpoints))
        }
        if self._by_key.get(key, {}) == wanted:
            return
        if wanted:
            self._by_key[key] = wanted
        else:
            self._by_key.pop(key, None)
        self._changed()

    async def drain(self, ip: str, *, hold_s: float = DRAIN_HOLD_S) -> None:
        """Leave the pod address ``ip`` out of every rule (for ``hold_s`` at most: its endpoint
        leaves meanwhile) and return once the kernel sends it no new connection."""
        named = any(
            endpoint[0] == ip
            for rules in self._by_key.values()
            for rule in rules.values()
            for endpoint in rule.endpoints
        )
        if not named or ip in self._draining:
            await self.settled()
            return
        loop = asyncio.get_running_loop()
        self._draining[ip] = loop.call_later(hold_s, self._release, ip)
        self._changed()
        await self.settled()

    def _release(self, ip: str) -> None:
        if self._draining.pop(ip, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._generation += 1
        self._settled.clear()
        self._dirty.set()

    async def settled(self) -> None:
        """Return once the kernel has every rule ``put`` asked for so far."""
        await self._settled.wait()

    # applying

    async def _apply_changes(self) -> None:
        """The worker: one transaction per wake, then a pause so that a burst costs one run;
        a failed one is tried again later (backing off), so the worker never dies."""
        retry_s = RETRY_S[0]
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            generation = self._generation
            try:
                await self._apply(self._rules_now())
            except (NatFailed, OSError) as exc:
                self._log_once(f"cannot apply the VIP rules of nftables table {self.name}: {exc}")
            except Exception:
                logger.exception("applying the VIP rules of nftables table %s failed", self.name)
            else:
                retry_s = RETRY_S[0]
                if generation == self._generation:
                    self._settled.set()
                await asyncio.sleep(self._min_interval_s)  # changes meanwhile: one more run
                continue
            self._dirty.set()
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, RETRY_S[1])

    async def _apply(self, wanted: dict[NatAddress, _Rule]) -> None:
        await self._nft(self._transaction(wanted))
        previous, self._applied = self._applied, wanted
        await self._forget_udp_flows(previous, wanted)

    def _rules_now(self) -> dict[NatAddress, _Rule]:
        """Every rule asked for, without the addresses being drained (a rule left with none is
        no rule: its VIP port refuses)."""
        rules: dict[NatAddress, _Rule] = {}
        for by_address in self._by_key.values():
            for address, rule in by_address.items():
                endpoints = tuple(e for e in rule.endpoints if e[0] not in self._draining)
                if endpoints:
                    rules[address] = _Rule(endpoints=endpoints, comment=rule.comment)
        return rules

    def _head(self) -> str:
        """The table and chain (created when missing), the rule that lets every address outside
        the service CIDR through at once, and one that uses connection tracking without doing
        anything (only new connections pass a NAT chain): the kernel tracks connections only
        while a rule needs it, and without tracking, connections made through a rule since
        removed would lose their translation (and hang) when no other DNAT rule is left."""
        chain = f"ip {self.name} {CHAIN}"
        return (
            f"add table ip {self.name}\n"
            f"add chain {chain} {{ type nat hook output priority -100; policy accept; }}\n"
            f"flush chain {chain}\n"
            f"add rule {chain} ip daddr != {self._network} return\n"
            f'add rule {chain} ct state != new return comment "{KEEP_TRACKING}"\n'
        )

    def _transaction(self, wanted: Mapping[NatAddress, _Rule]) -> str:
        lines = [self._head()]
        for (ip, port, protocol), rule in sorted(wanted.items()):
            lines.append(
                f"add rule ip {self.name} {CHAIN} ip daddr {ip} {protocol.lower()} dport {port} "
                f'dnat ip to {_destination(rule.endpoints)} comment "{rule.comment}"\n'
            )
        return "".join(lines)

    async def _forget_udp_flows(
        self, before: Mapping[NatAddress, _Rule], after: Mapping[NatAddress, _Rule]
    ) -> None:
        """Delete the conntrack entries of UDP flows that now go elsewhere: every flow of a
        VIP port that got or lost its rule, and the flows of each endpoint that left."""
        if self._tools.conntrack is None:
            return
        for address in {a for a in (*before, *after) if a[2] == "UDP"}:
            ip, port, _ = address
            selector = ["-p", "udp", "--orig-dst", ip, "--orig-port-dst", str(port)]
            if address not in before or address not in after:
                await self._conntrack_delete(selector)
                continue
            for gone in set(before[address].endpoints) - set(after[address].endpoints):
                endpoint = ["--reply-src", gone[0], "--reply-port-src", str(gone[1])]
                await self._conntrack_delete([*selector, *endpoint])

    async def _conntrack_delete(self, selector: list[str]) -> None:
        assert self._tools.conntrack is not None
        try:
            await _run([self._tools.conntrack, "-D", *selector])
        except (NatFailed, OSError) as exc:
            if "0 flow entries" not in str(exc):  # nothing to delete is exit status 1
                self._log_once(f"cannot forget the UDP flows of a changed VIP: {exc}")

    async def _nft(self, transaction: str) -> None:
        await _run([self._tools.nft, "-f", "-"], stdin=transaction)

    def _usable(self, address: NatAddress, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """The endpoints a rule can name (an IPv4 address and a port): an odd one must not fail
        the transaction, which carries every other Service's rules too."""
        if not self.can_serve(address[0], address[2]):
            return ()
        distinct = tuple(dict.fromkeys(endpoints))
        usable = tuple(e for e in distinct if _ipv4(e[0]) and 0 < e[1] < 65536)
        if len(usable) < len(distinct):
            self._log_once(
                f"VIP {address[0]}:{address[1]}/{address[2]}: endpoints with no IPv4 address "
                f"and port are left out of its kernel rule: {sorted(set(distinct) - set(usable))}"
            )
        return usable

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            logger.warning("%s", message)


def _destination(endpoints: tuple[Endpoint, ...]) -> str:
    """One endpoint, or a random one of several (each new connection draws again)."""
    if len(endpoints) == 1:
        return f"{endpoints[0][0]}:{endpoints[0][1]}"
    choices = ", ".join(f"{i} : {ip} . {port}" for i, (ip, port) in enumerate(endpoints))
    return f"numgen random mod {len(endpoints)} map {{ {choices} }}"


def _comment(key: Key) -> str:
    return re.sub(r"[^0-9A-Za-z._/-]", "", f"{key[0]}/{key[1]}")


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


async def _run(argv: list[str], *, stdin: str | None = None) -> None:
    """Run a program to its end without blocking the loop; NatFailed with its error output
    when it fails. Its input comes from an in-memory file written before it starts, not a pipe
    fed meanwhile: a program that exits without reading it (a failing nft) is then no error of
    ours (uvloop raises writing to a pipe the program closed unread)."""
    source = None if stdin is None else _memory_file(stdin.encode())
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if source is None else source,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        if source is not None:
            os.close(source)
    try:
        _, errors = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        message = " ".join(errors.decode(errors="replace").split())[-500:]
        raise NatFailed(f"{os.path.basename(argv[0])} exited {process.returncode}: {message}")


def _memory_file(data: bytes) -> int:
    """A descriptor of an anonymous in-memory file holding ``data``, read from its start."""
    fd = os.memfd_create("funcmesh-nft", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)  # memory: never blocks, whatever the size
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
