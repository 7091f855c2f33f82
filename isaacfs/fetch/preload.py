"""Bodies read into memory ahead of the download that may ask for them: a closure reads ahead
the layers listed in a robot's folder, so its chain of layers (root, payload, meshes) costs
one round trip, not one per level. Bounded (PRELOAD_BYTES in all, PRELOAD_FILE_BYTES a
file, half the memory budget at most); a body is used only by a download of the same size,
which checks and installs it like any other."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from ..core.budget import MemoryBudget
from ..core.errors import UpstreamError
from ..core.paths import RelPath
from ..core.types import READER, RemoteEntry, Upstream
from .limits import PriorityLimiter

log = logging.getLogger("isaacfs.fetch")

# Bodies read ahead into memory: in all, and per file.
PRELOAD_BYTES = 64 * 1024 * 1024
PRELOAD_FILE_BYTES = 16 * 1024 * 1024
# A layer read before its folder's listing says its size: this much of it at most (a larger
# one is fetched as usual once listed, and this read wasted).
BLIND_BYTES = 1024 * 1024


class Preload:
    """A body read into memory ahead of its download."""

    __slots__ = ("body", "budget", "done", "scope", "share", "size")

    def __init__(self, size: int, budget: MemoryBudget) -> None:
        self.size = size
        self.body: bytearray | None = None
        self.done = trio.Event()
        self.scope = trio.CancelScope()
        self.budget = budget
        self.share = 0  # of the memory budget, held while the body lives

    def free(self) -> None:
        """The body is gone (used, dropped or failed): its memory goes back, once."""
        self.body = None
        if self.share:
            self.budget.release(self.share)
            self.share = 0

    async def write(self, data: bytes | memoryview) -> None:  # a Sink
        assert self.body is not None
        self.body += data


class ReadAheads:
    def __init__(self, upstream: Upstream, budget: MemoryBudget, limit: PriorityLimiter) -> None:
        self.upstream = upstream
        self.budget = budget
        self.limit = limit
        self._preloads: dict[RelPath, Preload] = {}
        self._bytes = 0

    def __contains__(self, rel: RelPath) -> bool:
        return rel in self._preloads

    def start(self, nursery: trio.Nursery, rel: RelPath, expected: RemoteEntry) -> bool:
        """Start reading ``rel`` into memory, at a reader's priority (a layer, to be parsed next,
        which takes the express places: see limits.py); False where it is not
        started (already there, too large, or past the bounds)."""
        if (rel in self._preloads or expected.size > PRELOAD_FILE_BYTES
                or self._bytes + expected.size > min(PRELOAD_BYTES, self.budget.limit // 2)):
            return False
        preload = self._preloads[rel] = Preload(expected.size, self.budget)
        self._bytes += expected.size
        nursery.start_soon(self._read_ahead, rel, expected, preload)
        return True

    def start_blind(self, nursery: trio.Nursery, rel: RelPath) -> bool:
        """Start reading ``rel`` (its first BLIND_BYTES) before its entry is known: a layer a
        layer names, whose GET then goes while its folder is listed, not after. The download
        that takes it checks it against the listing's size and ETag, as any body."""
        if rel in self._preloads or self._bytes + BLIND_BYTES > min(PRELOAD_BYTES, self.budget.limit // 2):
            return False
        preload = self._preloads[rel] = Preload(BLIND_BYTES, self.budget)
        self._bytes += BLIND_BYTES
        nursery.start_soon(self._read_ahead, rel, None, preload)
        return True

    async def _read_ahead(self, rel: RelPath, expected: RemoteEntry | None, preload: Preload) -> None:
        ticket = self.limit.ticket(READER, preload.size)
        try:
            with preload.scope:
                preload.share = await self.budget.acquire(preload.size)
                await self.limit.acquire(ticket)
                try:
                    preload.body = bytearray()
                    if expected is None:
                        await self.upstream.read_range(rel, 0, BLIND_BYTES, preload.write)
                    else:
                        await self.upstream.download(rel, expected.size, preload, expected.etag)
                finally:
                    self.limit.release(ticket)
        except UpstreamError as exc:
            log.debug("read-ahead of %s did not happen: %s", rel, exc)  # its download asks again
            preload.body = None
        except Exception:
            log.exception("read-ahead of %s failed", rel)
            preload.body = None
        finally:
            if preload.scope.cancelled_caught or preload.body is None:
                preload.free()
            preload.done.set()

    def drop(self, rels: Iterable[RelPath]) -> int:
        """Forget the bodies read ahead for ``rels`` that nobody asked for (cancelling those
        still coming); returns how many. Another job's read-aheads are left alone."""
        dropped = 0
        for rel in rels:
            preload = self._preloads.pop(rel, None)
            if preload is not None:
                preload.scope.cancel()
                preload.free()
                self._bytes -= preload.size
                dropped += 1
        return dropped

    async def take(self, rel: RelPath, expected: RemoteEntry) -> Preload | None:
        """The read-ahead of ``rel`` if its body has the expected size (waiting for it to
        land); the taker frees it when done with the body."""
        preload = self._preloads.pop(rel, None)
        if preload is None:
            return None
        try:
            await preload.done.wait()
        finally:
            self._bytes -= preload.size
        if preload.body is None or len(preload.body) != expected.size:
            preload.free()
            return None
        return preload
