"""Path globs with named fields (retentiond/adapters/pathglob.py): exact matches, every refusal,
and hypothesis properties against an independent segment-by-segment matcher."""

from __future__ import annotations

import fnmatch
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.adapters.pathglob import PathMatch, PathPattern, compiled


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("invoices/**/*.pdf", "invoices/a.pdf", True),
    ("invoices/**/*.pdf", "invoices/2019/03/a.pdf", True),
    ("invoices/**/*.pdf", "invoices/a.pdf.txt", False),
    ("invoices/**/*.pdf", "archive/invoices/a.pdf", False),
    ("invoices/**/*.pdf", "invoices", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/xb", False),
    ("a/**", "a/f", True),
    ("a/**", "a/x/y/f", True),
    ("a/**", "a", False),
    ("**", "f", True),
    ("**", "x/y/f", True),
    ("**/f", "f", True),
    ("**/f", "x/f", True),
    ("*", "x/f", False),
    ("*.log", ".hidden.log", True),
    ("?.txt", "a.txt", True),
    ("?.txt", "ab.txt", False),
    ("a**b/c", "axyb/c", True),       # ** inside a segment is *
    ("a**b/c", "ax/yb/c", False),
    ("[abc].txt", "b.txt", True),
    ("[abc].txt", "d.txt", False),
    ("[!abc].txt", "d.txt", True),
    ("[^abc].txt", "a.txt", False),
    ("[]x].txt", "].txt", True),
    ("[a-c]", "b", True),
    ("[a-c]", "-", False),
    ("a+b(c).txt", "a+b(c).txt", True),  # regex characters are literal
    ("a+b(c).txt", "aab(c).txt", False),
    ("docs/report.pdf", "docs/report.pdf", True),
    ("docs/report.pdf", "docs/report.pdfx", False),
])
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert (PathPattern(pattern).match(path) is not None) is matches


def test_subject_and_clock_fields() -> None:
    p = PathPattern("users/{subject}/**")
    assert p.has_subject and p.clock_format is None
    assert p.match("users/4711/cv/2019.pdf") == PathMatch("4711", None)
    assert p.match("users/4711") is None  # ** after it needs a file
    q = PathPattern("logs/{clock:%Y-%m-%d}.log")
    assert not q.has_subject and q.clock_format == "%Y-%m-%d"
    assert q.match("logs/2024-02-29.log") == PathMatch(None, datetime(2024, 2, 29))
    assert q.match("logs/2023-02-29.log") == PathMatch(None, None, bad_clock=True)
    assert q.match("logs/latest.log") == PathMatch(None, None, bad_clock=True)
    assert q.match("logs/.log") == PathMatch(None, None, bad_clock=True)  # empty: bad, as ''
    assert q.match("logs/2024-02-29.txt") is None
    both = PathPattern("t/{subject}/{clock:%Y%m%dT%H%M%S}-*.json")
    assert both.match("t/u-1/20240102T030405-x.json") == PathMatch(
        "u-1", datetime(2024, 1, 2, 3, 4, 5))
    assert both.match("t//20240102T030405-x.json") is None  # a subject is never empty


@pytest.mark.parametrize(("pattern", "prefix"), [
    ("invoices/**/*.pdf", "invoices/"),
    ("users/{subject}/**", "users/"),
    ("logs/{clock:%Y}.log", "logs/"),
    ("a/b/c.txt", "a/b/"),
    ("a/b*/c", "a/"),
    ("*.pdf", ""),
    ("**", ""),
    ("x/[ab]/y", "x/"),
    ("x/?/y", "x/"),
])
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert PathPattern(pattern).literal_prefix == prefix


