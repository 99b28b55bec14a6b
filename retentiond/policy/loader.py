"""Read a policy file: YAML (safe_load), ``${ENV}`` interpolation, validation, cross checks.

Every problem is collected and raised at once as a :class:`PolicyError` whose lines carry the
path of the offending key and, inside a rule, its id (``rules[2] (minors).keep_for: ...``).
"""

from __future__ import annotations

import difflib
import os
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretBytes, ValidationError

from retentiond.errors import PolicyError
from retentiond.policy.checks import cross_check
from retentiond.policy.keys import read_regular_file
from retentiond.policy.model import RULE_ID_PATTERN, STRATEGY_NAMES, Policy, Rule, known_keys

_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Problem = tuple[str, str]


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        raw_bytes = read_regular_file(path, MAX_POLICY_FILE)
    except OSError as exc:
        raise PolicyError([(str(path), f"cannot read policy file: {exc.strerror}; pass "
                            "--config PATH or set $RETENTIOND_CONFIG")]) from None
    except ValueError as exc:
        raise PolicyError([(str(path), f"cannot read policy file: it {exc}")]) from None
    return parse_policy(raw_bytes, path)


def parse_policy(raw_bytes: bytes, path: Path | None = None) -> Policy:
    data = _read_yaml(raw_bytes, str(path) if path else "<policy>")
    unset: list[Problem] = []
    data = _interpolate(data, "", unset)
    _anchor_paths(data, path.parent if path else Path.cwd())
    policy, problems = None, []
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = pydantic_problems(exc)
    problems += cross_check(policy, data)
    problems = unset + [p for p in problems if not _under_any(p[0], unset)]
    if problems or policy is None:
        raise PolicyError(problems, rule_ids(data))
    return policy.with_origin(path, raw_bytes)


def rule_ids(data: dict[str, Any]) -> dict[int, str]:
    """Each rule's id as written (after ``${ENV}``), for naming it in messages; a rule whose
    id is missing or not a valid id is left out, and named by its position alone."""
    rules = data.get("rules")
    return {i: rule["id"] for i, rule in enumerate(rules if isinstance(rules, list) else ())
            if isinstance(rule, dict) and isinstance(rule.get("id"), str)
            and re.fullmatch(RULE_ID_PATTERN, rule["id"])}


