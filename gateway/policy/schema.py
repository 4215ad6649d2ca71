"""The policy's JSON Schema, as `gateway schema` prints it and docs/config.md is rendered from.

Every default is written as a policy file spells it (`30s`, `0.0.0.0:8080`, whole
sub-sections), so an editor that fills in defaults writes a policy that loads.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from gateway.policy.model import Policy

DRAFT = "https://json-schema.org/draft/2020-12/schema"


class _PolicySchema(GenerateJsonSchema):
    """Defaults encoded through their field's own serializer, factories included."""

    _field_serializer: pydantic_core.SchemaSerializer | None = None
    _core_definitions: dict[str, core_schema.CoreSchema] | None = None

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        # pydantic leaves `default_factory` fields without a default; the operator
        # still needs to see what `admin.listen` or `identity.claims` is when unset.
        factory = schema.get("default_factory")
        if factory is not None:
            if schema.get("default_factory_takes_data"):
                return NoDefault
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)

    def encode_default(self, dft: Any) -> Any:
        # The base class encodes by the value's Python type, so a Duration's 30.0 came
        # out as a float the schema's own `pattern` refuses. The field's serializer
        # (set by default_schema below) writes it as the policy file does.
        if self._field_serializer is not None:
            return self._field_serializer.to_python(dft, mode="json")
        return super().encode_default(dft)

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        # No fallback to the base class's encoding: that is the float this replaces.
        previous = self._field_serializer
        self._field_serializer = pydantic_core.SchemaSerializer(self._with_definitions(schema["schema"]))
        try:
            return super().default_schema(schema)
        finally:
            self._field_serializer = previous

    def _with_definitions(self, schema: core_schema.CoreSchema) -> core_schema.CoreSchema:
        # A field's schema may point at shared definitions (a model used twice): the
        # serializer needs them alongside.
        if self._core_definitions:
            return core_schema.definitions_schema(schema, list(self._core_definitions.values()))
        return schema

    def generate(self, schema: core_schema.CoreSchema, mode: Any = "validation") -> JsonSchemaValue:
        if schema["type"] == "definitions":
            self._core_definitions = {d["ref"]: d for d in schema["definitions"] if "ref" in d}
        return super().generate(schema, mode=mode)


def policy_schema() -> dict[str, Any]:
    """The policy's JSON Schema (properties in the model's order, which the reference keeps)."""
    schema = Policy.model_json_schema(schema_generator=_PolicySchema)
    schema["$schema"] = DRAFT
    schema["$id"] = Policy.SCHEMA_ID
    return schema


def schema_text() -> str:
    """`gateway schema`'s output: sorted keys, so a change shows as a small diff."""
    return json.dumps(policy_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
