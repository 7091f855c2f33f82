"""Downloads into the mirror: single-flight, bounded in number, checked, atomic.

N readers of one cold file cause one download: the first asker starts it in the
fetcher's own nursery (so it survives the asker going away) and everyone waits for the
same outcome. A file is installed only after its size, and its MD5 where the upstream's
ETag is one, match what the upstream listed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from ..core.budget import MemoryBudget
from ..core.errors import FetchFailed, IntegrityError, MirrorFull, Stopping, UpstreamError, is_disk_full
from ..core.paths import RelPath
from ..core.retry import RetryPolicy, retrying
from ..core.types import READER, Installed, LocalEntry, RemoteEntry, Upstream
from ..store.index import Index
from ..store.mirror import Mirror
from .disk import DiskClaims
from .integrity import BodyHash
from .limits import PriorityLimiter, Ticket
from .preload import ReadAheads
from .stream import PART_SIZE, READ_BLOCK, Transfer

log = logging.getLogger("isaacfs.fetch")

# Every download buffer in all, by default (``download_memory_mb``).
DOWNLOAD_MEMORY = 256 * 1024 * 1024


class _Flight:
    __slots__ = ("done", "error", "result", "streaming", "ticket", "transfer")

    def __init__(self, ticket: Ticket) -> None:
        self.done = trio.Event()
        self.streaming = trio.Event()  # set when a transfer readers can follow starts, or at the end
        self.result: LocalEntry | None = None
        self.error: FetchFailed | None = None
        self.ticket = ticket
        self.transfer: Transfer | None = None


class Fetcher:
    def __init__(self, mirror: Mirror, index: Index, upstream: Upstream, jobs: int, retries: int,
                 stall_timeout: float = 30.0, memory_bytes: int = DOWNLOAD_MEMORY) -> None:
        self.stall_timeout = stall_timeout
        self.retry = RetryPolicy(tries=max(1, retries))
        # One budget for every download buffer: streamed parts, whole bodies, read-aheads.
        self.budget = MemoryBudget(memory_bytes)
        self.mirror = mirror
        self.index = index
        self.upstream = upstream
        # A quarter more places for readers and prefetches, which a bulk warm never fills.
        self.limit = PriorityLimiter(jobs, express=max(2, jobs // 4))
        self._inflight: dict[RelPath, _Flight] = {}
        self.read_aheads = ReadAheads(upstream, self.budget, self.limit)
        self.disk = DiskClaims(mirror)
        # Told when bytes a reader may have seen turned out wrong (the kernel drops its pages).
        self.on_discarded: Callable[[RelPath], None] = lambda rel: None
        # Told of every file installed, once (the mount's tree marks the node mirrored, the
        # prefetcher reads what a layer names).
        self.on_fetched: list[Callable[[Installed], None]] = []
        self.downloading = trio.Event()  # set when the first download (or read-ahead) starts
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Downloads run in this nursery; cancelling it discards them cleanly."""
        self._nursery = nursery

    @property
    def ranged(self) -> bool:
        """Where the upstream speaks ranged reads (S3/HTTPS), files stream: see stream.py. Asked
        each time: an upstream learns at its first listing whether it answers anonymous HTTP."""
        return self.upstream.ranged

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _flight(self, rel: RelPath, expected: RemoteEntry, priority: int) -> _Flight:
        flight = self._inflight.get(rel)
        if flight is None:
            if self._nursery is None:
                raise RuntimeError("Fetcher.attach() was not called")
            flight = self._inflight[rel] = _Flight(self.limit.ticket(priority, expected.size))
            self._nursery.start_soon(self._fly, rel, expected, flight)
            self.downloading.set()
        else:
            self.index.count("fetch_joined")
            if priority < flight.ticket.priority:
                flight.ticket.priority = priority
                self.limit.grant()  # a reader joined a queued bulk download: it may take an express place
        return flight

    async def stream(self, rel: RelPath, expected: RemoteEntry, priority: int = READER) -> LocalEntry | Transfer:
        """For a reader: the mirror's entry, or the transfer in progress to read from as it lands."""
        local = self.mirror.entry(rel)
        if local is not None and not local.is_dir:
            return local
        flight = self._flight(rel, expected, priority)
        if expected.size > PART_SIZE:  # one part or less: the reader waits for the checked file
            await flight.streaming.wait()
            if flight.transfer is not None and not flight.done.is_set():
                return flight.transfer
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None
        return flight.result

    async def ensure(self, rel: RelPath, expected: RemoteEntry, replace: bool = False,
                     priority: int = READER) -> LocalEntry:
        """The mirror's entry for ``rel``, downloading it first if it is not there.

        With ``replace``, the mirror's copy is known bad: download and swap it atomically.
        ``priority`` (READER, PREFETCH, BULK) orders downloads waiting for a slot; a reader
        that joins a queued bulk download promotes it.
        """
        local = self.mirror.entry(rel)
        if local is not None and not local.is_dir and not replace:
            return local
        flight = self._flight(rel, expected, priority)
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None
        return flight.result

    # -- reading ahead ----------------------------------------------------------------
    def preload(self, rel: RelPath, expected: RemoteEntry) -> bool:
        """Start reading ``rel`` into memory now, at a reader's priority, ahead of an ensure()
        that may come (``preload.ReadAheads``); False where it is not started (in flight
        already, mirrored, or past the read-aheads' bounds)."""
        if self._nursery is None or rel in self._inflight:
            return False
        local = self.mirror.entry(rel)
        if local is not None and not local.is_dir and local.size == expected.size:
            return False
        return self._reading_ahead(self.read_aheads.start(self._nursery, rel, expected))

    def preload_blind(self, rel: RelPath) -> bool:
        """``preload`` for a file whose entry is not known yet (where files are read by range):
        its first bytes are read while its folder is listed (``ReadAheads.start_blind``)."""
        if (self._nursery is None or rel in self._inflight or not self.upstream.reads_unlisted
                or self.mirror.entry(rel) is not None):
            return False
        return self._reading_ahead(self.read_aheads.start_blind(self._nursery, rel))

    def expect_downloads(self) -> None:
        """The caller knows downloads are coming before any has started (a closure whose root
        layer is not mirrored, a manifest naming files that are not): as ``downloading``."""
        self.downloading.set()

    def _reading_ahead(self, started: bool) -> bool:
        if started:
            self.downloading.set()  # a body on its way, as a download's is (warm: connect ahead)
        return started

    def drop_preloads(self, rels: Iterable[RelPath]) -> int:
        """Forget the bodies read ahead for ``rels`` that nobody asked for; returns how many."""
        return self.read_aheads.drop(rels)

    async def _fly(self, rel: RelPath, expected: RemoteEntry, flight: _Flight) -> None:
        try:
            preload = await self.read_aheads.take(rel, expected)
            if preload is not None:
                self.index.count("read_ahead_used")
                try:  # no request: no place taken
                    flight.result = await self._fetch(rel, expected, flight, preload.body)
                finally:
                    preload.free()
                return
            await self.limit.acquire(flight.ticket)
            try:
                flight.result = await self._fetch(rel, expected, flight)
            finally:
                self.limit.release(flight.ticket)
        except FetchFailed as exc:
            flight.error = exc
            self.index.count("fetch_errors")
            log.warning("could not fetch %s: %s", rel, exc)
        except trio.Cancelled:
            flight.error = FetchFailed(f"fetch of {rel} discarded: isaacfs is stopping", Stopping())
            raise
        except Exception as exc:  # a bug costs this fetch, never the downloads' nursery
            log.exception("fetch of %s failed unexpectedly", rel)
            flight.error = FetchFailed(f"fetch of {rel} failed: {exc!r}", exc)
            self.index.count("fetch_errors")
        finally:
            del self._inflight[rel]
            flight.done.set()
            flight.streaming.set()

    # -- the one download pipeline ------------------------------------------------------
    async def _fetch(self, rel: RelPath, expected: RemoteEntry, flight: _Flight,
                     body: bytearray | None = None) -> LocalEntry:
        """Tries under the one retry policy; each try claims room on the disk, moves the body
        into a temporary file by one of two strategies (a file of more than one part from a
        ranged upstream: ranged parts that readers follow as they land; anything else: the
        whole body in one request, or the body read ahead), checks it (``integrity``) and
        installs it, then tells every listener (``on_fetched``). A body that failed its check
        is tried again after the upstream is asked afresh what the file is."""
        current = expected

        async def attempt(number: int) -> LocalEntry:
            started = time.monotonic()
            await self.disk.claim(current.size)
            try:
                if body is not None and number == 1:
                    entry, digest = await self._whole(rel, current, body)
                elif self.ranged and current.size > PART_SIZE:
                    entry, digest = await self._ranged(rel, current, flight)
                else:
                    entry, digest = await self._whole(rel, current, None)
            finally:
                self.disk.release(current.size)
            self._installed(rel, entry, current, digest, started, flight.ticket.priority)
            return entry

        async def refresh(exc: BaseException) -> None:
            nonlocal current
            if isinstance(exc, IntegrityError):
                log.warning("fetch %s: %s", rel, exc)
                self.upstream.rejected(rel, str(exc).rsplit(": ", 1)[-1])
                current = await self._refresh(rel, current)

        try:
            return await retrying(attempt, f"fetch {rel}", self.retry, between=refresh)
        except IntegrityError as exc:
            raise FetchFailed(f"{rel} failed its integrity check {self.retry.tries} times: {exc}", exc) from None
        except (UpstreamError, MirrorFull) as exc:
            raise FetchFailed(str(exc), exc) from None
        except OSError as exc:
            if is_disk_full(exc):
                raise FetchFailed(f"mirror disk filled up while fetching {rel}", MirrorFull(str(exc))) from None
            raise FetchFailed(f"mirror write failed for {rel}: {exc}", exc) from None

    async def _whole(self, rel: RelPath, expected: RemoteEntry, body: bytearray | None) -> tuple[LocalEntry, str]:
        """Strategy one: the whole body in one request (or ``body``, read ahead) into a
        temporary file, hashed as it is written; checked and installed."""
        hashed = BodyHash(expected)
        writer = self.mirror.writer(hashed)
        try:
            if body is not None:
                await writer.write(memoryview(body))  # held in the budget by its read-ahead
            else:
                # The buffers it goes through: a block and its copy, or the whole body where
                # the upstream's library hands bodies over whole (omni.client).
                held = expected.size if self.upstream.body_in_memory else 2 * READ_BLOCK
                async with self.budget.hold(held):
                    await self.upstream.download(rel, expected.size, writer, expected.etag)
            await writer.finish()
            problem = hashed.problem()
            if problem is not None:
                raise IntegrityError(problem)
            entry = await trio.to_thread.run_sync(self.mirror.install, writer.path, rel, expected.mtime)
            return entry, hashed.md5
        finally:
            writer.discard()

    async def _ranged(self, rel: RelPath, expected: RemoteEntry, flight: _Flight) -> tuple[LocalEntry, str]:
        """Strategy two: ranged parts into the temporary file, readers following as bytes land
        (``stream.Transfer``); checked, then installed. A failed try fails its readers (their
        pages are dropped: ``on_discarded``)."""
        transfer: Transfer | None = None
        installed = False
        try:
            transfer = Transfer(rel, expected, self.mirror.new_temp(), PART_SIZE, self.stall_timeout, self.retry,
                                self.budget)
            flight.transfer = transfer
            flight.streaming.set()
            await transfer.run(self.upstream.read_range)
            problem = transfer.problem()
            if problem is not None:
                raise IntegrityError(problem)
            # Checked: a reader that read the file through has its answer now. The file counts
            # as mirrored only once it is on disk (fsynced) and installed.
            transfer.complete = True
            transfer.checked.set()
            await trio.to_thread.run_sync(os.fsync, transfer.fd)
            entry = await trio.to_thread.run_sync(self.mirror.install, Path(transfer.path), rel, expected.mtime)
            installed = True
            transfer.settled.set()
            return entry, transfer.hash.md5
        except Exception as exc:
            self._discard(transfer, FetchFailed(f"fetch of {rel}: {exc}", exc))
            raise
        except BaseException:
            # Stopping: readers get an error now. No page invalidation here: with a read of
            # this file in flight, it would wait on the kernel, which waits on us.
            if transfer is not None:
                transfer.fail(FetchFailed(f"fetch of {rel} discarded", Stopping()))
            raise
        finally:
            if transfer is not None:
                transfer.close()
                if not installed:
                    Path(transfer.path).unlink(missing_ok=True)


    def _discard(self, transfer: Transfer | None, error: FetchFailed) -> None:
        """Readers of a failed transfer get ``error`` on their next read; pages they may have
        been served are dropped."""
        if transfer is not None and transfer.error is None:
            transfer.fail(error)
            if transfer.served:  # even if every reader has closed: its pages outlive the handles
                self.index.count("streamed_then_failed")
                self.on_discarded(transfer.rel)

    def _installed(self, rel: RelPath, entry: LocalEntry, expected: RemoteEntry, digest: str, started: float,
                   priority: int) -> None:
        """The one announcement of an installed file, whatever the strategy: the index first
        (an install is recorded before it counts), then every listener."""
        self.index.record_file(rel, entry.size, expected.mtime, expected.etag, "upstream", digest)
        self.index.count("fetches")
        self.index.count("bytes_fetched", entry.size)
        log.info("fetched %s (%d bytes in %.2fs)", rel, entry.size, time.monotonic() - started)
        event = Installed(rel, entry, priority)
        for observer in self.on_fetched:
            observer(event)

    async def _refresh(self, rel: RelPath, expected: RemoteEntry) -> RemoteEntry:
        """What the upstream says ``rel`` is now, after a body failed its check: its folder
        listed afresh, as the entry was first learnt (S3 listings carry the ETag, where a stat
        through omni.client may not: the next try would be checked by size alone); a stat
        where the listing does not name it. On no answer, the entry as it was."""
        try:
            for entry in await self.upstream.list(rel.parent, fresh=True):
                if entry.name == rel.name and not entry.is_dir:
                    return entry
            return await self.upstream.stat(rel, fresh=True)
        except UpstreamError:
            return expected
