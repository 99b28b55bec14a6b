"""The pure parts of :mod:`retentiond.anonymize`: the strategies computed in Python (mask, hmac,
fake) and ``check``, the refusals ``config validate`` reports for a strategy on a column."""

from __future__ import annotations

import hashlib
import hmac
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from faker import Faker
from hypothesis import given
from hypothesis import strategies as st

from retentiond import anonymize as anon
from retentiond.policy.model import (
    ConstantStrategy,
    DefaultStrategy,
    FakeStrategy,
    HmacStrategy,
    MaskStrategy,
    NullStrategy,
    RoundStrategy,
    TruncateDateStrategy,
)

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"


def hex_hmac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def mask(value: Any, **options: Any) -> Any:
    return anon.python_function(MaskStrategy(strategy="mask", **options), KEY)(value)


def pseudo(value: Any, key: bytes = KEY, **options: Any) -> Any:
    return anon.python_function(HmacStrategy(strategy="hmac", **options), key)(value)


def column(name: str, type_: Any, *, nullable: bool = True, default: str | None = None,
           primary_key: bool = False, unique: bool = False) -> anon.ColumnInfo:
    return anon.ColumnInfo(name, type_, nullable, default, primary_key, unique)


# -- which strategies are SQL ----------------------------------------------------------------
def test_sql_strategies_are_exactly_the_row_expressible_ones() -> None:
    sql = [NullStrategy(strategy="null"), DefaultStrategy(strategy="default"),
           ConstantStrategy(strategy="constant", value="x"),
           TruncateDateStrategy(strategy="truncate_date", unit="year"),
           RoundStrategy(strategy="round", step=10)]
    python = [MaskStrategy(strategy="mask"), HmacStrategy(strategy="hmac"),
              FakeStrategy(strategy="fake", provider="name")]
    assert [anon.is_sql(s) for s in sql] == [True] * 5
    assert [anon.is_sql(s) for s in python] == [False] * 3
    with pytest.raises(TypeError, match="strategy mask is computed in Python"):
        anon.sql_expression(python[0], sa.Column("x", sa.String(10)), "sqlite", None)


# -- mask --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "options", "expected"), [
    ("+49 170 1234567", {"keep_last": 2}, "*************67"),
    ("+49 170 1234567", {"keep_first": 3}, "+49************"),
    ("Maria Schmidt", {"keep_first": 1, "keep_last": 1, "char": "#"}, "M###########t"),
    ("abcde", {"keep_first": 2, "keep_last": 2}, "ab*de"),
    ("abcd", {"keep_first": 2, "keep_last": 2}, "****"),  # keeping 4 of 4 would keep all
    ("abc", {"keep_first": 2, "keep_last": 2}, "***"),
    ("abc", {"keep_first": 3}, "***"),
    ("abcdef", {}, "******"),
    ("", {"keep_last": 2}, ""),
    (4711, {"keep_last": 1}, "***1"),
    (date(1990, 5, 17), {"keep_first": 4}, "1990******"),
    ("maria.schmidt@mail.example.org", {"format": "email", "keep_first": 1},
     "m************@mail.example.org"),
    ("maria.schmidt@mail.example.org", {"format": "email", "keep_first": 1, "keep_last": 1,
                                        "char": "x"}, "mxxxxxxxxxxxt@mail.example.org"),
    ("a@b.example", {"format": "email", "keep_first": 1}, "*@b.example"),
    ('"odd@local"@example.org', {"format": "email"}, "***********@example.org"),
    ("not-an-address", {"format": "email", "keep_last": 3}, "***********ess"),
])
def test_mask_exact(value: Any, options: dict[str, Any], expected: str) -> None:
    assert mask(value, **options) == expected


def test_mask_keeps_null() -> None:
    assert mask(None, keep_last=2) is None


@given(text=st.text(max_size=40), first=st.integers(0, 12), last=st.integers(0, 12),
       char=st.characters(blacklist_categories=("Cs",)))
