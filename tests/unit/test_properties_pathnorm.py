"""Properties of path canonicalisation (gateway/pathnorm.py) under generated targets."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.pathnorm import Rejected, normalize_target

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SUB_DELIMS = "!$&'()*+,;=:@"

# Pieces a path is made of, weighted towards what makes canonicalisation hard: dot
# segments (raw, escaped, padded, with parameters), escapes of every kind, slashes and
# runs of them, backslashes, controls, non-ASCII and lone surrogates.
_PIECES = st.one_of(
    st.sampled_from(
        [
            "/",
            "//",
            ".",
            "..",
            "/./",
            "/../",
            "%2e",
            "%2E",
            "%2e%2e",
            ".%2e",
            "%2f",
            "%2F",
            "%5c",
            "%5C",
            "\\",
            "%00",
            "\x00",
            "%25",
            "%252e",
            "%252f",
            "%20",
            "%09",
            ";",
            ";x=1",
            "..;",
            "%7e",
            "%7E",
            "%41",
            "%c3%a9",
            "%C0%AE",
            "%ff",
            "%",
            "%4",
            "%zz",
            "?",
            "#",
            "é",
            "\ud800",
            "\x7f",
            " ",
            "|",
            '"',
            "...",
        ]
    ),
    st.text(alphabet=_UNRESERVED + _SUB_DELIMS, min_size=1, max_size=6),
    st.characters(codec="utf-8").map(lambda c: c),
    st.integers(0, 255).map(lambda b: f"%{b:02x}"),
    st.integers(0, 255).map(lambda b: f"%{b:02X}"),
)
_PATHS = st.lists(_PIECES, max_size=14).map(lambda parts: "/" + "".join(parts))
_TARGETS = st.one_of(_PATHS, st.text(max_size=40))

_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|$)")


def _canonical(target: str) -> tuple[str, str] | Rejected:
    result = normalize_target(target)
    # Refusal is one closed type; anything else raised here fails the test by itself.
    assert isinstance(result, Rejected | tuple)
    return result


@given(_TARGETS)
@example("/a/b/%2e%2e/%2E/c//d/")
@example("/%7e%2D%2e%5F")
def test_canonical_is_idempotent(target: str) -> None:
    result = _canonical(target)
    if isinstance(result, Rejected):
        return
    path, query = result
    assert _canonical(path + ("?" + query if query else "")) == (path, query)


@given(_TARGETS)
def test_output_holds_nothing_refused(target: str) -> None:
    result = _canonical(target)
    if isinstance(result, Rejected):
        return
    path, _ = result
    assert path.startswith("/")
    assert not path.startswith("//")
    assert "//" not in path
    assert _DOT_SEGMENT.search(path) is None, path
    lowered = path.lower()
    for banned in ("%2f", "%5c", "%00", "\\", "\x00", "#", "?"):
        assert banned not in lowered, (banned, path)
    # Only RFC 3986 path characters and upper-case escapes leave the gateway.
    assert re.fullmatch(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*", path), path
    # Every escape left is one that must stay escaped (unreserved ones are decoded).
    for hx in re.findall(r"%([0-9A-F]{2})", path):
        assert chr(int(hx, 16)) not in _UNRESERVED, path


# -- a reference: RFC 3986 §5.2.4 remove_dot_segments after §6.2.2.2 decoding --------


def _reference(path: str) -> str | None:
    """The RFC's canonical form of a path, or None where the reference gives up.

    Decodes only unreserved escapes, upper-cases the rest, resolves dot segments as
    §5.2.4 says, then merges runs of `/` (the gateway's documented extra rule). It has
    no opinion on what the gateway refuses (encoded slashes, `..` above the root, …):
    it is only compared on inputs the gateway accepts."""

    def decode(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        return None
    path = re.sub(r"%([0-9A-Fa-f]{2})", decode, path)
    # Merging `//` first matters: `/a//..` is `/` to nginx (and to the gateway), while
    # §5.2.4 alone would read the empty segment as a directory and give `/a/`.
    path = re.sub(r"/+", "/", path)
    out: list[str] = []
    inp = path
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            if out:
                out.pop()
        elif inp == "/..":
            inp = "/"
            if out:
                out.pop()
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end < 0 else end
            out.append(inp[:end])
            inp = inp[end:]
    return re.sub(r"/+", "/", "".join(out)) or "/"


_ASCII_PATHS = st.lists(
    st.one_of(
        st.sampled_from(["/", "//", ".", "..", "/./", "/../", "%2e", "%2E", "%7e", "%41", "%20", "%3a", "%c3%a9"]),
        st.text(alphabet=_UNRESERVED + _SUB_DELIMS, min_size=1, max_size=5),
    ),
    max_size=14,
).map(lambda parts: "/" + "".join(parts))


_PASSED = frozenset(_UNRESERVED + _SUB_DELIMS + "/%")


@given(st.one_of(_ASCII_PATHS, _PATHS))
@example("/a/b/../../c")
@example("/a//..")
@example("/%2e%2e%2f")
def test_agrees_with_rfc3986_reference(target: str) -> None:
    result = _canonical(target)
    if isinstance(result, Rejected):
        return
    path = target.partition("?")[0]
    expected = _reference(path)
    if expected is None:
        return
    # The gateway also escapes printable characters outside RFC 3986 (and non-ASCII);
    # the reference does not, so compare with those escaped the same way.
    expected = "".join(c if c in _PASSED else "".join(f"%{b:02X}" for b in c.encode()) for c in expected)
    assert result[0] == expected, (path, result[0], expected)


@given(_PATHS, st.text(max_size=30))
def test_the_query_is_passed_on_as_received(path: str, query: str) -> None:
    # pathnorm.py: the query string is returned exactly as received, or refused (for a
    # control, space, `#` or raw non-ASCII: what cannot be passed on faithfully).
    result = _canonical(path.partition("?")[0] + "?" + query)
    if isinstance(result, Rejected):
        return
    assert result[1] == query
    assert re.search(r"[\x00-\x20\x7f#]|[^\x00-\x7f]", query) is None


@given(st.text(max_size=60))
def test_only_origin_form_is_accepted(target: str) -> None:
    result = _canonical(target)
    if not target.startswith("/"):
        assert isinstance(result, Rejected)
