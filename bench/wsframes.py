"""What following WebSocket frame headers costs the relay, per frame.

    python bench/wsframes.py [--frames 1000000] [--rounds 5]

A flood of tiny frames is the scanner's worst case (gateway/proxy/wsframe.py): the
relay reads frame headers in Python, so a peer sending empty frames makes it do the
most work per byte. Two streams, fed in socket reads of READ_CHUNK (256 KiB) as the
relay gets them:

  client    masked empty frames, 6 bytes each (what a client must send)
  upstream  unmasked empty frames, 2 bytes each (what a server sends)

The figure is the best round's CPU time divided by the frames scanned. Printed, never
asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from gateway.limits import READ_CHUNK
from gateway.proxy.wsframe import UNLIMITED, FrameScanner


def chunks(frame: bytes, count: int) -> list[bytes]:
    stream = frame * count
    return [stream[i : i + READ_CHUNK] for i in range(0, len(stream), READ_CHUNK)]


def scan(pieces: list[bytes], masked: bool) -> float:
    """Seconds of CPU to scan `pieces` as the relay does: every frame of every read, an
    unfinished header kept and read again with the next read."""
    scanner = FrameScanner(masked)
    rest = b""
    t0 = time.process_time()
    for piece in pieces:
        data = rest + piece if rest else piece
        rest = data[scanner.scan(data, 0, UNLIMITED) :]
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, {args.frames} frames, best of {args.rounds} rounds")
    streams = {
        "client": (chunks(b"\x82\x80" + os.urandom(4), args.frames), True),
        "upstream": (chunks(b"\x82\x00", args.frames), False),
    }
    for name, (pieces, masked) in streams.items():
        best = min(scan(pieces, masked) for _ in range(args.rounds))
        print(f"{name:9} {best / args.frames * 1e6:.3f} µs/frame  ({args.frames / best / 1e6:.2f} M frames/s)")


if __name__ == "__main__":
    main()