def test_mask_keeps_length_and_at_most_first_plus_last(text: str, first: int, last: int,
                                                       char: str) -> None:
    out = mask(text, keep_first=first, keep_last=last, char=char)
    assert len(out) == len(text)
    kept = [i for i, c in enumerate(out) if c != char]
    assert len(kept) <= first + last
    # A kept character is the original one, at its place, within the kept prefix or suffix.
    assert all(out[i] == text[i] and (i < first or i >= len(text) - last) for i in kept)
    if first + last >= len(text):
        assert out == char * len(text)
    else:
        assert out == text[:first] + char * (len(text) - first - last) + text[len(text) - last:]


@given(local=st.text(st.characters(blacklist_characters="@", blacklist_categories=("Cs",)),
                     min_size=1, max_size=20),
       domain=st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,6}", fullmatch=True),
       first=st.integers(0, 5), last=st.integers(0, 5))
def test_mask_email_keeps_the_domain_and_masks_the_local_part(local: str, domain: str,
                                                               first: int, last: int) -> None:
    out = mask(f"{local}@{domain}", format="email", keep_first=first, keep_last=last)
    assert out == f"{mask(local, keep_first=first, keep_last=last)}@{domain}"
    assert len(out) == len(local) + 1 + len(domain)


# -- hmac --------------------------------------------------------------------------------------
def test_hmac_rfc4231_vector() -> None:
    """RFC 4231 test case 2: the pseudonym is plain HMAC-SHA256 in hex."""
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert pseudo("what do ya want for nothing?", key=b"Jefe") == expected
    assert anon.pseudonym(b"Jefe", "what do ya want for nothing?") == expected


@pytest.mark.parametrize(("value", "options", "expected"), [
    ("maria@mail.example.org", {}, lambda h: h),
    ("maria@mail.example.org", {"length": 12}, lambda h: h[:12]),
    ("maria@mail.example.org", {"length": 64}, lambda h: h),
    ("maria@mail.example.org", {"format": "email"}, lambda h: f"{h}@anonymized.invalid"),
    ("maria@mail.example.org", {"format": "email", "length": 16},
     lambda h: f"{h[:16]}@anonymized.invalid"),
    ("maria@mail.example.org", {"format": "email", "length": 10, "domain": "example.net"},
     lambda h: f"{h[:10]}@example.net"),
    ("Jürgen Groß", {"length": 20}, lambda h: h[:20]),
])
def test_hmac_exact(value: str, options: dict[str, Any], expected: Any) -> None:
    assert pseudo(value, **options) == expected(hex_hmac(KEY, value))


def test_hmac_of_a_number_is_the_hmac_of_its_text() -> None:
    assert pseudo(4711) == hex_hmac(KEY, "4711") == pseudo("4711")
    assert pseudo(None) is None


def test_hmac_is_stable_for_a_key_and_changes_with_the_key() -> None:
    first = anon.python_function(HmacStrategy(strategy="hmac"), KEY)
    again = anon.python_function(HmacStrategy(strategy="hmac"), KEY)
    assert first("maria@mail.example.org") == again("maria@mail.example.org")
    assert first("maria@mail.example.org") != first("jonas@mail.example.org")
    other = pseudo("maria@mail.example.org", key=OTHER_KEY)
    assert other == hex_hmac(OTHER_KEY, "maria@mail.example.org")
    assert other != first("maria@mail.example.org")


@given(text=st.text(max_size=80), length=st.one_of(st.none(), st.integers(8, 64)),
       email=st.booleans())
def test_hmac_never_returns_its_input(text: str, length: int | None, email: bool) -> None:
    options: dict[str, Any] = {"length": length}
    if email:
        options["format"] = "email"
    out = pseudo(text, **options)
    assert out != text
    digest = hex_hmac(KEY, text)[: length or 64]
    assert out == (f"{digest}@anonymized.invalid" if email else digest)


