"""Cross checks that need the whole policy: references between keys, and each rule against
what its store's adapter supports. Returns ``(path, message)`` problems, never raises."""

from __future__ import annotations

from typing import Any

from retentiond.policy.model import Policy
from retentiond.timeutil import never_longer

Problem = tuple[str, str]


def cross_check(policy: Policy | None, raw: dict[str, Any]) -> list[Problem]:
    problems = _raw_references(raw)
    if policy is None:
        return problems
    problems += _schedule(policy)
    for i, rule in enumerate(policy.rules):
        at = f"rules[{i}]"
        if rule.keep_for and rule.dispose_after and not never_longer(
                rule.keep_for, rule.dispose_after):
            problems.append((f"{at}.keep_for", f"keep_for {rule.keep_for} is longer than "
                             f"dispose_after {rule.dispose_after}; retention would never end"))
        if rule.on_erasure == "keep" and not (rule.legal_basis or "").strip():
            problems.append((f"{at}.legal_basis",
                             "on_erasure: keep needs a legal_basis saying why the law keeps it"))
        if "anonymize" in (rule.action, rule.on_erasure) and rule.anonymize is None:
            problems.append((f"{at}.anonymize", "action anonymize needs an anonymize: block "
                             "with marker and columns"))
        store = policy.stores.get(rule.store)
        if store is not None:
            problems += _adapter_checks(policy, i, store.adapter)
    for name, store in policy.stores.items():
        problems += _adapter_known(name, store.adapter)
    return problems


def _raw_references(raw: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    stores = raw.get("stores") if isinstance(raw.get("stores"), dict) else {}
    rules = raw.get("rules") if isinstance(raw.get("rules"), list) else []
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        store = rule.get("store")
        if isinstance(store, str) and store not in stores:
            known = ", ".join(sorted(stores)) or "none"
            problems.append((f"rules[{i}].store", f"unknown store {store!r} (stores: {known})"))
        rid = rule.get("id")
        if isinstance(rid, str):
            if rid in seen:
                problems.append((f"rules[{i}].id", f"duplicate rule id {rid!r} "
                                 f"(also rules[{seen[rid]}])"))
            seen.setdefault(rid, i)
    return problems


def _schedule(policy: Policy) -> list[Problem]:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(policy.schedule, timezone=policy.timezone)
    except ValueError as exc:
        return [("schedule", f"invalid cron expression {policy.schedule!r}: {exc}")]
    return []


def _adapter_known(name: str, adapter: str) -> list[Problem]:
    from retentiond.adapters import registry

    if adapter not in registry.names():
        return [(f"stores.{name}.adapter", f"unknown adapter {adapter!r} "
                 f"(installed: {', '.join(registry.names())})")]
    return []


def _adapter_checks(policy: Policy, index: int, adapter: str) -> list[Problem]:
    from retentiond.adapters import registry

    try:
        cls = registry.get(adapter)
    except KeyError:
        return []
    return [(f"rules[{index}]{'.' + path if path else ''}", msg)
            for path, msg in cls.check_rule(policy.rules[index], policy)]
