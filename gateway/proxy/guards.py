"""aiohttp's parsers behind the framing scanners (framing.py), for each side of the proxy.

A guard has the parser's interface (`feed_data`, `feed_eof`, `pause_reading`,
`message_consumed`): the protocols hold it where they held the parser. It scans each
read before the parser sees it, so a rule is enforced whichever parser runs.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.limits import Limits
from gateway.proxy.framing import ChunkScanner, FramingError, RequestFramer, content_length


class RequestGuard:
    """aiohttp's request parser behind a RequestFramer, with a byte budget on the
    requests (heads and bodies) read ahead of the one being answered: past it the
    connection stops reading (`_pause_reading_for_buffer`) until the queue drains."""

    def __init__(self, parser: Any, protocol: Any, limits: Limits) -> None:
        self._parser = parser
        self._protocol = protocol
        self._limits = limits
        self._framer = RequestFramer(limits)
        self._held = b""
        self._emitted = 0  # requests the parser has handed over on this connection
        # Bytes after a protocol switch (an Upgrade request), kept from the parser: the
        # start of a WebSocket stream for the relay (websocket.py), dropped otherwise.
        # At most one read: the connection stops reading after such a request.
        self.opaque = bytearray()

    def feed_data(self, data: bytes) -> tuple[list[Any], bool, bytes]:
        messages: list[Any] = []
        upgraded = False
        tail = b""
        if self._held:
            data, self._held = self._held + data, b""
        if not data:
            messages, upgraded, tail = self._parser.feed_data(b"")
            return self._mark(messages), upgraded, tail
        budget = self._limits.max_pipelined_bytes
        if self._framer.pending > budget:
            self._hold(data)
            return [], False, b""
        try:
            stop = self._framer.scan(data, 0, budget)
        except FramingError as exc:
            # The requests completed before the offending bytes are still parsed, and
            # handed over with the error, to be answered before the refusal.
            exc.parsed = self._mark(self._parser.feed_data(data[: self._framer.boundary])[0])  # type: ignore[attr-defined]
            raise
        opaque_from = self._framer.opaque_from
        if opaque_from is not None:
            self.opaque += data[opaque_from:]
            data = stop_data = data[:opaque_from]
            stop = len(data)
        else:
            stop_data = data[:stop] if stop < len(data) else data
        messages, upgraded, tail = self._parser.feed_data(stop_data)
        if stop < len(data):
            self._hold(data[stop:])
        return self._mark(messages), upgraded, tail

    def _mark(self, messages: list[Any]) -> list[Any]:
        """Flag the request the framer took for a protocol switch as an upgrade, so the
        connection reads no HTTP after it even where the parser did not see one (the
        pure-Python parser reads only the first `Upgrade` value): past it the framer
        checks nothing, so the parser must not be trusted with what follows."""
        switch = self._framer.switch_at
        if switch is None or not messages:
            self._emitted += len(messages)
            return messages
        out = []
        for message, payload in messages:
            self._emitted += 1
            if self._emitted == switch and not message.upgrade:
                message = message._replace(upgrade=True)
            out.append((message, payload))
        return out

    def _hold(self, data: bytes) -> None:
        # At most one socket read (READ_CHUNK): the transport is paused now.
        self._held = data
        self._protocol._pause_reading_for_buffer()

    @property
    def switched(self) -> bool:
        """A request switching protocols was read: no byte after it is HTTP."""
        return self._framer.switch_at is not None

    def message_consumed(self) -> None:
        """The parser's own count of messages in flight: `downstream._feed` resets it
        before each call, so that one call parses one message."""
        self._parser.message_consumed()

    def answered(self) -> None:
        """A queued request was taken to be answered: its bytes stop counting as read
        ahead (`max_pipelined_bytes`)."""
        self._framer.consumed()

    def pause_reading(self) -> None:
        self._parser.pause_reading()

    def feed_eof(self) -> Any:
        self._held = b""
        return self._parser.feed_eof()


_RESPONSE_HEAD_END = re.compile(rb"\n\r?\n")
# A head needs the careful path if it may be chunked, or is not plainly a final status
# (an interim 1xx is followed by another head).
# Blanks around the name too: llhttp's lenient response mode takes `Transfer-Encoding :`
# and an obs-folded ` Transfer-Encoding:` as the field.
_TRANSFER_ENCODING = re.compile(rb"\n[ \t]*transfer-encoding[ \t]*:", re.IGNORECASE)
# RFC 9110 §5.6.2: a field name is a token. A name with blanks in it is not relayed: a
# lenient client or front proxy could read `Transfer-Encoding : chunked` as framing.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FINAL_STATUS = re.compile(rb"HTTP/\d\.\d [2-9]")


class ResponseGuard:
    """aiohttp's response parser with a ChunkScanner in front of a chunked body.

    A head that may be followed by a chunked body (or by another head) is fed alone,
    so the parser says from the message how the body is framed before any byte of it
    is fed; any other response goes to the parser whole."""

    def __init__(self, parser: Any, skip_body: bool, limits: Limits) -> None:
        self._parser = parser
        self._skip_body = skip_body
        self._limits = limits
        self._chunks: ChunkScanner | None = None
        self._carried = b""  # the end of a head begun in an earlier read
        self._passing = False

    def feed_data(self, data: bytes) -> tuple[list[Any], bool, bytes]:
        if self._passing or not data:
            return self._parser.feed_data(data)  # type: ignore[no-any-return]
        messages: list[Any] = []
        upgraded = False
        tail = b""
        pos, end = 0, len(data)
        while pos < end and not self._passing:
            in_head = fast = False
            found = True
            if self._chunks is not None:
                stop = self._chunks.scan(data, pos)
                if self._chunks.done:
                    self._passing = True  # anything after the body is the parser's to judge
            else:
                in_head = True
                stop = self._head_end(data, pos)
                if stop < 0:
                    found = False
                    stop = end
                elif (
                    not self._carried
                    and _FINAL_STATUS.match(data, pos) is not None
                    and _TRANSFER_ENCODING.search(data, pos, stop) is None
                ):
                    # A whole final head, not chunked: nothing more to follow.
                    self._passing = fast = True
                    stop = end
                if not found:
                    # What may end the head across reads, kept whole however short
                    # the reads (bounded by the parser's own line and field limits).
                    self._carried = (self._carried + data[pos:])[-3:]
                else:
                    self._carried = b""
            got, up, tail = self._parser.feed_data(data[pos:stop] if pos or stop < end else data)
            upgraded |= up
            pos = stop
            if in_head and found != bool(got):
                # The parser saw the head end elsewhere than we did (a lax spelling of
                # the blank line): what it parses next would escape the chunk rules.
                raise FramingError(message="response head not ended where expected")
            for message, payload in got:
                messages.append((message, payload))
                if in_head and not fast and getattr(payload, "total_bytes", None):
                    # Fed only what we took for the head, the parser found body bytes
                    # in it: it ended the head earlier (a lax blank line, `\r\r\n`).
                    raise FramingError(message="response head not ended where expected")
                if message.code >= 200 or message.code == 101:
                    if fast and message.chunked and not self._skip_body and message.code not in (204, 304):
                        # We took it for not chunked and let its body through unscanned.
                        raise FramingError(message="response framing the guard did not see")
                    self._final(message)
        if pos < end:  # after a chunked body
            got, up, tail = self._parser.feed_data(data[pos:])
            messages.extend(got)
            upgraded |= up
        return messages, upgraded, tail

    def _head_end(self, data: bytes, pos: int) -> int:
        """Just past the blank line ending the head, or -1, across reads."""
        carried = self._carried
        if carried:
            match = _RESPONSE_HEAD_END.search(carried + data[pos : pos + 2])
            if match is not None and match.start() < len(carried):
                return pos + match.end() - len(carried)
        match = _RESPONSE_HEAD_END.search(data, pos)
        return -1 if match is None else match.end()

    def _final(self, message: Any) -> None:
        for name, _ in message.raw_headers:
            if name.translate(None, _TCHAR):
                raise FramingError(message="response header name is not a token")
        headers = message.headers
        lengths = headers.getall("Content-Length", ())
        if len(set(lengths)) > 1 or len(headers.getall("Transfer-Encoding", ())) > 1:
            # llhttp refuses these; the pure-Python parser takes the first length and
            # would pass a body off as whole that the other value says is not.
            raise FramingError(message="conflicting response framing")
        length = headers.get("Content-Length")
        if length is not None and length.isascii() and length.isdigit():
            content_length(length.encode())
        if message.chunked and not self._skip_body and message.code not in (204, 304):
            limits = self._limits
            self._chunks = ChunkScanner(limits.max_trailers, min(limits.max_header_line, 8190))
        else:
            self._passing = True

    def pause_reading(self) -> None:
        self._parser.pause_reading()

    def feed_eof(self) -> Any:
        return self._parser.feed_eof()
