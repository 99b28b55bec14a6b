"""Anonymisation strategies (SPEC 4).

Strategies whose result SQL can compute from the row (``null``, ``default``, ``constant``,
``truncate_date``, ``round``) compile to column expressions, so a batch is one set-based
``UPDATE``. The others (``mask``, ``hmac``, ``fake``) are computed in Python from the values read
in the batch's transaction and written with one ``executemany``. A NULL stays NULL.

``hmac`` is HMAC-SHA256 keyed by ``secret_key`` over the value's text (UTF-8), in hex, cut to
``length`` when given; it is deterministic, so equal values get equal pseudonyms in every table
and joins on them still work. ``format: email`` gives ``<hex>@<domain>``.
``fake`` seeds Faker from the same HMAC when ``deterministic`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from retentiond.audit.ledger import hmac_pads, hmac_sha256
from retentiond.policy.model import (
    ConstantStrategy,
    DefaultStrategy,
    FakeStrategy,
    HmacStrategy,
    MaskStrategy,
    NullStrategy,
    RoundStrategy,
    Strategy,
    TruncateDateStrategy,
)

SQL_STRATEGIES = ("null", "default", "constant", "truncate_date", "round")
LOSSLESS = ("hmac",)  # the only strategy allowed on a unique column (and only at full length)
Problem = tuple[str, str]


def is_sql(strategy: Strategy) -> bool:
    return strategy.strategy in SQL_STRATEGIES


def describe(strategy: Strategy) -> str:
    return strategy.strategy


# -- SQL-expressible --------------------------------------------------------------------------
def sql_expression(strategy: Strategy, column: sa.Column[Any], dialect: str,
                   server_default: str | None) -> Any:
    """The new value of ``column`` as a SQL expression of the row."""
    if isinstance(strategy, NullStrategy):
        return sa.null()
    if isinstance(strategy, DefaultStrategy):
        return sa.literal_column(f"({server_default})") if server_default else sa.null()
    if isinstance(strategy, ConstantStrategy):
        return sa.cast(sa.literal(strategy.value), column.type)
    if isinstance(strategy, RoundStrategy):
        # An exact decimal step: a float would make MySQL/MariaDB divide in DOUBLE, whose
        # ROUND() goes half to even (2.5 -> 2).
        step = sa.cast(sa.literal(Decimal(str(strategy.step)), sa.Numeric(38, 10)),
                       sa.Numeric(38, 10))
        quotient = sa.cast(column, sa.Numeric(38, 10)) / step
        if dialect == "sqlite":
            # SQLite divides in REAL: 0.35 / 0.1 = 3.4999999999999996; drop the float noise
            # before rounding half away from zero.
            quotient = sa.func.round(quotient, 9)
        return sa.cast(sa.func.round(quotient) * step, column.type)
    if isinstance(strategy, TruncateDateStrategy):
        return _truncate(column, strategy.unit, dialect)
    raise TypeError(f"strategy {strategy.strategy} is computed in Python")


def _truncate(column: sa.Column[Any], unit: str, dialect: str) -> Any:
    is_date = isinstance(column.type, sa.Date) and not isinstance(column.type, sa.DateTime)
    if dialect == "postgresql":
        return sa.cast(sa.func.date_trunc(unit, column), column.type)
    if dialect in ("mysql", "mariadb"):
        pattern = {"year": "%Y-01-01", "month": "%Y-%m-01", "day": "%Y-%m-%d"}[unit]
        return sa.cast(sa.func.date_format(column, pattern), sa.Date if is_date else sa.DateTime)
    pattern = {"year": "%Y-01-01", "month": "%Y-%m-01", "day": "%Y-%m-%d"}[unit]
    return sa.func.strftime(pattern if is_date else pattern + " 00:00:00.000000", column)


# -- computed in Python -----------------------------------------------------------------------
def python_function(strategy: Strategy, secret: bytes) -> Callable[[Any], Any]:
    makers: dict[type, Callable[[Any, bytes], Callable[[Any], Any]]] = {
        MaskStrategy: _mask, HmacStrategy: _hmac, FakeStrategy: _fake,
    }
    fn = makers[type(strategy)](strategy, secret)
    return lambda v: None if v is None else fn(v)


def pseudonym(secret: bytes, value: Any) -> str:
    return hmac_sha256(secret, _text(value).encode()).hex()


def _text(value: Any) -> str:
    if type(value) is str:  # the common case, without the isinstance checks (per value)
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _hmac(s: HmacStrategy, secret: bytes) -> Callable[[Any], str]:
    """:func:`pseudonym` cut to ``length``, with the e-mail domain: the HMAC's pads are hashed
    once per rule and their SHA-256 states copied per value (the same digest)."""
    inner, outer = hmac_pads(secret)
    cut = s.length or 64
    suffix = f"@{s.domain}" if s.format == "email" else ""

    def apply(value: Any) -> str:
        i = inner()
        i.update((value if type(value) is str else _text(value)).encode())
        o = outer()
        o.update(i.digest())
        digest: str = o.hexdigest()
        return digest[:cut] + suffix

    return apply


def _mask(s: MaskStrategy, _: bytes) -> Callable[[Any], str]:
    # The strategy's settings read once per rule, not per value (this runs per row).
    first, last, char = s.keep_first, s.keep_last, s.char
    email = s.format == "email"
    kept = first + last

    def mask_text(text: str) -> str:
        n = len(text)
        if kept >= n:
            return char * n  # keeping that much would keep everything
        return text[:first] + char * (n - kept) + (text[n - last:] if last else "")

    def apply(value: Any) -> str:
        text = value if type(value) is str else _text(value)
        if email and "@" in text:
            local, _, domain = text.rpartition("@")
            return f"{mask_text(local)}@{domain}"
        return mask_text(text)

    return apply


def _fake(s: FakeStrategy, secret: bytes) -> Callable[[Any], Any]:
    from faker import Faker

    faker = Faker(s.locale) if s.locale else Faker()
    provider = getattr(faker, s.provider)

    def apply(value: Any) -> Any:
        if s.deterministic:
            faker.seed_instance(int(pseudonym(secret, value)[:16], 16))
        return provider()

    return apply


# -- validation against the live schema -------------------------------------------------------
@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: Any
    nullable: bool
    default: str | None
    primary_key: bool
    unique: bool
    domain: Any = None  # the PostgreSQL DOMAIN the column was declared with; type is its base


def sample_output(strategy: Strategy, secret: bytes) -> Any:
    """A value ``strategy`` writes whatever the row holds (None when it depends on the row or
    is NULL), for probing a column's constraints."""
    if isinstance(strategy, ConstantStrategy):
        return strategy.value
    if isinstance(strategy, HmacStrategy):
        return python_function(strategy, secret)("retentiond")
    return None


