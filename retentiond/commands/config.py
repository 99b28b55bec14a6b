"""``config validate`` and ``config schema``."""

from __future__ import annotations

import json
import sys

from retentiond import output
from retentiond.app import App
from retentiond.errors import PolicyError
from retentiond.planner import overlapping
from retentiond.policy.model import Policy, Rule
from retentiond.timeutil import never_longer


def schema(app: App) -> int:
    doc = Policy.model_json_schema(mode="validation")
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "retentiond policy file"
    print(json.dumps(doc, indent=2))
    return 0


def validate(app: App) -> int:
    """Schema and cross checks (exit 2), then live checks against every store (exit 3 when a
    store is unreachable, exit 2 when a table or column does not fit)."""
    policy = app.policy
    problems: list[tuple[str, str]] = []
    for name in sorted(policy.stores):
        app.adapter(name)
    for i, rule in enumerate(policy.rules):
        for path, msg in app.adapter(rule.store).validate(rule):
            problems.append((f"rules[{i}].{path}" if path else f"rules[{i}]", msg))
    if problems:
        raise PolicyError(problems, {i: rule.id for i, rule in enumerate(policy.rules)})
    warnings = overlap_warnings(policy)
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    summary = {"ok": True, "config": str(app.config_path), "rules": len(policy.rules),
               "stores": len(policy.stores), "warnings": warnings}
    if app.json:
        output.emit_json(summary)
    else:
        output.line(f"policy OK: {summary['rules']} rules, {summary['stores']} stores "
                    f"({app.config_path})")
    return 0


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
