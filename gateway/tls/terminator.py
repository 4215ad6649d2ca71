"""One listener's TLS while it runs: the context each new connection gets, rebuilt when
the certificate files change, and the outcome of every handshake reported.

Rotation (cert-manager, certbot, an operator) rewrites the files in place; each process
polls them, like a `jwks_file` (keys/sources.py). A change is loaded once the files have
stopped changing for `SETTLE` seconds (a tool writing the certificate, then the key,
is not caught between the two), into a new context, checked as at start
(context.py); new connections get it, connections already open keep theirs. A pair
that fails the checks is refused, logged and counted, and the context in force stays.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from gateway.filestamp import Stamp, file_stamp
from gateway.tls.context import (
    ChangedWhileReadingError,
    FileField,
    LoadedTls,
    TlsFileError,
    TlsSettings,
    build_tls,
    load_tls,
    read_files,
)
from gateway.tls.handshake import failure_reason, version_label

log = logging.getLogger("gateway.tls")

POLL_SECONDS = 2.0
SETTLE = 0.5
# A file rewritten while it is read at load: read again, this many times.
LOAD_TRIES = 3


class TlsReport(Protocol):
    """Where a terminator reports (obs.metrics.TlsMetrics)."""

    def handshake(self, version: str) -> None: ...

    def handshake_failed(self, reason: str) -> None: ...

    def reloaded(self, ok: bool) -> None: ...

    def expiry(self, not_after: float) -> None: ...


class _Unreported:
    def handshake(self, version: str) -> None:
        pass

    def handshake_failed(self, reason: str) -> None:
        pass

    def reloaded(self, ok: bool) -> None:
        pass

    def expiry(self, not_after: float) -> None:
        pass


def stamps(files: tuple[str, ...]) -> tuple[Stamp | None, ...]:
    return tuple(file_stamp(f) for f in files)


def _when(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(loaded: LoadedTls) -> str:
    """For logs: who the certificate names, until when, and which one it is."""
    return f"subject {loaded.subject}, expires {_when(loaded.not_after)}, sha256 {loaded.fingerprint[:16]}"


def first_load(
    settings: TlsSettings, read: Callable[[str, FileField], bytes], replaying: bool, now: float
) -> TlsTerminator:
    """The terminator a policy load starts with (TlsFileError naming the setting).

    `read` is the policy load's reader: from disk, keeping a copy for the snapshot the
    workers get; or, in a worker (`replaying`), from that snapshot. A worker first takes
    the files as they are now, as a rotation would. If they are unusable (a rotation the
    running workers refused), it serves the snapshot's pair, which the supervisor checked,
    rather than stop: a worker that cannot start stops the whole gateway, over a
    certificate the other workers go on serving."""
    if replaying:
        seen = stamps(settings.files)  # before reading: a change from here on is a rotation
        try:
            return TlsTerminator(settings, load_tls(settings, now), seen)
        except TlsFileError as exc:
            loaded = build_tls(settings, read_files(settings, read), now, expired_ok=True)
            log.error("TLS files unusable (%s); serving the pair the policy was loaded with: %s", exc, describe(loaded))
            return TlsTerminator(settings, loaded, seen)
    for attempt in range(LOAD_TRIES):
        seen = stamps(settings.files)
        files = read_files(settings, read)
        try:
            return TlsTerminator(settings, build_tls(settings, files, now), seen)
        except TlsFileError:
            if attempt == LOAD_TRIES - 1 or read_files(settings) == files:
                raise
    raise AssertionError("unreachable")


class TlsTerminator:
    """What the listener asks at each accept (`context`, `handshake_timeout`) and tells
    after each handshake; `start()` begins watching the files, `stop()` ends it."""

    def __init__(self, settings: TlsSettings, loaded: LoadedTls, seen: tuple[Stamp | None, ...]) -> None:
        """`seen`: the files' stamps taken before `loaded` was read from them."""
        self.settings = settings
        self.loaded = loaded
        self.handshake_timeout = settings.handshake_timeout
        self._seen = seen
        self._report: TlsReport = _Unreported()
        self._task: asyncio.Task[None] | None = None

    @property
    def context(self) -> ssl.SSLContext:
        return self.loaded.context

    def start(self, report: TlsReport) -> None:
        self._report = report
        report.expiry(self.loaded.not_after)
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name=f"watch TLS {self.settings.cert_file}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def handshake_done(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        self._report.handshake(version_label(ssl_object.version() if ssl_object is not None else None))

    def handshake_failed(self, exc: BaseException) -> None:
        reason = failure_reason(exc)
        self._report.handshake_failed(reason)
        # The reason only: OpenSSL's text can quote what the peer sent.
        log.debug("TLS handshake failed: %s", reason)

    async def _watch(self) -> None:
        files = self.settings.files
        absent_logged = False
        while True:
            await asyncio.sleep(POLL_SECONDS)
            now = await asyncio.to_thread(stamps, files)
            if now == self._seen:
                continue
            if None in now:
                # Removed, or between a removal and its replacement: wait for the file.
                if not absent_logged:
                    missing = ", ".join(f for f, s in zip(files, now, strict=True) if s is None)
                    log.warning("TLS file missing: %s; the certificate in force stays", missing)
                    absent_logged = True
                continue
            absent_logged = False
            await asyncio.sleep(SETTLE)
            if await asyncio.to_thread(stamps, files) != now:
                continue  # still being written: the next poll looks again
            await self._reload(now)

    async def _reload(self, now: tuple[Stamp | None, ...]) -> None:
        try:
            loaded = await asyncio.to_thread(load_tls, self.settings, time.time())
        except ChangedWhileReadingError:
            return  # written again while read: the next poll loads the settled files
        except TlsFileError as exc:
            self._seen = now
            self._report.reloaded(False)
            log.error("new TLS files refused, the certificate in force stays (%s): %s", describe(self.loaded), exc)
            return
        except Exception as exc:  # a rotation must never take the listener down
            self._seen = now
            self._report.reloaded(False)
            log.error("new TLS files refused (%s), the certificate in force stays", type(exc).__name__)
            return
        self._seen = now
        self.loaded = loaded
        self._report.reloaded(True)
        self._report.expiry(loaded.not_after)
        log.info("TLS certificate reloaded: %s", describe(loaded))
