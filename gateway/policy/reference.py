"""docs/config.md's key tables, rendered from the policy's JSON Schema.

The page stays hand-written prose with generated tables spliced in: each table sits
between `<!-- generated: PATH -->` and `<!-- end generated -->`, where PATH names a
place in the policy (`server`, `providers.<name>.remote`, `routes[].auth`; `.` is the
top level). A sub-section without markers of its own is flattened into dotted rows of
its parent's table (`timeouts.connect`). The prose, examples and cross-key rules
around the tables are not per-key and stay hand-written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.duration import DURATION_PATTERN
from gateway.policy.model import HEADER_NAME_PATTERN, LISTEN_PATTERN

Schema = dict[str, Any]
# Strings with a meaning of their own, by the pattern the model gives them.
_STRINGS = {DURATION_PATTERN: "duration", LISTEN_PATTERN: "listen address", HEADER_NAME_PATTERN: "header name"}

_MARKER = re.compile(r"<!-- generated: (?P<path>\S+) -->\n(?P<body>.*?)<!-- end generated -->", re.DOTALL)
REGENERATE = "make docs  (or: gateway schema --update-docs docs/config.md)"


class ReferenceError(ValueError):
    """The document and the schema do not fit together (unknown path, undocumented key)."""


@dataclass
class _Coverage:
    """Which (model, key) pairs some table has rendered: every key must be in one."""

    seen: set[tuple[str, str]] = field(default_factory=set)


def render_sections(schema: Schema, paths: list[str]) -> dict[str, str]:
    """The table for each path; raises ReferenceError when a key of the schema is in none."""
    coverage = _Coverage()
    sectioned = {_resolve(schema, p)[0] for p in paths}
    tables = {p: _table(schema, p, sectioned, coverage) for p in paths}
    missing = sorted(
        f"{name}.{key}"
        for name, definition in _models(schema)
        for key in definition.get("properties", {})
        if (name, key) not in coverage.seen
    )
    if missing:
        raise ReferenceError(f"keys in no generated table: {', '.join(missing)}")
    undescribed = sorted(
        f"{n}.{k}" for n, d in _models(schema) for k, p in d.get("properties", {}).items() if not _says(schema, p)
    )
    if undescribed:
        raise ReferenceError(f"keys without a description in gateway/policy/model.py: {', '.join(undescribed)}")
    return tables


def update(document: str, schema: Schema) -> str:
    """`document` with every generated section rendered again from `schema`."""
    paths = [m.group("path") for m in _MARKER.finditer(document)]
    if len(set(paths)) != len(paths):
        raise ReferenceError(f"a generated section appears twice: {sorted(p for p in paths if paths.count(p) > 1)}")
    tables = render_sections(schema, paths)

    def body(m: re.Match[str]) -> str:
        path = m.group("path")
        return f"<!-- generated: {path} -->\n{tables[path]}<!-- end generated -->"

    return _MARKER.sub(body, document)


def drifted(document: str, schema: Schema) -> list[str]:
    """The paths whose committed table differs from the one `schema` renders."""
    now, then = sections(document), sections(update(document, schema))
    return [path for path in then if now.get(path) != then[path]]


def sections(document: str) -> dict[str, str]:
    """Each generated section's current text, by path (to say which one drifted)."""
    return {m.group("path"): m.group("body") for m in _MARKER.finditer(document)}


def _models(schema: Schema) -> Iterator[tuple[str, Schema]]:
    yield "Policy", schema
    yield from schema.get("$defs", {}).items()


