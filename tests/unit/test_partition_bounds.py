"""The upper bound of a one-column RANGE partition, as ``pg_get_expr(relpartbound)`` prints
it (adapters/sql_partitions.py): only a literal upper bound can be wholly due."""

from __future__ import annotations

import pytest

from retentiond.adapters.sql_partitions import _upper


@pytest.mark.parametrize(("bound", "upper"), [
    ("FOR VALUES FROM ('2024-01-01 00:00:00') TO ('2024-02-01 00:00:00')",
     "2024-02-01 00:00:00"),
    ("FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')",
     "2024-02-01 00:00:00+00"),
    ("FOR VALUES FROM (MINVALUE) TO ('2020-01-01')", "2020-01-01"),
    ("FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)", None),
    ("FOR VALUES FROM ('a''b') TO ('c''d')", "c'd"),
    ("FOR VALUES FROM ('2024-01-01', 1) TO ('2024-02-01', 5)", None),  # two columns
    ("FOR VALUES IN ('a', 'b')", None),
    ("DEFAULT", None),
    ("", None),
])
def test_upper(bound: str, upper: str | None) -> None:
    assert _upper(bound) == upper
