"""Adapters by name: the built-ins plus anything in the ``retentiond.adapters`` entry points."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retentiond.adapters.base import Adapter

BUILTIN = {
    "sql": "retentiond.adapters.sql:SqlAdapter",
    "files": "retentiond.adapters.files:FilesAdapter",
    "s3": "retentiond.adapters.s3:S3Adapter",
}
GROUP = "retentiond.adapters"
_cache: dict[str, type[Adapter]] = {}
_registered: dict[str, type[Adapter]] = {}


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN)
    targets.update({n: f"{c.__module__}:{c.__qualname__}" for n, c in _registered.items()})
    for ep in entry_points(group=GROUP):
        targets.setdefault(ep.name, ep.value)
    return targets


def names() -> list[str]:
    return sorted(_targets())


def get(name: str) -> type[Adapter]:
    if name in _registered:
        return _registered[name]
    if name not in _cache:
        target = _targets()[name]
        module, _, attr = target.partition(":")
        _cache[name] = getattr(import_module(module), attr)
    return _cache[name]


def register(name: str, cls: type[Adapter]) -> None:
    """Register an adapter class at run time (tests, embedding); undo with unregister()."""
    _registered[name] = cls


def unregister(name: str) -> None:
    _registered.pop(name, None)
