"""What a request ID costs the handler per request, and what a cheaper scheme would save.

    python bench/request_id_cost.py [--calls 200000] [--rounds 7]

  (a) new      `RequestIds.choose` when no ID was sent: `os.urandom(16).hex()`, one
               getrandom() call per request (what the gateway does)
  (b) kept     `choose` of a trusted proxy's well-formed 36-character UUID
  (c) buffered 16 bytes sliced from a 4 KiB `os.urandom` buffer, refilled when spent:
               the cheaper-but-unguessable alternative (not used: a buffer filled before
               a fork would give two workers the same IDs, and it saves little)
  (d) uuid4    `uuid.uuid4().hex`, for comparison

The figure is the best round per call. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.requestid import RequestIds


class _Buffered:
    def __init__(self) -> None:
        self.buf, self.at = b"", 4096

    def __call__(self) -> str:
        at = self.at
        if at >= 4096:
            self.buf, at = os.urandom(4096), 0
        self.at = at + 16
        return self.buf[at : at + 16].hex()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    ids = RequestIds()
    sent = ["0f8e2c1a-9b7d-4e3f-a2c1-d4e5f6a7b8c9"]
    cases: dict[str, Callable[[], object]] = {
        "new": lambda: ids.choose((), False),
        "kept": lambda: ids.choose(sent, True),
        "buffered": _Buffered(),
        "uuid4": lambda: uuid.uuid4().hex,
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / args.calls)
    print(f"python {sys.version.split()[0]}, {args.calls} calls x {args.rounds} rounds, best round per call:")
    for name, seconds in best.items():
        print(f"  {name:9} {seconds * 1e9:7.0f} ns")


if __name__ == "__main__":
    main()
