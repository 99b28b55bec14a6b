"""Path globs with named fields, as the ``files`` and ``s3`` rules write them (``path:``).

A pattern is a ``/``-separated path relative to the store's root (or bucket prefix)::

    invoices/**/*.pdf              every PDF below invoices/
    users/{subject}/**             every file below users/<subject id>/; the subject is the name
    logs/{clock:%Y-%m-%d}.log      the clock is the date in the name (strptime format)

* ``*`` any run of characters except ``/``; ``?`` one character except ``/``;
  ``[abc]``, ``[a-z]``, ``[!abc]`` (or ``[^abc]``) one character of (not of) a class;
* ``**`` as a whole segment: zero or more directories (``a/**/b`` matches ``a/b`` and
  ``a/x/y/b``; a trailing ``/**`` matches every file below); ``**`` inside a segment is ``*``;
* ``{subject}`` one or more characters except ``/``: the record's data subject;
* ``{clock:FMT}`` any run of characters except ``/``, read with ``strptime(FMT)`` as naive
  wall-clock time (in the policy's ``timezone``). A name whose field does not parse still
  matches: its clock is *bad* (never due by time, counted ``bad_clock``, disposed by an erasure
  request). An empty field is a bad clock too (as an empty text clock is on sql).

The whole path must match. A pattern is compiled to one regular expression. Braces are only
fields (a literal ``{`` or ``}`` in a name is matched with ``?``); there are no escapes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

__all__ = ["PathMatch", "PathPattern", "compiled"]

_SAMPLE = datetime(2001, 11, 22, 13, 14, 15, 123456)
_AWARE = re.compile(r"%[-#]?[zZ:]")
_SPECIAL = "*?[{"
_CLASS_ESCAPE = {"\\": "\\\\", "[": "\\[", "]": "\\]", "&": "\\&", "~": "\\~",
                 "|": "\\|"}


@dataclass(frozen=True)
class PathMatch:
    """What a matching path says: its subject (``{subject}``), its clock (``{clock:...}``; None
    when the pattern has no clock field or it does not parse) and whether the clock field's
    text does not parse (``bad_clock``)."""

    subject: str | None
    clock: datetime | None
    bad_clock: bool = False


# One token of a pattern: ("sep",) ("lit", regex) ("star",) ("one",) ("class", regex)
# ("subject",) ("clock", fmt)
_Token = tuple[str, ...]


class PathPattern:
    """A rule's ``path``, parsed and compiled. Raises ValueError (one line naming the problem)
    for a pattern that cannot work."""

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("path is empty; give a glob relative to the root, like "
                             "invoices/**/*.pdf")
        self.pattern = pattern
        segments = _segments(_tokens(pattern))
        _check_segments(pattern, segments)
        fields = [t for seg in segments for t in seg if t[0] in ("subject", "clock")]
        if sum(t[0] == "subject" for t in fields) > 1:
            raise ValueError("{subject} appears twice; a path has at most one subject")
        clocks = [t[1] for t in fields if t[0] == "clock"]
        if len(clocks) > 1:
            raise ValueError("{clock:...} appears twice; a path has at most one clock")
        self.has_subject = any(t[0] == "subject" for t in fields)
        self.clock_format: str | None = clocks[0] if clocks else None
        self.literal_prefix = _literal_prefix(pattern)
        self._segments: list[re.Pattern[str] | None] = [
            None if _is_globstar(seg) else re.compile(_segment_regex(seg))
            for seg in segments]
        #: The whole pattern as one regular expression (groups ``subject`` and ``clock``).
        self.regex = re.compile(_path_regex(segments))
        self._memo: OrderedDict[str, frozenset[int]] = OrderedDict()
        self._closed = [self._closure(i) for i in range(len(self._segments) + 1)]

    def __repr__(self) -> str:
        return f"PathPattern({self.pattern!r})"

    def match(self, rel: str) -> PathMatch | None:
        """The match of a ``/``-separated relative path, or None when it does not match."""
        m = self.regex.fullmatch(rel)
        return None if m is None else self.read(m)

    def read(self, m: re.Match[str]) -> PathMatch:
        """The fields of a full match of :attr:`regex`."""
        subject = m.group("subject") if self.has_subject else None
        if self.clock_format is None:
            return PathMatch(subject, None)
        try:
            clock = datetime.strptime(m.group("clock"), self.clock_format)
        except ValueError:
            return PathMatch(subject, None, bad_clock=True)
        return PathMatch(subject, clock)

    def could_contain(self, rel_dir: str) -> bool:
        """Whether a file below the directory ``rel_dir`` (relative, ``""`` for the root, with
        or without a trailing ``/``) could match: False lets a walk skip the directory."""
        return bool(self._states(rel_dir.strip("/")))

    def _states(self, rel_dir: str) -> frozenset[int]:
        """The segments a path could be at after the directories ``rel_dir`` (memoised: a walk
        asks for a directory right after its parent)."""
        memo = self._memo
        known = memo.get(rel_dir)
        if known is not None:
            memo.move_to_end(rel_dir)  # least recently used goes first: ancestors stay
            return known
        if not rel_dir:
            states = self._closed[0]
        else:
            parent, _, name = rel_dir.rpartition("/")
            states = self._next(self._states(parent), name)
        memo[rel_dir] = states
        if len(memo) > 4096:
            memo.popitem(last=False)
        return states

    def _next(self, states: frozenset[int], name: str) -> frozenset[int]:
        """The states after a directory named ``name``: a ``**`` segment stays (and may be
        done with), a segment that matches the name moves on; the last segment is a file's."""
        last = len(self._segments) - 1
        out: set[int] = set()
        for i in states:
            seg = self._segments[i]
            if seg is None:
                out |= self._closed[i]
            elif i < last and seg.fullmatch(name):
                out |= self._closed[i + 1]
        return frozenset(out)

    def _closure(self, i: int) -> frozenset[int]:
        """State ``i`` and those a run of ``**`` segments from it reaches without a name."""
        out = set()
        while i < len(self._segments):
            out.add(i)
            if self._segments[i] is not None:
                break
            i += 1
        return frozenset(out)


