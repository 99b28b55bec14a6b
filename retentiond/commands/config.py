"""``config validate`` and ``config schema``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from retentiond import output
from retentiond.adapters import registry
from retentiond.adapters.base import Adapter
from retentiond.app import App
from retentiond.audit.ledger import anonymised_by
from retentiond.errors import PolicyError, RetentiondError, StoreUnreachable
from retentiond.log import get_logger
from retentiond.planner import overlapping
from retentiond.policy.loader import checkable_rules
from retentiond.policy.model import Policy, Rule
from retentiond.timeutil import never_longer

log = get_logger(__name__)


def schema(app: App) -> int:
    doc = Policy.model_json_schema(mode="validation")
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "retentiond policy file"
    print(json.dumps(doc, indent=2))
    return 0


def validate(app: App) -> int:
    """Schema and cross checks (exit 2), then live checks against every store (exit 3 when a
    store is unreachable, exit 2 when a table or column does not fit). When the file has
    problems, the rules without one are still checked live, so one pass shows every problem."""
    try:
        policy = app.policy
    except PolicyError as exc:
        raise _with_live_problems(exc, app.config_path) from None
    for name in sorted(policy.stores):
        app.adapter(name)
    rules = list(enumerate(policy.rules))
    problems, live_warnings = _live(rules, app.adapter, _ledgered(app))
    if problems:
        _warn(live_warnings)
        raise PolicyError(problems, {i: rule.id for i, rule in enumerate(policy.rules)})
    warnings = overlap_warnings(policy) + live_warnings
    _warn(warnings)
    details = {name: d for name in sorted(policy.stores) if (d := app.adapter(name).describe())}
    summary = {"ok": True, "config": str(app.config_path), "rules": len(policy.rules),
               "stores": len(policy.stores), "warnings": warnings}
    if details:
        summary["store_details"] = details
    if app.json:
        output.emit_json(summary)
    else:
        output.line(f"policy OK: {summary['rules']} rules, {summary['stores']} stores "
                    f"({app.config_path})")
        for name, d in details.items():
            output.line(f"store {name}: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    return 0


Problem = tuple[str, str]


def _live(rules: list[tuple[int, Rule]], adapter: Callable[[str], Adapter],
          ledgered: Callable[[str], bool]) -> tuple[list[Problem], list[str]]:
    """Every rule's live problems (with their paths) and warnings (as lines). A rule whose
    checks pass is also sampled (clocks, markers) for warnings."""
    problems: list[Problem] = []
    warnings: list[str] = []
    for i, rule in rules:
        found = adapter(rule.store).validate(rule)
        problems += [(f"rules[{i}].{path}" if path else f"rules[{i}]", msg)
                     for path, msg in found]
        if not found:
            warnings += [f"rules[{i}] ({rule.id}).{path}: {msg}"
                         for path, msg in adapter(rule.store).warnings(rule, ledgered)]
            warnings += [f"rules[{i}] ({rule.id}).{path}: {msg}"
                         for path, msg in adapter(rule.store).reference_warnings(rule)]
    return problems, warnings


def _warn(warnings: list[str]) -> None:
    for text in warnings:
        log.warning("policy warning", warning=text)
        print(f"warning: {text}", file=sys.stderr)


def _with_live_problems(exc: PolicyError, path: Path) -> PolicyError:
    """The file's problems plus the live problems of every rule that has none of its own.
    An unreachable store is a warning here: the file is already wrong (exit 2)."""
    found = checkable_rules(path, exc.problems)
    if found is None or not found[1]:
        return exc
    policy, rules = found
    adapters: dict[str, Adapter] = {}
    reachable: list[tuple[int, Rule]] = []
    skipped: list[str] = []
    try:
        for i, rule in rules:
            if rule.store not in adapters:
                store = policy.stores[rule.store]
                try:
                    made = registry.get(store.adapter)(rule.store, store, policy)
                    made.connect()
                except StoreUnreachable as err:
                    skipped.append(f"{err}; its rules were not checked live")
                    continue
                adapters[rule.store] = made
            reachable.append((i, rule))
        problems, warnings = _live(reachable, adapters.__getitem__, lambda _: True)
    finally:
        for made in adapters.values():
            made.close()
    _warn(sorted(set(skipped)) + warnings)
    return PolicyError([*exc.problems, *problems], exc.rule_ids)


def _ledgered(app: App) -> Callable[[str], bool]:
    """Whether the ledger holds an anonymisation by a rule (the state database is opened only
    when a warning depends on it; when it cannot be read, the answer is no)."""
    def ask(rule_id: str) -> bool:
        try:
            return anonymised_by(app.state, rule_id)
        except RetentiondError:
            return False
    return ask


def overlap_warnings(policy: Policy) -> list[str]:
    """Rules sharing a table: say how they combine (SPEC 3.2), and where due dates cannot be
    ordered set-wise so that the rule listed first wins."""
    out = []
    index = {r.id: i for i, r in enumerate(policy.rules)}
    for i, x in enumerate(policy.rules):
        for y in overlapping(x, policy.rules):
            j = index[y.id]
            if j <= i:
                continue
            text = (f"rules[{i}] ({x.id}) and rules[{j}] ({y.id}) both cover "
                    f"{x.store}.{x.target}: a record both match is disposed only when neither "
                    "floor protects it, by the rule due first")
            if x.dispose_after and y.dispose_after and not _comparable(x, y):
                text += (f"; their due dates cannot be compared ({x.clock}+{x.dispose_after} vs "
                         f"{y.clock}+{y.dispose_after}), so {x.id}, listed first, wins")
            out.append(text)
    return out


def _comparable(x: Rule, y: Rule) -> bool:
    a, b = x.dispose_after, y.dispose_after
    if x.clock != y.clock or a is None or b is None:
        return False
    return never_longer(a, b) or never_longer(b, a)
