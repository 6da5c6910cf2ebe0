"""A page allocator: a free list of physical page ids of one pool group."""

from __future__ import annotations

from typing import List

from .errors import CacheError, CacheFullError


class PageAllocator:
    """Hands out page ids ``0 .. num_pages-1``; freed pages are reused first (LIFO, cache friendly)."""

    def __init__(self, num_pages: int, name: str = "pages"):
        if num_pages < 0:
            raise ValueError(f"{name}: num_pages must be >= 0, got {num_pages}")
        self.name = name
        self.num_pages = num_pages
        self._free: List[int] = list(range(num_pages - 1, -1, -1))  # pop() yields 0, 1, 2, ...
        self._used = [False] * num_pages

    @property
    def num_free(self) -> int:
        return len(self._free)

    def check(self, n: int) -> None:
        """Raise ``CacheFullError`` if ``n`` pages cannot be allocated (allocates nothing)."""
        if n > len(self._free):
            raise CacheFullError(
                f"{self.name}: need {n} free pages, only {len(self._free)} of {self.num_pages} are free"
            )

    def allocate(self, n: int) -> List[int]:
        self.check(n)
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._used[p] = True
        return pages

    def release(self, pages: List[int]) -> None:
        for p in pages:
            if not (0 <= p < self.num_pages) or not self._used[p]:
                raise CacheError(f"{self.name}: page {p} is not allocated (double free?)")
        for p in pages:
            self._used[p] = False
            self._free.append(p)

    def grow(self, num_pages: int) -> None:
        """Add pages ``self.num_pages .. num_pages - 1`` (free); allocated ids stay allocated."""
        if num_pages <= self.num_pages:
            return
        new = list(range(num_pages - 1, self.num_pages - 1, -1))
        self._free = new + self._free  # reused pages first, as before; the new ones after them
        self._used += [False] * (num_pages - self.num_pages)
        self.num_pages = num_pages
