"""The policy file: load YAML, resolve secrets, validate (all errors at once), frozen model."""

from retentiond.policy.loader import load_policy, parse_policy
from retentiond.policy.model import Condition, Policy, Rule, Store

__all__ = ["Condition", "Policy", "Rule", "Store", "load_policy", "parse_policy"]
