"""YAML -> plain Python data, remembering the line of every key and list item.

PyYAML's constructors forget positions, and silently let a repeated key overwrite the
first one. We walk the composed node tree ourselves so that every error can say
`file:line`, and a repeated key is an error rather than a surprise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.policy.errors import Path

_SCALAR_LOADER = yaml.SafeLoader("")
# How deep mappings and lists may nest, and how many values a file may hold once its
# aliases are expanded. Real policies nest about 6 deep and hold a few hundred values;
# an alias repeats a node without repeating its text, so `&a [*a]` is infinitely deep
# and a few lines of aliases of aliases are millions of values.
_MAX_DEPTH = 64
_MAX_VALUES = 100_000


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Where each field path was written."""

    filename: str
    lines: Mapping[Path, int]

    def line_of(self, path: Path) -> int:
        """The line of the deepest written prefix of `path` (1 if none)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1


class SourceError(ValueError):
    """The file is not well-formed YAML, or repeats a key."""

    def __init__(self, line: int, path: Path, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


def parse_yaml(text: str, filename: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document into data plus a map of field path -> line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise SourceError(line, (), f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise SourceError(1, (), f"not valid YAML: {exc}") from None
    except RecursionError:
        # PyYAML's composer recurses once per level: ~300 nested `[` exhaust the stack
        # before any limit of ours is reached, and where it stopped is not known.
        raise SourceError(1, (), f"nested too deeply (at most {_MAX_DEPTH} levels)") from None
    lines: dict[Path, int] = {(): 1}
    if node is None:
        return None, SourceMap(filename, lines)
    return _convert(node, (), lines, [0]), SourceMap(filename, lines)


def _convert(node: yaml.Node, path: Path, lines: dict[Path, int], count: list[int]) -> Any:
    line = node.start_mark.line + 1
    lines.setdefault(path, line)
    count[0] += 1
    if count[0] > _MAX_VALUES:
        raise SourceError(line, path, f"more than {_MAX_VALUES} values (aliases expanded)")
    if len(path) > _MAX_DEPTH:
        raise SourceError(line, path, f"nested too deeply (at most {_MAX_DEPTH} levels; or an alias contains itself)")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise SourceError(line, path, "mapping keys must be plain strings")
            key = str(_scalar(key_node, path))
            if key in out:
                raise SourceError(line, path + (key,), f"duplicate key {key!r}")
            lines[path + (key,)] = line
            out[key] = _convert(value_node, path + (key,), lines, count)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), lines, count) for i, item in enumerate(node.value)]
    return _scalar(node, path)


def _scalar(node: yaml.Node, path: Path) -> Any:
    """A scalar's value. yaml.compose only parses; the tag is applied here, so this is
    where `!!int abc`, `!!timestamp 2020-13-45` and unknown tags (`!foo`) fail."""
    try:
        return _SCALAR_LOADER.construct_object(node)
    except yaml.MarkedYAMLError as exc:
        raise SourceError(node.start_mark.line + 1, path, f"not a valid value: {exc.problem or exc}") from None
    except Exception:
        # PyYAML's constructors do not validate before they convert: an explicitly
        # tagged scalar fails with whatever the conversion raises (ValueError for
        # `!!int abc`, IndexError for `!!int ""`, AttributeError for `!!timestamp ""`).
        # Every one of them means this value is not valid, so all are located here.
        # Never the exception's text: int(), float() and the bool constructor quote the
        # value, which may be a secret written inline by mistake (found by review).
        raise SourceError(node.start_mark.line + 1, path, f"not a valid {node.tag.rpartition(':')[2]}") from None
    finally:
        # The loader caches every node it builds (and, after a failure, keeps it marked
        # as in progress): forget it, or every policy ever loaded (each reload) stays in
        # memory through this module-wide loader.
        _SCALAR_LOADER.constructed_objects.pop(node, None)
        _SCALAR_LOADER.recursive_objects.pop(node, None)
