"""The public listener accepts one connection per wakeup (proxy/listener.py).

Two Listeners on two descriptors of one listening socket, in one event loop, stand for
two workers sharing it: both are readable at once, and one loop turn runs both. Taking
one connection each per turn, they split a queue of connections evenly; a listener that
accepted until the queue was empty would take all of it in its first turn.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from gateway.policy.model import Listen
from gateway.proxy.listener import Listener, bind, port_of


class _Accepted(asyncio.Protocol):
    def __init__(self, into: list[asyncio.Transport], arrived: asyncio.Event) -> None:
        self._into = into
        self._arrived = arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._into.append(transport)
        self._arrived.set()


def _into(taken: list[asyncio.Transport], arrived: asyncio.Event) -> Callable[[], asyncio.Protocol]:
    return lambda: _Accepted(taken, arrived)


async def test_two_listeners_on_one_socket_split_a_queued_burst() -> None:
    sock = bind(Listen(host="127.0.0.1", port=0))
    clients = [socket.create_connection(("127.0.0.1", port_of(sock))) for _ in range(10)]
    # The kernel completed every handshake: ten connections wait in the accept queue.
    taken: tuple[list[asyncio.Transport], list[asyncio.Transport]] = ([], [])
    arrived = asyncio.Event()
    listeners = [Listener(s, _into(into, arrived)) for s, into in zip((sock, sock.dup()), taken, strict=True)]
    try:
        for listener in listeners:
            listener.start()
        async with asyncio.timeout(5):
            while len(taken[0]) + len(taken[1]) < 10:
                arrived.clear()
                await arrived.wait()
        assert sorted(map(len, taken)) == [5, 5]
    finally:
        for listener in listeners:
            await listener.close()
        for transport in (*taken[0], *taken[1]):
            transport.close()
        for client in clients:
            client.close()


async def test_close_waits_for_accepted_connections_to_reach_their_protocol() -> None:
    sock = bind(Listen(host="127.0.0.1", port=0))
    client = socket.create_connection(("127.0.0.1", port_of(sock)))
    taken: list[asyncio.Transport] = []
    listener = Listener(sock, _into(taken, asyncio.Event()))
    listener.start()
    try:
        for _ in range(10_000):  # loop turns until it is accepted (its transport being made)
            if listener._pending or taken:
                break
            await asyncio.sleep(0)
        await listener.close()
        # Accepted before the close: its protocol has it when close() returns, so a
        # drain that starts now sees it.
        assert len(taken) == 1
        # And the socket is closed: a new connection is refused.
        with socket.socket() as late:
            assert late.connect_ex(client.getpeername()) != 0
    finally:
        for transport in taken:
            transport.close()
        client.close()
