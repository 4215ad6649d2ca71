"""Query-string and URL redaction for logs."""

from __future__ import annotations

import re
import time

import pytest

from gateway.obs.jwtshape import without_jwts
from gateway.obs.redact import MARKER, MAX_OUTPUT, SECRET_PARAMS, TRUNCATED, Redactor

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
R = Redactor(["X-Custom-Secret"])


@pytest.mark.parametrize("name", sorted(SECRET_PARAMS))
def test_every_built_in_name_is_redacted(name: str) -> None:
    assert R.query(f"a=1&{name}=hunter2&b=2") == f"a=1&{name}={MARKER}&b=2"
    upper = name.upper()
    assert R.query(f"{upper}=hunter2") == f"{upper}={MARKER}"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("access%5Ftoken=s", f"access%5Ftoken={MARKER}"),
        ("x-custom-secret=s", f"x-custom-secret={MARKER}"),
        ("token=a&token=b", f"token={MARKER}&token={MARKER}"),
        ("token", "token"),
        ("tokens=kept&keyboard=kept", "tokens=kept&keyboard=kept"),
        (f"q={JWT}", f"q={MARKER}"),
        (f"q=Bearer%20{JWT}", f"q=Bearer%20{MARKER}"),
        ("q=eyJhbGciOiJIUzI1NiJ9%2EeyJzdWIiOiJhIn0%2Esig", f"q={MARKER}"),
        ("", ""),
    ],
)
def test_query(query: str, expected: str) -> None:
    assert R.query(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        # The review's spellings (issue 11, defect 8).
        "access_token[]=S",
        "access_token%00=S",
        "access_token%00x=S",  # cut at the NUL by some frameworks (found by review)
        "access_token%00%00zz=S",
        "a=1;access_token=S",
        "api-key=S",
        "x-api-key=S",
        "access_key=S",
        "auth=S",
        # Their siblings: folding, arrays and hashes, escapes, run-together words.
        "Access.Token=S",
        "ACCESS-TOKEN=S",
        "access%5Ftoken=S",
        "access%2Dtoken=S",
        "access_token%5B%5D=S",
        "access_token[0]=S",
        "user[password]=S",
        "user%5Bpassword%5D=S",
        "access+token=S",
        "_access_token=S",
        "accessToken=S",
        "clientSecret=S",
        "X-Amz-Signature=S",
        "X-Goog-Credential=S",
        "private_token=S",
        "private-token=S",
        "aws_secret_access_key=S",
        "Ocp-Apim-Subscription-Key=S",
        "subscription-key=S",
        "code_verifier=S",
        "client_assertion=S",
        "SAMLResponse=S",
        "ticket=S",
        "jsessionid=S",
        "PHPSESSID=S",
        "session_id=S",
        "x_auth=S",
        "authorization=S",
        "user_pass=S",
        "sig=S",
    ],
)
def test_secret_names_in_any_spelling(query: str) -> None:
    query = query.replace("=S", "=hunter2")
    redacted = R.query(query)
    assert "hunter2" not in redacted
    assert redacted == query.replace("=hunter2", "=" + MARKER)


@pytest.mark.parametrize(
    "query",
    ["tokens=x", "keyboard=x", "monkey=x", "hockey=x", "page=2", "zip_code=90210", "q=search", "passage=x", "oauth=x"],
)
def test_ordinary_names_are_kept(query: str) -> None:
    assert R.query(query) == query


def test_configured_names_are_folded_too() -> None:
    for query in ("x-custom-secret=S", "X.Custom.Secret=S", "x_custom_secret[]=S", "x%2Dcustom%2Dsecret=S"):
        assert R.query(query) == query.partition("=")[0] + "=" + MARKER


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/app;jsessionid=S/x", f"/app;jsessionid={MARKER}/x"),
        ("/app;JSESSIONID=S;v=1/x?a=1", f"/app;JSESSIONID={MARKER};v=1/x?a=1"),
        ("/a;token=S", f"/a;token={MARKER}"),
        ("/a;v=1;b", "/a;v=1;b"),
        ("/token=S;x", "/token=S;x"),  # the segment itself is not a parameter
        ("/a?x=1;token=S&y=2", f"/a?x=1;token={MARKER}&y=2"),
    ],
)
def test_path_parameters_and_semicolons(target: str, expected: str) -> None:
    assert R.target(target) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # To an `&`-only framework the value is `S1;S2`: none of it may be logged.
        ("token=S1;S2", f"token={MARKER}"),
        ("token=S1;S2;S3&a=1", f"token={MARKER}&a=1"),
        ("a=1;token=S1;S2&b=2;c=3", f"a=1;token={MARKER}&b=2;c=3"),
        ("token=S1;key=S2;S3", f"token={MARKER};key={MARKER}"),
        ("token;x=1", "token;x=1"),  # no value: nothing to redact, nothing run on
    ],
)
def test_a_secret_value_runs_on_past_semicolons(query: str, expected: str) -> None:
    # Found by tests/unit/test_properties_redact.py: `token=S1;S2` logged `S2`.
    assert R.query(query) == expected


