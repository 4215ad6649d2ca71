"""Framing rules checked in front of aiohttp's parser, so both of its parsers obey them.

aiohttp parses with llhttp (C) or, without its extension or with AIOHTTP_NO_EXTENSIONS=1,
in pure Python, and the two disagree: the Python one takes a chunk size of any length
(and relays the rest of the stream as that chunk), frames fields in trailers, and
answers too many trailers with a broken body rather than a parse error. Here the bytes
are scanned before either parser sees them, with one set of rules:

- a request head is at most `max_head_bytes` (431), holds at most `max_headers` fields
  (431), and each line is at most `max_header_line`, or `max_authorization_line` for
  Authorization (431); the parser still judges the syntax;
- a Content-Length is at most 2**63 - 1 (nginx's bound; see MAX_CONTENT_LENGTH);
- a chunk size is hex and fits in 64 bits (at most 16 significant digits: llhttp's own
  bound); its line, extensions included, is at most 4 KiB, and an extension holds no
  control character but HTAB (chunk extensions are never relayed);
- trailers are parsed, bounded (`max_trailers` fields, lines as `max_header_line`) and
  dropped; a trailer naming a field that frames, routes or authenticates a message
  (`REFUSED_TRAILERS`, RFC 9110 §6.5.1) refuses the message.

A request that breaks one is refused (400, or 431 for the head limits); a response, 502.
The scanner tracks only where heads and bodies begin and end; the parser stays the
judge of everything else, and where they could disagree the parser refuses first
(conflicting or unknown framing is a 400 from both aiohttp parsers).
"""

from __future__ import annotations

import re
from collections import deque

from aiohttp.http_exceptions import BadHttpMessage

from gateway.limits import Limits

MAX_CHUNK_LINE = 4096
_MAX_SIZE_DIGITS = 16
_CHUNK_EXT_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = frozenset(b"0123456789abcdefABCDEF")

