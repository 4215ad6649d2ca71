"""aiohttp's low-level server, with its error page replaced.

SECURITY: for a request it cannot parse, aiohttp answers with a page that quotes the
offending line and logs it with a traceback. An over-long or malformed
`Authorization` line would put a token in both. Here the client gets the gateway's
fixed JSON refusal and the log gets the error's type only.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.errors import Reason

log = logging.getLogger("gateway.proxy")


class _Handler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.info("unparseable request status=%d error=%s", status, type(exc).__name__ if exc else "-")
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection")
        reason = Reason.INTERNAL if status >= 500 else Reason.BAD_REQUEST
        resp = web.Response(
            status=status, body=reason.body, content_type="application/json", headers={"Cache-Control": "no-store"}
        )
        resp.force_close()
        return resp


class _NoEcho(logging.Filter):
    """Backstop for aiohttp's own loggers: keep the event, drop the text and traceback,
    which can quote request lines and headers (and so tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "aiohttp reported %s"
        record.args = (type(exc).__name__ if exc else "an event",)
        record.exc_info = None
        record.exc_text = None
        return True


_FILTER = _NoEcho()


def silence_aiohttp_echo() -> None:
    """Idempotent: attach the filter to every aiohttp logger that may see a request."""
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal", "aiohttp.client"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class GatewayServer(web.Server):
    """`web.Server` whose connections use the quiet error page above."""

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


def make_server(handler: Any, max_token_bytes: int) -> GatewayServer:
    silence_aiohttp_echo()
    return GatewayServer(
        handler,
        # Replaced by the gateway's redacting access log: aiohttp's prints the raw query.
        access_log=None,
        # Request bodies are relayed as bytes; never inflate them on the way through.
        auto_decompress=False,
        # Twice the largest token we accept, so that our own size check answers an
        # oversized token (401 token_too_large); beyond that the parser refuses (400).
        max_field_size=max(8190, 2 * max_token_bytes + 1024),
    )
