"""The policy file: YAML -> validated frozen model -> compiled runtime objects."""

from gateway.policy.errors import ConfigError
from gateway.policy.load import load_policy, load_policy_text

__all__ = ["ConfigError", "load_policy", "load_policy_text"]
