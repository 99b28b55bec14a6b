"""The adapter contract suite: the checks every adapter passes, built-in ones included.

Like alembic's ``alembic.testing.suite``, this module is imported by a test module, which
subclasses :class:`AdapterContract` and provides one fixture, ``harness``, yielding a
:class:`Harness`: a connected adapter, a rule whose ``key``, ``subject`` and ``clock`` name the
harness's records, and direct access to the store behind the adapter (to seed records, read
back which keys remain, move a clock, and take a snapshot of the whole store)::

    import pytest
    from retentiond.testing import AdapterContract, Harness

    class MyHarness(Harness):
        ...  # seed(), keys(), set_clock(), snapshot(); optionally poison(), unreachable()

    class TestMyAdapter(AdapterContract):
        @pytest.fixture
        def harness(self, tmp_path):
            h = MyHarness(tmp_path)
            yield h
            h.close()

The contract (see :mod:`retentiond.adapters.base`), checked against a reference model of the
selection on a fixed set of 40 records (due, not yet due, exactly at the cutoff, NULL clock,
NULL subject, inserted in shuffled order):

* ``scan`` yields non-empty lists of at most ``batch_size`` :class:`Candidate`, in strictly
  ascending key order, covering exactly the selected records, each with its subject; disposing
  each batch before the next is read (what the executor does) still covers them all.
* ``count`` equals the number ``scan`` yields; ``count_null_clock`` counts the records without
  a clock; a selection whose ``subjects`` is empty covers nothing.
* ``delete`` disposes exactly the given keys that still match the selection, in one
  transaction, and returns them: a key outside the selection, a key whose clock moved forward
  after the scan, an unknown or already disposed key is left alone and not returned. A record
  the store refuses with an integrity error fails alone: the others are disposed and
  :class:`~retentiond.errors.RecordsFailed` names them (or, where the store cannot tell
  records apart, the batch fails as one transaction and nothing changes).
* ``remaining`` returns exactly the given references whose records are still present.
* The read-only methods (``validate``, ``count``, ``count_null_clock``, ``scan``,
  ``remaining``) change nothing in the store; an action the adapter does not declare is refused
  with :class:`~retentiond.errors.StoreError` and changes nothing.
* Stores that cannot hold a record without a subject or without a clock (a file's path field
  is never empty, a file always has an mtime) say so (:attr:`Harness.null_subjects`,
  :attr:`Harness.null_clocks`): those records of the dataset then belong to a subject no
  selection names, or have a clock far in the future, so every count above stays the same,
  and ``count_null_clock`` is 0. A store whose key holds the record's fields (a path naming
  the subject or clock) derives it from them (:meth:`Harness.record_key`).
* Composite keys (a harness whose rule has ``key: [a, b]``; the sql contract runs the whole
  suite a second time on one): keys are tuples in the rule's column order, ascending as
  Python tuples; a record reference is the HMAC of the tuple's canonical encoding
  (:func:`retentiond.audit.ledger.key_text`), the same whether computed from the values the
  harness seeded or from the keys the adapter read back.
* ``delete_next``, where an adapter offers it, disposes exactly the selection batch by batch,
  each batch's keys announced to ``intent`` before they are returned.
* An adapter class missing an abstract method of :class:`~retentiond.adapters.base.Adapter`
  fails when it is constructed, not in the middle of a sweep.

Requires pytest (a development dependency); nothing else in retentiond imports this module.
"""

from __future__ import annotations

import abc
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

import pytest

from retentiond.adapters import registry
from retentiond.adapters.base import Adapter, Candidate, Selection
from retentiond.audit.ledger import Refs, hmac_sha256, key_text
from retentiond.errors import RecordsFailed, StoreError, StoreUnreachable
from retentiond.policy.model import Policy, Rule

__all__ = ["CUTOFF", "AdapterContract", "Harness", "Record", "make_policy"]

