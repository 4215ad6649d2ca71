"""The public listening socket, bound once by the supervisor and shared by its workers.

One socket, one accept queue, N processes accepting from it. The alternative,
SO_REUSEPORT (a socket per worker, the kernel hashing connections across them), spreads
load more evenly under a flood of new connections, but each socket has its own accept
queue: when a worker stops (a drain, a reload that replaces workers, a crash) the
connections the kernel already queued on its socket are reset. With one shared queue, a
worker that stops accepting leaves what is queued to the others, which is what "no
request fails because of a reload" needs.
"""

from __future__ import annotations

import socket

from gateway.policy.model import Listen

BACKLOG = 1024


def bind(where: Listen) -> socket.socket:
    """A listening, non-blocking socket on `where` (OSError if it cannot be had)."""
    infos = socket.getaddrinfo(where.host or "0.0.0.0", where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As asyncio's create_server: rebinding a port in TIME_WAIT is allowed, and an
        # IPv6 socket takes IPv6 only (`0.0.0.0` and `::` are two listens).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])
