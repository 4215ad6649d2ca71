"""docs/config.md's key tables are rendered from the policy model: they cannot drift."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gateway.policy import reference
from gateway.policy.reference import REGENERATE, ReferenceError, drifted, sections, update
from gateway.policy.schema import policy_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_committed_reference_is_the_generated_one() -> None:
    document = DOC.read_text(encoding="utf-8")
    stale = drifted(document, policy_schema())
    assert not stale, f"docs/config.md differs from the policy model in: {', '.join(stale)}; run {REGENERATE}"


def test_a_changed_description_is_drift_in_its_section() -> None:
    document = DOC.read_text(encoding="utf-8")
    schema = policy_schema()
    schema["$defs"]["Remote"]["properties"]["max_stale"]["description"] = "something else"
    assert drifted(document, schema) == ["providers.<name>.remote"]


def test_a_changed_default_is_drift() -> None:
    document = DOC.read_text(encoding="utf-8")
    schema = policy_schema()
    schema["$defs"]["Server"]["properties"]["shutdown_timeout"]["default"] = "31s"
    assert drifted(document, schema) == ["server"]


def test_every_key_of_every_model_is_in_a_table() -> None:
    tables = "".join(sections(DOC.read_text(encoding="utf-8")).values())
    schema = policy_schema()
    models = [("Policy", schema), *schema["$defs"].items()]
    for name, model in models:
        for key in model.get("properties", {}):
            assert f"{key}` |" in tables, f"{name}.{key} is in no table of docs/config.md"
    # The keys the hand-written reference once missed.
    for row in ("`revocation_file`", "`api_tokens`", "`ledger`", "`typ`", "`publish_jwks`", "`signing_keys`"):
        assert row in tables


def test_a_key_in_no_table_is_refused() -> None:
    document = DOC.read_text(encoding="utf-8")
    without = document.replace("<!-- generated: . -->", "<!-- removed -->", 1)
    with pytest.raises(ReferenceError, match=r"keys in no generated table: .*Policy\.listen"):
        update(without, policy_schema())


def test_a_section_without_markers_is_flattened_into_its_parent() -> None:
    document = DOC.read_text(encoding="utf-8")
    without = document.replace("<!-- generated: routes[].cors -->", "<!-- removed -->", 1)
    table = sections(update(without, policy_schema()))["routes[]"]
    assert "| `cors.allow_origins` | list of string, at least 1 | required |" in table


def test_a_key_without_a_description_is_refused() -> None:
    schema = copy.deepcopy(policy_schema())
    del schema["$defs"]["ApiTokens"]["properties"]["typ"]["description"]
    with pytest.raises(ReferenceError, match=r"ApiTokens\.typ"):
        update(DOC.read_text(encoding="utf-8"), schema)


def test_an_unknown_section_is_refused() -> None:
    with pytest.raises(ReferenceError, match="nope"):
        update("<!-- generated: server.nope -->\n<!-- end generated -->\n", policy_schema())


def test_every_model_and_field_says_what_it_is() -> None:
    schema = policy_schema()
    for name, model in schema["$defs"].items():
        assert model.get("description"), f"{name} has no docstring"
        for key, prop in model.get("properties", {}).items():
            assert reference._says(schema, prop), f"{name}.{key} has no description"


def test_regenerating_is_stable() -> None:
    document = DOC.read_text(encoding="utf-8")
    once = update(document, policy_schema())
    assert update(once, policy_schema()) == once