def test_referer_names_are_folded() -> None:
    assert R.url("https://h.example/p;jsessionid=S?x-api-key=S&a[]=1&user[password]=S") == (
        f"https://h.example/p;jsessionid={MARKER}?x-api-key={MARKER}&a[]=1&user[password]={MARKER}"
    )


def test_the_name_cache_is_bounded() -> None:
    redactor = Redactor()
    for i in range(10_000):
        redactor.query(f"n{i}=1&x{i}_token=S")
    assert len(redactor._decided) <= 4096
    assert redactor.query("x9999_token=S") == f"x9999_token={MARKER}"
    long_name = "a" * 100 + "_token"
    assert redactor.query(f"{long_name}=S") == f"{long_name}={MARKER}"
    assert long_name not in redactor._decided


def test_target_and_url() -> None:
    assert R.target(f"/a/{JWT}/b?token=s&x=1") == f"/a/{MARKER}/b?token={MARKER}&x=1"
    assert R.target("/plain") == "/plain"
    assert R.url(f"https://user:pw@h.example/cb?code=abc&state=s#access_token={JWT}&x=1") == (
        f"https://{MARKER}@h.example/cb?code={MARKER}&state=s#{MARKER}"
    )


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://u:S@h.example/x?token=S", f"http://{MARKER}@h.example/x?token={MARKER}"),
        ("http://u:S@h.example", f"http://{MARKER}@h.example"),
        ("u:S@h.example:443", f"{MARKER}@h.example:443"),
        ("http://h.example/a@b", "http://h.example/a@b"),
        ("/a@b", "/a@b"),
    ],
)
def test_userinfo_in_an_absolute_form_target(target: str, expected: str) -> None:
    assert R.target(target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/public/cb#access_token=S", f"/public/cb#{MARKER}"),
        ("/a?x=1#S", f"/a?x=1#{MARKER}"),
        ("/a#b?c=S", f"/a#{MARKER}"),
        ("/a##S", f"/a#{MARKER}"),
        ("/a#" + "S" * 5000, f"/a#{MARKER}"),
    ],
)
def test_nothing_after_a_fragment_mark_is_kept(target: str, expected: str) -> None:
    assert R.target(target) == expected
    assert R.url("https://h.example" + target) == "https://h.example" + expected


def test_access_log_json_lines_match_the_json_module() -> None:
    """The hand-built JSON line says exactly what json.dumps of the record says."""
    import json

    from gateway.obs.access import AccessLog, Exchange

    for subject, upstream in ((None, None), ('s"\u00e9\ud800', 0.001577)):
        ex = Exchange(route="r", outcome="denied", reason="token_invalid", subject=subject, upstream_seconds=upstream)
        ex.client, ex.method, ex.target = "10.0.0.1", "GET", '/a?b="c"&token=SECRET'
        # What aiohttp's parser hands over for obs-text bytes: surrogate escapes.
        ex.user_agent = 'q"\\ \u00e9 \udcff\tx'
        ex.referer = "https://u:p@r.example/?code=SECRET2"
        for log in (AccessLog("json", True, Redactor()), AccessLog("json", False, Redactor())):
            line = log.json_line(ex, 401, 1e-06)
            record = log.record(ex, 401, 1e-06)
            # Byte for byte, but durations are written with six decimals (same values).
            shortest = re.sub(r'("(?:upstream|duration)_seconds":)([0-9.]+)', lambda m: m[1] + repr(float(m[2])), line)
            assert shortest == json.dumps(json.loads(line), separators=(",", ":"))
            assert '"duration_seconds":0.000001,' in line
            parsed = json.loads(line)
            assert parsed.pop("ts")
            assert record.pop("ts")
            assert parsed == record
            assert "SECRET" not in line


