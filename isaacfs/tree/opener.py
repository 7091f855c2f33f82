"""Opening a file of the tree: the mirror's copy, fetched first where the asker's mode
allows (mountpoint-s3's prefetch side, apart from the inode table). Where files stream (a
ranged upstream), the fd may be the transfer's temporary file, with the transfer to wait on
before each read."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..core.errors import FetchFailed, NotInMirror
from ..core.paths import RelPath
from ..core.types import LocalEntry, Mode
from ..fetch.fetcher import Fetcher
from ..fetch.stream import Transfer
from ..store.index import Index
from ..store.mirror import Mirror
from .loader import FolderLoader
from .nodes import InodeTable, Node


class Opener:
    def __init__(self, table: InodeTable, loader: FolderLoader, mirror: Mirror, index: Index,
                 fetcher: Fetcher, miss: Callable[[RelPath, Node | None, Mode], None],
                 opened: Callable[[RelPath, Callable[[], Mode] | None], None],
                 opening: Callable[[RelPath], None] = lambda rel: None) -> None:
        self.table = table
        self.loader = loader
        self.mirror = mirror
        self.index = index
        self.fetcher = fetcher
        self._miss = miss  # a name the asker may not have: reported to the miss record
        self._opened = opened  # tell the listeners (the prefetcher) with the asker's mode
        self._opening = opening  # a permissive reader's cold open, before its fetch starts

    async def open(self, node: Node, mode: Callable[[], Mode]) -> tuple[int, Transfer | None]:
        rel = self.table.rel(node)
        for _attempt in range(2):
            if not node.cached:
                asker = mode()
                if asker != "permissive" or node.remote is None:
                    self._miss(rel, node.parent, asker)
                    raise FetchFailed(f"{rel} is not in the mirror", NotInMirror(rel))
                self.index.count("misses_fetched")
                self._opening(rel)
                if self.fetcher.ranged:
                    got = await self.fetcher.stream(rel, node.remote)
                    if not isinstance(got, LocalEntry):
                        try:
                            fd = os.open(got.path, os.O_RDONLY | os.O_CLOEXEC)
                        except FileNotFoundError:  # it landed and was installed meanwhile
                            await got.settled.wait()
                            if got.error is not None:
                                raise got.error from None
                            continue
                        got.readers += 1
                        got.served = True
                        self.index.count("opens")
                        self._opened(rel, mode)
                        return fd, got
                    local = got
                else:
                    local = await self.fetcher.ensure(rel, node.remote)
                self.loader.installed(node, local)
            try:
                fd = await self.mirror.io(node.foreign, self.mirror.open_read, rel)
            except FileNotFoundError:
                node.cached = False  # deleted from the mirror beside us; fetch again if allowed
                node.gen += 1
                continue
            self.index.touch(rel)
            self.index.count("opens")
            self._opened(rel, mode)
            return fd, None
        raise FetchFailed(f"{rel} vanished from the mirror", NotInMirror(rel))