def _deref(schema: Schema, node: Schema) -> tuple[str | None, Schema]:
    """The model a node refers to (through `$ref`, or the one `$ref` of a union), if any."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return name, schema["$defs"][name]
    branches: list[Schema] = node.get("anyOf") or node.get("oneOf") or []
    refs = [b for b in branches if "$ref" in b]
    if len(refs) == 1:
        return _deref(schema, refs[0])
    return None, node


def _values(node: Schema) -> Schema:
    """The schema of a mapping's values (`additionalProperties`, or the one pattern's)."""
    values = node.get("additionalProperties")
    if isinstance(values, dict):
        return values
    patterns = list(node.get("patternProperties", {}).values())
    return patterns[0] if len(patterns) == 1 else {}


def _resolve(schema: Schema, path: str) -> tuple[str, Schema]:
    """The model at a documented path such as `providers.<name>.keys[].hmac_secret`."""
    name, node = "Policy", schema
    if path == ".":
        return name, node
    for part in path.split("."):
        step = part.removesuffix("[]")
        if step.startswith("<"):
            node = _values(node)
        else:
            if step not in node.get("properties", {}):
                raise ReferenceError(f"{path}: {step!r} is not a key there")
            node = node["properties"][step]
        if part.endswith("[]"):
            node = node.get("items", node)
        found, node = _deref(schema, node)
        # A mapping or list of models (`providers`) is only a step on the way.
        name = found if found is not None else ""
    if not name:
        raise ReferenceError(f"{path}: not a section (no model there)")
    return name, node


def _table(schema: Schema, path: str, sectioned: set[str], coverage: _Coverage) -> str:
    name, model = _resolve(schema, path)
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += _rows(schema, name, model, "", sectioned, coverage)
    return "\n".join(lines) + "\n"


def _rows(schema: Schema, name: str, model: Schema, prefix: str, sectioned: set[str], coverage: _Coverage) -> list[str]:
    rows = []
    required = set(model.get("required", ()))
    for key, prop in model.get("properties", {}).items():
        coverage.seen.add((name, key))
        sub, _ = _deref(schema, prop)
        default = "required" if key in required else _default(prop, sub is not None)
        description = _cell(_says(schema, prop))
        if sub is not None and sub not in sectioned:
            # A small sub-section without a heading of its own: a row for it, then its
            # keys as dotted rows.
            shown = default.replace("see below", "-")
            rows.append(f"| `{prefix}{key}` | {_type(schema, prop)} | {shown} | {description} |")
            rows += _rows(schema, sub, schema["$defs"][sub], f"{prefix}{key}.", sectioned, coverage)
            continue
        rows.append(f"| `{prefix}{key}` | {_type(schema, prop)} | {default} | {description} |")
    return rows


def _says(schema: Schema, prop: Schema) -> str:
    """A property's description; pydantic leaves it out when it repeats its model's."""
    sub, model = _deref(schema, prop)
    return str(prop.get("description") or (model.get("description", "") if sub else ""))


def _default(prop: Schema, is_section: bool) -> str:
    if "default" not in prop or prop["default"] is None:
        return "none"
    if is_section:
        return "see below"
    return f"`{_flow(prop['default'])}`"


def _flow(value: Any) -> str:
    """A default as it would be written in the policy's YAML, on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _type(schema: Schema, prop: Schema) -> str:
    """A short human name for a property's schema."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    names = [_one_type(schema, b) for b in branches]
    scalars = " or ".join(dict.fromkeys(n for b, n in zip(branches, names, strict=True) if b.get("type") != "array"))
    # A value or a list of such values (a route's `claims`): say so once.
    names = ["a list of these" if n == f"list of {scalars}" else n for n in names]
    text = " or ".join(dict.fromkeys(names))
    if len(branches) < len(prop.get("anyOf", [prop])):
        text += " or `null`"
    return text


def _one_type(schema: Schema, node: Schema) -> str:
    if "$ref" in node:
        return "mapping"
    if "oneOf" in node:
        return " or ".join(_one_type(schema, b) for b in node["oneOf"])
    if "const" in node:
        return f"`{node['const']}`"
    if "enum" in node:
        return " or ".join(f"`{v}`" for v in dict.fromkeys(str(v) for v in node["enum"]))
    kind = node.get("type")
    if kind == "string":
        return _STRINGS.get(node.get("pattern", ""), "string")
    if kind == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        if "exclusiveMinimum" in node:
            return f"int (> {node['exclusiveMinimum']})"
        if low is None and high is None:
            return "int"
        return f"int ({'' if low is None else low}-{'' if high is None else high})"
    if kind == "number":
        return "number"
    if kind == "boolean":
        return "bool"
    if kind == "array":
        least = node.get("minItems")
        inner = _one_type(schema, node.get("items", {}))
        return f"list of {inner}" + (f", at least {least}" if least else "")
    if kind == "object":
        values = _values(node)
        if values:
            return f"mapping of string → {_type(schema, values)}"
        return "mapping"
    if "anyOf" in node:
        return _type(schema, node)
    return "any"


def _cell(text: str) -> str:
    """A description as one table cell: one line, `|` escaped."""
    return " ".join(text.split()).replace("|", "\\|")
