"""Every `gateway` subcommand has a one-line description and an example; every flag has help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from gateway.cli import _parser

Command = tuple[str, argparse.ArgumentParser]


def subcommands(parser: argparse.ArgumentParser, path: str = "gateway") -> Iterator[Command]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{path} {name}", child
                yield from subcommands(child, f"{path} {name}")


def test_every_subcommand_has_a_description_an_example_and_help_on_every_flag() -> None:
    found = dict(subcommands(_parser()))
    # The walk reaches the nested commands, so a missing one cannot pass unseen.
    assert {"gateway run", "gateway keys retire", "gateway tokens issue"} <= found.keys()
    problems = []
    for path, parser in found.items():
        if not parser.description:
            problems.append(f"{path}: no description")
        if not parser.epilog or f"example: {path}" not in parser.epilog:
            problems.append(f"{path}: no example starting with {path!r}")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                problems.append(f"{path}: {'/'.join(action.option_strings) or action.dest} has no help")
    assert problems == []


def test_a_subcommand_summary_is_one_line() -> None:
    for path, parser in subcommands(_parser()):
        assert parser.description is not None, path
        assert "\n" not in parser.description.strip(), path