#: The wall-clock instant (in the policy's zone) that the contract's time selections cut at.
CUTOFF = datetime(2024, 6, 15, 12, 0, 0)
#: The methods every adapter must implement; a class missing one cannot be constructed.
ABSTRACT_METHODS = frozenset({"connect", "close", "validate", "count", "count_null_clock",
                              "scan", "remaining", "delete"})
ALL_ACTIONS = frozenset({"delete", "anonymize", "isolate"})
CONTRACT_SECRET = b"retentiond-contract-suite-secret-key-0123456789"
N_RECORDS = 40
#: The clock of a dataset record that would have none, in a store where every record has one:
#: never due, like a NULL clock (plus i hours, so that no two are the same).
NO_CLOCK = CUTOFF + timedelta(days=3653)
#: The subject (``subject_for(NO_SUBJECT)``) of a dataset record that would have none, in a
#: store where every record has one: no selection of the contract names it.
NO_SUBJECT = 6


@dataclass(frozen=True)
class Record:
    """One record as the harness seeds it. ``clock`` is naive wall-clock time in the policy's
    time zone, whole seconds (some stores keep no fractions), or None."""

    key: Any
    subject: Any
    clock: datetime | None


def make_policy(adapter: str, store: dict[str, Any], rule: dict[str, Any], *,
                store_name: str = "contract", rule_id: str = "contract",
                timezone: str = "UTC") -> tuple[Policy, Rule]:
    """A validated policy with one store and one rule, for building a harness's adapter."""
    policy = Policy.model_validate({
        "version": 1, "timezone": timezone, "secret_key": CONTRACT_SECRET.decode(),
        "stores": {store_name: {"adapter": adapter, **store}},
        "rules": [{"id": rule_id, "store": store_name, "dispose_after": "1d", **rule}],
    })
    return policy, policy.rules[0]


class Harness(abc.ABC):
    """An adapter under test plus direct access to the store behind it."""

    #: Whether the store can hold a record without a subject (a NULL subject column).
    null_subjects: ClassVar[bool] = True
    #: Whether the store can hold a record without a clock (a NULL clock column).
    null_clocks: ClassVar[bool] = True

    def __init__(self, adapter: Adapter, rule: Rule) -> None:
        self.adapter = adapter
        self.rule = rule

    @abc.abstractmethod
    def seed(self, records: Sequence[Record]) -> None:
        """Insert these records into the rule's target (empty before the first call)."""

    @abc.abstractmethod
    def keys(self) -> list[Any]:
        """The keys of every record present in the rule's target, in any order."""

    @abc.abstractmethod
    def set_clock(self, key: Any, clock: datetime | None) -> None:
        """Change one record's clock, as the application owning the store would."""

    @abc.abstractmethod
    def snapshot(self) -> object:
        """Everything the store holds (every record with every field, and what else the adapter
        could create), as a value compared with ``==``."""

    def key_for(self, i: int) -> Any:
        """The i-th key; keys must ascend with ``i`` in the adapter's key order and in
        Python's."""
        return i

    def subject_for(self, n: int) -> Any:
        """The n-th subject id, as the store holds it."""
        return n

    def record_key(self, i: int, subject: Any, clock: datetime | None) -> Any:
        """The key of the i-th record of the dataset, whose subject and clock are given:
        :meth:`key_for` unless the store's key holds the record's fields (a file's path
        naming its subject or clock). Keys must ascend with ``i``."""
        return self.key_for(i)

    def poison(self, key: Any) -> str:
        """Make any attempt to dispose ``key`` fail inside the store, and return the error
        text the store reports (it must not leak into retentiond's error). Stores without
        transactions leave this unimplemented and the atomicity check is skipped."""
        raise NotImplementedError

    def unreachable(self) -> tuple[Adapter, str | None]:
        """An unconnected adapter of this kind for a store that cannot be reached, and a secret
        in its connection settings that must not appear in the error (or None)."""
        raise NotImplementedError

    def close(self) -> None:
        self.adapter.close()


