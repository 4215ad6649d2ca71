"""The proxy listener's server, and aiohttp's loggers kept from echoing requests.

SECURITY: for a request it cannot parse, aiohttp's own server answers with a page that
quotes the offending line and logs it with a traceback; an over-long or malformed
`Authorization` line would put a token in both. The proxy listener is our own
(`downstream.py`: fixed JSON refusal, the error's type only in the log); the admin
listener and the key-fetch client still use aiohttp, so its loggers are filtered.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.limits import Limits
from gateway.proxy.coalesce import Coalescer
from gateway.proxy.downstream import Handler, Server

log = logging.getLogger("gateway.proxy")


class _NoEcho(logging.Filter):
    """Backstop for aiohttp's own loggers: keep the event, drop the text and traceback,
    which can quote request lines and headers (and so tokens). With `exceptions_only`,
    only records that carry an exception are rewritten."""

    def __init__(self, exceptions_only: bool = False) -> None:
        super().__init__()
        self._exceptions_only = exceptions_only

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and self._exceptions_only:
            return True
        record.msg = "%s reported %s"
        record.args = (record.name, type(exc).__name__ if exc else "an event")
        record.exc_info = None
        record.exc_text = None
        return True


_FILTER = _NoEcho()
# asyncio logs an exception that escapes a protocol callback (`data_received`) with the
# exception's text and the task or transport's repr, either of which can quote request
# bytes; its other records (slow callbacks, debug) carry no request data and stay as
# they are.
_ASYNCIO_FILTER = _NoEcho(exceptions_only=True)


def silence_aiohttp_echo() -> None:
    """Idempotent: attach the filters to every logger that may quote a request."""
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal", "aiohttp.client"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    logger = logging.getLogger("asyncio")
    if _ASYNCIO_FILTER not in logger.filters:
        logger.addFilter(_ASYNCIO_FILTER)


def make_server(
    handler: Handler,
    limits: Limits,
    keepalive_timeout: float = 75.0,
    send_timeout: float = 60.0,
    coalescer: Coalescer | None = None,
) -> Server:
    silence_aiohttp_echo()
    return Server(
        handler,
        asyncio.get_running_loop(),
        limits,
        keepalive_timeout=keepalive_timeout,
        send_timeout=send_timeout,
        coalescer=coalescer,
    )
