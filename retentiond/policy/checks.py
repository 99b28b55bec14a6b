"""Cross checks that need the whole policy: references between keys, and each rule against
what its store's adapter supports. Returns ``(path, message)`` problems, never raises.

When the file as a whole does not validate, the checks still run on every rule and store that
does, so that all problems are reported at once.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from retentiond.policy.model import Policy, Rule, Store
from retentiond.timeutil import Duration, never_longer, parse_duration

Problem = tuple[str, str]


def cross_check(policy: Policy | None, raw: dict[str, Any]) -> list[Problem]:
    problems = _raw_references(raw) + _schedule(raw)
    rules = list(enumerate(policy.rules)) if policy is not None else _valid_rules(raw)
    if policy is None:
        parts: dict[str, Any] = {"stores": _valid_stores(raw), "rules": tuple(r for _, r in rules)}
        policy = Policy.model_construct(**parts)
    for i, rule in rules:
        problems += _rule_checks(policy, rule, f"rules[{i}]")
    for name, store in policy.stores.items():
        problems += _adapter_known(name, store.adapter)
    return problems


def _valid_rules(raw: dict[str, Any]) -> list[tuple[int, Rule]]:
    """The rules that validate on their own, with their position in the file."""
    rules = _list(raw, "rules")
    checked = ((i, _valid(Rule, r)) for i, r in enumerate(rules))
    return [(i, r) for i, r in checked if r is not None]


def _valid_stores(raw: dict[str, Any]) -> dict[str, Store]:
    stores = _mapping(raw, "stores")
    checked = ((n, _valid(Store, s)) for n, s in stores.items())
    return {n: s for n, s in checked if isinstance(n, str) and s is not None}


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    return value if isinstance(value, list) else []


def _mapping(raw: dict[str, Any], key: str) -> dict[Any, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _valid(model: type[Store] | type[Rule], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _rule_checks(policy: Policy, rule: Rule, at: str) -> list[Problem]:
    problems: list[Problem] = []
    if "anonymize" in (rule.action, rule.on_erasure) and rule.anonymize is None:
        problems.append((f"{at}.anonymize", "action anonymize needs an anonymize: block "
                         "with marker and columns"))
    store = policy.stores.get(rule.store)
    if store is not None:
        problems += _adapter_checks(policy, rule, at, store.adapter)
    return problems


def _raw_references(raw: dict[str, Any]) -> list[Problem]:
    """Checks that work on the raw file, so they run even when a rule has other problems."""
    problems: list[Problem] = []
    stores, rules = _mapping(raw, "stores"), _list(raw, "rules")
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        problems += _floor_and_basis(rule, f"rules[{i}]")
        store = rule.get("store")
        if isinstance(store, str) and store not in stores:
            known = ", ".join(sorted(map(str, stores))) or "none defined"
            problems.append((f"rules[{i}].store", f"unknown store {store!r}; define it under "
                             f"stores: or use one of: {known}"))
        rid = rule.get("id")
        if isinstance(rid, str):
            if rid in seen:
                problems.append((f"rules[{i}].id", f"duplicate rule id {rid!r} (also "
                                 f"rules[{seen[rid]}]); give every rule its own id"))
            seen.setdefault(rid, i)
    return problems


def _floor_and_basis(rule: dict[str, Any], at: str) -> list[Problem]:
    problems: list[Problem] = []
    keep, dispose = _duration(rule.get("keep_for")), _duration(rule.get("dispose_after"))
    if keep is not None and dispose is not None and not never_longer(keep, dispose):
        how = "is" if never_longer(dispose, keep) else "can be (months differ in length)"
        problems.append((f"{at}.keep_for", f"keep_for {keep} {how} longer than dispose_after "
                         f"{dispose}; make keep_for at most dispose_after"))
    basis = rule.get("legal_basis")
    if rule.get("on_erasure") == "keep" and not (isinstance(basis, str) and basis.strip()):
        problems.append((f"{at}.legal_basis", "on_erasure: keep needs a legal_basis saying "
                         "which law keeps these records"))
    return problems


def _duration(value: Any) -> Duration | None:
    try:
        return parse_duration(value)
    except ValueError:
        return None  # the schema check reports it


def _schedule(raw: dict[str, Any]) -> list[Problem]:
    from apscheduler.triggers.cron import CronTrigger

    schedule = raw.get("schedule", "0 3 * * *")
    if not isinstance(schedule, str):
        return []  # the schema check reports the wrong type
    try:
        CronTrigger.from_crontab(schedule, timezone=_zone_or_utc(raw.get("timezone")))
    except ValueError as exc:
        return [("schedule", f"invalid cron expression {schedule!r}: {exc}; use five fields "
                 "(minute hour day month weekday), like \"0 3 * * *\"")]
    return []


def _zone_or_utc(name: Any) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (TypeError, ValueError, LookupError):
        return ZoneInfo("UTC")


def _adapter_known(name: str, adapter: str) -> list[Problem]:
    from retentiond.adapters import registry

    if adapter not in registry.names():
        return [(f"stores.{name}.adapter", f"unknown adapter {adapter!r}; use one of the "
                 f"installed adapters ({', '.join(registry.names())})")]
    return []


def _adapter_checks(policy: Policy, rule: Rule, at: str, adapter: str) -> list[Problem]:
    from retentiond.adapters import registry

    try:
        cls = registry.get(adapter)
    except KeyError:
        return []
    return [(f"{at}{'.' + path if path else ''}", msg)
            for path, msg in cls.check_rule(rule, policy)]
