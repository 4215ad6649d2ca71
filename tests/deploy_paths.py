"""The files a policy names, for the deploy tests: found, and moved under a test's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _is_path(key: object, value: object) -> bool:
    # Every path field of the policy: `file` (hmac_secret), `*_file`, the API-token
    # key directory and ledger. A new `*_file` field is found without a change here.
    return isinstance(value, str) and (key in ("file", "signing_keys", "ledger") or str(key).endswith("_file"))


def path_fields(node: Any, at: str = "") -> list[tuple[str, str]]:
    """(field path, value) of every file or directory the policy names, wherever it is."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{at}.{key}" if at else str(key)
            if _is_path(key, value):
                found.append((where, value))
            else:
                found.extend(path_fields(value, where))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found.extend(path_fields(item, f"{at}[{i}]"))
    return found


def reroot(node: Any, root: Path) -> Any:
    """The policy with every (absolute) file path moved under `root`."""
    if isinstance(node, dict):
        return {
            key: str(root / value.lstrip("/")) if _is_path(key, value) else reroot(value, root)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [reroot(item, root) for item in node]
    return node
