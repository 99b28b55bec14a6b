"""Read a policy file: YAML (safe_load), ``${ENV}`` interpolation, validation, cross checks.

Every problem is collected and raised at once as a :class:`PolicyError` whose lines carry the
path of the offending key (``rules[2].keep_for: ...``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from retentiond.errors import PolicyError
from retentiond.policy.checks import cross_check
from retentiond.policy.model import Policy

_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise PolicyError([(str(path), f"cannot read policy file: {exc.strerror}")]) from None
    return parse_policy(raw_bytes, path)


def parse_policy(raw_bytes: bytes, path: Path | None = None) -> Policy:
    where = str(path) if path else "<policy>"
    try:
        data = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError([(loc, f"YAML syntax error: {problem}")]) from None
    if not isinstance(data, dict):
        raise PolicyError([(where, "the policy file must be a YAML mapping")])
    problems: list[tuple[str, str]] = []
    data = _interpolate(data, "", problems)
    _anchor_sqlite_paths(data, path.parent if path else Path.cwd())
    if problems:
        raise PolicyError(problems)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc))
        problems.extend(cross_check(None, data))
        raise PolicyError(problems) from None
    problems.extend(cross_check(policy, data))
    if problems:
        raise PolicyError(problems)
    return policy.with_origin(path, raw_bytes)


def _interpolate(value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set"))
            return ""
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _anchor_sqlite_paths(data: dict[str, Any], base: Path) -> None:
    """Relative SQLite paths, file roots and key files are relative to the policy file, not to
    the working directory."""
    data["state"] = _anchor(data.get("state"), base)
    stores = data.get("stores")
    if isinstance(stores, dict):
        for store in stores.values():
            if isinstance(store, dict) and "url" in store:
                store["url"] = _anchor(store["url"], base)
            if isinstance(store, dict) and isinstance(store.get("root"), str):
                store["root"] = str((base / store["root"]).resolve())
    for key in ("secret_key", "signing_key"):
        ref = data.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("file"), str):
            ref["file"] = str(base / ref["file"])


def _anchor(url: Any, base: Path) -> Any:
    if not isinstance(url, str):
        return url
    m = re.match(r"^(sqlite(?:\+\w+)?:///)(?!/)([^?]+)(\?.*)?$", url)
    if not m or m.group(2) == ":memory:":
        return url
    return f"{m.group(1)}{(base / m.group(2)).resolve()}{m.group(3) or ''}"


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown strategy {err['input'].get('strategy')!r}" if isinstance(
                err.get("input"), dict) else msg
        msg = msg.removeprefix("Value error, ")
        out.append((format_loc(_drop_union_noise(loc)), msg))
    return out


def _drop_union_noise(loc: list[Any]) -> list[Any]:
    noise = {"str", "SecretRef", "function-after[check_identifier(), str]", "none"}
    return [p for p in loc if not (isinstance(p, str) and (p in noise or p.startswith(
        ("function-", "tagged-union", "nullable"))))]


def format_loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out
