"""Properties of query redaction (gateway/obs/redact.py) under generated query strings.

The contract (redact.py): a parameter whose folded name is secret keeps its name and
loses its value; names are folded as frameworks read them: percent-decoded once (`+`
is a space), case-insensitive, `-`, `.` and ` ` read as `_`, controls dropped, cut at a
NUL; `&` and `;` both separate parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.obs.redact import MARKER, SECRET_PARAMS, Redactor

_CONFIGURED = "Customer-Ref"  # an operator's own secret name, folded to `customer_ref`
_REDACTOR = Redactor([_CONFIGURED])
_SECRET_NAMES = sorted(SECRET_PARAMS) + [
    "customer_ref",
    "x_api_key",
    "private_token",
    "clientsecret",
    "user_password",
    "url_sig",
]
_HARMLESS_NAMES = ["page", "q", "id", "sort", "monkey", "hockey", "offset", "name", "a_b"]
_HARMLESS_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", max_size=8)
# A secret value's middle may hold anything a query can carry but `&` (which always
# separates): `;`, `=`, escapes, `+`.
_SECRET_MIDDLE = st.text(alphabet="abc019%+=;/-_.~:@!$'()*,?", max_size=10)


def _spell_char(c: str) -> st.SearchStrategy[str]:
    """The spellings of one character of a folded name that fold back to it."""
    escapes = [f"%{ord(x):02X}" for x in {c, c.upper()}] + [f"%{ord(x):02x}" for x in {c, c.upper()}]
    if c == "_":
        return st.sampled_from(["_", "-", ".", "+", "%20", "%5F", "%5f", "%2D", "%2e"])
    return st.sampled_from([c, c.upper(), *escapes])


def _spell(name: str) -> st.SearchStrategy[str]:
    spelled = st.tuples(*(_spell_char(c) for c in name)).map("".join)
    # Outer `_` are stripped; `[]` is a PHP array of the same name; controls are dropped
    # (`%00access_token`), and a NUL cuts the name for some frameworks
    # (`access_token%00x`). (Not both: `%00access_token%00x` is `` or `access_tokenx`.)
    return st.builds(
        lambda outer, body: outer[0] + body + outer[1],
        st.sampled_from([("", ""), ("", ""), ("_", ""), ("", "_"), ("", "[]"), ("%00", ""), ("", "%00x"), ("", "%00")]),
        spelled,
    )


@dataclass(frozen=True)
class Param:
    text: str  # as written in the query
    secret: bool
    sentinels: tuple[str, ...] = ()  # what must never reach the log


def _secret_param(i: int) -> st.SearchStrategy[Param]:
    head, tail = f"QZ{i}QZ", f"ZQ{i}ZQ"  # no name, separator or harmless value holds these
    with_value = st.builds(
        lambda name, mid: Param(f"{name}={head}{mid}{tail}", True, (head, tail)),
        st.sampled_from(_SECRET_NAMES).flatmap(_spell),
        _SECRET_MIDDLE,
    )
    bare = st.sampled_from(_SECRET_NAMES).flatmap(_spell).map(lambda n: Param(n, True))
    empty = st.sampled_from(_SECRET_NAMES).flatmap(_spell).map(lambda n: Param(n + "=", True))
    return st.one_of(with_value, with_value, bare, empty)


_HARMLESS = st.one_of(
    st.builds(lambda n, v: Param(f"{n}={v}", False), st.sampled_from(_HARMLESS_NAMES), _HARMLESS_VALUE),
    st.sampled_from(_HARMLESS_NAMES).map(lambda n: Param(n, False)),
)


@st.composite
def _queries(draw: st.DrawFn) -> tuple[list[Param], list[str]]:
    count = draw(st.integers(0, 6))
    params = [draw(st.one_of(_secret_param(i), _HARMLESS)) for i in range(count)]
    separators = [draw(st.sampled_from("&&&;")) for _ in range(max(count - 1, 0))]
    return params, separators


def _join(params: list[Param], separators: list[str]) -> str:
    out = params[0].text if params else ""
    for sep, param in zip(separators, params[1:], strict=True):
        out += sep + param.text
    return out


@given(_queries())
@example(([Param("token=QZ0QZa;bZQ0ZQ", True, ("QZ0QZ", "ZQ0ZQ"))], []))
@example(([Param("access%5Ftoken=QZ0QZ;ZQ0ZQ", True, ("QZ0QZ", "ZQ0ZQ")), Param("page=1", False)], ["&"]))
def test_no_secret_value_survives(query: tuple[list[Param], list[str]]) -> None:
    params, separators = query
    text = _join(params, separators)
    out = _REDACTOR.query(text)
    for param in params:
        for sentinel in param.sentinels:
            assert sentinel not in out, (text, out)
    # Through the access log's entry point as well.
    logged = _REDACTOR.target("/x?" + text)
    for param in params:
        for sentinel in param.sentinels:
            assert sentinel not in logged, (text, logged)


@given(_queries())
def test_other_parameters_are_kept(query: tuple[list[Param], list[str]]) -> None:
    params, separators = query
    text = _join(params, separators)
    out = _REDACTOR.query(text)
    if ";" not in text:
        # `&` alone: each parameter in place; a secret one keeps its name and `=`.
        expected = []
        for param in params:
            name, eq, _ = param.text.partition("=")
            expected.append(name + eq + MARKER if param.secret and eq else param.text)
        assert out == "&".join(expected)
        return
    # With `;` about, a value may run on past it (for `&`-only frameworks), so only what
    # starts an `&`-separated chunk is sure to be a parameter of its own: kept if harmless.
    chunks_in, chunks_out = text.split("&"), out.split("&")
    assert len(chunks_in) == len(chunks_out)
    harmless = {p.text for p in params if not p.secret}
    for chunk_in, chunk_out in zip(chunks_in, chunks_out, strict=True):
        first = chunk_in.split(";", 1)[0]
        if first in harmless:
            assert chunk_out.split(";", 1)[0] == first, (text, out)


@given(st.text(max_size=60))
def test_any_query_is_redacted_without_error(query: str) -> None:
    out = _REDACTOR.query(query)
    assert isinstance(out, str)


_USERINFO = st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:%@", min_size=1, max_size=12)
_URL_REST = st.text(alphabet="abc019/-._~%=&;", max_size=12)


@given(
    st.sampled_from(["http", "https", "ftp"]),
    _USERINFO,
    st.sampled_from(["h.example", "h.example:8443", "[::1]", "10.0.0.1"]),
    _URL_REST,
    _URL_REST,
    st.none() | _URL_REST,
)
@example("https", "u:p@ss", "h.example", "/x", "", None)
def test_a_url_logs_no_userinfo_and_no_fragment(
    scheme: str, userinfo: str, host: str, path: str, query: str, fragment: str | None
) -> None:
    sentinel = f"QZ{userinfo}ZQ"  # neither host, path, query nor fragment holds QZ or ZQ
    url = f"{scheme}://{sentinel}@{host}/{path}" + (f"?{query}" if query else "")
    url += f"#QZfragZQ{fragment}" if fragment is not None else ""
    out = _REDACTOR.url(url)
    assert "QZ" not in out, (url, out)
    assert "ZQ" not in out, (url, out)
    assert host in out