# -- the reference model ----------------------------------------------------------------------
def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def selected(record: Record, sel: Selection) -> bool:
    """Whether the contract's selections cover ``record`` (the fields they use)."""
    subject = _text(record.subject)
    if sel.subjects is not None and (subject is None or subject not in sel.subjects):
        return False
    if sel.clock_cutoff is not None and (
            record.clock is None or record.clock.replace(tzinfo=sel.tz) > sel.clock_cutoff):
        return False
    return subject is None or subject not in sel.exclude_subjects


def dataset(h: Harness) -> list[Record]:
    """40 records in key order: clocks every 6 hours around :data:`CUTOFF` (one exactly at
    it), four without a clock, four without a subject, subjects 1 to 5. (Where the store
    cannot hold a record without one, :data:`NO_CLOCK` and :data:`NO_SUBJECT` stand in.)"""
    records = []
    for i in range(N_RECORDS):
        clock = None if i % 9 == 4 else CUTOFF + timedelta(hours=6 * (i - 20))
        if clock is None and not h.null_clocks:
            clock = NO_CLOCK + timedelta(hours=i)
        subject = None if i % 11 == 6 else h.subject_for(i % 5 + 1)
        if subject is None and not h.null_subjects:
            subject = h.subject_for(NO_SUBJECT)
        records.append(Record(h.record_key(i, subject, clock), subject, clock))
    return records


def _flatten(batches: Sequence[Sequence[Candidate]]) -> list[Candidate]:
    return [c for batch in batches for c in batch]


