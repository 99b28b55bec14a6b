"""Checks on the only two kinds of SQL text a policy contains: identifiers and ``where``.

Identifiers must be plain names; the adapter quotes them and never pastes them into SQL.
``where`` is trusted configuration but must be one boolean expression: no statement separator,
no comment that could hide one, no top-level statement keyword or clause (``union``,
``order by``, ``limit``, ...), balanced quotes and brackets. Quotes are read the same way by
every supported database: a backslash right before a quote is refused, because MySQL reads it
as an escape and PostgreSQL and SQLite do not, and so would disagree on where a string ends.
"""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_STATEMENT_WORDS = {
    "alter", "analyze", "attach", "begin", "call", "commit", "copy", "create", "delete", "detach",
    "do", "drop", "exec", "execute", "grant", "insert", "load", "lock", "merge", "pragma",
    "reindex", "replace", "revoke", "rollback", "savepoint", "set", "truncate", "update",
    "vacuum", "with",
}
_QUERY_WORDS = {"select", "values", "table", "with"}
_CLAUSE_WORDS = {
    "union", "intersect", "except", "order", "group", "having", "limit", "offset", "fetch",
    "returning", "into", "for", "window", "select",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_QUOTE = re.compile(r"\$[A-Za-z_0-9]*\$")
_HOW = "write one boolean expression such as: deleted_at is null"


def check_identifier(value: str, *, qualified: bool = False) -> str:
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(IDENTIFIER.fullmatch(p) for p in parts):
        what = "a plain name or schema.name" if qualified else "a plain name"
        raise ValueError(f"{value!r} is not {what} (letters, digits and _, not starting with "
                         "a digit, at most 63 characters); retentiond quotes it for you")
    return value


def check_where(text: str) -> str:
    """Return ``text`` if it is a single SQL expression, else raise ValueError saying why."""
    if not text.strip():
        raise ValueError(f"where is empty; remove it or {_HOW}")
    words = _top_level_words(text)
    if words and words[0][0] in _STATEMENT_WORDS | _QUERY_WORDS and not (
            words[0][1] and words[0][0] not in _QUERY_WORDS):
        raise ValueError(f"where must be an expression, not a {words[0][0].upper()} statement; "
                         f"{_HOW}")
    for word, call in words:
        if word in _CLAUSE_WORDS or (word in _STATEMENT_WORDS and not call):
            raise ValueError(f"where must be one SQL expression; {word.upper()} would start "
                             f"another statement or clause; {_HOW}")
    return text


def _top_level_words(text: str) -> list[tuple[str, bool]]:
    """The words outside quotes and brackets, each with whether a ``(`` follows it (a function
    call such as ``replace(...)``). Raises on ``;``, comments and unbalanced text."""
    depth, i, words = 0, 0, []
    while i < len(text):
        _refuse_at(text, i)
        ch = text[i]
        if ch in "'\"`":
            i = _after_quote(text, i)
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            raise ValueError("where has an unbalanced ')'; every ')' needs a '(' before it")
        m = _WORD.match(text, i)
        if m and (i == 0 or not _is_word(text[i - 1])):
            if depth == 0 and (i == 0 or text[i - 1] != "."):
                words.append((m.group(0).lower(), text[m.end():].lstrip().startswith("(")))
            i = m.end()
            continue
        i += 1
    if depth:
        raise ValueError("where has an unbalanced '('; close every '(' with a ')'")
    return words


def _refuse_at(text: str, i: int) -> None:
    if text.startswith(("--", "/*"), i) or text[i] == "#":
        raise ValueError("where must not contain SQL comments (--, /* */ or #); remove the "
                         "comment")
    if text[i] == ";":
        raise ValueError("where must be one SQL expression, and ';' separates statements; "
                         "remove the ';'")
    if (text[i] == "$" and (i == 0 or not _is_word(text[i - 1]))
            and _DOLLAR_QUOTE.match(text, i)):
        raise ValueError("where must not use $$-quoted strings; write 'text' with '' for a "
                         "quote inside")


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def _after_quote(text: str, start: int) -> int:
    """The index after the quoted string or name opening at ``start`` (a doubled quote is an
    escaped quote)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == quote:
            if text[i - 1] == "\\":
                raise ValueError(f"where has a backslash before a {quote} quote, which MySQL "
                                 f"and PostgreSQL read differently; write {quote}{quote} for "
                                 f"a {quote} inside a string")
            if text.startswith(quote, i + 1):
                i += 2
                continue
            return i + 1
        i += 1
    raise ValueError(f"where has an unterminated {quote} quote; close it, and write "
                     f"{quote}{quote} for a {quote} inside a string")