@lru_cache(maxsize=256)
def compiled(pattern: str) -> PathPattern:
    """The :class:`PathPattern` of a pattern, compiled once."""
    return PathPattern(pattern)


# -- parsing ----------------------------------------------------------------------------------
def _tokens(pattern: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "/":
            out.append(("sep",))
        elif c == "*":
            out.append(("star",))
        elif c == "?":
            out.append(("one",))
        elif c == "[":
            regex, i = _class(pattern, i)
            out.append(("class", regex))
            continue
        elif c == "{":
            token, i = _field(pattern, i)
            out.append(token)
            continue
        elif c == "}":
            raise ValueError("unbalanced braces: '}' without '{'; braces only enclose "
                             "{subject} or {clock:FORMAT}")
        elif c == "\0":
            raise ValueError("path contains a NUL character")
        else:
            out.append(("lit", re.escape(c)))
        i += 1
    return out


def _class(pattern: str, start: int) -> tuple[str, int]:
    """``[...]`` at ``start``: its regex (never matching ``/``) and the index after it."""
    j = start + 1
    negate = j < len(pattern) and pattern[j] in "!^"
    if negate:
        j += 1
    body_start = j
    if j < len(pattern) and pattern[j] == "]":
        j += 1  # a leading ] is a member
    while j < len(pattern) and pattern[j] != "]":
        if pattern[j] == "/":
            raise ValueError("a [...] class cannot contain '/'")
        if pattern[j] in "{}":
            raise ValueError("a [...] class cannot contain braces; match them with ?")
        j += 1
    if j >= len(pattern):
        raise ValueError("unclosed '[' in path; close the class with ']'")
    body = "".join(_CLASS_ESCAPE.get(ch, ch) for ch in pattern[body_start:j])
    if body.startswith("^"):
        body = "\\" + body
    return (f"[^/{body}]" if negate else f"[{body}]"), j + 1


def _field(pattern: str, start: int) -> tuple[_Token, int]:
    end = pattern.find("}", start)
    if end < 0:
        raise ValueError("unbalanced braces: '{' without '}'; write {subject} or "
                         "{clock:FORMAT}")
    text = pattern[start + 1:end]
    if "{" in text:
        raise ValueError("unbalanced braces: '{' inside a field")
    if "/" in text:
        raise ValueError(f"field {{{text}}} contains '/'; a field is part of one file or "
                         "directory name")
    if text == "subject":
        return ("subject",), end + 1
    if text == "clock":
        raise ValueError("{clock} needs a strptime format, like {clock:%Y-%m-%d}")
    if text.startswith("clock:"):
        return ("clock", _clock_format(text[len("clock:"):])), end + 1
    raise ValueError(f"unknown field {{{text}}}; use {{subject}} or {{clock:FORMAT}}")


def _clock_format(fmt: str) -> str:
    if not re.search("%[^%]", fmt.replace("%%", "")):
        raise ValueError(f"{{clock:{fmt}}} has no % directive; give a strptime format like "
                         "%Y-%m-%d")
    if _AWARE.search(fmt):
        raise ValueError(f"{{clock:{fmt}}}: time zones (%z, %Z) are not supported; a clock "
                         "in a name is wall-clock time in the policy's timezone")
    try:
        back = datetime.strptime(_SAMPLE.strftime(fmt), fmt)
    except ValueError:
        raise ValueError(f"{{clock:{fmt}}} is not a strptime format that reads back what "
                         "it writes; use directives like %Y %m %d %H %M %S") from None
    if back.year != _SAMPLE.year:
        raise ValueError(f"{{clock:{fmt}}} has no year (%Y or %y): every name would read as "
                         "1900 and be due")
    return fmt


def _segments(tokens: list[_Token]) -> list[list[_Token]]:
    segments: list[list[_Token]] = [[]]
    for t in tokens:
        if t[0] == "sep":
            segments.append([])
        else:
            segments[-1].append(t)
    return segments


def _literal(seg: list[_Token]) -> str | None:
    """A segment's text when it is all literal characters."""
    if not all(t[0] == "lit" for t in seg):
        return None
    return re.sub(r"\\(.)", r"\1", "".join(t[1] for t in seg))


def _check_segments(pattern: str, segments: list[list[_Token]]) -> None:
    if pattern.startswith("/"):
        raise ValueError("path is absolute; write it relative to the store's root, like "
                         "invoices/**/*.pdf")
    if pattern.endswith("/"):
        raise ValueError("path ends with '/'; add ** to match every file below, like "
                         "invoices/**")
    if any(not seg for seg in segments):
        raise ValueError("path has an empty segment ('//')")
    for seg in segments:
        text = _literal(seg)
        if text in (".", ".."):
            raise ValueError(f"path has a '{text}' segment; write the path without it")


def _is_globstar(seg: list[_Token]) -> bool:
    return len(seg) == 2 and all(t[0] == "star" for t in seg)


def _segment_regex(seg: list[_Token]) -> str:
    out: list[str] = []
    for t in seg:
        kind = t[0]
        if kind == "star":
            if out and out[-1] == "[^/]*":
                continue  # ** inside a segment is *
            out.append("[^/]*")
        elif kind == "one":
            out.append("[^/]")
        elif kind in ("lit", "class"):
            out.append(t[1])
        elif kind == "subject":
            out.append("(?P<subject>[^/]+)")
        else:
            out.append("(?P<clock>[^/]*)")
    return "".join(out)


def _path_regex(segments: list[list[_Token]]) -> str:
    parts: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if _is_globstar(seg):
            parts.append("(?:[^/]+/)*[^/]+" if i == last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(seg) + ("" if i == last else "/"))
    return "".join(parts)


def _literal_prefix(pattern: str) -> str:
    """The part before the first wildcard or field, cut back to the last ``/``."""
    cut = min((i for i, c in enumerate(pattern) if c in _SPECIAL), default=len(pattern))
    head = pattern[:cut]
    return head[:head.rfind("/") + 1]
