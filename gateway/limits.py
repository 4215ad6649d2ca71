"""How much one client connection, and the process, may hold: the numbers in one place.

Every limit here bounds memory a client can make the gateway hold without sending a
valid request; `worst_case_bytes` adds them up (SECURITY.md quotes it). The values come
from the policy's `server` section (policy/compile.py checks them against each other);
the proxy (framing.py, downstream.py) enforces them. A vocabulary, like errors.py: it
depends on nothing.
"""

from __future__ import annotations

import errno
import resource
from dataclasses import dataclass

# The socket read size of asyncio's and uvloop's transports: what one `data_received`
# can carry, and so what a connection holds unparsed once it stops reading.
READ_CHUNK = 256 * 1024
# A request body buffered ahead of the upstream: aiohttp's StreamReader pauses the
# socket at twice its limit.
BODY_BUFFER = 2 * 2**16
# Python objects per byte of a parsed head (bytes, str, tuples, the multidict): the
# ratio measured on CPython 3.11 to 3.13 for heads of a few dozen headers, rounded up.
PARSED_OVERHEAD = 4
# File descriptors kept for the rest of the process: upstream connections (one per
# client connection at most), log files, key files, the admin listener.
_FD_RESERVE = 64
_DEFAULT_MAX_CONNECTIONS = 10_000
# Files the policy is read from. A policy of thousands of routes is a few hundred KiB; a
# JWKS file or a secret, a few KiB. The supervisor sends a validated policy and the key
# files it names to each worker over the control channel (runtime/control.py), whose
# message limit is above what these allow together.
MAX_POLICY_BYTES = 4 * 2**20
MAX_KEY_FILE_BYTES = 2**20
MAX_KEY_FILES_BYTES = 16 * 2**20


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection and per-process budgets of the public listener."""

    # A request line (method, target, version); aiohttp's own default.
    max_request_line: int = 8190
    # Any header line but Authorization (name, colon, value), as nginx's 8 KiB buffer.
    max_header_line: int = 8192
    # The Authorization line: twice the largest token, so that the handler, not the
    # parser, answers an oversized token (401 token_too_large).
    max_authorization_line: int = 2 * 8192 + 1024
    # A whole head, request line to blank line (Envoy: 60 KiB; nginx: 4 x 8 KiB).
    max_head_bytes: int = 64 * 1024
    # Header fields in one head (aiohttp's default is 128; nginx has no count).
    max_headers: int = 100
    # Trailer fields after a chunked body; the gateway drops them (framing.py).
    max_trailers: int = 32
    # Heads parsed ahead of the request being answered, in bytes; reading stops past it.
    max_pipelined_bytes: int = 64 * 1024
    # Open client connections in the process; past it a new one gets 503 and is closed.
    max_connections: int = _DEFAULT_MAX_CONNECTIONS

    def worst_case_bytes(self) -> int:
        """An upper estimate of what one client connection can make the process hold:
        parsed heads (the one being answered, those queued up to the budget plus the one
        that crossed it, the one arriving), the unread socket read held past the budget,
        a request body's buffer, and the transport's write buffer."""
        parsed = PARSED_OVERHEAD * (self.max_pipelined_bytes + 3 * self.max_head_bytes)
        return parsed + READ_CHUNK + BODY_BUFFER + 2**16


def default_max_connections() -> int:
    """10 000, or fewer where the descriptor limit would run out first: each client
    connection can hold an upstream one, and past RLIMIT_NOFILE `accept` fails in a
    loop that no client ever hears about."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _DEFAULT_MAX_CONNECTIONS
    return max(1, min(_DEFAULT_MAX_CONNECTIONS, (soft - _FD_RESERVE) // 2))


def read_bounded(path: str, limit: int) -> bytes:
    """A file's bytes, or OSError(EFBIG) when it holds more than `limit`: a file named in
    the policy never makes the process read an unbounded amount."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"the file is larger than {_size(limit)} (the most it may hold)", path)
    return data


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n} bytes"