def test_access_log_imports_no_proxy_or_auth_type() -> None:
    """Observability reads plain records (docs/architecture: no Obs -> Proxy/Auth arrow)."""
    import ast
    from pathlib import Path

    import gateway.obs

    for module in Path(gateway.obs.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [m for m in imported if m.startswith(("gateway.proxy", "gateway.auth"))]
        assert not bad, (module.name, bad)


# -- bounded work (issue 11, defect 10) ------------------------------------------------

# Inputs that made the old JWT regex rescan a run from every `eyJ` in it, or that make
# a naive scanner loop per character.
HOSTILE_SHAPES = ["eyJ", "eyJ/", "eyJa.b/", "eyJ%2", "eyJ.", "eyJ%2E", "a&", ";", "%", "//@", "a[&"]


def _cpu(call: object, arg: str) -> float:
    """CPU time of this thread for `call(arg)`: best of five, so neither other
    processes on a shared machine nor a stray collection make it look slower."""
    assert callable(call)
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        call(arg)
        best = min(best, time.thread_time() - start)
    return best


@pytest.mark.parametrize("shape", HOSTILE_SHAPES)
def test_jwt_scan_is_linear(shape: str) -> None:
    """Four times the input costs about four times the work (the quadratic regex cost
    sixteen). Compared against itself on this machine, with a generous ratio."""
    n = 60_000 // len(shape)

    def scan(text: str) -> str:
        return without_jwts(text, MARKER)

    assert _cpu(scan, shape * 4 * n) < 9 * max(_cpu(scan, shape * n), 1e-4)


@pytest.mark.parametrize("shape", HOSTILE_SHAPES)
@pytest.mark.parametrize("field", ["target", "url", "text"])
def test_redaction_reads_a_bounded_prefix(shape: str, field: str) -> None:
    """Each logged field costs the same for 17 KB and 68 KB: redaction reads at most
    MAX_INPUT characters, and returns at most MAX_OUTPUT plus the marker."""
    call = getattr(R, field)
    prefix = "/" if field == "target" else "http://a/" if field == "url" else ""
    small, large = prefix + shape * (17_000 // len(shape)), prefix + shape * (68_000 // len(shape))
    for value in (small, large):
        out = call(value)
        assert len(out) <= MAX_OUTPUT + len(TRUNCATED)
        assert out.endswith(TRUNCATED)
    assert _cpu(call, large) < 3 * max(_cpu(call, small), 1e-4)


def test_the_17_kb_referer_of_the_review_is_redacted_in_full() -> None:
    referer = "http://a/" + "eyJ" * 5790
    # Cut at MAX_INPUT, the `eyJ` run may have lost its dots to the cut: redacted anyway.
    assert R.url(referer) == f"http://a/{MARKER}{TRUNCATED}"
    # A token as long as the parser allows (two 8 KB parts), anywhere in a field.
    token = "eyJ" + "a" * 8000 + "." + "b" * 8000 + ".c"
    assert R.url(f"http://a/?q={token}") == f"http://a/?q={MARKER}{TRUNCATED}"
    assert R.target(f"/x?q={token}") == f"/x?q={MARKER}{TRUNCATED}"
    assert R.text(f"agent {token}") == f"agent {MARKER}{TRUNCATED}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (JWT, MARKER),
        (f"x{JWT}y", f"x{MARKER}"),  # `y` is base64url: part of the signature
        (f"{JWT}/{JWT}", f"{MARKER}/{MARKER}"),
        ("eyJa.b.c.d.e", MARKER),  # a JWE: five parts, all of it
        ("eyJa%2eb%2Ec", MARKER),
        ("eyJa.b", "eyJa.b"),  # two parts: not a token
        ("a.eyJb.c", "a.eyJb.c"),  # one dot after the `eyJ`
        ("eyJeyJeyJ", "eyJeyJeyJ"),
        ("Bearer eyJa..", f"Bearer {MARKER}"),
    ],
)
def test_jwt_shapes(text: str, expected: str) -> None:
    assert without_jwts(text, MARKER) == expected


def test_a_cut_input_redacts_a_token_at_its_end() -> None:
    assert without_jwts("x eyJhbGciOi", MARKER, cut=True) == f"x {MARKER}"
    assert without_jwts("x eyJhbGciOi%2", MARKER, cut=True) == f"x {MARKER}%2"
    assert without_jwts("x eyJhbGciOi y", MARKER, cut=True) == "x eyJhbGciOi y"
