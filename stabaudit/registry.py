"""One small registry type for bound rules, checks and renderers (keys registered once)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """A mapping filled by decorators; registering a key twice is an error."""

    def __init__(self, name: str):
        self.name = name
        self._items: dict[K, V] = {}

    def register(self, key: K) -> Callable[[V], V]:
        def decorate(item: V) -> V:
            if key in self._items:
                raise KeyError(f"{self.name}: {key!r} is already registered")
            self._items[key] = item
            return item

        return decorate

    def add(self, key: K, item: V) -> None:
        self.register(key)(item)

    def get(self, key: K) -> V:
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(sorted(str(k) for k in self._items))
            raise KeyError(f"{self.name}: unknown key {key!r}; known: {known}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[K, V]]:
        return list(self._items.items())