class AdapterContract:
    """Subclass in a test module (named ``Test...``) and override the ``harness`` fixture."""

    # -- fixtures -------------------------------------------------------------------------------
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        raise NotImplementedError("a contract test class overrides the `harness` fixture")

    @pytest.fixture
    def records(self, harness: Harness) -> list[Record]:
        """The harness seeded with :func:`dataset`, inserted in shuffled order."""
        records = dataset(harness)
        shuffled = list(records)
        random.Random(N_RECORDS).shuffle(shuffled)  # noqa: S311 - a fixed test order
        harness.seed(shuffled)
        assert sorted(harness.keys()) == [r.key for r in records], "the harness lost records"
        return records

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def selection(h: Harness, **changes: Any) -> Selection:
        tz = h.adapter.policy.tz
        base = Selection(rule=h.rule, action="delete", reason="schedule", tz=tz,
                         now=(CUTOFF + timedelta(days=400)).replace(tzinfo=tz),
                         clock_cutoff=CUTOFF.replace(tzinfo=tz))
        return replace(base, **changes)

    def selections(self, h: Harness) -> dict[str, Selection]:
        """The kinds of selection the planner hands an adapter, on the contract's data."""
        s = [str(h.subject_for(n)) for n in range(1, 6)]
        return {
            "time": self.selection(h),
            "time-held": self.selection(h, exclude_subjects=(s[1], s[2])),
            "erasure": self.selection(h, clock_cutoff=None, reason="erasure:q1",
                                      subjects=(s[0], s[3])),
            "erasure-held": self.selection(h, clock_cutoff=None, reason="erasure:q2",
                                           subjects=(s[0], s[3]), exclude_subjects=(s[3],)),
            "early-cutoff": self.selection(
                h, clock_cutoff=(CUTOFF - timedelta(hours=30)).replace(
                    tzinfo=h.adapter.policy.tz)),
        }

    @staticmethod
    def expected(records: Sequence[Record], sel: Selection) -> list[Any]:
        return [r.key for r in records if selected(r, sel)]

    @staticmethod
    def ref_of(h: Harness) -> Any:
        return Refs(CONTRACT_SECRET).record_fn(h.adapter.store_name, h.rule.target)

    # -- the interface --------------------------------------------------------------------------
    def test_base_class_declares_the_interface(self) -> None:
        assert frozenset(Adapter.__abstractmethods__) == ABSTRACT_METHODS

    def test_class_missing_a_method_fails_at_construction(self, harness: Harness) -> None:
        cls = type(harness.adapter)
        methods = {name: getattr(cls, name) for name in ABSTRACT_METHODS}
        args = (harness.adapter.store_name, harness.adapter.store, harness.adapter.policy)
        complete = type("Complete", (Adapter,), {"name": "complete", "actions": cls.actions,
                                                 **methods})
        assert isinstance(complete(*args), Adapter)
        for missing in sorted(ABSTRACT_METHODS):
            partial = type("Partial", (Adapter,), {
                "name": "partial", "actions": cls.actions,
                **{k: v for k, v in methods.items() if k != missing}})
            with pytest.raises(TypeError, match=missing):
                partial(*args)

    def test_adapter_is_registered_and_declares_its_actions(self, harness: Harness) -> None:
        cls = type(harness.adapter)
        assert registry.get(cls.name) is cls
        assert "delete" in cls.actions
        assert cls.actions <= ALL_ACTIONS
        for action in sorted(ALL_ACTIONS - cls.actions):
            rule = harness.rule.model_copy(update={"action": action})
            problems = cls.check_rule(rule, harness.adapter.policy)
            assert [p for p, _ in problems if p == "action"] == ["action"], problems

    def test_validate_accepts_the_harness_rule(self, harness: Harness,
                                               records: list[Record]) -> None:
        assert harness.adapter.validate(harness.rule) == []

    # -- read-only methods ----------------------------------------------------------------------
    def test_scan_yields_ascending_bounded_batches_covering_the_selection(
            self, harness: Harness, records: list[Record]) -> None:
        by_key = {r.key: r for r in records}
        for (kind, sel), batch_size in itertools.product(
                self.selections(harness).items(), (1, 3, 7, N_RECORDS, 1000)):
            name = f"{kind}, batch_size {batch_size}"
            batches = [list(b) for b in harness.adapter.scan(sel, batch_size)]
            assert all(0 < len(b) <= batch_size for b in batches), (name, [len(b) for b in batches])
            found = _flatten(batches)
            assert all(isinstance(c, Candidate) for c in found), name
            keys = [c.key for c in found]
            assert all(a < b for a, b in itertools.pairwise(keys)), (name, keys)
            assert keys == self.expected(records, sel), name
            assert [_text(c.subject) for c in found] == [
                _text(by_key[k].subject) for k in keys], name

    def test_scan_counts_are_exact(self, harness: Harness, records: list[Record]) -> None:
        wanted = {"time": 19, "time-held": 13, "erasure": 15, "erasure-held": 8,
                  "early-cutoff": 14}
        for name, sel in self.selections(harness).items():
            scanned = len(_flatten(list(harness.adapter.scan(sel, 4))))
            assert (harness.adapter.count(sel), scanned) == (wanted[name], wanted[name]), name
            assert len(self.expected(records, sel)) == wanted[name], "reference model drifted"

    def test_count_null_clock(self, harness: Harness, records: list[Record]) -> None:
        expected = 4 if harness.null_clocks else 0
        assert harness.adapter.count_null_clock(harness.rule) == expected
        assert sum(r.clock is None for r in records) == expected

    def test_empty_subject_list_covers_nothing(self, harness: Harness,
                                               records: list[Record]) -> None:
        sel = self.selection(harness, clock_cutoff=None, subjects=())
        assert harness.adapter.count(sel) == 0
        assert list(harness.adapter.scan(sel, 5)) == []
        assert harness.adapter.delete(sel, [r.key for r in records]) == []
        assert sorted(harness.keys()) == [r.key for r in records]

    def test_read_only_methods_change_nothing(self, harness: Harness,
                                              records: list[Record]) -> None:
        before = harness.snapshot()
        adapter = harness.adapter
        ref_of = self.ref_of(harness)
        assert adapter.validate(harness.rule) == []
        assert adapter.count_null_clock(harness.rule) == sum(r.clock is None for r in records)
        for sel in self.selections(harness).values():
            adapter.count(sel)
            list(adapter.scan(sel, 3))
        refs = {ref_of(r.key) for r in records}
        assert adapter.remaining(harness.rule, "delete", refs, ref_of) == refs
        assert harness.snapshot() == before

    def test_remaining_is_exactly_the_present_refs(self, harness: Harness,
                                                   records: list[Record]) -> None:
        ref_of = self.ref_of(harness)
        sel = self.selection(harness)
        gone = self.expected(records, sel)[:6]
        assert sorted(harness.adapter.delete(sel, gone)) == gone
        present = [r.key for r in records if r.key not in gone]
        asked = {ref_of(k) for k in gone + present[::2]} | {ref_of(harness.key_for(10_000))}
        found = harness.adapter.remaining(harness.rule, "delete", asked, ref_of)
        assert found == {ref_of(k) for k in present[::2]}
        assert harness.adapter.remaining(harness.rule, "delete", set(), ref_of) == set()

    # -- delete ---------------------------------------------------------------------------------
    def test_delete_disposes_and_returns_exactly_the_matching_keys(
            self, harness: Harness, records: list[Record]) -> None:
        sel = self.selection(harness)
        due = self.expected(records, sel)
        not_due = [r.key for r in records if r.clock is not None and r.key not in due][:3]
        no_clock = [r.key for r in records if r.clock is None][:2]
        unknown = harness.key_for(10_000)
        wanted = due[:5]
        asked = [*not_due, wanted[2], unknown, *wanted[3:], *no_clock, *wanted[:2]]
        assert sorted(harness.adapter.delete(sel, asked)) == wanted
        assert sorted(harness.keys()) == [r.key for r in records if r.key not in wanted]
        assert harness.adapter.delete(sel, wanted) == [], "a disposed key was disposed again"

    @pytest.mark.parametrize("name", ["time-held", "erasure", "erasure-held"])
    def test_delete_honours_subjects_and_holds(self, harness: Harness, records: list[Record],
                                               name: str) -> None:
        sel = self.selections(harness)[name]
        wanted = self.expected(records, sel)
        assert sorted(harness.adapter.delete(sel, [r.key for r in records])) == wanted
        assert sorted(harness.keys()) == [r.key for r in records if r.key not in wanted]

    def test_delete_leaves_a_record_whose_clock_moved_after_the_scan(
            self, harness: Harness, records: list[Record]) -> None:
        sel = self.selection(harness)
        batch = [c.key for c in next(iter(harness.adapter.scan(sel, 5)))]
        assert batch == self.expected(records, sel)[:5]
        moved = batch[3]
        harness.set_clock(moved, CUTOFF + timedelta(days=30))
        assert sorted(harness.adapter.delete(sel, batch)) == [k for k in batch if k != moved]
        assert sorted(harness.keys()) == [r.key for r in records
                                          if r.key == moved or r.key not in batch]

    def test_delete_of_nothing_changes_nothing(self, harness: Harness,
                                               records: list[Record]) -> None:
        before = harness.snapshot()
        assert harness.adapter.delete(self.selection(harness), []) == []
        assert harness.snapshot() == before

    def test_disposing_each_batch_before_the_next_covers_the_selection(
            self, harness: Harness, records: list[Record]) -> None:
        sel = self.selection(harness)
        disposed: list[Any] = []
        for batch in harness.adapter.scan(sel, 3):
            keys = [c.key for c in batch]
            assert sorted(harness.adapter.dispose(sel, keys)) == keys
            disposed += keys
        wanted = self.expected(records, sel)
        assert disposed == wanted
        assert sorted(harness.keys()) == [r.key for r in records if r.key not in wanted]

    def test_a_failing_record_fails_alone(self, harness: Harness,
                                          records: list[Record]) -> None:
        """A record the store refuses (SPEC 10: an integrity error nobody foresaw) fails alone:
        the batch's others are disposed and named (:class:`RecordsFailed`). A store that
        cannot tell them apart fails the batch as one transaction, changing nothing."""
        sel = self.selection(harness)
        due = self.expected(records, sel)
        try:
            leak = harness.poison(due[7])
        except NotImplementedError:
            pytest.skip(f"{type(harness).__name__} has no transactions to check")
        before = harness.snapshot()
        with pytest.raises(StoreError) as info:
            harness.adapter.delete(sel, due[:8])
        assert leak not in str(info.value), "the store's error text leaked into the message"
        if isinstance(info.value, RecordsFailed):
            assert sorted(info.value.disposed) == sorted(due[:7])
            assert sum(info.value.failed.values()) == 1
            assert sorted(harness.keys()) == sorted(r.key for r in records
                                                    if r.key not in due[:7])
        else:
            assert harness.snapshot() == before
            assert sorted(harness.keys()) == [r.key for r in records]

    def test_unsupported_actions_are_refused(self, harness: Harness,
                                             records: list[Record]) -> None:
        cls = type(harness.adapter)
        before = harness.snapshot()
        due = self.expected(records, self.selection(harness))
        for action in sorted(ALL_ACTIONS - cls.actions):
            with pytest.raises(StoreError):
                harness.adapter.dispose(self.selection(harness, action=action), due)
        assert harness.snapshot() == before

    def test_unreachable_store_raises_store_unreachable(self, harness: Harness) -> None:
        try:
            adapter, secret = harness.unreachable()
        except NotImplementedError:
            pytest.skip(f"{type(harness).__name__} cannot make its store unreachable")
        with pytest.raises(StoreUnreachable) as info:
            adapter.connect()
        assert str(info.value).startswith(f"store {adapter.store_name}: ")
        if secret:
            assert secret not in str(info.value)

    # -- keys -----------------------------------------------------------------------------------
    def test_keys_have_the_shape_of_the_rule_key(self, harness: Harness,
                                                 records: list[Record]) -> None:
        columns = harness.rule.key_columns
        found = [c.key for c in _flatten(list(harness.adapter.scan(self.selection(harness), 4)))]
        assert found
        for key in found:
            if len(columns) > 1:
                assert isinstance(key, tuple), key
                assert len(key) == len(columns), key
            else:
                assert not isinstance(key, tuple), key

    def test_composite_references_use_the_canonical_encoding(
            self, harness: Harness, records: list[Record]) -> None:
        if not harness.rule.composite_key:
            pytest.skip("the harness rule has a one-column key")
        ref_of = self.ref_of(harness)
        prefix = f"{harness.adapter.store_name}\0{harness.rule.target}\0".encode()
        for key in (records[0].key, records[-1].key):
            text = key_text(key)
            assert text.startswith("[") and text.endswith("]"), text
            assert ref_of(key) == hmac_sha256(CONTRACT_SECRET, prefix + text.encode()).hex()
        read = [c.key for c in _flatten(list(harness.adapter.scan(self.selection(harness), 7)))]
        assert {ref_of(k) for k in read} == {ref_of(k) for k in self.expected(
            records, self.selection(harness))}, "a key read back hashes unlike the one seeded"

    def test_delete_next_disposes_the_selection_batch_by_batch(
            self, harness: Harness, records: list[Record]) -> None:
        sel = self.selection(harness)
        announced: list[Any] = []
        disposed: list[Any] = []
        after: Any = None
        for _ in range(N_RECORDS + 1):
            batch = harness.adapter.delete_next(sel, after, 4, announced.extend)
            if batch is None and after is None and not disposed:
                pytest.skip(f"{type(harness.adapter).__name__} has no delete fast path here")
            assert batch is not None
            assert len(batch.disposed) <= 4
            disposed += batch.disposed
            if batch.last_read is None:
                break
            after = batch.last_read
        wanted = self.expected(records, sel)
        assert disposed == wanted
        assert announced == wanted
        assert sorted(harness.keys()) == [r.key for r in records if r.key not in wanted]
