"""A least-recently-used cache bounded by a size: bytes (the render farm's screenshots) or entries (the critic
service's critiques, size_of=lambda v: 1). GRPO groups often produce the same page several times."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    def __init__(self, max_size: int, size_of: Callable[[V], int] = lambda v: 1):
        self.max_size = max_size  # 0 disables the cache
        self.size_of = size_of
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: Hashable, value: V) -> None:
        size = self.size_of(value)
        if size > self.max_size:
            return
        if key in self._items:
            self.size -= self._items.pop(key)[1]
        self._items[key] = (value, size)
        self.size += size
        while self.size > self.max_size:
            _, (_, old) = self._items.popitem(last=False)
            self.size -= old

    def __len__(self) -> int:
        return len(self._items)
