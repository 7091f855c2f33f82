"""One memory budget for every download buffer (after mountpoint-s3's MemoryLimiter).

A download holds its share before it fills a buffer and gives it back when the buffer is
gone: a streamed part its flush buffer and the block its read is handed in, a whole-body
download the block it writes through (or, where the library hands a body over whole, the
body), a body read ahead the body. Holds are taken at one level only (never a hold inside a
hold), so a full budget makes downloads wait for each other, never for themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a memory budget needs room for one buffer")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waits = 0  # holds that had to wait for room (status, tests)
        self._freed = trio.Event()

    def _share(self, amount: int) -> int:
        # One buffer larger than the whole budget takes the whole budget, alone.
        return max(0, min(amount, self.limit))

    async def acquire(self, amount: int) -> int:
        """Wait for room for ``amount`` bytes and take it; returns what was taken (give that
        back to ``release``)."""
        share = self._share(amount)
        if self.used + share > self.limit:
            self.waits += 1
            while self.used + share > self.limit:
                await self._freed.wait()
        self.used += share
        self.peak = max(self.peak, self.used)
        return share

    def release(self, share: int) -> None:
        self.used -= share
        self._freed.set()
        self._freed = trio.Event()

    @asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        share = await self.acquire(amount)
        try:
            yield
        finally:
            self.release(share)
