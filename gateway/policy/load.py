"""Read a policy file and report every problem as `file:line: field.path: message`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.policy.compile import CompiledPolicy, compile_policy
from gateway.policy.errors import CompileError, ConfigError, Path, format_path
from gateway.policy.lint import lint
from gateway.policy.model import CLAIM_NAME_PATTERN, HEADER_NAME_PATTERN, REALM_PATTERN, Policy
from gateway.policy.snapshot import Snapshot, read_policy_text
from gateway.policy.source import SourceError, SourceMap, parse_yaml


def load_policy(filename: str) -> CompiledPolicy:
    """Load, validate and compile; raise ConfigError with located messages."""
    return load_policy_text(read_text(filename), filename)


def read_text(filename: str) -> str:
    """The policy file's text, or ConfigError saying why it cannot be read."""
    try:
        return read_policy_text(filename)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{filename}: cannot read the policy file: {exc.strerror if isinstance(exc, OSError) else exc}"]
        ) from None


def load_model(filename: str) -> Policy:
    """Read and validate without compiling (no key files are read): for the token tools."""
    policy, _ = _validate(read_text(filename), filename)
    return policy


def _validate(text: str, filename: str) -> tuple[Policy, SourceMap]:
    try:
        data, source = parse_yaml(text, filename)
    except SourceError as exc:
        where = f"{format_path(exc.path)}: " if exc.path else ""
        raise ConfigError([f"{filename}:{exc.line}: {where}{exc.message}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: expected a mapping with 'routes' at the top level"])
    try:
        return Policy.model_validate(data), source
    except ValidationError as exc:
        raise ConfigError(_located(_pydantic_problems(exc, data), source)) from None


def load_policy_text(text: str, filename: str, replay: Snapshot | None = None) -> CompiledPolicy:
    """As load_policy, for text already in hand; with `replay` (whose text `text` is),
    the key files are taken from that snapshot."""
    return _compile(text, filename, replay)[0]


def load_policy_linted(filename: str) -> tuple[CompiledPolicy, list[str]]:
    """As load_policy, plus the policy's warnings (`policy/lint.py`), each located as
    `file:line: field.path: message`, in file order."""
    compiled, policy, source = _compile(read_text(filename), filename, None)
    return compiled, _located([(p.path, p.message) for p in lint(policy, compiled)], source)


def _compile(text: str, filename: str, replay: Snapshot | None) -> tuple[CompiledPolicy, Policy, SourceMap]:
    policy, source = _validate(text, filename)
    try:
        return compile_policy(policy, filename, text, replay), policy, source
    except CompileError as exc:
        raise ConfigError(_located([(p.path, p.message) for p in exc.problems], source)) from None


def _pydantic_problems(exc: ValidationError, data: Any) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    errors = exc.errors(include_url=False)
    for err in errors:
        kind = err["type"]
        # An unknown field's name is in ctx; the loc's last element is then a union tag.
        path = _data_path(data, tuple(err["loc"]), keep_missing=kind != "unknown_field")
        if kind == "too_short" and any(
            len(e["loc"]) > len(err["loc"]) and e["loc"][: len(err["loc"])] == err["loc"] for e in errors
        ):
            # pydantic counts a list's length after dropping invalid items; the item's
            # own error is the one worth reading.
            continue
        ctx = err.get("ctx") or {}
        if kind == "unknown_field":
            path = path + (ctx["field"],)
        message = {
            "missing": "required field is missing",
            "int_type": "expected a whole number",
            "string_type": "expected a string",
            "bool_type": "expected true or false",
            "tuple_type": "expected a list",
            "dict_type": "expected a mapping",
            "model_type": "expected a mapping",
            "model_attributes_type": "expected a mapping",
            "too_short": "expected at least one entry",
        }.get(kind, err["msg"])
        if kind == "string_too_short":
            message = "expected a non-empty string"
        if kind == "string_pattern_mismatch":
            what = _PATTERNS.get(ctx.get("pattern", ""), f"a string matching {ctx.get('pattern')}")
            message = f"not valid: {err['input']!r} (expected {what})"
        out.append((path, message))
    return out


_PATTERNS = {
    HEADER_NAME_PATTERN: "an HTTP header name such as X-Auth-Subject",
    CLAIM_NAME_PATTERN: "a claim name without control characters",
    REALM_PATTERN: "a realm without quotes, backslashes or control characters",
}


def _data_path(data: Any, loc: tuple[Any, ...], keep_missing: bool = True) -> Path:
    """Turn a pydantic `loc` into a path through the user's data.

    pydantic inserts union tags (`jwt`) and validator names into `loc`; those are not
    in the file, so they are skipped. The last element is kept even when absent: it is
    the name of a missing field.
    """
    out: list[str | int] = []
    cur = data
    for n, part in enumerate(loc):
        if isinstance(cur, dict) and part in cur:
            out.append(str(part))
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif keep_missing and n == len(loc) - 1 and isinstance(part, str) and isinstance(cur, dict):
            out.append(part)
    return tuple(out)


def _located(problems: list[tuple[Path, str]], source: SourceMap) -> list[str]:
    rows = sorted(((source.line_of(path), format_path(path), msg) for path, msg in problems), key=lambda r: r[0])
    return [f"{source.filename}:{line}: {field}: {msg}" for line, field, msg in rows]