# RFC 9110 §6.5.1: fields a sender must not put in trailers; a message that does is
# probing for a parser that merges them.
REFUSED_TRAILERS = frozenset(
    {
        b"authorization",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"cookie",
        b"expect",
        b"host",
        b"keep-alive",
        b"max-forwards",
        b"proxy-authorization",
        b"proxy-connection",
        b"set-cookie",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class FramingError(BadHttpMessage):
    """The message breaks a framing rule (400 for a request)."""


class HeadTooLargeError(FramingError):
    """A request head over one of its size or count limits (RFC 6585 §5)."""

    code = 431


# nginx's bound (off_t): llhttp takes up to 2**64 - 1, and aiohttp then reads exactly
# 2**64 - 1 as "no body" (the body would be parsed as the next request), while the
# Python parser takes any length, and int() refuses more than 4 300 digits.
MAX_CONTENT_LENGTH = 2**63 - 1


def content_length(digits: bytes) -> int:
    """A Content-Length value (ASCII digits) within MAX_CONTENT_LENGTH, or FramingError."""
    significant = digits.lstrip(b"0")
    if len(significant) > 19 or (significant and int(significant) > MAX_CONTENT_LENGTH):
        raise FramingError(message="Content-Length does not fit in 63 bits")
    return int(significant or b"0")


def _line_name(line: bytes) -> bytes:
    return line.partition(b":")[0].strip(b" \t").lower()


class ChunkScanner:
    """Follows a chunked body (RFC 9112 §7.1) across reads and checks the rules above."""

    __slots__ = ("_crlf", "_line", "_max_trailer_line", "_max_trailers", "_remaining", "_state", "_trailers", "done")

    def __init__(self, max_trailers: int, max_trailer_line: int) -> None:
        self._max_trailers = max_trailers
        self._max_trailer_line = max_trailer_line
        self._state = 0  # 0: a size line, 1: chunk data, 2: trailer lines, 3: the CRLF after data
        self._remaining = 0
        self._crlf = 0  # bytes of that CRLF seen
        self._line = b""
        self._trailers = 0
        self.done = False

    def scan(self, data: bytes, pos: int = 0, end: int | None = None) -> int:
        """Where in `data[:end]` the body ends (just past it), or `end` if it goes on."""
        if end is None:
            end = len(data)
        while pos < end:
            if self._state == 1:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = 3
                continue
            if self._state == 3:
                # Exactly CRLF after the data, checked, not skipped: a parser that takes
                # a bare LF here (the pure-Python one, for responses) would read the
                # next size line from another byte than we do.
                if data[pos] != b"\r\n"[self._crlf]:
                    raise FramingError(message="chunk data not followed by CRLF")
                pos += 1
                self._crlf += 1
                if self._crlf == 2:
                    self._state, self._crlf = 0, 0
                continue
            limit = MAX_CHUNK_LINE if self._state == 0 else self._max_trailer_line
            nl = data.find(b"\n", pos, min(end, pos + limit + 1 - len(self._line)))
            if nl < 0:
                self._line += data[pos:end]
                if len(self._line) > limit:
                    raise FramingError(message="chunk line too long" if self._state == 0 else "trailer line too long")
                if self._state == 0 and len(self._line) > _MAX_SIZE_DIGITS:
                    # As llhttp does, at the digit that overflows, not at the line's end.
                    self._size(self._line.partition(b";")[0].rstrip(b"\r"), partial=True)
                return end
            line = self._line + data[pos:nl]
            self._line = b""
            pos = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            elif self._state == 0:
                # llhttp refuses a bare LF here even in its lenient (response) mode.
                raise FramingError(message="chunk size line not ended by CRLF")
            if self._state == 0:
                size = self._size(line)
                if size:
                    self._state, self._remaining = 1, size
                else:
                    self._state = 2
            elif not line:
                self.done = True
                return pos
            else:
                self._trailer(line)
        return end

    def _size(self, line: bytes, partial: bool = False) -> int:
        digits, semi, ext = line.partition(b";")
        # Responses may pad the size with blanks (llhttp's lenient mode); requests may
        # not, which the parser checks.
        digits = digits.strip(b" \t")
        if not digits and partial:
            return 0
        if not digits or not _HEX.issuperset(digits):
            raise FramingError(message="invalid chunk size")
        if len(digits.lstrip(b"0")) > _MAX_SIZE_DIGITS:
            raise FramingError(message="chunk size does not fit in 64 bits")
        if semi and _CHUNK_EXT_CTL.search(ext) is not None:
            raise FramingError(message="control character in a chunk extension")
        return int(digits, 16)

    def _trailer(self, line: bytes) -> None:
        self._trailers += 1
        if self._trailers > self._max_trailers:
            raise FramingError(message="too many trailer fields")
        if _line_name(line) in REFUSED_TRAILERS:
            raise FramingError(message="a trailer field that must not be a trailer")


_HEAD, _LENGTH, _CHUNKED, _OPAQUE = range(4)


# Header names that give a request a body or switch its connection's protocol; a
# head with none of them is followed by the next head.
_BODY_OR_SWITCH = re.compile(rb"\n(?:content-length|transfer-encoding|upgrade):", re.IGNORECASE)


class TargetTooLongError(HeadTooLargeError):
    """A request line over `max_request_line` (RFC 9110 §15.5.15)."""

    code = 414


class RequestFramer:
    """Follows requests through a client's byte stream: where each head and body ends.

    `scan` checks the head limits as the bytes arrive (each byte once, so a client
    trickling its head costs linear time) and, through a ChunkScanner, chunked bodies.
    After a request that switches protocols (CONNECT, Upgrade) nothing more is HTTP to
    us, and the connection reads no further request (downstream.py)."""

    __slots__ = (
        "_checked",
        "_chunks",
        "_fields",
        "_head",
        "_limits",
        "_lone_cr",
        "_opaque_next",
        "_remaining",
        "_short",
        "_state",
        "boundary",
        "heads",
        "opaque_from",
        "pending",
        "seen",
        "switch_at",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._state = _HEAD
        self._head = bytearray()
        self._checked = 0  # where in `_head` the line not yet checked starts
        self._fields = 0
        self._remaining = 0
        self._chunks: ChunkScanner | None = None
        self._opaque_next = False
        # A head no longer than any line limit needs no per-line check.
        self._short = min(limits.max_header_line, limits.max_request_line)
        # Sizes of the requests (head and body so far) seen and not yet consumed,
        # oldest first (RequestGuard).
        self.heads: deque[int] = deque()
        self.pending = 0  # sum(heads), kept as they change: summing per head is quadratic
        # In the data of the last `scan`: just past the last whole request.
        self.boundary = 0
        self.seen = 0  # request heads scanned on this connection
        self._lone_cr = False  # a read ended between the CR and LF of a blank line
        # The ordinal (1-based) of the request after which no byte is HTTP (CONNECT, an
        # Upgrade): the framer's decision, which the connection must follow, since the
        # parsers do not always agree with it (see RequestGuard).
        self.switch_at: int | None = None
        # In the data of the last `scan`: where the bytes after a protocol switch
        # begin (None: no such byte in it). They are not HTTP: never for the parser.
        self.opaque_from: int | None = None

    def scan(self, data: bytes, pos: int, stop_after: int) -> int:
        """Scan `data` from `pos`; return where to stop: len(data), or where the
        requests read ahead of the one being answered pass `stop_after` bytes (just
        past a head, or inside a queued request's body)."""
        end = len(data)
        self.boundary = pos if self._state == _HEAD and not self._head else 0
        self.opaque_from = None
        while pos < end:
            state = self._state
            if state == _HEAD:
                if not self._head:
                    # Blank lines before a request line are skipped by both parsers,
                    # also one whose CR and LF came in two reads: else the head would
                    # begin with a CRLF and be judged otherwise than when sent whole.
                    if self._lone_cr:
                        self._lone_cr = False
                        if not data.startswith(b"\n", pos):
                            raise FramingError(message="CR without LF before a request line")
                        pos += 1
                    while data.startswith(b"\r\n", pos):
                        pos += 2
                    if pos == end - 1 and data[pos] == 13:  # b"\r", its LF in the next read
                        self._lone_cr = True
                        pos = end
                    if pos >= end:
                        break
                head_end = self._find_head_end(data, pos)
                if not self._head and 0 <= head_end - pos <= self._short:
                    # The common case, a whole short head in one read: no line can be
                    # over a line limit, so only the field count is left to check.
                    head = data[pos:head_end]
                    if head.count(b"\n") - 2 > self._limits.max_headers:
                        raise HeadTooLargeError(message="too many header fields")
                else:
                    self._head += data[pos : end if head_end < 0 else head_end]
                    if len(self._head) > self._limits.max_head_bytes:
                        raise HeadTooLargeError(message="request head too large")
                    self._check_lines()
                    if head_end < 0:
                        break
                    head = bytes(self._head)
                    self._head = bytearray()
                    self._checked = self._fields = 0
                pos = head_end
                self._begin_body(head)
                self.seen += 1
                if self._opaque_next and self.switch_at is None:
                    self.switch_at = self.seen
                self.heads.append(len(head))
                self.pending += len(head)
                if self._state == _HEAD:
                    self.boundary = pos
                if self.pending > stop_after:
                    return pos
            elif state == _LENGTH:
                take = min(self._remaining, self._room(end - pos, stop_after))
                if self.heads:
                    self.heads[-1] += take
                    self.pending += take
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._body_done(pos)
                elif pos < end:
                    return pos  # the budget is spent inside a queued request's body
            elif state == _CHUNKED:
                assert self._chunks is not None
                start = pos
                pos = self._chunks.scan(data, pos, pos + self._room(end - pos, stop_after))
                if self.heads:
                    self.heads[-1] += pos - start
                    self.pending += pos - start
                if self._chunks.done:
                    self._chunks = None
                    self._body_done(pos)
                elif pos < end:
                    return pos
            else:
                self.opaque_from = pos
                break
        return end

    def _room(self, available: int, stop_after: int) -> int:
        """How much of a body to take now: all of it for the request being answered
        (its own flow control bounds it); for one still queued, up to the budget,
        counted with its head."""
        if not self.heads:
            return available
        # The body being read belongs to the newest head: queued if any head is.
        return min(available, max(0, stop_after - self.pending))

    def _body_done(self, pos: int) -> None:
        self._state = _OPAQUE if self._opaque_next else _HEAD
        self.boundary = pos

    def _find_head_end(self, data: bytes, pos: int) -> int:
        """Just past the blank line ending the head, or -1, across reads."""
        carried = bytes(self._head[-3:])
        if carried:
            i = (carried + data[pos : pos + 3]).find(b"\r\n\r\n")
            if i >= 0:
                return pos + i + 4 - len(carried)
        i = data.find(b"\r\n\r\n", pos)
        return -1 if i < 0 else i + 4

    def _check_lines(self) -> None:
        """The per-line and count limits on the lines completed since the last call,
        and on the line still arriving."""
        limits = self._limits
        head = self._head
        i = self._checked
        while True:
            nl = head.find(b"\r\n", i)
            if nl < 0:
                break
            if nl > i:
                self._check_line(head, i, nl - i, complete=True)
            i = nl + 2
        self._checked = i
        if len(head) - i > limits.max_header_line:
            self._check_line(head, i, len(head) - i, complete=False)

    def _check_line(self, head: bytearray, start: int, length: int, complete: bool) -> None:
        limits = self._limits
        if start == 0:
            if length > limits.max_request_line:
                raise TargetTooLongError(message="request line too long")
            return
        if length > limits.max_header_line and (
            length > limits.max_authorization_line or head[start : start + 14].lower() != b"authorization:"
        ):
            raise HeadTooLargeError(message="header line too long")
        if complete:
            self._fields += 1
            if self._fields > limits.max_headers:
                raise HeadTooLargeError(message="too many header fields")

    def _begin_body(self, head: bytes) -> None:
        if _BODY_OR_SWITCH.search(head) is None and not head.startswith(b"CONNECT "):
            self._opaque_next = False
            return  # no body, no protocol switch: the next head follows
        lines = head.split(b"\r\n")
        method = lines[0].partition(b" ")[0]
        chunked = False
        length = 0
        connection_upgrade = has_upgrade = False
        upgrades = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            if name == b"transfer-encoding":
                # Anything but a final "chunked" is refused by the parser.
                chunked = value.rpartition(b",")[2].strip(b" \t").lower() == b"chunked"
            elif name == b"content-length" and value.isdigit():
                length = content_length(value)
            elif name == b"connection":
                connection_upgrade |= b"upgrade" in (t.strip(b" \t").lower() for t in value.split(b","))
            elif name == b"upgrade":
                if upgrades:
                    # The pure-Python parser reads the first Upgrade field, llhttp and
                    # we any: one field, or the parsers could disagree on a switch.
                    raise FramingError(message="more than one Upgrade field")
                upgrades += 1
                has_upgrade |= bool(value)
        # After CONNECT or an Upgrade request (and its body) no byte is HTTP to us.
        self._opaque_next = method == b"CONNECT" or (connection_upgrade and has_upgrade)
        if chunked:
            limits = self._limits
            self._chunks = ChunkScanner(limits.max_trailers, limits.max_header_line)
            self._state = _CHUNKED
        elif length:
            self._state, self._remaining = _LENGTH, length
        elif self._opaque_next:
            self._state = _OPAQUE

    def consumed(self) -> None:
        if self.heads:
            self.pending -= self.heads.popleft()
