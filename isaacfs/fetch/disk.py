"""Room on the mirror's disk for the downloads in flight: each claims its size before it
writes a byte, so a fetch never fills the disk (a reserve stays free) and a full disk is
told as such (MirrorFull: ENOSPC), not as a broken download."""

from __future__ import annotations

import trio

from ..core.errors import MirrorFull
from ..store.mirror import Mirror

# Room left free on the mirror's disk beyond the file itself: 64 MiB, or a twentieth of a small disk.
DISK_RESERVE = 64 * 1024 * 1024


class DiskClaims:
    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.claimed = 0  # bytes the downloads in flight will write
        self._freed = trio.Event()

    async def claim(self, size: int) -> None:
        """Room for ``size`` more bytes, counting what the downloads in flight will still
        write. If it is there only once they are done, wait for them; if it is not there even
        with none in flight, the disk is full."""
        while True:
            free, total = await self.mirror.io(self.mirror.network, self.mirror.free_and_total_bytes)
            reserve = min(DISK_RESERVE, total // 20)
            if size + reserve + self.claimed <= free:
                self.claimed += size
                return
            if not self.claimed:
                raise MirrorFull(f"mirror disk is full: {size} bytes needed,"
                                 f" {max(0, free - reserve)} usable in {self.mirror.display}")
            await self._freed.wait()

    def release(self, size: int) -> None:
        self.claimed -= size
        self._freed.set()
        self._freed = trio.Event()
