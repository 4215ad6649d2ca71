"""Verified claims -> upstream headers, and which inbound headers may never pass.

Rendering rules (documented in README "Forwarded identity headers"):

* strings as they are; numbers as JSON writes them; booleans `true`/`false`;
  objects as compact JSON; arrays as their rendered elements joined by `,`;
* then `%` is written `%25`, `,` is written `%2C` (so `"a,b"` and `["a","b"]` differ),
  a leading or trailing space `%20`, and every non-ASCII character as its UTF-8 bytes in
  `%XX` form;
* a value containing a control character (or a lone surrogate) is not forwarded and the
  request is refused: silently dropping or altering it could change who it names;
* a value that renders empty (`""`, `[]`) is not forwarded: an empty header is "absent"
  to some backends and a value to others, so it is made absent for all (an empty `sub`
  never gets here: claims.py refuses it).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.claims import claim_at


class UnforwardableError(ValueError):
    """A claim value that cannot be written as a header without changing it."""


def _escape(text: str) -> str:
    out: list[str] = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        code = ord(ch)
        if code < 0x20 or code == 0x7F:
            raise UnforwardableError("control character")
        # `+` too: a form decoder (Java's URLDecoder, Python's unquote_plus) reads it as
        # a space, and `alice+x` would become the identity `alice x`.
        if ch == "%" or ch == "," or ch == "+" or (ch == " " and (i == 0 or i == last)):
            out.append(f"%{code:02X}")
        elif code < 0x7F:
            out.append(ch)
        else:
            try:
                raw = ch.encode("utf-8")
            except UnicodeEncodeError:
                # aiohttp would silently drop a lone surrogate: `ad\ud800min` -> `admin`.
                raise UnforwardableError("lone surrogate") from None
            out.append("".join(f"%{b:02X}" for b in raw))
    return "".join(out)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render_claim(value: Any) -> str:
    """The header value for a claim; raises UnforwardableError."""
    if isinstance(value, list):
        return ",".join(_escape(_text(v)) for v in value)
    return _escape(_text(value))


_FOLD = str.maketrans({c: "-" for c in "!#$%&'*+.^_`|~"})


# Clients choose header names: only short ones are memoised, so the cache stays small
# (4 096 entries of 64 characters at most) however long the names an attacker sends.
_FOLD_CACHED_LEN = 64


def fold(name: str) -> str:
    """A header name as lenient backends may compare it: case-insensitive, with every
    punctuation character that may appear in a name (`_`, `.`, `~`, …) read as `-`."""
    if len(name) > _FOLD_CACHED_LEN:
        return name.lower().translate(_FOLD)
    return _fold_short(name)


@functools.lru_cache(maxsize=4096)
def _fold_short(name: str) -> str:
    return name.lower().translate(_FOLD)


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """Header names only the gateway may set. Matched after `fold`."""

    prefix: str  # folded, e.g. `x-auth-`
    names: frozenset[str]  # folded

    @classmethod
    def of(cls, prefix: str, names: Iterable[str]) -> IdentityHeaders:
        return cls(fold(prefix), frozenset(fold(n) for n in names))

    def reserved(self, folded: str) -> bool:
        """`folded` is a header name already passed through `fold`."""
        return folded.startswith(self.prefix) or folded in self.names


_SERIAL = itertools.count()


@dataclass(frozen=True, slots=True)
class ClaimHeaders:
    """The (claim path, header) pairs a route forwards, plus the provider header."""

    pairs: tuple[tuple[str, str], ...]
    provider_header: str | None
    # Unique for the process lifetime: keys rendered headers in the token cache.
    serial: int = field(default_factory=lambda: next(_SERIAL), compare=False)

    def render(self, provider: str, claims: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Headers for a verified principal; raises UnforwardableError."""
        out: list[tuple[str, str]] = []
        if self.provider_header is not None:
            out.append((self.provider_header, provider))
        for path, header in self.pairs:
            value = claim_at(claims, path)
            if value is not None:
                text = render_claim(value)
                if text:
                    out.append((header, text))
        return out
