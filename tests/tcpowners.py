"""Which process holds the server side of a loopback TCP connection.

A worker is told apart by its file descriptors: the server side of a client's
connection is a socket in exactly one worker's fd table (/proc/<pid>/fd names its
inode). The kernel's socket table maps that inode to its ports (the client's port is
the server side's remote port); it is read with a sock_diag netlink dump of the
connected sockets only, as `ss` does: /proc/net/tcp would also list every TIME_WAIT
socket, tens of thousands under a load test, and take a tenth of a second to read.
Linux only, IPv4 only: the tests listen on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
# inet_diag_req_v2: family, protocol, extensions, pad, states; then a 48-byte sockid
# that a dump ignores.
_REQUEST = struct.Struct("=BBBBI48x")
# inet_diag_msg: the ports (big-endian) at 4, the inode at 68.
_PORTS = struct.Struct(">HH")
_INODE = struct.Struct("=I")


def connected_sockets() -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every established (or close-wait) IPv4 TCP socket."""
    states = (1 << _TCP_ESTABLISHED) | (1 << _TCP_CLOSE_WAIT)
    request = _REQUEST.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, states)
    flags = _NLM_F_REQUEST | _NLM_F_DUMP
    found: list[tuple[int, int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
        diag.send(_HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, flags, 1, 0) + request)
        while True:
            data = diag.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    raise OSError("sock_diag dump refused")
                body = offset + _HEADER.size
                local, remote = _PORTS.unpack_from(data, body + 4)
                (inode,) = _INODE.unpack_from(data, body + 68)
                found.append((local, remote, inode))
                offset += (length + 3) & ~3


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets in `pid`'s fd table (empty if it is gone)."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def client_ports_of(pid: int, server_ports: Iterable[int]) -> set[int]:
    """The client ports of every connection `pid` holds the server side of."""
    ports = set(server_ports)
    sides = {inode: remote for local, remote, inode in connected_sockets() if local in ports}
    return {sides[inode] for inode in socket_inodes(pid) if inode in sides}


def owners(client_ports: Iterable[int] | None, server_port: int, pids: Iterable[int]) -> dict[int, int]:
    """Client port -> the process among `pids` that accepted that connection, for the
    given client ports (None: every connection to `server_port`). A connection still in
    the accept queue is held by no process yet and is left out: ask after a request
    was answered on it."""
    wanted = None if client_ports is None else set(client_ports)
    sides = {
        inode: remote
        for local, remote, inode in connected_sockets()
        if local == server_port and (wanted is None or remote in wanted)
    }
    found: dict[int, int] = {}
    for pid in pids:
        for inode in sides.keys() & socket_inodes(pid):
            found[sides[inode]] = pid
    return found
