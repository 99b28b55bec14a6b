"""``config validate`` and ``config schema``."""

from __future__ import annotations

import json

from retentiond import output
from retentiond.app import App
from retentiond.errors import PolicyError
from retentiond.policy.model import Policy


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
        raise PolicyError(problems)
    summary = {"ok": True, "config": str(app.config_path), "rules": len(policy.rules),
               "stores": len(policy.stores), "warnings": []}
    if app.json:
        output.emit_json(summary)
    else:
        output.line(f"policy OK: {summary['rules']} rules, {summary['stores']} stores "
                    f"({app.config_path})")
    return 0
