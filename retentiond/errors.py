"""Exceptions raised by retentiond, and the exit code each maps to.

    RetentiondError                 exit 1 unless a subclass says otherwise
    ├── UsageError                  exit 2: bad command-line arguments
    ├── PolicyError                 exit 2: the policy file is wrong (every problem, with its path)
    ├── DataError                   exit 2: the data in a store is not what the policy expects
    ├── StoreError                  exit 1: a store refused an operation (unsupported action, ...)
    │   ├── RecordsFailed           exit 1: records of a batch failed alone; the rest were disposed
    │   └── StoreUnreachable        exit 3: a store cannot be reached
    ├── StateUnreachable            exit 3: retentiond's own state database cannot be reached
    ├── LeaseBusy                   exit 3: another sweeper holds the sweep lease
    └── AuditError                  exit 4: the audit trail does not verify

Messages say what failed, where, and how to fix it. They never contain record contents, raw
keys or database error text that could echo them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

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
    """One or more problems in the policy file, each as ``(path, message)``.

    ``rule_ids`` maps a rule's position to its id as written in the file, for the rules whose
    id is usable; a line then names the rule both ways: ``rules[3] (minors).store: ...``. A rule
    without a usable id (missing, or not a valid id) is named by its path alone."""

    exit_code = 2

    def __init__(self, problems: Iterable[tuple[str, str]],
                 rule_ids: Mapping[int, str] | None = None) -> None:
        self.problems = sorted(set(problems), key=_problem_order)
        self.rule_ids = dict(rule_ids or {})
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return [one_line(f"{self.named(path)}: {msg}" if path else msg)
                for path, msg in self.problems]

    def named(self, path: str) -> str:
        """``rules[3].store`` as ``rules[3] (minors).store``; other paths unchanged."""
        m = _RULE_PATH.match(path)
        rule = self.rule_ids.get(int(m.group(1))) if m else None
        return f"{m.group(0)} ({rule}){path[m.end():]}" if m and rule else path

    def documents(self) -> list[dict[str, str | None]]:
        """The problems for ``--json``: ``{"path", "rule", "message"}`` each, ``rule`` (the id,
        or null when the rule has no usable id) only when the path is inside a rule."""
        out: list[dict[str, str | None]] = []
        for path, msg in self.problems:
            m = _RULE_PATH.match(path)
            doc: dict[str, str | None] = {"path": path}
            if m:
                doc["rule"] = self.rule_ids.get(int(m.group(1)))
            doc["message"] = msg
            out.append(doc)
        return out


# ``rules[3]`` at the start of a path, followed by its end, a key or an index.
_RULE_PATH = re.compile(r"^rules\[([0-9]+)\](?=$|[.\[])")


def _problem_order(problem: tuple[str, str]) -> tuple[str, str]:
    return problem


class DataError(RetentiondError):
    exit_code = 2


class StoreError(RetentiondError):
    exit_code = 1


class RecordsFailed(StoreError):
    """Some records of a batch failed with an integrity error nobody foresaw (a trigger, a
    check constraint); the store disposed and committed the others, ``disposed``. ``failed``
    counts the failing records by reason (a constraint's name or an error class, no values)."""

    def __init__(self, disposed: list[Any], failed: Mapping[str, int]) -> None:
        super().__init__(failure_line(failed))
        self.disposed = disposed
        self.failed = dict(failed)


def failure_line(failed: Mapping[str, int]) -> str:
    """``2 records failed: check constraint payments_amount_check (CheckViolation)``."""
    total = sum(failed.values())
    what = "; ".join(reason if len(failed) == 1 else f"{n} by {reason}"
                     for reason, n in sorted(failed.items()))
    return f"{total} record{'s' if total != 1 else ''} failed: {what}"


class StoreUnreachable(StoreError):
    exit_code = 3


class StateUnreachable(RetentiondError):
    exit_code = 3


class LeaseBusy(RetentiondError):
    """Another sweeper (the daemon, the timer's run) holds the sweep lease."""

    exit_code = 3


class AuditError(RetentiondError):
    exit_code = 4
