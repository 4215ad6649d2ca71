"""What WebSocket clients flooding empty frames cost a gateway worker, end to end.

    python bench/wsflood.py [--connections 1] [--seconds 5] [--rate 2000]

Starts, on loopback: an upstream that answers the handshake with a 101 and then reads
and counts bytes (a thread here); a gateway in its own process (one worker, uvloop) with
`server.websocket_max_client_frames_per_second: RATE`; then opens CONNECTIONS WebSockets
through it and sends masked empty frames (6 bytes) on each as fast as this process can.
The gateway's CPU (user + system, /proc, Linux only) is counted from the last handshake
to the end, and divided by the frames the upstream got and by the connections. Printed,
never asserted. Pass a rate of 1000000 to see the unmetered relay.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

GATEWAY = textwrap.dedent("""
    import asyncio, sys, uvloop
    from gateway.app import Gateway
    from gateway.policy import load_policy
    async def main():
        gw = Gateway(load_policy(sys.argv[1]))
        await gw.start()
        print(gw.public_port, flush=True)
        await asyncio.Event().wait()
    uvloop.run(main())
""")
ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class Upstream:
    """Answers each handshake with a 101, then counts what it gets."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        conn.sendall(ACCEPT)
        while chunk := conn.recv(1 << 20):
            with self._lock:
                self.received += len(chunk)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handshake(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall(
        f"GET /ws HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    if not head.startswith(b"HTTP/1.1 101 "):
        raise SystemExit(f"no 101: {head[:100]!r}")
    conn.setblocking(False)
    return conn


def flood(conns: list[socket.socket], seconds: float) -> None:
    frames = memoryview((b"\x82\x80" + os.urandom(4)) * 20000)
    sent = [0] * len(conns)  # where each is in `frames`: a partial send must not split a frame
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, conn in enumerate(conns):
            with contextlib.suppress(BlockingIOError):  # its buffer is full: the gateway is not reading it
                sent[i] = (sent[i] + conn.send(frames[sent[i] :])) % len(frames)
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    upstream = Upstream()
    with tempfile.TemporaryDirectory(prefix="gateway-wsflood-") as d:
        policy = Path(d) / "policy.yaml"
        policy.write_text(
            "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
            f"server: {{websocket_max_client_frames_per_second: {args.rate}, max_websockets: 100000}}\n"
            "routes:\n"
            f"  - {{name: ws, match: {{prefix: /ws}}, upstream: 'http://127.0.0.1:{upstream.port}',"
            " websocket: true, auth: public}\n"
        )
        gateway = subprocess.Popen(  # noqa: S603 (this interpreter and a script of ours)
            [sys.executable, "-c", GATEWAY, str(policy)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert gateway.stdout is not None
            port = int(gateway.stdout.readline())
            conns = [handshake(port) for _ in range(args.connections)]
            time.sleep(0.5)
            cpu0, got0, t0 = cpu_seconds(gateway.pid), upstream.received, time.monotonic()
            flood(conns, args.seconds)
            cpu, frames, wall = (
                cpu_seconds(gateway.pid) - cpu0,
                (upstream.received - got0) // 6,
                time.monotonic() - t0,
            )
            for conn in conns:
                conn.close()
        finally:
            gateway.kill()
            gateway.wait()
    print(f"{args.connections} connection(s), {wall:.1f} s, rate {args.rate}: {frames} frames relayed")
    print(f"gateway CPU {cpu:.2f} s: {cpu / max(frames, 1) * 1e6:.3f} µs/frame, "
          f"{cpu / wall / args.connections * 1e3:.3f} ms of CPU a second per connection")  # fmt: skip


if __name__ == "__main__":
    main()
