"""Exceptions raised by retentiond, and the exit code each maps to.

    RetentiondError                 exit 1 unless a subclass says otherwise
    ├── UsageError                  exit 2: bad command-line arguments
    ├── PolicyError                 exit 2: the policy file is wrong (every problem, with its path)
    ├── DataError                   exit 2: the data in a store is not what the policy expects
    ├── StoreError                  exit 1: a store refused an operation (unsupported action, ...)
    │   └── StoreUnreachable        exit 3: a store cannot be reached
    ├── StateUnreachable            exit 3: retentiond's own state database cannot be reached
    ├── LeaseBusy                   exit 3: another sweeper holds the sweep lease
    └── AuditError                  exit 4: the audit trail does not verify

Messages say what failed, where, and how to fix it. They never contain record contents, raw
keys or database error text that could echo them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Characters that would end or garble a line on a terminal or in the journal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every control character escaped as ``repr`` would (``\\n``, ``\\x1b``),
    so that a value a user typed can never split an error line or forge another one."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def shown(value: object, limit: int = 80) -> str:
    """A user-supplied value quoted for a message: ``repr`` (control characters escaped) and
    cut to ``limit`` characters, saying how long it was."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class RetentiondError(Exception):
    exit_code = 1

    def lines(self) -> list[str]:
        return [one_line(str(self))]


class UsageError(RetentiondError):
    exit_code = 2


class PolicyError(RetentiondError):
    """One or more problems in the policy file, each as ``(path, message)``."""

    exit_code = 2

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = sorted(set(problems), key=_problem_order)
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return [one_line(f"{path}: {msg}" if path else msg) for path, msg in self.problems]


def _problem_order(problem: tuple[str, str]) -> tuple[str, str]:
    return problem


class DataError(RetentiondError):
    exit_code = 2


class StoreError(RetentiondError):
    exit_code = 1


class StoreUnreachable(StoreError):
    exit_code = 3


class StateUnreachable(RetentiondError):
    exit_code = 3


class LeaseBusy(RetentiondError):
    """Another sweeper (the daemon, the timer's run) holds the sweep lease."""

    exit_code = 3


class AuditError(RetentiondError):
    exit_code = 4
