"""A batch's record references (``Refs.records``, the HMAC built from pads hashed once per
batch) are byte for byte the one-shot ``HMAC-SHA256(secret, store \\0 target \\0 key)`` that
every ledger so far holds, whatever the secret's length (RFC 2104 hashes a key longer than
the 64-byte block first)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.audit.ledger import Refs, key_text

KEYS = [1, 42, "ab", "é", (datetime(2010, 1, 1), 7), ("2021-03-01", 1), -5, 10**20]


@pytest.mark.parametrize("length", [1, 16, 32, 63, 64, 65, 100])
def test_batch_refs_are_the_one_shot_hmac(length: int) -> None:
    secret = bytes(range(7, 7 + length))
    expected = [hmac.new(secret, b"app\0events\0" + key_text(k).encode(), hashlib.sha256)
                .hexdigest() for k in KEYS]
    refs = Refs(secret)
    assert refs.records("app", "events", KEYS) == expected
    assert [refs.record("app", "events", k) for k in KEYS] == expected


@pytest.mark.parametrize("length", [16, 32, 100])
def test_hmac_strategy_is_the_one_shot_hmac_of_the_value(length: int) -> None:
    from retentiond.anonymize import python_function
    from retentiond.policy.model import HmacStrategy

    secret = bytes(range(3, 3 + length))
    apply = python_function(HmacStrategy(strategy="hmac", format="email", length=20), secret)
    for value in ("ann@example.org", "é", 42, datetime(2020, 1, 2, 3, 4)):
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        digest = hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()
        assert apply(value) == f"{digest[:20]}@anonymized.invalid"
    assert apply(None) is None


_COMPONENTS = st.one_of(
    st.integers(), st.booleans(), st.text(max_size=6), st.dates(),
    st.datetimes(timezones=st.none() | st.just(UTC) | st.just(timezone(timedelta(hours=-5)))),
    st.decimals(allow_nan=False, places=2), st.binary(max_size=4), st.uuids())


@given(st.lists(st.tuples(_COMPONENTS, _COMPONENTS) | st.tuples(st.integers(), st.datetimes())
                | st.integers() | st.tuples(_COMPONENTS, _COMPONENTS, _COMPONENTS),
                min_size=1, max_size=12))
@settings(max_examples=300, deadline=None)
def test_a_batch_of_any_keys_gets_each_keys_own_reference(keys: list[Any]) -> None:
    """The batch path formats two-column keys of one shape without the general path: every
    key of a batch, whatever the first key's shape and whatever the others', still gets
    exactly the one-shot HMAC over its own key_text."""
    secret = b"k" * 32
    expected = [hmac.new(secret, b"app\0events\0" + key_text(k).encode(), hashlib.sha256)
                .hexdigest() for k in keys]
    assert Refs(secret).records("app", "events", keys) == expected
