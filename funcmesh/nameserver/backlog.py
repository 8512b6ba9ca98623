"""Whether the kernel holds a backlog for our UDP sockets: the server's saturation signal.

The kernel's table of UDP sockets (/proc/net/udp and udp6) gives, per socket inode, the bytes
waiting in the receive queue and the datagrams dropped because it was full. A queue far longer
than any well-behaved client keeps in flight, or a drop count that grew, means queries arrive
faster than the server answers them: only then is it fair to hold a heavy client back.

Reading these pseudo-files is an in-memory copy of a few lines (tens of microseconds), done
once per 100 ms window, so it may run on the event loop. Must not be called per query.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from pathlib import Path

PROC_NET = Path("/proc/net")
TABLES = ("udp", "udp6")


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def udp_backlog(inodes: Collection[int], *, proc_net: Path = PROC_NET) -> tuple[int, int] | None:
    """(largest receive queue in bytes, total drops) over the sockets ``inodes``; None when the
    kernel's table cannot be read (not Linux, no /proc)."""
    queued = drops = 0
    try:
        texts = [(proc_net / table).read_text() for table in TABLES]
    except OSError:
        return None
    for text in texts:
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 13 and fields[9].isdigit() and int(fields[9]) in inodes:
                queued = max(queued, int(fields[4].partition(":")[2], 16))
                drops += int(fields[12])
    return queued, drops
