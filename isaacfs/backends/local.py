"""Reads of files under a ``file:`` asset root (a local folder, or NFS/SMB mounted), judged by
progress.

omni.client's ``read_file`` hands a body over whole, at the end: nothing shows whether a read
from a hung NFS server is slow or stuck, so the only bound was a deadline by size (30 s plus
1 MB/s: four minutes for a 210 MB file). Here a file is read in 1 MiB blocks, each in a worker
thread that is abandoned, never waited for, when it gives nothing for ``stall_timeout``
seconds. The threads come from a limiter of their own: threads stuck in a hung server's reads
keep their slot until the kernel lets them go, and must never take the slots the daemon's
other work (the index, hashing, the mirror) needs.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..core.errors import AccessDenied, NotFound, Unavailable, is_missing

BLOCK = 1024 * 1024
THREADS = 16

T = TypeVar("T")


class _File:
    """A descriptor that an abandoned read may still be using: closed by whichever ends last,
    the reader or the read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._busy = 0
        self._closing = False

    def pread(self, count: int, offset: int) -> bytes:
        return self._using(lambda fd: os.pread(fd, count, offset), b"")

    def version(self) -> tuple[int, int, int]:
        """(size, mtime, ctime): a file rewritten in place changes them."""
        st = self._using(os.fstat, None)
        return (-1, -1, -1) if st is None else (st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _using(self, work: Callable[[int], T], closed: T) -> T:
        with self._lock:
            if self._closing:
                return closed
            self._busy += 1
        try:
            return work(self.fd)
        finally:
            with self._lock:
                self._busy -= 1
                if self._closing and not self._busy:
                    os.close(self.fd)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if not self._busy:
                os.close(self.fd)


def _open_regular(path: str) -> _File:
    # O_NONBLOCK: opening a FIFO put in the tree since it was listed must not block.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return _File(fd)


class LocalRanges:
    def __init__(self, stall_timeout: float, threads: int = THREADS) -> None:
        self.stall_timeout = stall_timeout
        self.limiter = trio.CapacityLimiter(threads)

    async def step(self, work: Callable[[], T], what: str) -> T:
        """``work()`` in a worker thread of this reader's own; Unavailable if it gives nothing
        for ``stall_timeout`` seconds (the thread is left to finish on its own)."""
        with trio.move_on_after(self.stall_timeout):
            try:
                return await trio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=self.limiter)
            except FileNotFoundError:
                raise NotFound(f"{what}: not found upstream") from None
            except PermissionError:
                raise AccessDenied(f"{what}: permission denied in the upstream folder") from None
            except OSError as exc:
                if is_missing(exc):
                    raise NotFound(f"{what}: {exc.strerror}") from None
                raise Unavailable(f"{what}: {exc.strerror or exc}") from None
        raise Unavailable(f"{what}: the upstream folder gave nothing for {self.stall_timeout:g}s"
                          " (a hung network file system?), read abandoned")

    async def read(self, path: str, what: str, on_data: Callable[[bytes], Awaitable[None]]) -> None:
        """The whole file at ``path`` to ``on_data``, in order. Unavailable if the file changed
        while it was read (rewritten in place: the bytes handed over may mix two versions)."""
        handle = await self.step(lambda: _open_regular(path), what)
        try:
            before = await self.step(handle.version, what)
            position = 0
            while True:
                at = position
                block = await self.step(lambda: handle.pread(BLOCK, at), what)  # noqa: B023
                if not block:
                    break
                await on_data(block)
                position += len(block)
            if await self.step(handle.version, what) != before or position != before[0]:
                raise Unavailable(f"{what}: the file changed upstream while it was read")
        finally:
            handle.close()
