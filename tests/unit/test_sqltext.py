"""The only SQL text in a policy: plain identifiers, and ``where`` as one boolean expression."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retentiond.policy.sqltext import check_identifier, check_where

HOW = "write one boolean expression such as: deleted_at is null"


@pytest.mark.parametrize("text", [
    "deleted_at is null",
    "status in ('a','b') and (x > 1 or y::date < now())",
    "note = 'a;b'",
    "note = 'a -- b'",
    "note like '%/*%*/%'",
    "note = 'a # b'",
    "note = 'it''s'",
    "a = ''",
    "a = 'b'''",
    'name = "x;y"',
    '"weird""col" = 1',
    "col = `x;y`",
    "exists (select 1 from orders o where o.user_id = users.id)",
    "not exists (select 1)",
    "a in (select id from t)",
    "extract(year from closed_at) < 2020",
    "x is not distinct from y",
    "x is distinct from y",
    "substring(a for 2) = 'x'",
    "case when a then 1 else 0 end = 1",
    "replace(name, 'a', 'b') = 'x'",  # a function, not a REPLACE statement
    "lower(email) like '%@example.com'",
    "status = 'closed' and closed_at < now() - interval '1 day'",
    "updated > 1",
    "set_flag = 1",
    "selected = true",
    "t.order = 1",
    "a$b = 1",
    "a - -1 > 0",
    "a > 1 and b < 2 or c between 1 and 5",
    "((a = 1))",
])
def test_accepts_expressions(text: str) -> None:
    assert check_where(text) == text


SEMICOLON = "where must be one SQL expression, and ';' separates statements; remove the ';'"
COMMENT = "where must not contain SQL comments (--, /* */ or #); remove the comment"


@pytest.mark.parametrize(("text", "message"), [
    ("a = 1; drop table users", SEMICOLON),
    ("a = 1;", SEMICOLON),
    ("deleted_at is null\n;", SEMICOLON),
    ("'a' = 'a'; select 1", SEMICOLON),
    ("a = 1 -- and b = 2", COMMENT),
    ("a = 1 + -- \n 2", COMMENT),
    ("a = 1 /* c */", COMMENT),
    ("a = 1 # c", COMMENT),
    ("(a = 1", "where has an unbalanced '('; close every '(' with a ')'"),
    ("a = 1)", "where has an unbalanced ')'; every ')' needs a '(' before it"),
    ("1=1) or (1=1", "where has an unbalanced ')'; every ')' needs a '(' before it"),
    ("a = 'x", "where has an unterminated ' quote; close it, and write '' for a ' inside a "
               "string"),
    ('a = "x', "where has an unterminated \" quote; close it, and write \"\" for a \" inside a "
               "string"),
    ("a = 'it''s", "where has an unterminated ' quote; close it, and write '' for a ' inside "
                   "a string"),
    ("select 1", f"where must be an expression, not a SELECT statement; {HOW}"),
    ("SELECT * FROM users", f"where must be an expression, not a SELECT statement; {HOW}"),
    ("select (1)", f"where must be an expression, not a SELECT statement; {HOW}"),
    ("drop table users", f"where must be an expression, not a DROP statement; {HOW}"),
    ("Delete from users", f"where must be an expression, not a DELETE statement; {HOW}"),
    ("update users set a = 1", f"where must be an expression, not a UPDATE statement; {HOW}"),
    ("insert into t values (1)", f"where must be an expression, not a INSERT statement; {HOW}"),
    ("with x as (select 1) select 1", f"where must be an expression, not a WITH statement; "
                                      f"{HOW}"),
    ("values (1)", f"where must be an expression, not a VALUES statement; {HOW}"),
    ("pragma foo", f"where must be an expression, not a PRAGMA statement; {HOW}"),
    ("x = 1 union select password from users",
     f"where must be one SQL expression; UNION would start another statement or clause; {HOW}"),
    ("a = 1 order by 1",
     f"where must be one SQL expression; ORDER would start another statement or clause; {HOW}"),
    ("a = 1 limit 1",
     f"where must be one SQL expression; LIMIT would start another statement or clause; {HOW}"),
    ("a = 1 for update",
     f"where must be one SQL expression; FOR would start another statement or clause; {HOW}"),
    ("a = 1 returning *", f"where must be one SQL expression; RETURNING would start another "
                          f"statement or clause; {HOW}"),
    ("a = 1 into outfile '/tmp/x'",
     f"where must be one SQL expression; INTO would start another statement or clause; {HOW}"),
    ("a = 1 and update = 2",
     f"where must be one SQL expression; UPDATE would start another statement or clause; "
     f"{HOW}"),
    ("a = $$x$$", "where must not use $$-quoted strings; write 'text' with '' for a quote "
                  "inside"),
    ("a = $q$;$q$", "where must not use $$-quoted strings; write 'text' with '' for a quote "
                    "inside"),
    # MySQL reads \' as an escaped quote, PostgreSQL and SQLite as the end of the string: the
    # "-- '" below is a comment for one of them and part of a string for the other
    ("email like 'x\\' or 1=1 -- '",
     "where has a backslash before a ' quote, which MySQL and PostgreSQL read differently; "
     "write '' for a ' inside a string"),
    ("a = E'x\\'y'", "where has a backslash before a ' quote, which MySQL and PostgreSQL read "
                     "differently; write '' for a ' inside a string"),
    ("", f"where is empty; remove it or {HOW}"),
    ("  \n ", f"where is empty; remove it or {HOW}"),
])
def test_rejects_statements_and_tricks(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_where(text)
    assert str(exc.value) == message


@given(st.text(alphabet="abc =';-/*#()$\\\"`x", max_size=30))
def test_never_accepts_a_semicolon_or_comment_outside_standard_quotes(text: str) -> None:
    """Whatever is accepted has no ';', '--', '/*' or '#' outside quotes (read with SQL's
    doubled-quote escaping), and its brackets balance."""
    try:
        check_where(text)
    except ValueError:
        return
    outside, depth, quote = [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote  # a doubled quote closes and reopens
            continue
        if ch in "'\"`":
            quote = ch
            outside.append(" ")
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        assert depth >= 0
        outside.append(ch)
    rest = "".join(outside)
    assert not quote
    assert depth == 0
    assert ";" not in rest and "--" not in rest and "/*" not in rest and "#" not in rest


@pytest.mark.parametrize("name", ["users", "_x", "A1_b", "a" * 63])
def test_identifiers_accepted(name: str) -> None:
    assert check_identifier(name) == name


@pytest.mark.parametrize("name", ["public.users", "s.t"])
def test_qualified_identifiers(name: str) -> None:
    assert check_identifier(name, qualified=True) == name
    with pytest.raises(ValueError, match="is not a plain name "):
        check_identifier(name)


@pytest.mark.parametrize("name", [
    "", "1users", "users; drop table users", "users\n", "us ers", "a-b", '"users"', "a" * 64,
    "user$", "naïve", "a.b.c", ".a", "a.",
])
def test_identifiers_rejected(name: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_identifier(name, qualified=True)
    assert str(exc.value) == (
        f"{name!r} is not a plain name or schema.name (letters, digits and _, not starting "
        "with a digit, at most 63 characters); retentiond quotes it for you")
