"""The namespace the mount shows: the mirror, merged with the upstream in permissive mode.

A node's inode number is stable while the kernel knows it. The kernel's lookup count of
each node is kept (``remember``/``forget``); once the kernel has forgotten a folder and
everything below it, the folder's children are dropped and loaded again on next use, so
memory follows what the kernel holds, not everything ever listed. A folder's children are loaded on
first use: from the mirror folder, and in permissive mode also from the upstream's
listing of it (``Listings``, trusted for ``listing_ttl``). An upstream failure never
removes anything the mirror holds: it only means fewer names are known for now.

Which nodes a mode shows, and how misses are reported, is ``policy``'s. This module
knows nothing of FUSE: the fuse layer turns its answers into replies.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable

import trio

from ..core import policy
from ..core.errors import FetchFailed, NotFound, NotInMirror, Unavailable, UpstreamError
from ..core.paths import RelPath
from ..core.types import Installed, LocalEntry, Mode, RemoteEntry, Upstream
from ..fetch.fetcher import Fetcher
from ..fetch.stream import Transfer
from ..store.index import Index
from ..store.mirror import Mirror
from .listings import Listings
from .misses import MissReporter

log = logging.getLogger("isaacfs")

# A mirror folder whose directory file is larger than this (ext4: some 1,500 names; tmpfs:
# some 3,000) is scanned in a worker thread.
BIG_FOLDER_BYTES = 64 * 1024

ROOT_INODE = 1


class Node:
    """One file or folder of the tree. ``gen`` changes whenever its attributes do."""

    __slots__ = (
        "cached",
        "children",
        "gen",
        "ghost",
        "inode",
        "is_dir",
        "listed_at",
        "lookups",
        "mtime_ns",
        "name",
        "parent",
        "remote",
        "scanned_mtime_ns",
        "size",
        "unknown",
    )

    def __init__(self, inode: int, parent: Node | None, name: str, is_dir: bool) -> None:
        self.inode = inode
        self.parent = parent
        self.name = name
        self.is_dir = is_dir
        self.size = 0
        self.mtime_ns = 0
        self.cached = False  # present in the mirror
        self.remote: RemoteEntry | None = None  # the upstream's entry, where known
        self.children: dict[str, Node] | None = None
        self.scanned_mtime_ns = -1
        self.listed_at = 0.0  # when the upstream listing was merged (epoch s); 0: never
        self.ghost = False  # a folder strict mode lets a path walk through; see Tree.lookup
        self.gen = 0
        self.lookups = 0  # how many times the kernel was handed this node and has not forgotten it
        self.unknown = False  # permissive: the upstream's listing of this folder could not be had


class Tree:
    def __init__(self, mirror: Mirror, index: Index, upstream: Upstream, fetcher: Fetcher,
                 mode: Mode, listing_ttl: float, mount_display: str) -> None:
        self.mirror = mirror
        self.index = index
        self.upstream = upstream
        self.fetcher = fetcher
        self.mode: Mode = mode
        self.listings = Listings(index, upstream, listing_ttl)
        self.listings.observers.append(self._relisted)
        fetcher.on_fetched.append(self._fetched)
        # Told of every open of a file, with the asker's mode (the prefetcher reads what a
        # layer names, for a permissive asker only): (path, a callable giving that mode).
        self.opened: list[Callable[[RelPath, Callable[[], Mode]], None]] = []
        self.misses = MissReporter(index, mount_display)
        self._inodes = itertools.count(ROOT_INODE + 1)
        self.root = Node(ROOT_INODE, None, "", True)
        self.root.cached = True
        self.root.mtime_ns = time.time_ns()
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._loading: dict[int, trio.Event] = {}
        self._ghosts = 0
        self._nursery: trio.Nursery | None = None
        self._refreshing: set[RelPath] = set()

    # -- helpers --------------------------------------------------------------------
    def rel(self, node: Node) -> RelPath:
        parts: list[str] = []
        current: Node | None = node
        while current is not None and current.parent is not None:
            parts.append(current.name)
            current = current.parent
        return RelPath(tuple(reversed(parts)))

    def visible(self, node: Node, mode: Mode | None = None) -> bool:
        return policy.visible(node, mode or self.mode)

    def _child(self, parent: Node, name: str, is_dir: bool) -> Node:
        assert parent.children is not None
        node = parent.children.get(name)
        if node is None:
            node = Node(next(self._inodes), parent, name, is_dir)
            parent.children[name] = node
            self.nodes[node.inode] = node
        return node

    def _set_local(self, node: Node, local: LocalEntry) -> None:
        if node.ghost:
            node.ghost = False
            node.gen += 1
        if (node.cached, node.is_dir, node.size, node.mtime_ns) != (True, local.is_dir, local.size, local.mtime_ns):
            node.cached, node.is_dir, node.size, node.mtime_ns = True, local.is_dir, local.size, local.mtime_ns
            node.gen += 1

    def _set_remote(self, node: Node, remote: RemoteEntry) -> None:
        node.remote = remote
        if node.ghost:
            node.ghost = False
            node.gen += 1
        if not node.cached:
            mtime_ns = int(remote.mtime * 1e9) or self.root.mtime_ns
            if (node.is_dir, node.size, node.mtime_ns) != (remote.is_dir, remote.size, mtime_ns):
                node.is_dir, node.size, node.mtime_ns = remote.is_dir, remote.size, mtime_ns
                node.gen += 1

    def _drop_if_gone(self, parent: Node, node: Node) -> None:
        if not node.cached and node.remote is None and not node.ghost and parent.children is not None:
            parent.children.pop(node.name, None)

    # -- loading folders ------------------------------------------------------------
    async def children(self, node: Node, mode: Mode | None = None) -> dict[str, Node]:
        """The folder's children, loaded or refreshed as needed (one loader per folder)."""
        while True:
            event = self._loading.get(node.inode)
            if event is None:
                break
            await event.wait()
        if node.children is not None and not self._stale(node, mode or self.mode):
            return node.children
        event = self._loading[node.inode] = trio.Event()
        try:
            await self._load(node, mode or self.mode)
        finally:
            del self._loading[node.inode]
            event.set()
        assert node.children is not None
        return node.children

    def _stale(self, node: Node, mode: Mode) -> bool:
        if self._mirror_mtime(node) != node.scanned_mtime_ns:
            return True
        return mode == "permissive" and self._wants_listing(node)

    def _wants_listing(self, node: Node) -> bool:
        if node.parent is not None and node.remote is None and not node.ghost:
            return False  # a folder only the mirror has; the upstream would list nothing
        if node.listed_at and time.time() - node.listed_at < self.listings.ttl:
            return False
        # Never merged: a stored listing serves even while the upstream rests.
        return self.upstream.available or not node.listed_at

    def _mirror_mtime(self, node: Node) -> int:
        if node.ghost:
            local = self.mirror.entry(self.rel(node))
            if local is None or not local.is_dir:
                return -1
            self._set_local(node, local)  # the folder arrived in the mirror (a warm, a copy)
        if not node.cached:
            return -1
        try:
            return os.stat(self.mirror.path(self.rel(node))).st_mtime_ns
        except OSError:
            return -2

    def _big_folder(self, rel: RelPath) -> bool:
        try:
            return os.stat(self.mirror.path(rel)).st_size > BIG_FOLDER_BYTES
        except OSError:
            return False

    async def _load(self, node: Node, mode: Mode) -> None:
        rel = self.rel(node)
        if node.children is None:
            node.children = {}
        mtime = self._mirror_mtime(node)
        if mtime != node.scanned_mtime_ns:
            # A small folder on this thread: a worker-thread hop per folder made a cold walk of
            # 20,000 files about twice as slow (bench/bench_mount.py). A big one (thousands of
            # names: tens of ms of stats) in a worker thread, so it never stalls other requests.
            scanned = None
            if node.cached:
                scanned = (await trio.to_thread.run_sync(self.mirror.scan, rel) if self._big_folder(rel)
                           else self.mirror.scan(rel))
            self._merge_local(node, scanned)
            node.scanned_mtime_ns = mtime
        if mode == "permissive" and self._wants_listing(node):
            listing = await self._remote_listing(rel)
            node.unknown = listing is None
            if listing is not None:
                node.listed_at, entries = listing
                self._merge_remote(node, entries)

    def _tell_opened(self, rel: RelPath, mode_of: Callable[[], Mode] | None) -> None:
        asker: Callable[[], Mode] = mode_of if mode_of is not None else (lambda: self.mode)
        for observer in self.opened:
            observer(rel, asker)

    def _fetched(self, event: Installed) -> None:
        """A file was installed (a streamed one while readers went on): its node is mirrored now."""
        node = self._find(event.rel)
        if node is not None and not node.cached:
            self._set_local(node, event.local)
            self._mark_ancestors_cached(node)
            self._scanned_after_install(node.parent)

    def _find(self, rel: RelPath) -> Node | None:
        node: Node | None = self.root
        for part in rel.parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(part)
        return node

    def _relisted(self, rel: RelPath) -> None:
        """A listing of ``rel`` was stored afresh (a warm, a verify, a refresh): merge it on next use."""
        node: Node | None = self.root
        for part in rel.parts:
            if node is None or node.children is None:
                return
            node = node.children.get(part)
        if node is not None:
            node.listed_at = 0.0

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

    def _merge_local(self, node: Node, entries: list[LocalEntry] | None) -> None:
        assert node.children is not None
        seen = set()
        for entry in entries or ():
            seen.add(entry.name)
            child = self._child(node, entry.name, entry.is_dir)
            self._set_local(child, entry)
            if child.remote is not None and child.remote.is_dir != entry.is_dir:
                child.remote = None  # the mirror's copy wins over a different upstream kind
        for child in list(node.children.values()):
            if child.cached and child.name not in seen:
                child.cached = False  # removed from the mirror beside us
                child.gen += 1
                if child.remote is not None:
                    self._set_remote(child, child.remote)
                self._drop_if_gone(node, child)

    def _merge_remote(self, node: Node, entries: list[RemoteEntry]) -> None:
        assert node.children is not None
        listed = {entry.name: entry for entry in entries}
        for entry in entries:
            child = self._child(node, entry.name, entry.is_dir)
            if child.cached and child.is_dir != entry.is_dir:
                continue
            self._set_remote(child, entry)
        for child in list(node.children.values()):
            if child.remote is not None and child.name not in listed:
                child.remote = None
                self._drop_if_gone(node, child)

    def attach(self, nursery: trio.Nursery) -> None:
        """Background work (refreshing expired listings) runs in this nursery."""
        self._nursery = nursery

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

    # -- the kernel's references ----------------------------------------------------
    def remember(self, node: Node) -> None:
        """The kernel was handed ``node`` (a lookup, or an entry of readdirplus)."""
        node.lookups += 1

    def forget(self, inode: int, count: int) -> list[int]:
        """The kernel dropped ``count`` references to ``inode``; the inodes freed as a result."""
        node = self.nodes.get(inode)
        if node is None or node is self.root:
            return []
        node.lookups = max(0, node.lookups - count)
        freed: list[int] = []
        parent = node.parent
        if (node.lookups == 0 and parent is not None and not node.is_dir
                and (parent.children is None or parent.children.get(node.name) is not node)):
            self.nodes.pop(node.inode, None)  # a replaced file's old node: nobody holds it now
            freed.append(node.inode)
        current: Node | None = node if node.is_dir else node.parent
        while current is not None and current is not self.root and self._collapse(current, freed):
            current = current.parent
        return freed

    def _collapse(self, folder: Node, freed: list[int]) -> bool:
        """Drop a forgotten folder's children (all forgotten too); True if it was dropped."""
        if folder.lookups > 0 or folder.inode in self._loading:
            return False
        if folder.children:
            if any(child.lookups > 0 for child in folder.children.values()):
                return False
            for child in folder.children.values():
                self._discard(child, freed)
        folder.children = None
        folder.scanned_mtime_ns = -1
        folder.listed_at = 0.0
        return True

    def _discard(self, node: Node, freed: list[int]) -> None:
        if node.children:
            for child in node.children.values():
                self._discard(child, freed)
        if node.ghost:
            self._ghosts -= 1
        self.nodes.pop(node.inode, None)
        freed.append(node.inode)

    # -- the operations the fs layer needs ------------------------------------------
    async def lookup(self, parent: Node, name: str, mode_of: Callable[[], Mode] | None = None) -> Node | None:
        """``mode_of`` tells the requesting process's mode; it is asked only for a name the
        mirror does not hold (a mirrored file is the same in every mode)."""
        if parent.children is not None:
            known = parent.children.get(name)
            if known is not None and known.cached and not known.ghost:
                return known  # the fast path: no process check, no listing
        mode = mode_of() if mode_of is not None else self.mode
        children = await self.children(parent, mode)
        node = children.get(name)
        if node is not None and self.visible(node, mode):
            return node
        rel = self.rel(parent).child(name)
        if self._may_ghost(rel, node, mode):
            self.misses.ghost(rel, mode)
            return self._ghost(parent, name)
        self._miss(rel, parent, mode)
        if mode == "permissive" and parent.unknown and not policy.is_probe(rel):
            # Neither the mirror nor a listing knows: "no such file" would be a guess, and the
            # kernel would remember it. EIO is not remembered; the next lookup asks again.
            raise Unavailable(f"{rel}: not in the mirror, and the upstream's listing of its folder could not be had")
        return None

    def _may_ghost(self, rel: RelPath, node: Node | None, mode: Mode) -> bool:
        listed: bool | None = None
        if mode == "strict" and (node is None or node.remote is None):
            stored = self.listings.stored(rel.parent)
            if stored is not None:
                listed = any(entry.name == rel.name and entry.is_dir for entry in stored[1])
        return policy.may_ghost(rel, node, mode, self._ghosts, listed)

    def _ghost(self, parent: Node, name: str) -> Node:
        if parent.children is None or name not in parent.children:
            self._ghosts += 1
        node = self._child(parent, name, True)
        if not node.ghost:
            node.ghost, node.is_dir = True, True
            node.mtime_ns = node.mtime_ns or self.root.mtime_ns
            node.gen += 1
        return node

    async def listdir(self, node: Node, mode: Mode | None = None) -> list[Node]:
        mode = mode or self.mode
        children = await self.children(node, mode)
        strict = mode == "strict"
        return [child for child in children.values() if self.visible(child, mode) and not (strict and child.ghost)]

    async def open(self, node: Node, mode_of: Callable[[], Mode] | None = None) -> tuple[int, Transfer | None]:
        """An fd for reading the mirror's copy of a file, fetching it first if allowed. Where
        files stream (a ranged upstream), the fd may be the transfer's temporary file, with the
        transfer to wait on before each read."""
        rel = self.rel(node)
        for _attempt in range(2):
            if not node.cached:
                mode = mode_of() if mode_of is not None else self.mode
                if mode != "permissive" or node.remote is None:
                    self._miss(rel, node.parent, mode)
                    raise FetchFailed(f"{rel} is not in the mirror", NotInMirror(rel))
                self.index.count("misses_fetched")
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
                        self._tell_opened(rel, mode_of)
                        return fd, got
                    local = got
                else:
                    local = await self.fetcher.ensure(rel, node.remote)
                self._set_local(node, local)
                self._mark_ancestors_cached(node)
                self._scanned_after_install(node.parent)
            try:
                fd = self.mirror.open_read(rel)
            except FileNotFoundError:
                node.cached = False  # deleted from the mirror beside us; fetch again if allowed
                node.gen += 1
                continue
            self.index.touch(rel)
            self.index.count("opens")
            self._tell_opened(rel, mode_of)
            return fd, None
        raise FetchFailed(f"{rel} vanished from the mirror", NotInMirror(rel))

    def _miss(self, rel: RelPath, parent: Node | None, mode: Mode) -> None:
        upstream_down = parent is not None and parent.remote is not None and not self.upstream.available
        self.misses.miss(rel, mode, upstream_down)

    def _scanned_after_install(self, folder: Node | None) -> None:
        """One file was put in ``folder`` and its node updated: the folder's new mtime needs no
        rescan (rescanning after every install made n cold files in one folder cost n² stats)."""
        if folder is not None and folder.scanned_mtime_ns >= 0:
            folder.scanned_mtime_ns = self._mirror_mtime(folder)

    def note_installed(self, rel: RelPath) -> bool:
        """``rel`` was put in the mirror by a warm or a repair: update its node, if the tree has
        one. A file that replaced another gets a new node (a new inode), so a reader holding the
        old one keeps reading the old file to its end, never pages of both. True if replaced."""
        node: Node | None = self.root
        for part in rel.parts:
            if node is None or node.children is None:
                return False
            node = node.children.get(part)
        local = self.mirror.entry(rel)
        if node is None or local is None or node.parent is None:
            return False
        parent = node.parent
        replaced = node.cached and not node.is_dir and (node.size, node.mtime_ns) != (local.size, local.mtime_ns)
        if replaced:
            assert parent.children is not None
            del parent.children[node.name]  # the old node lives on for its open handles until forgotten
            fresh = self._child(parent, node.name, False)
            fresh.remote = node.remote
            node = fresh
        self._set_local(node, local)
        self._mark_ancestors_cached(node)
        self._scanned_after_install(parent)
        return replaced

    def _mark_ancestors_cached(self, node: Node) -> None:
        parent = node.parent
        while parent is not None and not parent.cached:
            parent.cached = True
            parent.scanned_mtime_ns = -3  # rescan the new mirror folder on next use
            parent.gen += 1
            parent = parent.parent