# -- YAML -------------------------------------------------------------------------------------
MAX_POLICY_FILE = 1024 * 1024
MAX_DEPTH = 64  # a real policy nests about 7 levels deep
MAX_NODES = 250_000  # values after every alias is expanded: a billion laughs stays a few
MAX_CHARS = 16 * 1024 * 1024  # characters of text after every alias is expanded
_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with limits: the node graph is composed (nesting at most MAX_DEPTH deep) and
    measured before anything is constructed, so an alias bomb, a recursive anchor or a complex
    key (``? [a, b]``) is a policy error with its line and column. A key given twice in one
    mapping is refused (YAML would keep the last one silently, so ``dispose_after`` written
    twice would quietly change the policy); merge keys (``<<: *base``) work as in YAML 1.1."""

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _error(f"nested more than {MAX_DEPTH} levels deep",
                             self.peek_event().start_mark)  # type: ignore[no-untyped-call]  # stub unannotated
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._measure(node)
        return self.construct_document(node)

    def _measure(self, root: yaml.Node) -> None:
        """Walk the graph once (iteratively, each shared node once): refuse cycles, complex
        and duplicate keys, and graphs that expand past MAX_NODES, MAX_CHARS or MAX_DEPTH."""
        sizes: dict[int, tuple[int, int, int]] = {}  # id -> (nodes, chars, depth) expanded
        on_path: set[int] = set()
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, finished = stack.pop()
            if finished:
                on_path.discard(id(node))
                sizes[id(node)] = _expanded(node, sizes)
                continue
            if id(node) in sizes:
                continue
            if id(node) in on_path:
                raise _error("recursive alias: an anchor is used inside itself",
                             node.start_mark)
            if isinstance(node, yaml.MappingNode):
                self._check_keys(node)
            on_path.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _error("complex mapping key ('? [...]' or '? {...}'); a key is a plain "
                             "name", key_node.start_mark)
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node)
            if isinstance(key, str | int) and key in seen:
                raise _error(f"duplicate key {key!r} (first on line {seen[key] + 1}); remove "
                             "one of them", key_node.start_mark)
            seen[key] = key_node.start_mark.line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded(node: yaml.Node, sizes: dict[int, tuple[int, int, int]]) -> tuple[int, int, int]:
    kids = [sizes[id(child)] for child in _children(node)]
    nodes = 1 + sum(k[0] for k in kids)
    chars = (len(node.value) if isinstance(node, yaml.ScalarNode) else 0) + sum(k[1] for k in kids)
    depth = 1 + max((k[2] for k in kids), default=0)
    if nodes > MAX_NODES or chars > MAX_CHARS:
        raise _error(f"aliases expand this to more than {MAX_NODES:,} values or "
                     f"{MAX_CHARS // 2**20} MiB of text; write it out with fewer aliases",
                     node.start_mark)
    if depth > MAX_DEPTH:
        raise _error(f"aliases nest this more than {MAX_DEPTH} levels deep", node.start_mark)
    return nodes, chars, depth


def _error(problem: str, mark: Any) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, problem, mark)


def _read_yaml(raw_bytes: bytes, where: str) -> dict[str, Any]:
    try:
        data = yaml.load(raw_bytes, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else (
            "YAML syntax error")
        raise PolicyError([(loc, f"{kind}: {problem}")]) from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise PolicyError([(where, f"the policy file must be a YAML mapping (version: 1, "
                            f"stores: ..., rules: ...), got {got}")])
    return data


# -- ${ENV} interpolation ---------------------------------------------------------------------
def _interpolate(value: Any, path: str, unset: list[Problem]) -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string value; ``$$`` is a ``$``.
    An unset variable without a default is a problem; its text is left in place so the rest of
    the file is still validated."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: _expand(m, path, unset), value)
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(path, k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", unset) for i, v in enumerate(value)]
    return value


def _expand(m: re.Match[str], path: str, unset: list[Problem]) -> str:
    if m.group(0) == "$$":
        return "$"
    name, default = m.group(1), m.group(2)
    if default is not None and "${" in default:
        unset.append((path, f"${{{name}:-...}}: a default cannot contain another ${{...}}; "
                      "give a plain default"))
        return m.group(0)
    if name in os.environ:
        return os.environ[name]
    if default is not None:
        return default
    unset.append((path, f"environment variable {name} is not set; set it, or give a default "
                  f"with ${{{name}:-VALUE}}"))
    return m.group(0)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _under_any(path: str, unset: list[Problem]) -> bool:
    """A problem at (or inside) a value whose variable is unset is a consequence, not news."""
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p, _ in unset)


# -- relative paths ---------------------------------------------------------------------------
def _anchor_paths(data: dict[str, Any], base: Path) -> None:
    """Relative SQLite paths, file roots and key files are relative to the policy file, not to
    the working directory."""
    if "state" in data:
        data["state"] = _anchor(data["state"], base)
    stores = data.get("stores")
    for store in stores.values() if isinstance(stores, dict) else ():
        if isinstance(store, dict) and "url" in store:
            store["url"] = _anchor(store["url"], base)
        if isinstance(store, dict) and isinstance(store.get("root"), str):
            # Not resolved: a root that is a symlink is refused as written (files adapter).
            store["root"] = os.path.normpath(base / store["root"])
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


# -- pydantic errors in the words of the policy file ------------------------------------------
_TYPE_NAMES = {str: "a string", int: "a number", float: "a number", bool: "true or false",
               dict: "a mapping", list: "a list", type(None): "nothing (null)"}
_EXPECTED = {"string_type": "a string", "int_type": "a whole number",
             "int_parsing": "a whole number", "int_from_float": "a whole number",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
             "bool_parsing": "true or false", "dict_type": "a mapping", "model_type": "a mapping",
             "model_attributes_type": "a mapping", "list_type": "a list",
             "tuple_type": "a list", "literal_error": None}


def pydantic_problems(exc: ValidationError) -> list[Problem]:
    """One line per offending key, without pydantic's internal names (union members,
    validator names) and with the fix in words."""
    by_loc: dict[str, list[Any]] = defaultdict(list)
    for err in exc.errors(include_url=False):
        by_loc[format_loc(_drop_union_noise(list(err["loc"])))].append(err)
    out: list[Problem] = []
    for loc, errs in by_loc.items():
        meaningful = [e for e in errs if e["type"] not in _EXPECTED] or errs
        if len(meaningful) > 1 and all(e["type"] in _EXPECTED for e in meaningful):
            out.append((loc, _wrong_type(meaningful)))
            continue
        out += [(loc, _message(e)) for e in meaningful]
    return out


def _wrong_type(errs: list[Any]) -> str:
    wanted = list(dict.fromkeys(_EXPECTED[e["type"]] or _literal(e) for e in errs))
    return f"expected {' or '.join(wanted)}, got {_describe(errs[0]['input'])}"


_STRATEGIES = ", ".join(STRATEGY_NAMES)
_MESSAGES: dict[str, Callable[[Any], str]] = {
    "extra_forbidden": lambda e: "unknown key" + _did_you_mean(e["loc"][-1]),
    "missing": lambda e: "required key is missing",
    "literal_error": lambda e: f"{e['input']!r} is not allowed; use {_literal(e)}",
    "union_tag_invalid": lambda e: f"unknown strategy {e['ctx']['tag']!r}; use one of "
                                   f"{_STRATEGIES}",
    "union_tag_not_found": lambda e: f"strategy is missing; use one of {_STRATEGIES}",
}


def _message(err: Any) -> str:
    kind = err["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind](err)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(err['input'])}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if msg.startswith("Input should be"):
        return f"{msg.replace('Input should be', 'must be', 1)}, got {_describe(err['input'])}"
    return msg


def _literal(err: Any) -> str:
    return str((err.get("ctx") or {}).get("expected", "")).replace("'", '"') or "a listed value"


def _describe(value: Any) -> str:
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, str | int | float | bool):
        return f"{kind} {value!r}" if not isinstance(value, bool) else repr(value).lower()
    return kind


def _did_you_mean(key: Any) -> str:
    others = [k for k in known_keys() if k != key]  # a known key in the wrong place
    close = difflib.get_close_matches(str(key), others, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _drop_union_noise(loc: list[Any]) -> list[Any]:
    """Drop the names pydantic gives union members and validators, the ``[key]`` marker of a
    bad mapping key, and the strategy tag of ``anonymize.columns.<col>.<tag>``."""
    noise = {"str", "SecretRef", "none", "[key]"}
    out = [p for p in loc if not (isinstance(p, str) and (p in noise or p.startswith(
        ("function-", "tagged-union", "nullable", "json-or-python"))))]
    for i in range(len(out) - 1, 2, -1):
        if out[i - 2] == "columns" and out[i - 3] == "anonymize":
            del out[i]
    return out


def format_loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


# -- what `config validate` can still check live ----------------------------------------------
def checkable_rules(path: Path, problems: list[Problem]
                    ) -> tuple[Policy, list[tuple[int, Rule]]] | None:
    """After a PolicyError: the stores and rules of the file that have no problem of their own
    (so ``config validate`` runs their live checks in the same pass), as a policy holding only
    those. None when the file cannot even be read as YAML."""
    from retentiond.errors import PolicyError
    from retentiond.policy.checks import _valid_rules, _valid_stores

    try:
        data = _read_yaml(read_regular_file(path, MAX_POLICY_FILE), str(path))
    except (OSError, ValueError, PolicyError):
        return None
    data = _interpolate(data, "", [])
    _anchor_paths(data, path.parent)

    def clean(prefix: str) -> bool:
        return not any(p == prefix or p.startswith((f"{prefix}.", f"{prefix}["))
                       for p, _ in problems)

    stores = {n: s for n, s in _valid_stores(data).items() if clean(f"stores.{n}")}
    rules = [(i, r) for i, r in _valid_rules(data)
             if clean(f"rules[{i}]") and r.store in stores]
    tz = data.get("timezone")
    parts: dict[str, Any] = {"stores": stores, "rules": tuple(r for _, r in rules),
                             "timezone": tz if isinstance(tz, str) and clean("timezone")
                             else "UTC",
                             # The file's key may be what is wrong; checks only need one.
                             "secret_key": SecretBytes(bytes(32))}
    policy = Policy.model_construct(**parts)
    return policy, rules
