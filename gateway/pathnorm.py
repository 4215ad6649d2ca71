"""Canonicalise a request target once, so the policy and the upstream see one path.

The rules (RFC 3986 §6.2.2 plus a gateway's paranoia):

* only origin-form (`/path?query`) is accepted; no fragment;
* percent-encoded *unreserved* characters are decoded (`%7E` -> `~`, `%2e` -> `.`),
  every other escape is kept with upper-case hex;
* an encoded `/` or `\\`, a NUL, a raw `\\` or a control character is refused:
  backends disagree on what they mean, and that disagreement is how auth is bypassed;
* `.` and `..` segments are resolved; `..` above the root is refused; a dot segment
  hiding behind a `;` parameter (`..;/`, read by Tomcat as `..`) is refused;
* runs of `/` are merged, as nginx does, so `//admin` cannot slip past `/admin`;
* other printable characters outside RFC 3986 (and non-ASCII) are percent-encoded.

The query string is returned exactly as received.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# pchar minus pct-encoded, plus "/" (RFC 3986 §3.3).
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_HEX = frozenset("0123456789abcdefABCDEF")
# Canonical already: safe characters only, no escapes, no empty or dot segments.
# (Linear: a segment starts at `/`, which no class inside a segment holds.)
_FAST = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
# Query bytes are passed on as received, so only what cannot be passed faithfully is
# refused: controls, space, a fragment, and raw non-ASCII (which no client should send).
_QUERY_BAD = re.compile(r"[\x00-\x20\x7f#]|[^\x00-\x7f]")
_DOUBLE_ENCODED = frozenset({"2e", "2f", "5c", "25", "00"})
# One dot, then dots and escaped blanks. (Written `\.+(?:…|\.)*`, two quantifiers
# competing for the same dots made a failed match quadratic: 1.2 s for one 8 KB segment.
# Here each character has one place, so a failed match is linear in the segment.)
_DOTS_AND_SPACES = re.compile(r"\.(?:%20|%09|\.)*")


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a target was refused. `detail` is for the operator's log, never the client."""

    detail: str


def normalize_target(target: str) -> tuple[str, str] | Rejected:
    """Split and canonicalise a raw request target into `(path, query)`."""
    if not target.startswith("/"):
        # Absolute-form, authority-form and `*` have no business reaching a backend.
        return Rejected("request target is not origin-form")
    path, sep, query = target.partition("?")
    if sep and _QUERY_BAD.search(query):
        return Rejected("control character, space, non-ASCII or fragment in query")
    if "#" in path:
        return Rejected("fragment in request target")
    if _FAST.fullmatch(path) is not None:
        return path, query
    canonical = _canonical_path(path)
    if isinstance(canonical, Rejected):
        return canonical
    return canonical, query


def _canonical_path(path: str) -> str | Rejected:
    decoded = _decode_unreserved(path)
    if isinstance(decoded, Rejected):
        return decoded
    return _resolve_segments(decoded)


def _decode_unreserved(path: str) -> str | Rejected:
    out: list[str] = []
    i = 0
    n = len(path)
    high = bytearray()  # a run of escaped non-ASCII bytes, checked as UTF-8 when it ends
    while i < n:
        c = path[i]
        if c == "%":
            hx = path[i + 1 : i + 3]
            if len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
                return Rejected("malformed percent-escape in path")
            byte = int(hx, 16)
            ch = chr(byte)
            if ch == "/" or ch == "\\":
                return Rejected("encoded slash or backslash in path")
            if ch == "\x00":
                return Rejected("encoded NUL in path")
            if ch == "%" and path[i + 3 : i + 5].lower() in _DOUBLE_ENCODED:
                # `%252e`: a backend that decodes twice would see `.`, `/`, `\`, `%`.
                return Rejected("double-encoded dot, slash, backslash or percent in path")
            if byte >= 0x80:
                high.append(byte)
            elif high and not _utf8(high):
                return Rejected("escaped bytes in path are not UTF-8")
            out.append(ch if ch in _UNRESERVED else "%" + hx.upper())
            i += 3
            continue
        if high and not _utf8(high):
            # Overlong forms such as `%C0%AE` decode to `.` in lax decoders.
            return Rejected("escaped bytes in path are not UTF-8")
        if c in _PATH_SAFE:
            out.append(c)
        elif c == "\\":
            return Rejected("backslash in path")
        elif c < "\x21" or c == "\x7f":
            return Rejected("control character or space in path")
        else:
            # Printable but outside RFC 3986 (e.g. `|`, `"`, or non-ASCII): give the
            # upstream the unambiguous escaped spelling of the bytes we were sent.
            if "\ud800" <= c <= "\udfff":
                return Rejected("raw bytes in path are not UTF-8")
            raw = c.encode("utf-8")
            out.append("".join(f"%{b:02X}" for b in raw))
        i += 1
    if high and not _utf8(high):
        return Rejected("escaped bytes in path are not UTF-8")
    return "".join(out)


def _utf8(run: bytearray) -> bool:
    """Check and clear a run of escaped high bytes."""
    try:
        run.decode("utf-8")
    except UnicodeDecodeError:
        return False
    finally:
        run.clear()
    return True


def _resolve_segments(path: str) -> str | Rejected:
    segments = path.split("/")[1:]
    out: list[str] = []
    trailing = False
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        trailing = False
        if seg == "" or seg == ".":
            trailing = i == last
            continue
        if seg == "..":
            if not out:
                return Rejected("'..' escapes the root")
            out.pop()
            trailing = i == last
            continue
        bare = seg.split(";", 1)[0]
        if bare in (".", ".."):
            return Rejected("dot segment with parameters in path")
        if "%" in bare and _DOTS_AND_SPACES.fullmatch(bare):
            # Windows-style backends trim trailing spaces and dots: `..%20` would be `..`.
            return Rejected("dot segment padded with whitespace in path")
        out.append(seg)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")
