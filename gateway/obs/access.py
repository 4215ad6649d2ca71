"""The access log: one line per request, JSON or text, with secrets removed.

Replaces aiohttp's access log, whose default format writes the raw request line (query
secrets included). Headers are never logged except `User-Agent` and a redacted
`Referer`; `Authorization`, `Cookie`, `Set-Cookie` and `Proxy-Authorization` never are.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.obs.redact import Redactor

log = logging.getLogger("gateway.access")
_MAX_FIELD = 512


@dataclass(slots=True)
class Exchange:
    """What one request did, filled in as it is handled."""

    started: float = field(default_factory=time.perf_counter)
    route: str = "-"
    metrics: Any = None  # the matched route's RouteMetrics; None when none matched
    outcome: str = "allowed"
    reason: str = "-"
    subject: str | None = None
    upstream_seconds: float | None = None
    bytes_out: int = 0


def _clip(value: str) -> str:
    return value if len(value) <= _MAX_FIELD else value[:_MAX_FIELD] + "..."


def _text_escape(value: str) -> str:
    # Keep one line per request whatever a client sends: escape controls and quotes.
    out = json.dumps(value, ensure_ascii=True)
    return out


@dataclass(frozen=True, slots=True)
class AccessLog:
    """Formats and writes access log lines. `fmt` is `json` or `text`."""

    fmt: str
    log_subject: bool
    redactor: Redactor
    enabled: bool = True

    def emit(self, request: web.BaseRequest, ex: Exchange, status: int, total: float) -> None:
        if not self.enabled or not log.isEnabledFor(logging.INFO):
            return
        content = request.content
        record: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "client": request.remote or "-",
            "method": request.method,
            "path": _clip(self.redactor.target(request.raw_path)),
            "status": status,
            "route": ex.route,
            "outcome": ex.outcome,
            "reason": ex.reason,
        }
        if self.log_subject:
            record["subject"] = _clip(ex.subject) if ex.subject is not None else None
        record["upstream_seconds"] = round(ex.upstream_seconds, 6) if ex.upstream_seconds is not None else None
        record["duration_seconds"] = round(total, 6)
        record["bytes_in"] = getattr(content, "total_bytes", 0)
        record["bytes_out"] = ex.bytes_out
        referer = request.headers.get("Referer")
        if referer is not None:
            record["referer"] = _clip(self.redactor.url(referer))
        agent = request.headers.get("User-Agent")
        if agent is not None:
            record["user_agent"] = _clip(agent)
        if self.fmt == "json":
            log.info(json.dumps(record, ensure_ascii=True, separators=(",", ":")))
        else:
            log.info(" ".join(f"{k}={_text_escape(v) if isinstance(v, str) else v}" for k, v in record.items()))
