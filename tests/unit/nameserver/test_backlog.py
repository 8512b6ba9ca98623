"""Reading the kernel's UDP socket table for backlog and drops."""

from __future__ import annotations

import socket
from pathlib import Path

from funcmesh.nameserver.backlog import socket_inode, udp_backlog

HEADER = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode ref pointer drops\n"
)


def row(inode: int, rx_queue: int, drops: int) -> str:
    return (
        f"  1: 0100007F:14E9 00000000:0000 07 00000000:{rx_queue:08X} 00:00000000 00000000     0"
        f"        0 {inode} 2 0000000000000000 {drops}\n"
    )


def test_the_backlog_of_our_sockets_only(tmp_path: Path) -> None:
    (tmp_path / "udp").write_text(HEADER + row(111, 4096, 3) + row(222, 999999, 50))
    (tmp_path / "udp6").write_text(HEADER + row(333, 70000, 1))

    assert udp_backlog({111, 333}, proc_net=tmp_path) == (70000, 4)
    assert udp_backlog({444}, proc_net=tmp_path) == (0, 0)


def test_no_kernel_table_means_no_answer(tmp_path: Path) -> None:
    assert udp_backlog({111}, proc_net=tmp_path) is None


def test_a_real_socket_is_found_with_what_it_has_queued() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"x" * 100, server.getsockname())
            backlog = udp_backlog({socket_inode(server)})

    assert backlog is not None
    assert backlog[0] > 0
