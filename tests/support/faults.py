"""Faults around any upstream (after mountpoint-s3's failure client): the switches a test
flips to make an upstream misbehave, whatever the upstream is (the in-memory store, or a
real backend: ``FaultyUpstream(OmniUpstream(...))``).

``down``: every request fails as a dead host does (ConnectionLost, and the upstream rests);
``fail[path]``: requests about one path fail with that error; ``corrupt``: the first byte of
a body is flipped in transit; ``delay`` / ``slow[path]``: answers come late; ``chunk_delay``:
a ranged body comes paced, block by block; ``stall_after[path]``: a ranged body stops
arriving at that offset; ``cut_after[path]``: a ranged body ends there, once. ``requests``
counts what was asked ("list a/b", "stat a/b", "get a/b", "range a/b", "walk a", "probe a"),
``ranges`` logs every ranged read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from isaacfs.core.errors import ConnectionLost, UpstreamError
from isaacfs.core.health import Health
from isaacfs.core.paths import RelPath
from isaacfs.core.types import OnData, RemoteEntry, Sink, TierRows, Upstream

Folders = dict[RelPath, list[RemoteEntry]]


class _Flipping:
    """A sink that flips the first byte of the body it is given."""

    def __init__(self, sink: Sink) -> None:
        self.sink, self.first = sink, True

    async def write(self, data: bytes | memoryview) -> None:
        if self.first and len(data):
            self.first = False
            data = bytes([data[0] ^ 0xFF]) + bytes(data[1:])
        await self.sink.write(data)


class FaultyUpstream:
    def __init__(self, inner: Upstream, retry_after: float = 30.0) -> None:
        self.inner = inner
        self.root_url = inner.root_url
        self.health = Health(inner.root_url, retry_after)
        self.down = False
        self.fail: dict[str, UpstreamError] = {}
        self.corrupt: set[str] = set()
        self.delay = 0.0
        self.slow: dict[str, float] = {}
        self.chunk_delay = 0.0
        self.stall_after: dict[str, int] = {}
        self.cut_after: dict[str, int] = {}
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, int, int]] = []

    def __getattr__(self, name: str) -> Any:  # the inner upstream's own controls (files, put ...)
        return getattr(self.__dict__["inner"], name)

    # -- faults -------------------------------------------------------------------------
    async def _answer(self, what: str, rel: RelPath, resting_ok: bool = False) -> None:
        if not resting_ok:
            self.health.check(what)
        self.requests[f"{what.split()[0]} {rel}"] += 1
        if self.delay or str(rel) in self.slow:
            await trio.sleep(self.delay + self.slow.get(str(rel), 0.0))
        problem: UpstreamError | None = None
        if self.down:
            problem = ConnectionLost(f"{what}: upstream unavailable (ERROR_CONNECTION)")
        elif str(rel) in self.fail:
            problem = self.fail[str(rel)]
        self.health.mark(problem)
        if problem is not None:
            raise problem

    # -- the protocol -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.health.available and self.inner.available

    @property
    def ranged(self) -> bool:
        return self.inner.ranged

    @property
    def reads_unlisted(self) -> bool:
        return self.inner.reads_unlisted

    @property
    def body_in_memory(self) -> bool:
        return self.inner.body_in_memory

    @property
    def download_path(self) -> str:
        return f"{self.inner.download_path} (faults injected)"

    def url_for(self, rel: RelPath) -> str:
        return self.inner.url_for(rel)

    async def list(self, rel: RelPath, fresh: bool = False) -> list[RemoteEntry]:
        await self._answer(f"list {rel}", rel)
        return await self.inner.list(rel, fresh)

    async def walk(self, rel: RelPath, max_files: int = 5000, partial: bool = False) -> Folders | None:
        found = await self.inner.walk(rel, max_files, partial)
        if found is not None:
            await self._answer(f"walk {rel}", rel)
        return found

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry:
        await self._answer(f"stat {rel}", rel)
        return await self.inner.stat(rel, fresh)

    async def probe(self, rel: RelPath, timeout: float) -> None:
        await self._answer("probe", rel, resting_ok=True)
        await self.inner.probe(rel, timeout)

    async def connect_ahead(self, count: int) -> None:
        self.requests["connect_ahead"] += 1
        await self.inner.connect_ahead(count)

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: OnData,
                         etag: str = "", size: int = -1) -> None:
        await self._answer(f"range {rel}", rel)
        path = str(rel)
        self.ranges.append((path, start, end))
        stall, cut = self.stall_after.get(path), self.cut_after.pop(path, None)
        position = start
        flip = path in self.corrupt and start == 0

        class _Cut(Exception):
            pass

        async def faulty(block: bytes | memoryview) -> None:
            nonlocal position, flip
            if stall is not None and position + len(block) > stall:
                if stall > position:
                    await on_data(block[:stall - position])
                await trio.sleep_forever()  # no more bytes, ever: a stall
            if cut is not None and position + len(block) > cut:
                if cut > position:
                    await on_data(block[:cut - position])
                raise _Cut  # the connection closed early
            if self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            if flip and block:
                flip, block = False, bytes([block[0] ^ 0xFF]) + bytes(block[1:])
            position += len(block)
            await on_data(block)

        try:
            await self.inner.read_range(rel, start, end, faulty, etag, size)
        except _Cut:
            return

    async def download(self, rel: RelPath, size: int, sink: Sink, etag: str = "") -> None:
        await self._answer(f"get {rel}", rel)
        await self.inner.download(rel, size, _Flipping(sink) if str(rel) in self.corrupt else sink, etag)

    def rejected(self, rel: RelPath, why: str) -> None:
        self.inner.rejected(rel, why)

    def tier_rows(self) -> TierRows:
        return self.inner.tier_rows()

    async def aclose(self) -> None:
        await self.inner.aclose()
