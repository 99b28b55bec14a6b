"""Column types as the database sees them (SPEC 10, Clocks).

A PostgreSQL domain is reflected as ``DOMAIN``; retentiond resolves it to its base type (a
domain over a domain, to the innermost), so clock checks, strategy checks and the SQL built from
a column see ``timestamptz`` or ``varchar(8)``, never "column ... is DOMAIN". What the domain
adds is kept apart: its NOT NULL is already the column's (SQLAlchemy folds it in), its CHECK is
probed with the value a strategy would write (:func:`domain_problems`). Enum types stay enums,
whose values the ``constant`` check needs; an enum is not a clock. Views are not tables: a rule
naming one is refused by :func:`is_view` before any key complaint.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import DOMAIN
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from retentiond import anonymize as anon
from retentiond.policy.model import Strategy

# What a clock may be: timestamps, dates, ISO 8601 text, integer epoch seconds.
TIME_TYPES = (sa.DateTime, sa.Date, sa.String, sa.Integer)


def is_time_type(t: Any) -> bool:
    """Whether a (resolved) column type can hold a clock. An enum is text to SQLAlchemy but
    holds labels, not instants."""
    return isinstance(t, TIME_TYPES) and not isinstance(t, sa.Enum)


def base_type(t: Any, conn: sa.Connection | None = None) -> Any:
    """``t`` with every domain replaced by the type it is over. SQLAlchemy drops a domain's
    length (``varchar(8)`` reflects as ``VARCHAR``); with ``conn`` it is read from the catalog.
    The database's default collation is dropped, so messages say ``TEXT``."""
    while isinstance(t, DOMAIN):
        inner = t.data_type
        if isinstance(inner, sa.String) and not isinstance(inner, sa.Enum):
            length = inner.length
            if conn is not None and length is None:
                length = _domain_length(conn, t)
            collation = None if inner.collation == "default" else inner.collation
            inner = type(inner)(length=length, collation=collation)
        t = inner
    return t


def type_name(t: Any) -> str:
    """A (resolved) column type as a message names it: ``enum account_state``, ``TEXT``."""
    if isinstance(t, sa.Enum) and t.name:
        return f"enum {t.name}"
    return str(t)


def domains(t: Any) -> list[DOMAIN]:
    """The domains ``t`` is made of, outermost first (empty for any other type)."""
    found = []
    while isinstance(t, DOMAIN):
        found.append(t)
        t = t.data_type
    return found


def _domain_length(conn: sa.Connection, domain: DOMAIN) -> int | None:
    name = f'"{domain.schema}"."{domain.name}"' if domain.schema else f'"{domain.name}"'
    mod = conn.execute(sa.text("select typtypmod from pg_type where oid = to_regtype(:n)"),
                       {"n": name}).scalar()
    return int(mod) - 4 if mod is not None and mod > 4 else None


def resolve_column(inspector: sa.Inspector, _table: sa.Table | None,
                   column_info: dict[str, Any]) -> None:
    """A ``column_reflect`` listener: the column gets its base type, and ``info["domain"]``
    the domain it was declared with."""
    t = column_info["type"]
    if isinstance(t, DOMAIN):
        bind = inspector.bind
        if isinstance(bind, sa.Connection):
            column_info["type"] = base_type(t, bind)
        else:
            with bind.connect() as conn:
                column_info["type"] = base_type(t, conn)
        column_info["info"] = {**column_info.get("info", {}), "domain": t}
        column_info["nullable"] = bool(column_info.get("nullable", True)) and not any(
            d.not_null for d in domains(t))


LISTENERS = [("column_reflect", resolve_column)]


def is_view(engine: Engine, name: str, schema: str | None) -> bool:
    insp = sa.inspect(engine)
    views = set(insp.get_view_names(schema))
    if engine.dialect.name == "postgresql":
        views |= set(insp.get_materialized_view_names(schema))
    return name in views


def domain_problems(engine: Engine, strategy: Strategy, col: anon.ColumnInfo, table: str,
                    secret: bytes) -> list[str]:
    """Why the value ``strategy`` writes would break the CHECK of the column's domain: the
    value is cast to the domain in the store (read-only), so the database judges its own
    constraint. Strategies whose output depends on the row (mask, fake, ...) are not probed."""
    domain = col.domain
    checks = [d for d in domains(domain) if d.check is not None]
    if not checks:
        return []
    value = anon.sample_output(strategy, secret)
    if value is None:
        return []
    try:
        with engine.connect() as conn:
            conn.execute(sa.select(sa.cast(sa.literal(value), domain)))
            conn.rollback()
    except DBAPIError:
        what = (f"constant {value!r}" if strategy.strategy == "constant"
                else f'strategy "{strategy.strategy}"')
        return [f"{what} on {table}.{col.name} breaks the CHECK of domain {checks[0].name} "
                f"({checks[0].check}); pick a value the domain accepts"]
    return []
