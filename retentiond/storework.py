"""The stores of one sweep: one after another, or up to ``workers: N`` at once.

A store is only ever swept by one thread: its rules run one after another in the sweep's
(foreign-key) order, with the store's own adapter (its own connections) and its own
:class:`~retentiond.executor.Executor`, so a stop flag, a hold that ends a selection or a
failure stays with its store. What the threads share is made for it: the state database (one
intent and one ledger transaction per batch; ``ledger.append`` serialises appenders on the head
row, and on SQLite the sweep passes one in-process lock around those writes, so SQLite's
writer lock is never contended from within a process), the request tracker (it locks), and
this object (it locks). The report lists the rules in the order a sequential sweep runs them,
whatever order they finish in.

``workers: 1`` runs the rules in exactly that order in the calling thread. A stop (``SIGTERM``,
a lost lease) ends every store after its batch in flight; a store whose own lease is lost
(``store_stop``) ends alone. One store failing, even unreachable, never stops the others; an
unreachable state database stops them all after their batch and is raised to the caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from retentiond.executor import Executor, RuleResult
from retentiond.policy.model import Rule

# One rule swept with its store's executor (None: a dry run): its result, and the one-line
# error when the store was unreachable.
RuleFn = Callable[[Rule, "Executor | None"], tuple[RuleResult, "str | None"]]
ExecutorFor = Callable[[str, Callable[[], bool]], Executor]


class StoreWork:
    def __init__(self, one_rule: RuleFn, executor_for: ExecutorFor | None,
                 should_stop: Callable[[], bool],
                 store_stop: Callable[[str], bool] = lambda _: False) -> None:
        self.one_rule = one_rule
        self.executor_for = executor_for
        self.should_stop = should_stop
        self.store_stop = store_stop
        self.results: dict[str, RuleResult] = {}
        self.unreachable: dict[str, str] = {}
        self.stopped = False  # some store stopped early: the sweep is interrupted
        self._halt = False  # every store stops (a stop request, the state database gone)
        self._executors: dict[str, Executor] = {}
        self._ended: set[str] = set()  # stores that stopped early
        self._lock = threading.Lock()

    def run(self, rules: list[Rule], workers: int) -> list[RuleResult]:
        """Sweep the rules; their results in the order of ``rules`` (those that started)."""
        groups: dict[str, list[Rule]] = {}
        for rule in rules:
            groups.setdefault(rule.store, []).append(rule)
        if workers <= 1 or len(groups) <= 1:
            for rule in rules:
                if self._halt:
                    break
                if rule.store not in self._ended:
                    self._rule(rule)
        else:
            pool = ThreadPoolExecutor(max_workers=min(workers, len(groups)),
                                      thread_name_prefix="retentiond-store")
            futures = [pool.submit(self._store, group) for group in groups.values()]
            try:
                errors = [f.exception() for f in futures]
            except BaseException:
                # Ctrl-C (KeyboardInterrupt) reaches only this thread: every store stops
                # after its batch in flight, and only then does the caller go on (and
                # release the stores' leases); a second Ctrl-C does not cut that short.
                self._halt = True
                _join(futures)
                raise
            finally:
                pool.shutdown(wait=True)
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
        return [self.results[r.id] for r in rules if r.id in self.results]

    def first_unreachable(self, rules: list[Rule]) -> str | None:
        return next((self.unreachable[r.id] for r in rules if r.id in self.unreachable), None)

    def _store(self, group: list[Rule]) -> None:
        try:
            for rule in group:
                if self._halt or rule.store in self._ended:
                    return
                self._rule(rule)
        except BaseException:
            self._halt = True  # the others stop after their batch in flight
            raise

    def _stop_of(self, store: str) -> Callable[[], bool]:
        return lambda: self._halt or self.should_stop() or self.store_stop(store)

    def _executor(self, store: str) -> Executor | None:
        if self.executor_for is None:
            return None
        if store not in self._executors:
            self._executors[store] = self.executor_for(store, self._stop_of(store))
        return self._executors[store]

    def _rule(self, rule: Rule) -> None:
        executor = self._executor(rule.store)
        if executor is not None and self.store_stop(rule.store):
            self._end(rule.store)  # its lease is gone: not even one batch more
            return
        result, unreachable = self.one_rule(rule, executor)
        with self._lock:
            self.results[rule.id] = result
            if unreachable is not None:
                self.unreachable[rule.id] = unreachable
        if executor is not None and executor.stopped:
            self._end(rule.store)
            if self.should_stop():
                self._halt = True

    def _end(self, store: str) -> None:
        with self._lock:
            self._ended.add(store)
            self.stopped = True


def _join(futures: list[Future[None]]) -> None:
    """Wait for every future, whatever interrupts the waiting thread meanwhile."""
    while True:
        try:
            wait(futures)
            return
        except KeyboardInterrupt:
            continue