# -- fake --------------------------------------------------------------------------------------
def test_fake_deterministic_is_seeded_from_the_hmac() -> None:
    """Same input, same output, whichever process or order; seeded by the value's HMAC."""
    s = FakeStrategy(strategy="fake", provider="name", deterministic=True)
    one = anon.python_function(s, KEY)
    two = anon.python_function(s, KEY)
    names = ["Maria Schmidt", "Jonas Okafor", "Aylin Yilmaz"]
    forward = [one(n) for n in names]
    assert [two(n) for n in reversed(names)] == forward[::-1]
    expected = []
    for n in names:
        faker = Faker()
        faker.seed_instance(int(hex_hmac(KEY, n)[:16], 16))
        expected.append(faker.name())
    assert forward == expected
    assert len(set(forward)) == 3
    assert not set(forward) & set(names)
    assert one(None) is None


def test_fake_deterministic_depends_on_the_key_and_locale() -> None:
    s = FakeStrategy(strategy="fake", provider="name", deterministic=True)
    german = FakeStrategy(strategy="fake", provider="name", locale="de_DE", deterministic=True)
    value = "Maria Schmidt"
    faker = Faker("de_DE")
    faker.seed_instance(int(hex_hmac(KEY, value)[:16], 16))
    assert anon.python_function(german, KEY)(value) == faker.name()
    assert anon.python_function(s, KEY)(value) != anon.python_function(s, OTHER_KEY)(value)


def test_fake_email_provider_gives_an_address() -> None:
    s = FakeStrategy(strategy="fake", provider="email", deterministic=True)
    out = anon.python_function(s, KEY)("maria@mail.example.org")
    assert out == anon.python_function(s, KEY)("maria@mail.example.org")
    assert "@" in out
    assert out != "maria@mail.example.org"


# -- check: the refusals ------------------------------------------------------------------------
def null() -> NullStrategy:
    return NullStrategy(strategy="null")


def constant(value: Any) -> ConstantStrategy:
    return ConstantStrategy(strategy="constant", value=value)


def hmac_s(**options: Any) -> HmacStrategy:
    return HmacStrategy(strategy="hmac", **options)


COLLIDE = 'would make values collide; use "hmac" without length'


