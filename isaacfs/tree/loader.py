"""Loading a folder's children: from the mirror folder, and in permissive mode also from the
upstream's listing of it (``Listings``, trusted for ``listing_ttl``). One loader per folder at
a time; an upstream failure never removes anything the mirror holds: it only means fewer
names are known for now."""

from __future__ import annotations

import logging
import os
import time

import trio

from ..core.errors import NotFound, UpstreamError
from ..core.paths import RelPath
from ..core.types import LocalEntry, Mode, RemoteEntry, Upstream
from ..store.mirror import Mirror
from .listings import Listings
from .nodes import InodeTable, Node

log = logging.getLogger("isaacfs")

# A mirror folder whose directory file is larger than this (ext4: some 1,500 names; tmpfs:
# some 3,000) is scanned in a worker thread.
BIG_FOLDER_BYTES = 64 * 1024


class FolderLoader:
    def __init__(self, table: InodeTable, mirror: Mirror, listings: Listings, upstream: Upstream) -> None:
        self.table = table
        self.mirror = mirror
        self.listings = listings
        self.upstream = upstream
        self._loading: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._refreshing: set[RelPath] = set()
        listings.observers.append(self._relisted)

    def attach(self, nursery: trio.Nursery) -> None:
        """Background work (refreshing expired listings) runs in this nursery."""
        self._nursery = nursery

    def loading(self, inode: int) -> bool:
        return inode in self._loading

    async def children(self, node: Node, mode: Mode) -> dict[str, Node]:
        """The folder's children, loaded or refreshed as needed (one loader per folder)."""
        while True:
            event = self._loading.get(node.inode)
            if event is None:
                break
            await event.wait()
        if node.children is not None and not await self._stale(node, mode):
            return node.children
        event = self._loading[node.inode] = trio.Event()
        try:
            await self._load(node, mode)
        finally:
            del self._loading[node.inode]
            event.set()
        assert node.children is not None
        return node.children

    async def _stale(self, node: Node, mode: Mode) -> bool:
        if await self.mirror_mtime(node) != node.scanned_mtime_ns:
            return True
        return mode == "permissive" and self._wants_listing(node)

    def _wants_listing(self, node: Node) -> bool:
        if node.parent is not None and node.remote is None and not node.ghost and node.parent.listed_at:
            # Its folder's listing was merged and does not name it: a folder only the mirror
            # has; the upstream would list nothing. (Without that listing, a folder loaded from
            # the mirror alone, for a strict process, is not known to be the mirror's only.)
            return False
        if node.listed_at and time.time() - node.listed_at < self.listings.ttl:
            return False
        # Never merged: a stored listing serves even while the upstream rests.
        return self.upstream.available or not node.listed_at

    async def mirror_mtime(self, node: Node) -> int:
        """The mirror folder's mtime (-1: not in the mirror; -2: unreadable). Where the
        folder's file system can hang, asked off the loop under a deadline (MirrorStalled)."""
        return (await self._mirror_folder(node))[0]

    async def _mirror_folder(self, node: Node) -> tuple[int, int]:
        """The mirror folder's mtime (as ``mirror_mtime``) and size, from one stat."""
        if node.ghost:
            local = await self.mirror.io(node.foreign, self.mirror.entry, self.table.rel(node))
            if local is None or not local.is_dir:
                return -1, 0
            self._set_local(node, local)  # the folder arrived in the mirror (a warm, a copy)
        if not node.cached:
            return -1, 0
        return await self.mirror.io(node.foreign, self._stat, self.table.rel(node))

    def _stat(self, rel: RelPath) -> tuple[int, int]:
        try:
            st = os.stat(self.mirror.os_path(rel))
        except OSError:
            return -2, 0
        return st.st_mtime_ns, st.st_size

    def _set_local(self, node: Node, local: LocalEntry) -> None:
        self.table.set_local(node, local)
        if not node.foreign and self.mirror.foreign(local):
            node.foreign = True  # a network mirror, or another file system mounted here

    async def _load(self, node: Node, mode: Mode) -> None:
        rel = self.table.rel(node)
        if node.children is None:
            node.children = {}
        mtime, size = await self._mirror_folder(node)
        if mtime != node.scanned_mtime_ns:
            # A small folder on this thread: a worker-thread hop per folder made a cold walk of
            # 20,000 files about twice as slow (bench/bench_mount.py). A big one (thousands of
            # names: tens of ms of stats) in a worker thread, so it never stalls other requests;
            # one where I/O can hang, in a worker thread under a deadline.
            scanned = None
            if node.cached:
                if node.foreign:
                    scanned = await self.mirror.io(True, self.mirror.scan, rel)
                else:
                    ahead = self.mirror.scan_ahead
                    # The helper's scan, where it made one of this folder as it is now.
                    scanned = ahead.take(rel, mtime, size) if ahead is not None else None
                    if scanned is None:
                        if size > BIG_FOLDER_BYTES:
                            scanned = await trio.to_thread.run_sync(self.mirror.scan, rel)
                        else:
                            scanned = self.mirror.scan(rel)
                    if scanned and ahead is not None:
                        # The first subfolder last: the helper scans the latest hint first.
                        ahead.hint(rel, [entry.name for entry in reversed(scanned) if entry.is_dir])
            self._merge_local(node, scanned)
            node.scanned_mtime_ns = mtime
        if mode == "permissive" and self._wants_listing(node):
            listing = await self._remote_listing(rel)
            node.unknown = listing is None
            if listing is not None:
                node.listed_at, entries = listing
                self._merge_remote(node, entries)

    def _merge_local(self, node: Node, entries: list[LocalEntry] | None) -> None:
        assert node.children is not None
        if not node.children:
            # A first scan (the common case: every folder a walk opens): new nodes only.
            self.table.add_local(node, entries or (), self.mirror.foreign)
            return
        seen = set()
        for entry in entries or ():
            seen.add(entry.name)
            child = self.table.child(node, entry.name, entry.is_dir)
            self._set_local(child, entry)
            if child.remote is not None and child.remote.is_dir != entry.is_dir:
                child.remote = None  # the mirror's copy wins over a different upstream kind
        for child in list(node.children.values()):
            if child.cached and child.name not in seen:
                child.cached = False  # removed from the mirror beside us
                child.gen += 1
                if child.remote is not None:
                    self.table.set_remote(child, child.remote)
                self.table.drop_if_gone(node, child)

    def _merge_remote(self, node: Node, entries: list[RemoteEntry]) -> None:
        assert node.children is not None
        listed = {entry.name: entry for entry in entries}
        for entry in entries:
            child = self.table.child(node, entry.name, entry.is_dir)
            if child.cached and child.is_dir != entry.is_dir:
                continue
            self.table.set_remote(child, entry)
        for child in list(node.children.values()):
            if child.remote is not None and child.name not in listed:
                child.remote = None
                self.table.drop_if_gone(node, child)

    def _relisted(self, rel: RelPath) -> None:
        """A listing of ``rel`` was stored afresh (a warm, a verify, a refresh): merge it on next use."""
        node = self.table.find(rel)
        if node is not None:
            node.listed_at = 0.0

    async def _remote_listing(self, rel: RelPath) -> tuple[float, list[RemoteEntry]] | None:
        fresh = self.listings.fresh(rel)
        if fresh is not None:
            return fresh
        stored = self.listings.stored(rel)
        if not self.upstream.available:
            return stored  # any age: better than showing nothing
        if stored is not None and self._nursery is not None:
            # An expired listing serves now; the upstream is asked in the background, so a
            # stalled upstream never makes `ls` of a known folder wait.
            if rel not in self._refreshing:
                self._refreshing.add(rel)
                self._nursery.start_soon(self._refresh_listing, rel)
            return stored
        try:
            entries = await self.listings.fetch(rel)
        except NotFound:
            entries = []
        except UpstreamError as exc:
            stored = self.listings.stored(rel)
            log.warning("listing %s/ from upstream failed: %s%s", rel, exc,
                        "; using the listing from an earlier run" if stored else "")
            return stored
        return time.time(), entries

    async def _refresh_listing(self, rel: RelPath) -> None:
        try:
            await self.listings.fetch(rel)
        except NotFound:
            self.listings.index.store_listing(rel, [])
        except UpstreamError as exc:
            log.warning("refreshing the listing of %s/ failed: %s; the stored one stays in use", rel, exc)
        except Exception:
            log.exception("refreshing the listing of %s/ failed", rel)
        finally:
            self._refreshing.discard(rel)

    # -- a file landed in the mirror --------------------------------------------------
    def installed(self, node: Node, local: LocalEntry) -> None:
        """``node``'s file is in the mirror now: mark it and its folders, and record the
        folder's new mtime without a rescan (rescanning after every install made n cold files
        in one folder cost n² stats)."""
        self._set_local(node, local)
        parent = node.parent
        while parent is not None and not parent.cached:
            parent.cached = True
            parent.scanned_mtime_ns = -3  # rescan the new mirror folder on next use
            parent.gen += 1
            parent = parent.parent
        folder = node.parent
        if folder is not None and folder.scanned_mtime_ns >= 0:
            # Its new mtime, where that costs no wait (else: rescanned, off the loop, on next use).
            folder.scanned_mtime_ns = -3 if folder.foreign or folder.ghost else self._stat(self.table.rel(folder))[0]
