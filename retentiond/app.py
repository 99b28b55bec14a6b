"""What every command shares: the policy, the state database and the store adapters, opened
lazily and once."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import Engine

from retentiond.adapters import registry
from retentiond.adapters.base import Adapter
from retentiond.policy import Policy, load_policy
from retentiond.state.db import open_state

DEFAULT_CONFIG = "/etc/retentiond/retentiond.yaml"


def config_path(given: str | None) -> Path:
    return Path(given or os.environ.get("RETENTIOND_CONFIG") or DEFAULT_CONFIG)


class App:
    def __init__(self, config: str | None = None, *, json_out: bool = False,
                 debug: bool = False) -> None:
        self.config_path = config_path(config)
        self.json = json_out
        self.debug = debug
        self._adapters: dict[str, Adapter] = {}

    @cached_property
    def policy(self) -> Policy:
        return load_policy(self.config_path)

    @cached_property
    def state(self) -> Engine:
        return open_state(self.policy.state)

    def adapter(self, store_name: str) -> Adapter:
        """The connected adapter of a store (StoreUnreachable if it cannot be reached)."""
        if store_name not in self._adapters:
            store = self.policy.stores[store_name]
            adapter = registry.get(store.adapter)(store_name, store, self.policy)
            adapter.connect()
            self._adapters[store_name] = adapter
        return self._adapters[store_name]

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        self._adapters.clear()
        if "state" in self.__dict__:
            self.state.dispose()
