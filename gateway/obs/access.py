"""The access log: one line per request, JSON or text, with secrets removed.

Replaces aiohttp's access log, whose default format writes the raw request line (query
secrets included). Headers are never logged except `User-Agent` and a redacted
`Referer`; `Authorization`, `Cookie`, `Set-Cookie` and `Proxy-Authorization` never are.

Reads one plain record, `Exchange`, which the handler fills in: this module knows no
request, connection or principal type (it must not import `gateway.proxy` or
`gateway.auth`), and never decides an outcome.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.obs.metrics import RouteMetrics
from gateway.obs.redact import Redactor, clip

log = logging.getLogger("gateway.access")
# Logged as they are; any other method (the pure-Python parser takes any token, up to
# the request line's length) is free text from the client: redacted and bounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


def _log_line(line: str) -> None:
    log.info(line)


# Where lines go. By default the `gateway.access` logger (for embedding and tests); the
# CLI installs a LineWriter on stdout, which skips the logging machinery entirely.
_sink: Callable[[str], None] = _log_line


def set_sink(sink: Callable[[str], None] | None) -> None:
    global _sink
    _sink = sink or _log_line


class LineWriter:
    """Writes access lines to a stream from a background thread, in batches.

    The event loop only appends to a deque; a slow or blocked stdout (a full pipe, a
    stalled log shipper) never stalls request handling. If the writer falls far behind,
    lines are dropped and counted rather than growing memory without bound: at most
    `MAX_PENDING` lines and `max_pending_chars` characters wait (lines are ASCII)."""

    MAX_PENDING = 100_000
    # A line is at most ~16 KB (five request fields of 512 characters, each up to six
    # when escaped): by line count alone, 100 000 hostile lines would hold 1.6 GB.
    MAX_PENDING_CHARS = 32 * 2**20

    def __init__(self, stream: TextIO, interval: float = 0.05, max_pending_chars: int = MAX_PENDING_CHARS) -> None:
        self._stream = stream
        self._interval = interval
        self._max_chars = max_pending_chars
        self._pending: deque[str] = deque()
        # Each counter has one writer thread, so no lock: the loop's, then the writer's.
        self._queued_chars = 0
        self._dropped_full = 0
        self._taken_chars = 0
        self._dropped_failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._dropped_full + self._dropped_failed

    def write(self, line: str) -> None:
        size = len(line)
        if len(self._pending) >= self.MAX_PENDING or self._queued_chars - self._taken_chars + size > self._max_chars:
            self._dropped_full += 1
            return
        self._queued_chars += size
        self._pending.append(line)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        batch = []
        while pending:
            batch.append(pending.popleft())
        text = "\n".join(batch) + "\n"
        self._taken_chars += len(text) - len(batch)
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self._dropped_failed += len(batch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


@dataclass(slots=True)
class Exchange:
    """What one request was and did, filled in by the handler as it is handled: plain
    values only. One object per request, so the log line costs no record of its own."""

    started: float = field(default_factory=time.perf_counter)
    # Set first thing (gateway/requestid.py): a trusted proxy's well-formed ID or a new one.
    request_id: str = "-"
    route: str = "-"
    metrics: RouteMetrics | None = None  # the matched route's; None when none matched
    outcome: str = "allowed"
    reason: str = "-"
    subject: str | None = None  # of a verified token, allowed or refused (403)
    provider: str | None = None  # the provider that verified it
    upstream_seconds: float | None = None
    bytes_out: int = 0
    # The request as received, set once it is answered (raw: redacted when written).
    client: str | None = None
    method: str = "-"
    target: str = ""
    bytes_in: int = 0
    referer: str | None = None
    user_agent: str | None = None


_QUOTE: Callable[[str], str] = json.encoder.encode_basestring_ascii


_second: list[Any] = [0, ""]
_milli: list[Any] = [0, ""]


def _timestamp() -> str:
    """ISO 8601 UTC with milliseconds, formatted once per millisecond (a busy gateway
    writes several lines in each); the seconds part once per second."""
    milli = int(time.time() * 1000)
    if milli == _milli[0]:
        return str(_milli[1])
    whole = milli // 1000
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    stamp = f"{_second[1]}.{milli % 1000:03d}Z"
    _milli[0], _milli[1] = milli, stamp
    return stamp


def _text_value(value: object) -> str:
    if value is None:
        return "-"  # no value, as common log formats write it (not Python's `None`)
    if isinstance(value, str):
        # Keep one line per request whatever a client sends: escape controls and quotes.
        return _QUOTE(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class AccessLog:
    """Formats and writes access log lines. `fmt` is `json` or `text`."""

    fmt: str
    log_subject: bool
    redactor: Redactor
    enabled: bool = True

    def emit(self, ex: Exchange, status: int, total: float) -> None:
        if not self.enabled:
            return
        if self.fmt == "json":
            _sink(self.json_line(ex, status, total))
        else:
            record = self.record(ex, status, total)
            _sink(" ".join(f"{k}={_text_value(v)}" for k, v in record.items()))

    def record(self, ex: Exchange, status: int, total: float) -> dict[str, Any]:
        """The line's fields, in order."""
        record: dict[str, Any] = {
            "ts": _timestamp(),
            "request_id": ex.request_id,
            "client": ex.client or "-",
            "method": self._method(ex.method),
            "path": self.redactor.target(ex.target),
            "status": status,
            "route": ex.route,
            "outcome": ex.outcome,
            "reason": ex.reason,
        }
        if self.log_subject:
            record["subject"] = clip(ex.subject) if ex.subject is not None else None
        record["provider"] = ex.provider
        record["upstream_seconds"] = round(ex.upstream_seconds, 6) if ex.upstream_seconds is not None else None
        record["duration_seconds"] = round(total, 6)
        record["bytes_in"] = ex.bytes_in
        record["bytes_out"] = ex.bytes_out
        referer = ex.referer
        if referer is not None:
            record["referer"] = self.redactor.url(referer)
        agent = ex.user_agent
        if agent is not None:
            record["user_agent"] = self.redactor.text(agent)
        return record

    def _method(self, method: str) -> str:
        return method if method in _METHODS else self.redactor.text(method)

    def json_line(self, ex: Exchange, status: int, total: float) -> str:
        """`record()` as JSON, byte for byte what `json.dumps(record, separators=(",", ":"))`
        gives but for the two durations (the same values, written with six decimals:
        half the cost of `repr(round())`), in one f-string: no dict, no per-field type
        dispatch (this runs for every request). Strings go through the C escaper."""
        q = _QUOTE
        method = ex.method
        if method not in _METHODS:
            method = self.redactor.text(method)
        subject = ""
        if self.log_subject:
            subject = f',"subject":{q(clip(ex.subject)) if ex.subject is not None else "null"}'
        subject += f',"provider":{q(ex.provider) if ex.provider is not None else "null"}'
        up = ex.upstream_seconds
        up_text = "null" if up is None else f"{up:.6f}"
        extra = ""
        referer = ex.referer
        if referer is not None:
            extra = f',"referer":{q(self.redactor.url(referer))}'
        agent = ex.user_agent
        if agent is not None:
            extra += f',"user_agent":{q(self.redactor.text(agent))}'
        return (
            f'{{"ts":"{_timestamp()}","request_id":{q(ex.request_id)},"client":{q(ex.client or "-")},'
            f'"method":{q(method)},'
            f'"path":{q(self.redactor.target(ex.target))},"status":{status},'
            f'"route":{q(ex.route)},"outcome":{q(ex.outcome)},"reason":{q(ex.reason)}{subject},'
            f'"upstream_seconds":{up_text},'
            f'"duration_seconds":{total:.6f},"bytes_in":{ex.bytes_in},'
            f'"bytes_out":{ex.bytes_out}{extra}}}'
        )