def check(strategy: Strategy, col: ColumnInfo, table: str) -> list[str]:
    """Why ``strategy`` cannot be applied to ``col`` (empty when it can)."""
    where = f"{table}.{col.name}"
    problems: list[str] = []
    lossy = strategy.strategy not in LOSSLESS or getattr(strategy, "length", None)
    if (col.primary_key or col.unique) and lossy:
        kind = "primary-key" if col.primary_key else "unique"
        problems.append(f'strategy "{strategy.strategy}" on {kind} column {where} would make '
                        'values collide; use "hmac" without length')
    checker = _CHECKS.get(strategy.strategy)
    if checker is not None:
        problems += checker(strategy, col, where)
    return problems


def _check_null(_: Any, col: ColumnInfo, where: str) -> list[str]:
    if col.nullable:
        return []
    return [f'strategy "null" on NOT NULL column {where}; use "constant" or "hmac"']


def _check_default(_: Any, col: ColumnInfo, where: str) -> list[str]:
    if col.default:
        return []
    return [f'strategy "default" on {where}, which has no server default; use "constant"']


def _check_constant(s: Any, col: ColumnInfo, where: str) -> list[str]:
    value = s.value
    t = col.type
    if isinstance(t, sa.Enum):
        if value in t.enums:
            return []
        return [f"constant {value!r} is not a value of enum {t.name} ({where}); use one of "
                f"{', '.join(map(repr, t.enums))}"]
    if isinstance(t, sa.Boolean):
        ok = isinstance(value, bool)
    elif isinstance(t, sa.Integer):
        ok = not isinstance(value, bool) and _int_like(value)
    elif isinstance(t, sa.Numeric | sa.Float):
        ok = not isinstance(value, bool) and _number_like(value)
    elif isinstance(t, sa.DateTime | sa.Date):
        ok = _date_like(value)
    elif isinstance(t, sa.String):
        length = getattr(t, "length", None)
        if length is not None and len(str(value)) > length:
            return [f"constant {value!r} is {len(str(value))} characters; {where} holds "
                    f"{length}"]
        ok = True
    else:
        ok = True
    return [] if ok else [f"constant {value!r} cannot be stored in {where} ({t})"]


def _check_text(s: Any, col: ColumnInfo, where: str) -> list[str]:
    if isinstance(col.type, sa.Enum):
        return [f'strategy "{s.strategy}" on enum column {where} ({col.type.name}) writes '
                'values the enum does not have; use "constant" with one of its values']
    if not isinstance(col.type, sa.String):
        return [f'strategy "{s.strategy}" needs a text column; {where} is {col.type}']
    length = getattr(col.type, "length", None)
    if length is not None and isinstance(s, HmacStrategy):
        size = (s.length or 64) + (len(s.domain) + 1 if s.format == "email" else 0)
        if size > length:
            return [f"hmac output is {size} characters; {where} holds {length} "
                    "(set length or widen the column)"]
    return []


def _check_date(s: Any, col: ColumnInfo, where: str) -> list[str]:
    if isinstance(col.type, sa.Date | sa.DateTime):
        return []
    return [f'strategy "truncate_date" needs a date or timestamp column; {where} is {col.type}']


def _check_round(s: Any, col: ColumnInfo, where: str) -> list[str]:
    if not isinstance(col.type, sa.Integer | sa.Numeric | sa.Float):
        return [f'strategy "round" needs a numeric column; {where} is {col.type}']
    if isinstance(col.type, sa.Integer) and s.step != int(s.step):
        return [f"round step {s.step} on integer column {where} must be a whole number"]
    return []


def _check_fake(s: Any, col: ColumnInfo, where: str) -> list[str]:
    from faker import Faker

    try:
        faker = Faker(s.locale) if s.locale else Faker()
    except AttributeError:
        return [f"unknown Faker locale {s.locale!r}"]
    if not callable(getattr(faker, s.provider, None)):
        return [f"unknown Faker provider {s.provider!r}"]
    return _check_text(s, col, where)


_CHECKS: dict[str, Callable[[Any, ColumnInfo, str], list[str]]] = {
    "null": _check_null, "default": _check_default, "constant": _check_constant,
    "mask": _check_text, "hmac": _check_text, "fake": _check_fake,
    "truncate_date": _check_date, "round": _check_round,
}


def _int_like(value: Any) -> bool:
    try:
        return int(str(value)) == float(str(value))
    except ValueError:
        return False


def _number_like(value: Any) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _date_like(value: Any) -> bool:
    try:
        datetime.fromisoformat(str(value))
    except ValueError:
        return False
    return True
