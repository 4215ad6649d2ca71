"""Loading a certificate and key into an `SSLContext` from bytes.

`SSLContext.load_cert_chain` takes only paths. A context built from bytes the policy
load already read and checked (a worker builds it from the supervisor's snapshot, and a
pair is never read twice by name, so a rotation cannot slip between the check and the
load) hands them to OpenSSL through anonymous in-memory files (memfd): the key is never
written to disk."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable


def load_chain(context: ssl.SSLContext, cert: bytes, key: bytes, password: Callable[[], bytes]) -> None:
    """`context.load_cert_chain` on these bytes: ssl.SSLError for a bad pair, OSError
    where there is no memfd (not Linux) or no /proc. `password` is called by OpenSSL only
    for an encrypted key; without it OpenSSL would prompt on the terminal."""
    fds: list[int] = []
    try:
        for data in (cert, key):
            fds.append(_memfd(data))
        context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}", password=password)
    finally:
        for fd in fds:
            os.close(fd)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("gateway-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        raise
    return fd
