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
from ..core.types import PREFETCH, READER, Installed, LocalEntry, RemoteEntry, Upstream
from ..store.index import Index
from ..store.mirror import Mirror
from .integrity import BodyHash
from .limits import PriorityLimiter, Ticket
from .stream import PART_SIZE, READ_BLOCK, Transfer

log = logging.getLogger("isaacfs.fetch")

# Room left free on the mirror's disk beyond the file itself, so a fetch never fills it:
# 64 MiB, or a twentieth of a small disk.
DISK_RESERVE = 64 * 1024 * 1024
# Bodies read ahead into memory (``Fetcher.preload``): in all, and per file.
PRELOAD_BYTES = 64 * 1024 * 1024
PRELOAD_FILE_BYTES = 16 * 1024 * 1024
# Every download buffer in all, by default (``download_memory_mb``).
DOWNLOAD_MEMORY = 256 * 1024 * 1024


# Priority classes (core.types): a reader's demand first, then prefetch, then bulk warm.
class _Preload:
    """A body read into memory ahead of its ensure()."""

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
        self._preloads: dict[RelPath, _Preload] = {}
        self._preloaded_bytes = 0
        self._claimed = 0  # bytes the downloads in flight will write
        self._disk_freed = trio.Event()
        # Told when bytes a reader may have seen turned out wrong (the kernel drops its pages).
        self.on_discarded: Callable[[RelPath], None] = lambda rel: None
        # Told of every file installed, once (the mount's tree marks the node mirrored, the
        # prefetcher reads what a layer names).
        self.on_fetched: list[Callable[[Installed], None]] = []
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
        """Start reading ``rel`` into memory now, at prefetch priority, ahead of an ensure()
        that may come: a closure reads ahead the layers listed in a robot's folder, so its
        chain of layers (root, payload, meshes) costs one round trip, not one per level.
        The body is only used by an ensure() of the same size, and goes through the same
        checks and atomic install as any download; one nobody asks for is dropped by
        ``drop_preloads``. Bounded (PRELOAD_BYTES in all, PRELOAD_FILE_BYTES a file);
        False where it is not started."""
        if (self._nursery is None or rel in self._preloads or rel in self._inflight
                or expected.size > PRELOAD_FILE_BYTES
                or self._preloaded_bytes + expected.size > min(PRELOAD_BYTES, self.budget.limit // 2)):
            return False
        local = self.mirror.entry(rel)
        if local is not None and not local.is_dir and local.size == expected.size:
            return False
        preload = self._preloads[rel] = _Preload(expected.size, self.budget)
        self._preloaded_bytes += expected.size
        self._nursery.start_soon(self._read_ahead, rel, expected, preload)
        return True

    async def _read_ahead(self, rel: RelPath, expected: RemoteEntry, preload: _Preload) -> None:
        ticket = self.limit.ticket(PREFETCH, expected.size)
        try:
            with preload.scope:
                preload.share = await self.budget.acquire(expected.size)
                await self.limit.acquire(ticket)
                try:
                    preload.body = bytearray()
                    await self.upstream.download(rel, expected.size, preload, expected.etag)
                finally:
                    self.limit.release(ticket)
        except UpstreamError as exc:
            log.debug("read-ahead of %s did not happen: %s", rel, exc)  # its ensure() downloads it
            preload.body = None
        except Exception:
            log.exception("read-ahead of %s failed", rel)
            preload.body = None
        finally:
            if preload.scope.cancelled_caught or preload.body is None:
                preload.free()
            preload.done.set()

    def drop_preloads(self, rels: Iterable[RelPath]) -> int:
        """Forget the bodies read ahead for ``rels`` that nobody asked for (cancelling those
        still coming); returns how many. Another job's read-aheads are left alone."""
        dropped = 0
        for rel in rels:
            preload = self._preloads.pop(rel, None)
            if preload is not None:
                preload.scope.cancel()
                preload.free()
                self._preloaded_bytes -= preload.size
                dropped += 1
        return dropped

    async def _take_preload(self, rel: RelPath, expected: RemoteEntry) -> _Preload | None:
        """The read-ahead of ``rel`` if its body has the expected size (waiting for it to
        land); the taker frees it when done with the body."""
        preload = self._preloads.pop(rel, None)
        if preload is None:
            return None
        try:
            await preload.done.wait()
        finally:
            self._preloaded_bytes -= preload.size
        if preload.body is None or len(preload.body) != expected.size:
            preload.free()
            return None
        self.index.count("read_ahead_used")
        return preload

    async def _fly(self, rel: RelPath, expected: RemoteEntry, flight: _Flight) -> None:
        try:
            preload = await self._take_preload(rel, expected)
            if preload is not None:
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

    async def _claim_disk(self, size: int) -> None:
        """Room on the mirror's disk for ``size`` more bytes, counting what the downloads in
        flight will still write. If it is there only once they are done, wait for them; if it
        is not there even with none in flight, the disk is full (MirrorFull: ENOSPC)."""
        while True:
            free, total = self.mirror.free_and_total_bytes()
            reserve = min(DISK_RESERVE, total // 20)
            if size + reserve + self._claimed <= free:
                self._claimed += size
                return
            if not self._claimed:
                raise MirrorFull(f"mirror disk is full: {size} bytes needed,"
                                 f" {max(0, free - reserve)} usable in {self.mirror.display}")
            await self._disk_freed.wait()

    def _release_disk(self, size: int) -> None:
        self._claimed -= size
        self._disk_freed.set()
        self._disk_freed = trio.Event()

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
            await self._claim_disk(current.size)
            try:
                if body is not None and number == 1:
                    entry, digest = await self._whole(rel, current, body)
                elif self.ranged and current.size > PART_SIZE:
                    entry, digest = await self._ranged(rel, current, flight)
                else:
                    entry, digest = await self._whole(rel, current, None)
            finally:
                self._release_disk(current.size)
            self._installed(rel, entry, current, digest, started, flight.ticket.priority)
            return entry

        async def refresh(exc: BaseException) -> None:
            nonlocal current
            if isinstance(exc, IntegrityError):
                log.warning("fetch %s: %s", rel, exc)
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
            await trio.to_thread.run_sync(os.fsync, transfer.fd)
            problem = transfer.problem()
            if problem is not None:
                raise IntegrityError(problem)
            entry = await trio.to_thread.run_sync(self.mirror.install, Path(transfer.path), rel, expected.mtime)
            installed = True
            transfer.complete = True
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
        try:
            return await self.upstream.stat(rel, fresh=True)  # the listing was wrong: ask the upstream itself
        except UpstreamError:
            return expected
