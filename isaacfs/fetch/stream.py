"""Streaming downloads: a file's parts fetched in parallel, ranged, into its temporary file;
readers served from that file as soon as their bytes have landed; the whole hashed in order
as parts complete, and checked before it is installed.

Used where the upstream speaks ranged reads (S3 and other HTTPS roots). The part a reader
waits for is fetched next; a USD crate file's last part (its table of contents) goes
first; the rest in order, a few at a time. Memory stays bounded: each part streams to the
file through a buffer of ``FLUSH_BYTES``, whatever the file's size.

A reader may get bytes before the whole file is verified. If the final check fails, every
reader of the transfer gets EIO on its next read, the kernel's pages of the file are
dropped, and the next open fetches it again (docs/how-it-works.md).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio

from ..core.errors import ConnectionLost, FetchFailed, NotFound, Unavailable, UpstreamError
from ..core.paths import RelPath
from ..core.types import RemoteEntry

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("isaacfs.fetch")

PART_SIZE = 4 * 1024 * 1024
PARALLEL_PARTS = 6
URGENT_WORKERS = 2  # extra workers, only for parts a reader waits for while the others are busy
FLUSH_BYTES = 256 * 1024  # bytes buffered per part before they are written and readers told
PART_TRIES = 3
MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-(\d+)$")
MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
MIB = 1024 * 1024
CRATE_SUFFIXES = (".usd", ".usdc")  # a crate file reads its table of contents at the end first

PENDING, RUNNING, LANDED = 0, 1, 2

# (rel, start, end, on_data): stream bytes [start, end) of rel, in order, to on_data.
ReadRange = Callable[[RelPath, int, int, Callable[[bytes], Awaitable[None]]], Awaitable[None]]


def multipart_candidates(size: int, parts: int) -> list[int]:
    """Part sizes (whole MiB, or exactly size/parts) that split ``size`` into ``parts`` parts."""
    if parts <= 1:
        return [max(size, 1)]
    low = math.ceil(size / parts)
    high = (size - 1) // (parts - 1)
    found = {low} if math.ceil(size / low) == parts else set()
    first = max(1, math.ceil(low / MIB))
    for mib in range(first, first + 4096):
        candidate = mib * MIB
        if candidate > high:
            break
        if math.ceil(size / candidate) == parts:
            found.add(candidate)
        if len(found) >= 8:
            break
    return sorted(found)


class _PartHashes:
    """The MD5 of each part of a candidate multipart split, fed the file in order."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.digests: list[bytes] = []
        self._current = hashlib.md5(usedforsecurity=False)
        self._filled = 0

    def update(self, data: memoryview) -> None:
        while data:
            room = self.part_size - self._filled
            piece, data = data[:room], data[room:]
            self._current.update(piece)
            self._filled += len(piece)
            if self._filled == self.part_size:
                self.digests.append(self._current.digest())
                self._current, self._filled = hashlib.md5(usedforsecurity=False), 0

    def etag(self) -> str:
        digests = self.digests + ([self._current.digest()] if self._filled else [])
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class Transfer:
    """One file being streamed into its temporary file."""

    def __init__(self, rel: RelPath, expected: RemoteEntry, path: os.PathLike[str] | str, part_size: int,
                 stall_timeout: float = 30.0) -> None:
        self.rel = rel
        self.stall_timeout = stall_timeout  # seconds without a byte before a part is tried again
        self.expected = expected
        self.size = expected.size
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.part_size = part_size
        self.parts = max(1, math.ceil(self.size / part_size))
        self.landed = [0] * self.parts  # bytes landed from each part's start, contiguous
        self.state = [PENDING] * self.parts
        self.wanted: set[int] = set()
        self.error: FetchFailed | None = None
        self.complete = False  # every byte landed and hashed
        self.settled = trio.Event()  # installed after its check, or failed
        self.md5 = ""
        self.multipart = ""  # the multipart ETag the bytes give, where the upstream's is one
        self.readers = 0
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._read_range: ReadRange | None = None
        self._urgent = 0
        tail_first = rel.name.endswith(CRATE_SUFFIXES) and self.parts > 1
        self._order = ([self.parts - 1] if tail_first else []) + [i for i in range(self.parts)
                                                                  if not (tail_first and i == self.parts - 1)]

    # -- what readers see ---------------------------------------------------------------
    def _part_bounds(self, part: int) -> tuple[int, int]:
        start = part * self.part_size
        return start, min(self.size, start + self.part_size)

    def covered(self, offset: int, length: int) -> bool:
        end = min(self.size, offset + length)
        if offset >= end:
            return True
        for part in range(offset // self.part_size, (end - 1) // self.part_size + 1):
            start, stop = self._part_bounds(part)
            if start + self.landed[part] < min(stop, end):
                return False
        return True

    async def wait_for(self, offset: int, length: int, settle: bool = False) -> None:
        """Until bytes [offset, offset+length) have landed; FetchFailed if the transfer failed.
        With ``settle`` (a reader that read the file from its start in order), a read that
        reaches the end waits for the whole file's check as well, so such a reader either got
        a verified file or gets EIO. A reader that jumps to the end (a crate file's table of
        contents) is served as soon as those bytes land."""
        while True:
            if self.error is not None:
                raise self.error
            if settle and offset + length >= self.size and (self.complete or self.covered(offset, length)):
                await self.settled.wait()
                if self.error is not None:
                    raise self.error
                return
            if self.complete or self.covered(offset, length):
                return
            end = min(self.size, offset + length)
            self.wanted.update(range(offset // self.part_size, (max(end, offset + 1) - 1) // self.part_size + 1))
            self._hurry()
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def fail(self, error: FetchFailed) -> None:
        if self.error is None:
            self.error = error
        self.settled.set()
        self._notify()

    # -- the engine ---------------------------------------------------------------------
    def _next_part(self, urgent: bool = False) -> int | None:
        waiting = sorted(part for part in self.wanted if self.state[part] == PENDING)
        if waiting:
            return waiting[0]
        if urgent:
            return None  # an extra worker serves waiting readers only
        return next((part for part in self._order if self.state[part] == PENDING), None)

    def _hurry(self) -> None:
        """A reader waits for a part nobody fetches yet: an extra worker starts on it now."""
        if (self._nursery is not None and self._read_range is not None and self._urgent < URGENT_WORKERS
                and any(self.state[part] == PENDING for part in self.wanted)):
            self._urgent += 1
            self._nursery.start_soon(self._worker, self._read_range, self._nursery, True)

    async def run(self, read_range: ReadRange, parallel: int = PARALLEL_PARTS) -> None:
        """Fetch every part and hash the file in order; raises UpstreamError kinds or OSError."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery, self._read_range = nursery, read_range
                for _ in range(min(parallel, self.parts)):
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
            self.state[part] = RUNNING
            for attempt in range(1, PART_TRIES + 1):
                try:
                    await self._fetch_part(part, read_range)
                    break
                except (NotFound, ConnectionLost):
                    raise
                except (Unavailable, UpstreamError) as exc:
                    if attempt == PART_TRIES:
                        raise
                    log.warning("part %d of %s, try %d/%d: %s; trying again from byte %d", part, self.rel, attempt,
                                PART_TRIES, exc, part * self.part_size + self.landed[part])
            self.state[part] = LANDED
            self._notify()

    async def _fetch_part(self, part: int, read_range: ReadRange) -> None:
        start, stop = self._part_bounds(part)
        position = start + self.landed[part]
        pending = bytearray()

        async def flush() -> None:
            nonlocal position
            if not pending:
                return
            data = bytes(pending)
            pending.clear()
            written = await trio.to_thread.run_sync(_pwrite_all, self.fd, data, position)
            position += written
            self.landed[part] += written
            self._notify()

        finished = [False]

        async def on_data(chunk: bytes) -> None:
            if finished[0]:  # a late block from a read this attempt abandoned: never written
                raise Unavailable(f"fetch {self.rel}: part {part} was abandoned")
            room = stop - position - len(pending)
            pending.extend(chunk[:room] if len(chunk) > room else chunk)
            if len(pending) >= FLUSH_BYTES:
                await flush()

        if position < stop:
            # A stall is judged by progress, not by size: no byte for stall_timeout seconds.
            with trio.CancelScope() as watchdog:
                watchdog.deadline = trio.current_time() + self.stall_timeout

                async def progressing(chunk: bytes) -> None:
                    watchdog.deadline = trio.current_time() + self.stall_timeout
                    await on_data(chunk)

                try:
                    await read_range(self.rel, position, stop, progressing)
                finally:
                    finished[0] = True
            await flush()
            if watchdog.cancelled_caught:
                raise Unavailable(f"fetch {self.rel}: no byte arrived for {self.stall_timeout:g}s"
                                  f" (stalled at byte {start + self.landed[part]})")
        if start + self.landed[part] < stop:
            raise Unavailable(f"fetch {self.rel}: part {part} cut short at byte {start + self.landed[part]}"
                              f" of {stop}")

    async def _hasher(self) -> None:
        md5 = hashlib.md5(usedforsecurity=False)
        match = MULTIPART_ETAG.match(self.expected.etag)
        splits = [_PartHashes(size) for size in multipart_candidates(self.size, int(match.group(2)))] if match else []
        for part in range(self.parts):
            start, stop = self._part_bounds(part)
            while start + self.landed[part] < stop:
                await self._changed.wait()
            # Read back from the page cache and hashed in a worker thread (hashlib lets go of
            # the GIL), one part at a time, in order.
            await trio.to_thread.run_sync(_hash_range, self.fd, start, stop, md5, splits)
        self.md5 = md5.hexdigest()
        if match:
            etags = [split.etag() for split in splits]
            self.multipart = self.expected.etag if self.expected.etag in etags else (etags[0] if etags else "?")

    def problem(self) -> str | None:
        """What is wrong with the landed file (size, MD5 or multipart ETag), or None."""
        if os.fstat(self.fd).st_size != self.size:
            return f"size {os.fstat(self.fd).st_size} differs from the listed {self.size}"
        etag = self.expected.etag
        if MD5_ETAG.match(etag) and self.md5 != etag:
            return f"MD5 {self.md5} differs from the ETag {etag}"
        if MULTIPART_ETAG.match(etag) and self.multipart != etag:
            return f"multipart ETag {self.multipart} differs from the upstream's {etag}"
        return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a failed part raised (not the cancellations it caused in the others)."""
    for inner in group.exceptions:
        found: BaseException = _first_error(inner) if isinstance(inner, BaseExceptionGroup) else inner
        if not isinstance(found, (BaseExceptionGroup, trio.Cancelled)):
            return found
    return cast(BaseException, group)


def _hash_range(fd: int, start: int, stop: int, md5: Any, splits: list[_PartHashes]) -> None:
    offset = start
    while offset < stop:
        data = os.pread(fd, min(4 * 1024 * 1024, stop - offset), offset)
        if not data:
            raise OSError(errno.EIO, "the temporary file ended early")
        view = memoryview(data)
        md5.update(view)
        for split in splits:
            split.update(view)
        offset += len(data)


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done
