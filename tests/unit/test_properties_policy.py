"""Properties of the policy loader (gateway/policy/load.py) under generated YAML.

`gateway check` calls `load_policy`, which reads the file and calls `load_policy_text`;
that is called here in-process. Whatever the text, the outcome is a compiled policy or
a ConfigError each of whose lines starts `file:line: ` (exit 2 from the CLI), never any
other exception.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.policy import ConfigError, load_policy_text
from gateway.policy.compile import CompiledPolicy
from gateway.tokens import keystore

_EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
_EXAMPLE_TEXT = _EXAMPLE.read_text()
_EXAMPLE_DATA: dict[str, Any] = yaml.safe_load(_EXAMPLE_TEXT)


@pytest.fixture(scope="module")
def policy_file() -> Iterator[str]:
    """Where the generated policies claim to live: beside the key files the example
    names (demo-keys/), so that an unmutated example loads."""
    with tempfile.TemporaryDirectory() as tmp:
        keystore.generate(Path(tmp) / "demo-keys")
        yield str(Path(tmp) / "policy.yaml")


def _load(text: str, filename: str) -> CompiledPolicy | ConfigError:
    try:
        return load_policy_text(text, filename)
    except ConfigError as exc:
        error = exc
    located = re.compile(re.escape(filename) + r":[1-9][0-9]*: ")
    assert error.lines, error
    for line in error.lines:
        assert located.match(line), line
    return error


# Six lines of aliases of aliases: 9**6 values once expanded.
_ALIAS_BOMB = "a0: &a0 [1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 6)
)


def test_the_example_loads(policy_file: str) -> None:
    assert isinstance(_load(_EXAMPLE_TEXT, policy_file), CompiledPolicy)


# -- generated documents ---------------------------------------------------------------

# Names the model knows, so generated mappings often reach past the top level.
_FIELDS = st.sampled_from(
    [
        "listen", "admin", "server", "identity", "providers", "routes", "match", "path", "prefix",
        "methods", "upstream", "auth", "any_of", "all_of", "scopes", "issuer", "audiences",
        "algorithms", "keys", "jwks_file", "jwks_url", "name", "timeouts", "connect", "read",
        "cors", "allow_origins", "claims", "workers", "tls", "strip_prefix", "public",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["public", "10s", "0s", "-1s", "1e400", "http://127.0.0.1:8081", "/x", "api-tokens", "GET"]),
)
_DATA = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_FIELDS | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


@given(data=_DATA)
def test_any_yaml_document_loads_or_is_located(data: Any, policy_file: str) -> None:
    _load(yaml.safe_dump(data, allow_unicode=True), policy_file)


# YAML's own syntax, in pieces: indentation, flow collections, anchors and aliases,
# tags (standard, unknown, Python-specific), block scalars, documents, complex keys.
_YAML_PIECES = st.sampled_from(
    [
        "\n", "\n  ", "\n    ", "- ", ": ", "? ", "{", "}", "[", "]", ", ", "&a ", "*a", "&b ", "*b",
        "!!int ", "!!float ", "!!str ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ", "!foo ",
        "!!python/name:os.system ", "|\n  ", ">\n  ", "---\n", "...\n", "'", '"', "#", "%YAML 1.1\n",
        "routes", "upstream", "auth", "public", "x", "1", "2020-13-45", "abc", "\t", "\ufeff", "\x00",
    ]
)  # fmt: skip


@given(text=st.lists(_YAML_PIECES | st.text(max_size=4), max_size=30).map("".join))
@example(text="a: &x [*x]")
@example(text="a: !foo bar")
@example(text="a: !!int abc")
@example(text="a: !!timestamp 2020-13-45")
@example(text="a: !!python/name:os.system x")
@example(text="a: " + "[" * 2000 + "]" * 2000)
@example(text=_ALIAS_BOMB)
def test_any_text_loads_or_is_located(text: str, policy_file: str) -> None:
    _load(text, policy_file)


# -- mutations of the example ----------------------------------------------------------


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


_EXAMPLE_PATHS = list(_paths(_EXAMPLE_DATA))[1:]


def _mutate(path: tuple[Any, ...], how: str, new: Any) -> dict[str, Any]:
    data = copy.deepcopy(_EXAMPLE_DATA)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "replace":
        parent[last] = new
    elif how == "unknown key" and isinstance(parent[last], dict):
        parent[last]["no_such_field"] = new
    elif how == "duplicate" and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
    else:
        parent[last] = [parent[last]]  # a value where a list of it is expected, or not
    return data


@given(
    path=st.sampled_from(_EXAMPLE_PATHS),
    how=st.sampled_from(["delete", "replace", "unknown key", "duplicate", "wrap"]),
    new=_DATA,
)
@example(path=("routes", 0, "auth"), how="replace", new={"any_of": []})
@example(path=("providers", "api-tokens", "keys", 0, "jwks_file"), how="replace", new="missing.json")
def test_mutations_of_the_example_load_or_are_located(
    path: tuple[Any, ...], how: str, new: Any, policy_file: str
) -> None:
    _load(yaml.safe_dump(_mutate(path, how, new), allow_unicode=True, sort_keys=False), policy_file)


_LINES = _EXAMPLE_TEXT.splitlines()


@given(
    index=st.integers(0, len(_LINES) - 1),
    how=st.sampled_from(["drop", "repeat", "indent", "dedent", "insert"]),
    field=_FIELDS,
)
def test_line_edits_of_the_example_load_or_are_located(index: int, how: str, field: str, policy_file: str) -> None:
    lines = list(_LINES)
    line = lines[index]
    if how == "drop":
        del lines[index]
    elif how == "repeat":
        lines.insert(index, line)
    elif how == "indent":
        lines[index] = "  " + line
    elif how == "dedent":
        lines[index] = line[2:] if line.startswith("  ") else line
    else:
        indent = len(line) - len(line.lstrip())
        lines.insert(index, " " * indent + f"{field}: 1")
    _load("\n".join(lines) + "\n", policy_file)
