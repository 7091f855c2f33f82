"""Streaming downloads: a file's parts fetched in parallel, ranged, into its temporary file;
readers served from that file as soon as their bytes have landed; the whole hashed in order
as parts complete, and checked before it is installed.

Used where the upstream speaks ranged reads (S3 and other HTTPS roots). The part a reader
waits for is fetched next; a reader that jumps deep into a part nobody fetches yet splits
that part at its offset, so it waits for its own bytes rather than the part's 4 MiB from
the start; a USD crate file's last part (its table of contents) goes first; the rest in
order, a few at a time. Memory stays bounded: each part streams to the
file through a buffer of ``FLUSH_BYTES``, whatever the file's size.

Every part is of the object version listed (If-Match, the answer's ETag and Content-Range:
backends/http.py). A reader may get bytes before the whole file is verified; the read that
completes a handle's reading of the whole file waits for the check (``Coverage``). If the
final check fails, every reader of the transfer gets EIO on its next read, the kernel's
pages of the file are dropped, and the next open fetches it again (docs/how-it-works.md).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable
from typing import cast

import trio

from ..core.budget import MemoryBudget
from ..core.errors import FetchFailed, IntegrityError, Unavailable
from ..core.paths import RelPath
from ..core.retry import DEFAULT as DEFAULT_RETRY
from ..core.retry import RetryPolicy, resumable, retrying
from ..core.types import OnData, RemoteEntry
from .integrity import BodyHash

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("isaacfs.fetch")

PART_SIZE = 4 * 1024 * 1024
PARALLEL_PARTS = 6
URGENT_WORKERS = 2  # extra workers, only for parts a reader waits for while the others are busy
FLUSH_BYTES = 256 * 1024  # bytes buffered per part before they are written and readers told
WAITED_FLUSH_BYTES = 64 * 1024  # the same, while a reader waits on the part
# What a backend's read hands over at once at most (backends/http.py, backends/local.py).
READ_BLOCK = 1024 * 1024
HASH_READ_BYTES = 4 * 1024 * 1024  # read back for the hash at once
# The memory a part holds while it reads: the buffer it gathers to flush and write from
# (FLUSH_BYTES), and the backend's read buffer (a block).
PART_BUFFER = FLUSH_BYTES + READ_BLOCK
SPLIT_BYTES = 1024 * 1024  # a reader this far into a part nobody fetches yet: that part splits at its offset
CRATE_SUFFIXES = (".usd", ".usdc")  # a crate file reads its table of contents at the end first

PENDING, RUNNING, LANDED = 0, 1, 2


class _Part:
    """Bytes [start, stop) of the file, fetched in order by one worker at a time; ``landed``
    bytes from ``start`` are in the file. Only a PENDING part is ever split."""

    __slots__ = ("landed", "start", "state", "stop")

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop, self.landed, self.state = start, stop, 0, PENDING

    @property
    def done(self) -> bool:
        return self.start + self.landed >= self.stop

# (rel, start, end, on_data, etag, size): stream bytes [start, end) of rel, in order, to on_data.
ReadRange = Callable[[RelPath, int, int, OnData, str, int], Awaitable[None]]


class Transfer:
    """One file being streamed into its temporary file."""

    def __init__(self, rel: RelPath, expected: RemoteEntry, path: os.PathLike[str] | str, part_size: int,
                 stall_timeout: float = 30.0, retry: RetryPolicy = DEFAULT_RETRY,
                 budget: MemoryBudget | None = None) -> None:
        self.rel = rel
        self.stall_timeout = stall_timeout  # seconds without a byte before a part is tried again
        self.retry = retry
        self.budget = budget if budget is not None else MemoryBudget(1 << 40)
        self.expected = expected
        self.size = expected.size
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.part_size = part_size
        count = max(1, math.ceil(self.size / part_size))
        # In file order. A reader that jumps deep into a part nobody fetches yet splits it there.
        self.parts = [_Part(i * part_size, min(self.size, (i + 1) * part_size)) for i in range(count)]
        self.wanted: set[_Part] = set()
        self.error: FetchFailed | None = None
        self.complete = False  # every byte landed and hashed
        self.checked = trio.Event()  # every byte landed and matched the object listed, or failed
        self.settled = trio.Event()  # installed after its check, or failed
        self.hash = BodyHash(expected)  # fed the file in order as its parts land
        self.readers = 0  # handles open on it now
        self.served = False  # any reader ever opened it: the kernel may hold its pages
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._read_range: ReadRange | None = None
        self._urgent = 0
        self._tail_first = rel.name.endswith(CRATE_SUFFIXES) and count > 1

    # -- what readers see ---------------------------------------------------------------
    def _index(self, offset: int) -> int:
        """The index of the part holding byte ``offset``."""
        return max(0, bisect.bisect_right(self.parts, offset, key=lambda part: part.start) - 1)

    def _missing(self, offset: int, length: int) -> list[_Part]:
        """The parts whose bytes in [offset, offset+length) have not all landed, in order."""
        end = min(self.size, offset + length)
        missing = []
        index = self._index(offset)
        while index < len(self.parts) and self.parts[index].start < max(end, offset + 1):
            part = self.parts[index]
            if part.start + part.landed < min(part.stop, end):
                missing.append(part)
            index += 1
        return missing

    def covered(self, offset: int, length: int) -> bool:
        return offset >= min(self.size, offset + length) or not self._missing(offset, length)

    def _split(self, part: _Part, offset: int) -> _Part:
        """Split a part nobody fetches yet at ``offset`` (rounded down to a flush): a reader
        deep in a 4 MiB part waits for its own bytes, not for the part's start. Returns the
        part that holds ``offset``."""
        at = offset - offset % FLUSH_BYTES
        if part.state != PENDING or part.landed or at - part.start < SPLIT_BYTES:
            return part
        index = self.parts.index(part)
        if index and self.parts[index - 1].state != PENDING:
            # The part before is being fetched or has landed: a reader reading on in order
            # (and the kernel's read-ahead in front of it), not a jump. Its part comes whole.
            return part
        tail = _Part(at, part.stop)
        part.stop = at
        self.parts.insert(index + 1, tail)
        return tail

    async def wait_for(self, offset: int, length: int, settle: bool = False) -> None:
        """Until bytes [offset, offset+length) have landed; FetchFailed if the transfer failed.
        With ``settle`` (the read that completes a handle's reading of the whole file, in
        whatever order the kernel's read-ahead sent the pieces), the whole file's check as
        well: a program that reads a file through gets a verified file or EIO. A reader that
        reads a part (a crate file's table of contents) is served as soon as its bytes land."""
        while True:
            if self.error is not None:
                raise self.error
            if settle and (self.complete or self.covered(offset, length)):
                await self.checked.wait()  # not its fsync and install: the reader has its answer
                if self.error is not None:
                    raise self.error
                return
            if self.complete:
                return
            missing = self._missing(offset, length)
            if not missing:
                return
            if missing[0].start < offset:
                missing[0] = self._split(missing[0], offset)
            self.wanted.update(missing)
            self._hurry()
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def fail(self, error: FetchFailed) -> None:
        if self.error is None:
            self.error = error
        self.checked.set()
        self.settled.set()
        self._notify()

    # -- the engine ---------------------------------------------------------------------
    def _next_part(self, urgent: bool = False) -> _Part | None:
        waiting = [part for part in self.wanted if part.state == PENDING]
        if waiting:
            return min(waiting, key=lambda part: part.start)
        if urgent:
            return None  # an extra worker serves waiting readers only
        if self._tail_first and self.parts[-1].state == PENDING:
            return self.parts[-1]  # a crate file's table of contents
        return next((part for part in self.parts if part.state == PENDING), None)

    def _hurry(self) -> None:
        """A reader waits for a part nobody fetches yet: an extra worker starts on it now."""
        if (self._nursery is not None and self._read_range is not None and self._urgent < URGENT_WORKERS
                and any(part.state == PENDING for part in self.wanted)):
            self._urgent += 1
            self._nursery.start_soon(self._worker, self._read_range, self._nursery, True)

    async def run(self, read_range: ReadRange, parallel: int = PARALLEL_PARTS) -> None:
        """Fetch every part and hash the file in order; raises UpstreamError kinds or OSError."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery, self._read_range = nursery, read_range
                for _ in range(min(parallel, len(self.parts))):
                    nursery.start_soon(self._worker, read_range, nursery)
                nursery.start_soon(self._hasher)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            self._nursery = None

    async def _worker(self, read_range: ReadRange, nursery: trio.Nursery, urgent: bool = False) -> None:
        try:
            await self._work(read_range, urgent)
        finally:
            if urgent:
                self._urgent -= 1

    async def _work(self, read_range: ReadRange, urgent: bool) -> None:
        while (part := self._next_part(urgent)) is not None:
            part.state = RUNNING
            # A part tried again goes on from the byte it stopped at (the one retry policy).
            await retrying(lambda _n: self._fetch_part(part, read_range),
                           f"fetch {self.rel}: part from byte {part.start}", self.retry, temporary=resumable)
            part.state = LANDED
            self.wanted.discard(part)
            self._notify()

    async def _fetch_part(self, part: _Part, read_range: ReadRange) -> None:
        start, stop = part.start, part.stop  # a running part is never split
        position = start + part.landed
        # One buffer for the part's life, filled and written in place: no bytes object per
        # block or per flush (each a fresh mapping, a page fault per 4 KiB: half the daemon's
        # CPU on a long cold read, with freed buffers given back to the system).
        # Copied into through a memoryview: a copy into its slice is direct (a bytearray's
        # slice assignment makes a temporary copy first).
        into = memoryview(bytearray(FLUSH_BYTES))
        filled = 0

        async def flush() -> None:
            nonlocal position, filled
            if not filled:
                return
            with into[:filled] as data:
                written = await trio.to_thread.run_sync(_pwrite_all, self.fd, data, position)
            filled = 0
            position += written
            part.landed += written
            self._notify()

        finished = [False]

        async def on_data(chunk: bytes | memoryview) -> None:
            nonlocal filled
            if finished[0]:  # a late block from a read this attempt abandoned: never written
                raise Unavailable(f"fetch {self.rel}: part {part} was abandoned")
            chunk = memoryview(chunk)[:max(0, stop - position - filled)]
            while chunk:  # copied now: the block is the reader's buffer, filled again after this
                take = min(len(chunk), FLUSH_BYTES - filled)
                into[filled:filled + take] = chunk[:take]
                filled += take
                chunk = chunk[take:]
                if filled >= (WAITED_FLUSH_BYTES if part in self.wanted else FLUSH_BYTES):
                    await flush()

        if position < stop:
            # The part's buffers (what it gathers to flush and writes from, the read's block) are
            # held in the one memory budget while it reads.
            async with self.budget.hold(PART_BUFFER):
                await self._read_part(part, read_range, position, stop, on_data, flush, finished)
        if not part.done:
            raise Unavailable(f"fetch {self.rel}: the part from byte {start} was cut short at byte"
                              f" {start + part.landed} of {stop}")

    async def _read_part(self, part: _Part, read_range: ReadRange, position: int, stop: int,
                         on_data: OnData, flush: Callable[[], Awaitable[None]],
                         finished: list[bool]) -> None:
        # A stall is judged by progress, not by size: no byte for stall_timeout seconds.
        with trio.CancelScope() as watchdog:
            watchdog.deadline = trio.current_time() + self.stall_timeout

            async def progressing(chunk: bytes | memoryview) -> None:
                watchdog.deadline = trio.current_time() + self.stall_timeout
                await on_data(chunk)

            try:
                await read_range(self.rel, position, stop, progressing, self.expected.etag, self.size)
            finally:
                finished[0] = True
        await flush()
        if watchdog.cancelled_caught:
            raise Unavailable(f"fetch {self.rel}: no byte arrived for {self.stall_timeout:g}s"
                              f" (stalled at byte {part.start + part.landed})")

    async def _hasher(self) -> None:
        position = 0
        buffer = bytearray(HASH_READ_BYTES)
        while position < self.size:
            part = self.parts[self._index(position)]
            while not part.done:  # a part split meanwhile ends sooner: ``stop`` is read afresh
                await self._changed.wait()
            # Read back from the page cache and hashed in a worker thread (hashlib lets go of
            # the GIL), one part at a time, in order.
            await trio.to_thread.run_sync(_hash_range, self.fd, position, part.stop, self.hash, buffer)
            position = part.stop

    def problem(self) -> str | None:
        """What is wrong with the landed file (size, MD5 or multipart ETag), or None."""
        return self.hash.problem(os.fstat(self.fd).st_size)

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # forgotten first: never closed twice (TempWriter._close)
        if fd >= 0:
            os.close(fd)


class Coverage:
    """The bytes of a file one handle has read, as merged intervals: ``add`` says when they
    first cover the whole file, whatever the order of the reads (the kernel's read-ahead
    sends them concurrently, so "in order" cannot be told from one read to the next)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._spans: list[list[int]] = []  # sorted, disjoint, merged [start, stop)
        self.whole = size == 0

    def add(self, offset: int, length: int) -> bool:
        """Record a read; True if this one completed the whole file."""
        start, stop = max(0, offset), min(self.size, offset + length)
        if self.whole or stop <= start:
            return False
        spans = self._spans
        index = bisect.bisect_left(spans, [start, start])
        if index and spans[index - 1][1] >= start:
            index -= 1
        while index < len(spans) and spans[index][0] <= stop:
            start, stop = min(start, spans[index][0]), max(stop, spans[index][1])
            del spans[index]
        spans.insert(index, [start, stop])
        self.whole = len(spans) == 1 and spans[0] == [0, self.size]
        return self.whole


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a failed part raised (not the cancellations it caused in the others)."""
    for inner in group.exceptions:
        found: BaseException = _first_error(inner) if isinstance(inner, BaseExceptionGroup) else inner
        if not isinstance(found, (BaseExceptionGroup, trio.Cancelled)):
            return found
    return cast(BaseException, group)


def _hash_range(fd: int, start: int, stop: int, hasher: BodyHash, buffer: bytearray) -> None:
    """Feed bytes [start, stop) of the file to ``hasher``, read through ``buffer`` (the
    transfer's one buffer for it: a new one per read was a fresh mapping each time)."""
    view = memoryview(buffer)
    offset = start
    while offset < stop:
        got = os.preadv(fd, [view[:min(len(view), stop - offset)]], offset)
        if not got:
            raise IntegrityError("the temporary file ended early")
        hasher.update(view[:got])
        offset += got


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done
