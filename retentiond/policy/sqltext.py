"""Checks on the only two kinds of SQL text a policy contains: identifiers and ``where``.

Identifiers must be plain names; the adapter quotes them and never pastes them into SQL.
``where`` is trusted configuration but must be one boolean expression: no statement separator,
no comment that could hide one, no top-level statement keyword, balanced quotes and brackets.
"""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_STATEMENT_WORDS = {
    "alter", "analyze", "attach", "begin", "call", "commit", "copy", "create", "delete", "detach",
    "do", "drop", "exec", "execute", "grant", "insert", "load", "lock", "merge", "pragma",
    "reindex", "replace", "revoke", "rollback", "savepoint", "set", "truncate", "update",
    "vacuum", "with",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_identifier(value: str, *, qualified: bool = False) -> str:
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(IDENTIFIER.match(p) for p in parts):
        what = "a plain name or schema.name" if qualified else "a plain name"
        raise ValueError(f"{value!r} is not {what} (letters, digits and _, not starting with a digit)")
    return value


def check_where(text: str) -> str:
    """Return ``text`` if it is a single SQL expression, else raise ValueError saying why."""
    if not text.strip():
        raise ValueError("where is empty")
    depth = 0
    i = 0
    n = len(text)
    top_level: list[str] = []
    while i < n:
        ch = text[i]
        if ch in "'\"`":
            end = _closing_quote(text, i)
            if end < 0:
                raise ValueError(f"where has an unterminated {ch} quote")
            i = end + 1
            continue
        if text.startswith("--", i) or text.startswith("/*", i) or ch == "#":
            raise ValueError("where must not contain SQL comments")
        if ch == ";":
            raise ValueError("where must be one SQL expression; ';' separates statements")
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("where has an unbalanced ')'")
        elif depth == 0 and (m := _WORD.match(text, i)) and (i == 0 or not _is_word(text[i - 1])):
            top_level.append(m.group(0).lower())
            i = m.end()
            continue
        i += 1
    if depth:
        raise ValueError("where has an unbalanced '('")
    if top_level and top_level[0] in _STATEMENT_WORDS | {"select", "from", "values", "table"}:
        raise ValueError(f"where must be an expression, not a {top_level[0].upper()} statement")
    bad = [w for w in top_level if w in _STATEMENT_WORDS]
    if bad:
        raise ValueError(f"where must be one SQL expression; {bad[0].upper()} is a statement")
    return text


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _closing_quote(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                i += 2
                continue
            return i
        if text[i] == "\\" and quote != '"':
            i += 2
            continue
        i += 1
    return -1
