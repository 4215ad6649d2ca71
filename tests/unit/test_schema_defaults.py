"""The schema's defaults are valid policy: an editor that fills them in writes a policy that loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.policy.load import load_model
from gateway.policy.schema import policy_schema, schema_text

SCHEMA = policy_schema()


def _defaults(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"Policy.{k}", p) for k, p in schema["properties"].items() if "default" in p]
    for name, model in schema["$defs"].items():
        found += [(f"{name}.{k}", p) for k, p in model.get("properties", {}).items() if "default" in p]
    return found


DEFAULTS = _defaults(SCHEMA)


def test_there_are_defaults_to_check() -> None:
    names = {name for name, _ in DEFAULTS}
    # default_factory fields too, which pydantic alone leaves without one.
    assert {"Server.shutdown_timeout", "Admin.listen", "Identity.claims", "Policy.server"} <= names


@pytest.mark.parametrize(("name", "prop"), DEFAULTS, ids=[name for name, _ in DEFAULTS])
def test_default_is_valid_against_its_own_schema(name: str, prop: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator({"$defs": SCHEMA["$defs"], **prop})
    errors = [e.message for e in validator.iter_errors(prop["default"])]
    assert not errors, f"{name}: default {prop['default']!r} fails its schema: {errors}"


def test_durations_are_written_as_the_policy_spells_them() -> None:
    server = SCHEMA["$defs"]["Server"]["properties"]
    assert server["shutdown_timeout"]["default"] == "30s"
    assert SCHEMA["$defs"]["ApiTokens"]["properties"]["default_ttl"]["default"] == "90d"
    assert SCHEMA["properties"]["listen"]["default"] == "0.0.0.0:8080"


def test_a_float_duration_default_would_be_caught() -> None:
    prop = dict(SCHEMA["$defs"]["Server"]["properties"]["shutdown_timeout"], default=30.0)
    validator = jsonschema.Draft202012Validator({"$defs": SCHEMA["$defs"], **prop})
    assert not validator.is_valid(prop["default"])


# A small valid policy touching every section, as an operator would start it.
MINIMAL: dict[str, Any] = {
    "tls": {"cert_file": "tls.crt", "key_file": "tls.key", "client_ca_file": "clients.pem"},
    "providers": {
        "idp": {
            "issuer": "https://idp.example",
            "audiences": ["api"],
            "algorithms": ["RS256"],
            "keys": [{"jwks_url": "https://idp.example/jwks.json"}],
        },
        "svc": {
            "issuer": "https://gw.example/api-tokens",
            "audiences": ["api"],
            "algorithms": ["ES256"],
            "keys": [{"jwks_file": "keys/jwks.json"}],
            "max_lifetime": "90d",
            "revocation_file": "revoked.json",
            "api_tokens": {"signing_keys": "keys"},
        },
    },
    "upstream_tls": {"https://orders.internal": {"ca_file": "ca.pem"}},
    "routes": [
        {
            "name": "orders",
            "match": {"prefix": "/orders"},
            "upstream": "https://orders.internal",
            "auth": {"any_of": ["idp", "svc"]},
            "cors": {"allow_origins": ["https://app.example"]},
            "client_cert": {"subjects": ["CN=billing,O=Acme"]},
        },
        {"name": "health", "match": {"path": "/health"}, "upstream": "http://127.0.0.1:81", "auth": "public"},
    ],
}


def _model_of(node: dict[str, Any]) -> dict[str, Any] | None:
    if "$ref" in node:
        return SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]  # type: ignore[no-any-return]
    refs = [b for b in node.get("anyOf", []) if "$ref" in b]
    return _model_of(refs[0]) if len(refs) == 1 else None


def _fill(value: Any, node: dict[str, Any]) -> Any:
    """What an editor does: every absent key that has a default gets it, all the way down."""
    model = _model_of(node) or node
    if isinstance(value, dict) and "properties" in model:
        for key, prop in model["properties"].items():
            if key not in value and "default" in prop:
                value[key] = json.loads(json.dumps(prop["default"]))
            if key in value:
                value[key] = _fill(value[key], prop)
    elif isinstance(value, dict):
        values = model.get("additionalProperties") or next(iter(model.get("patternProperties", {}).values()), None)
        if isinstance(values, dict):
            value = {k: _fill(v, values) for k, v in value.items()}
    elif isinstance(value, list) and isinstance(model.get("items"), dict):
        value = [_fill(v, model["items"]) for v in value]
    return value


def test_every_default_filled_in_still_loads(tmp_path: Path) -> None:
    filled = _fill(json.loads(json.dumps(MINIMAL)), SCHEMA)
    # The walk reached the nested sections.
    assert filled["server"]["request_id"] == {"header": "X-Request-Id"}
    assert filled["providers"]["idp"]["remote"]["fetch_timeout"] == "5s"
    assert filled["providers"]["svc"]["api_tokens"]["default_ttl"] == "90d"
    assert filled["routes"][0]["timeouts"] == {"connect": "5s", "read": "30s"}
    assert filled["routes"][0]["cors"]["allow_credentials"] is False
    jsonschema.Draft202012Validator(SCHEMA).validate(filled)
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps(filled, indent=2), encoding="utf-8")  # JSON is YAML
    policy = load_model(str(path))
    assert policy.server.shutdown_timeout == 30.0
    assert policy.providers["svc"].api_tokens is not None
    assert policy.providers["svc"].api_tokens.default_ttl == 90 * 86400.0


def test_schema_text_is_sorted_and_stable() -> None:
    text = schema_text()
    assert text == schema_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
