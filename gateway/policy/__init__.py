"""The policy file: YAML -> validated frozen model -> compiled runtime objects."""

from gateway.policy.errors import ConfigError
from gateway.policy.load import load_policy

__all__ = ["ConfigError", "load_policy"]