@pytest.mark.parametrize(("strategy", "col", "expected"), [
    (null(), column("email", sa.String(120), nullable=False),
     ['strategy "null" on NOT NULL column users.email; use "constant" or "hmac"']),
    (null(), column("email", sa.String(120)), []),
    (DefaultStrategy(strategy="default"), column("status", sa.String(16)),
     ['strategy "default" on users.status, which has no server default; use "constant"']),
    (DefaultStrategy(strategy="default"), column("status", sa.String(16), default="'gone'"),
     []),
    (MaskStrategy(strategy="mask", keep_last=2),
     column("code", sa.String(20), nullable=False, primary_key=True),
     [f'strategy "mask" on primary-key column users.code {COLLIDE}']),
    (constant("x"), column("email", sa.String(120), unique=True),
     [f'strategy "constant" on unique column users.email {COLLIDE}']),
    (hmac_s(length=12), column("handle", sa.String(64), unique=True),
     [f'strategy "hmac" on unique column users.handle {COLLIDE}']),
    (hmac_s(), column("handle", sa.String(64), unique=True), []),
    (hmac_s(format="email"), column("email", sa.String(120), primary_key=True), []),
    (hmac_s(), column("handle", sa.String(32)),
     ["hmac output is 64 characters; users.handle holds 32 (set length or widen the column)"]),
    (hmac_s(length=32), column("handle", sa.String(32)), []),
    (hmac_s(format="email"), column("email", sa.String(64)),
     ["hmac output is 83 characters; users.email holds 64 (set length or widen the column)"]),
    (hmac_s(format="email", length=16, domain="x.invalid"), column("email", sa.String(25)),
     ["hmac output is 26 characters; users.email holds 25 (set length or widen the column)"]),
    (hmac_s(format="email", length=16, domain="x.invalid"), column("email", sa.String(26)),
     []),
    (hmac_s(), column("email", sa.Text()), []),
    (hmac_s(), column("age", sa.Integer()),
     ['strategy "hmac" needs a text column; users.age is INTEGER']),
    (MaskStrategy(strategy="mask"), column("age", sa.Integer()),
     ['strategy "mask" needs a text column; users.age is INTEGER']),
    (constant("n/a"), column("age", sa.Integer()),
     ["constant 'n/a' cannot be stored in users.age (INTEGER)"]),
    (constant(1.5), column("age", sa.Integer()),
     ["constant 1.5 cannot be stored in users.age (INTEGER)"]),
    (constant(True), column("age", sa.Integer()),
     ["constant True cannot be stored in users.age (INTEGER)"]),
    (constant("12"), column("age", sa.Integer()), []),
    (constant(0), column("age", sa.Integer()), []),
    (constant("redacted"), column("code", sa.String(4)),
     ["constant 'redacted' is 8 characters; users.code holds 4"]),
    (constant("redacted"), column("code", sa.String(8)), []),
    (constant("abc"), column("score", sa.Numeric(10, 2)),
     ["constant 'abc' cannot be stored in users.score (NUMERIC(10, 2))"]),
    (constant(2.5), column("score", sa.Numeric(10, 2)), []),
    (constant("yesterday"), column("born", sa.Date()),
     ["constant 'yesterday' cannot be stored in users.born (DATE)"]),
    (constant("2000-01-01"), column("born", sa.Date()), []),
    (constant("yes"), column("active", sa.Boolean()),
     ["constant 'yes' cannot be stored in users.active (BOOLEAN)"]),
    (constant(False), column("active", sa.Boolean()), []),
    (TruncateDateStrategy(strategy="truncate_date", unit="month"),
     column("born", sa.String(40)),
     ['strategy "truncate_date" needs a date or timestamp column; users.born is VARCHAR(40)']),
    (TruncateDateStrategy(strategy="truncate_date", unit="day"), column("seen", sa.DateTime()),
     []),
    (RoundStrategy(strategy="round", step=10), column("income", sa.String(40)),
     ['strategy "round" needs a numeric column; users.income is VARCHAR(40)']),
    (RoundStrategy(strategy="round", step=2.5), column("age", sa.Integer()),
     ["round step 2.5 on integer column users.age must be a whole number"]),
    (RoundStrategy(strategy="round", step=0.5), column("score", sa.Numeric(10, 2)), []),
    (FakeStrategy(strategy="fake", provider="no_such_provider"), column("name", sa.Text()),
     ["unknown Faker provider 'no_such_provider'"]),
    (FakeStrategy(strategy="fake", provider="name", locale="xx_XX"), column("name", sa.Text()),
     ["unknown Faker locale 'xx_XX'"]),
    (FakeStrategy(strategy="fake", provider="name"), column("age", sa.Integer()),
     ['strategy "fake" needs a text column; users.age is INTEGER']),
])
def test_check_messages(strategy: Any, col: anon.ColumnInfo, expected: list[str]) -> None:
    assert anon.check(strategy, col, "users") == expected


def test_check_lists_every_problem_of_one_column() -> None:
    col = column("email", sa.String(4), nullable=False, unique=True)
    assert anon.check(constant("redacted"), col, "users") == [
        f'strategy "constant" on unique column users.email {COLLIDE}',
        "constant 'redacted' is 8 characters; users.email holds 4"]
    assert anon.check(hmac_s(length=8), column("id", sa.Integer(), primary_key=True),
                      "users") == [
        f'strategy "hmac" on primary-key column users.id {COLLIDE}',
        'strategy "hmac" needs a text column; users.id is INTEGER']
