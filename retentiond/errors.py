"""Exceptions raised by retentiond, and the exit code each maps to.

    RetentiondError                 exit 1 unless a subclass says otherwise
    ├── UsageError                  exit 2: bad command-line arguments
    ├── PolicyError                 exit 2: the policy file is wrong (every problem, with its path)
    ├── DataError                   exit 2: the data in a store is not what the policy expects
    ├── StoreError                  exit 1: a store refused an operation (unsupported action, ...)
    │   └── StoreUnreachable        exit 3: a store cannot be reached
    ├── StateUnreachable            exit 3: retentiond's own state database cannot be reached
    └── AuditError                  exit 4: the audit trail does not verify

Messages say what failed, where, and how to fix it. They never contain record contents, raw
keys or database error text that could echo them.
"""

from __future__ import annotations

from collections.abc import Iterable


class RetentiondError(Exception):
    exit_code = 1

    def lines(self) -> list[str]:
        return [str(self)]


class UsageError(RetentiondError):
    exit_code = 2


class PolicyError(RetentiondError):
    """One or more problems in the policy file, each as ``(path, message)``."""

    exit_code = 2

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = sorted(set(problems), key=_problem_order)
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{path}: {msg}" if path else msg for path, msg in self.problems]


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


class AuditError(RetentiondError):
    exit_code = 4