@pytest.mark.parametrize(("pattern", "message"), [
    ("", "path is empty; give a glob relative to the root, like invoices/**/*.pdf"),
    ("/srv/uploads/**", "path is absolute; write it relative to the store's root, like "
                        "invoices/**/*.pdf"),
    ("a/../b", "path has a '..' segment; write the path without it"),
    ("../b", "path has a '..' segment; write the path without it"),
    ("a/./b", "path has a '.' segment; write the path without it"),
    ("a//b", "path has an empty segment ('//')"),
    ("a/", "path ends with '/'; add ** to match every file below, like invoices/**"),
    ("users/{user}/**", "unknown field {user}; use {subject} or {clock:FORMAT}"),
    ("users/{Subject}/**", "unknown field {Subject}; use {subject} or {clock:FORMAT}"),
    ("{clock}.log", "{clock} needs a strptime format, like {clock:%Y-%m-%d}"),
    ("{clock:%Y}/{clock:%Y-%m}.log", "{clock:...} appears twice; a path has at most one clock"),
    ("{subject}/{subject}", "{subject} appears twice; a path has at most one subject"),
    ("users/{subject/**", "unbalanced braces: '{' without '}'; write {subject} or "
                          "{clock:FORMAT}"),
    ("users/subject}/**", "unbalanced braces: '}' without '{'; braces only enclose "
                          "{subject} or {clock:FORMAT}"),
    ("a/{{subject}}", "unbalanced braces: '{' inside a field"),
    ("a/[bc", "unclosed '[' in path; close the class with ']'"),
    ("a/[b/c]", "a [...] class cannot contain '/'"),
    ("a/[{]", "a [...] class cannot contain braces; match them with ?"),
    ("{clock:%Y/%m}.log", "field {clock:%Y/%m} contains '/'; a field is part of one file or "
                          "directory name"),
    ("{clock:daily}.log", "{clock:daily} has no % directive; give a strptime format like "
                          "%Y-%m-%d"),
    ("{clock:%%}.log", "{clock:%%} has no % directive; give a strptime format like %Y-%m-%d"),
    ("{clock:%Y-%m-%d%z}.log", "{clock:%Y-%m-%d%z}: time zones (%z, %Z) are not supported; "
                               "a clock in a name is wall-clock time in the policy's timezone"),
    ("{clock:%m-%d}.log", "{clock:%m-%d} has no year (%Y or %y): every name would read as "
                          "1900 and be due"),
    ("{clock:%Q}.log", "{clock:%Q} is not a strptime format that reads back what it writes; "
                       "use directives like %Y %m %d %H %M %S"),
    ("a\0b", "path contains a NUL character"),
])
def test_bad_patterns_are_refused_with_one_line(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        PathPattern(pattern)
    assert str(info.value) == message
    assert "\n" not in message


def test_compiled_is_cached() -> None:
    assert compiled("a/**") is compiled("a/**")


def test_could_contain_prunes_exactly_the_unreachable_directories() -> None:
    p = PathPattern("users/{subject}/invoices/*.pdf")
    assert [d for d in ("", "users", "users/7/", "users/7/invoices", "users/7/other",
                        "other", "users/7/invoices/deeper") if p.could_contain(d)] == [
        "", "users", "users/7/", "users/7/invoices"]
    anywhere = PathPattern("**/x.pdf")
    assert all(anywhere.could_contain(d) for d in ("", "a", "a/b/c"))
    assert not PathPattern("a.pdf").could_contain("a")


# -- properties against an independent matcher --------------------------------------------------
SEGMENTS = ("a", "b", "ab", "*", "?", "**", "a*", "*b", "[ab]", "[!a]", "?b", "a?")
NAMES = ("a", "b", "ab", "ba", "aa", "bb", "abb", "x")


def reference(pattern: list[str], path: list[str]) -> bool:
    """Segment by segment: ``**`` any number of whole names (a trailing one at least one),
    anything else fnmatch on one name (no '/' inside a name)."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if not rest:
            return len(path) >= 1
        return any(reference(rest, path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and reference(rest, path[1:])


patterns = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5)
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=6)


@settings(max_examples=600, deadline=None)
@given(patterns, paths)
def test_matching_agrees_with_a_segment_by_segment_matcher(pattern: list[str],
                                                           path: list[str]) -> None:
    compiled_pattern = PathPattern("/".join(pattern))
    assert (compiled_pattern.match("/".join(path)) is not None) is reference(pattern, path)


@settings(max_examples=600, deadline=None)
@given(patterns, paths)
def test_a_match_is_below_the_literal_prefix_and_inside_every_enterable_directory(
        pattern: list[str], path: list[str]) -> None:
    p = PathPattern("/".join(pattern))
    rel = "/".join(path)
    if p.match(rel) is None:
        return
    assert rel.startswith(p.literal_prefix)
    for depth in range(len(path)):
        assert p.could_contain("/".join(path[:depth])), (pattern, path, depth)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2999, 12, 31)),
       st.sampled_from(("%Y-%m-%d", "%Y%m%dT%H%M%S", "%Y/%m", "%d.%m.%Y %H:%M")),
       st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=12))
def test_fields_read_back_what_was_written(when: datetime, fmt: str, subject: str) -> None:
    if "/" in fmt:  # a clock field is part of one name: its directories are separate
        return
    p = PathPattern(f"u/{{subject}}/x-{{clock:{fmt}}}.log")
    got = p.match(f"u/{subject}/x-{when.strftime(fmt)}.log")
    assert got is not None
    assert got.subject == subject
    assert got.clock == datetime.strptime(when.strftime(fmt), fmt)
    assert not got.bad_clock
