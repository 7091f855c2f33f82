"""The namespace the mount shows: the mirror, merged with the upstream in permissive mode.

Three parts, after mountpoint-s3's superblock / prefetch split: the inode table (``nodes``:
nodes by inode, the kernel's references, no I/O), the folder loader (``loader``: a folder's
children from the mirror and the upstream's listings) and the open path (``opener``: the
mirror's copy, fetched first where the asker may). ``Tree`` answers the fs layer's questions
with them, in the asker's mode.

Which nodes a mode shows, and how misses are reported, is ``policy``'s. This module
knows nothing of FUSE: the fuse layer turns its answers into replies.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..core import policy
from ..core.categories import looks_like_file
from ..core.errors import Unavailable
from ..core.paths import RelPath
from ..core.types import Installed, Mode, Upstream
from ..fetch.fetcher import Fetcher
from ..fetch.stream import Transfer
from ..store.index import Index
from ..store.mirror import Mirror
from .listings import Listings
from .loader import BIG_FOLDER_BYTES, FolderLoader
from .misses import MissReporter
from .nodes import ROOT_INODE, InodeTable, Node
from .opener import Opener

__all__ = ["BIG_FOLDER_BYTES", "ROOT_INODE", "Node", "Tree"]


class Tree:
    def __init__(self, mirror: Mirror, index: Index, upstream: Upstream, fetcher: Fetcher,
                 mode: Mode, listing_ttl: float, mount_display: str) -> None:
        self.mirror = mirror
        self.index = index
        self.upstream = upstream
        self.fetcher = fetcher
        self.mode: Mode = mode
        self.listings = Listings(index, upstream, listing_ttl)
        self.misses = MissReporter(index, mount_display)
        self.table = InodeTable()
        self.root = self.table.root
        self.nodes = self.table.nodes
        self.loader = FolderLoader(self.table, mirror, self.listings, upstream)
        self.opener = Opener(self.table, self.loader, mirror, index, fetcher, self._miss, self._tell_opened,
                             self._tell_opening)
        # Told of every open of a file, with the asker's mode (the prefetcher reads what a
        # layer names, for a permissive asker only): (path, a callable giving that mode).
        self.opened: list[Callable[[RelPath, Callable[[], Mode]], None]] = []
        # Told of a permissive reader's cold open before its fetch starts (the prefetcher
        # reads a robot's folder ahead while the root layer is on its way).
        self.opening: list[Callable[[RelPath], None]] = []
        fetcher.on_fetched.append(self._fetched)

    def rel(self, node: Node) -> RelPath:
        return self.table.rel(node)

    def visible(self, node: Node, mode: Mode | None = None) -> bool:
        return policy.visible(node, mode or self.mode)

    def attach(self, nursery: trio.Nursery) -> None:
        """Background work (refreshing expired listings) runs in this nursery."""
        self.loader.attach(nursery)

    async def children(self, node: Node, mode: Mode | None = None) -> dict[str, Node]:
        return await self.loader.children(node, mode or self.mode)

    # -- the kernel's references ----------------------------------------------------
    def remember(self, node: Node) -> None:
        self.table.remember(node)

    def forget(self, inode: int, count: int) -> list[int]:
        return self.table.forget(inode, count, self.loader.loading)

    # -- the operations the fs layer needs ------------------------------------------
    async def lookup(self, parent: Node, name: str, mode_of: Callable[[], Mode] | None = None) -> Node | None:
        """``mode_of`` tells the requesting process's mode; it is asked only for a name the
        mirror does not hold (a mirrored file is the same in every mode)."""
        if parent.children is not None:
            known = parent.children.get(name)
            if known is not None and known.cached and not known.ghost:
                return known  # the fast path: no process check, no listing
        mode = mode_of() if mode_of is not None else self.mode
        if mode == "permissive" and not parent.listed_at:
            wanted = self.rel(parent).child(name)
            seen = self._seen_folder(parent, wanted)
            if seen is not None:
                return seen
            if not looks_like_file(name) and not policy.is_probe(wanted):
                # The folder's listing is on its way, and the next lookup will be inside this
                # name: its tree is read beside (a robot's folder, small enough, is then known
                # whole when the kernel asks for its root layer).
                self.listings.read_tree_ahead(wanted)
        children = await self.children(parent, mode)
        node = children.get(name)
        if node is not None and self.visible(node, mode):
            return node
        rel = self.rel(parent).child(name)
        if self._may_ghost(rel, node, mode):
            self.misses.ghost(rel, mode)
            return self.table.ghost(parent, name)
        self._miss(rel, parent, mode)
        if mode == "permissive" and parent.unknown and not policy.is_probe(rel):
            # Neither the mirror nor a listing knows: "no such file" would be a guess, and the
            # kernel would remember it. EIO is not remembered; the next lookup asks again.
            raise Unavailable(f"{rel}: not in the mirror, and the upstream's listing of its folder could not be had")
        return None

    def _seen_folder(self, parent: Node, rel: RelPath) -> Node | None:
        """A folder a tree read upstream saw below ``parent`` before ``parent``'s listing is
        known (the page ended inside it: ``Listings.seen``), answered without that listing:
        a path down Isaac/IsaacLab/Robots/... costs the pages that saw it, not a listing per
        folder. Only a folder, and only where the mirror holds no file of that name."""
        name = rel.name
        if parent.foreign or (parent.children is not None and name in parent.children):
            return None  # known already (or a mirror folder whose stat may hang): the usual way
        entry = self.listings.seen(rel.parent, name)
        if entry is None or not entry.is_dir:
            return None
        if parent.cached:
            local = self.mirror.entry(rel)
            if local is not None and not local.is_dir:
                return None
        if parent.children is None:
            parent.children = {}  # still unlisted: the first listdir or miss lists it
        node = self.table.child(parent, name, True)
        self.table.set_remote(node, entry)
        self.index.count("lookups_from_pages")
        return node

    def _may_ghost(self, rel: RelPath, node: Node | None, mode: Mode) -> bool:
        listed: bool | None = None
        if mode == "strict" and (node is None or node.remote is None):
            stored = self.listings.stored(rel.parent)
            if stored is not None:
                listed = any(entry.name == rel.name and entry.is_dir for entry in stored[1])
        return policy.may_ghost(rel, node, mode, self.table.ghosts, listed)

    async def listdir(self, node: Node, mode: Mode | None = None) -> list[Node]:
        mode = mode or self.mode
        children = await self.children(node, mode)
        strict = mode == "strict"
        return [child for child in children.values() if self.visible(child, mode) and not (strict and child.ghost)]

    async def open(self, node: Node, mode_of: Callable[[], Mode] | None = None) -> tuple[int, Transfer | None]:
        """An fd for reading the mirror's copy of a file, fetching it first if the asker's
        mode allows; where files stream, the transfer to wait on before each read."""
        return await self.opener.open(node, mode_of if mode_of is not None else (lambda: self.mode))

    def _tell_opened(self, rel: RelPath, mode_of: Callable[[], Mode] | None) -> None:
        asker: Callable[[], Mode] = mode_of if mode_of is not None else (lambda: self.mode)
        for observer in self.opened:
            observer(rel, asker)

    def _tell_opening(self, rel: RelPath) -> None:
        for observer in self.opening:
            observer(rel)

    def _miss(self, rel: RelPath, parent: Node | None, mode: Mode) -> None:
        upstream_down = parent is not None and parent.remote is not None and not self.upstream.available
        self.misses.miss(rel, mode, upstream_down)

    # -- files that landed beside the kernel's view ---------------------------------
    def _fetched(self, event: Installed) -> None:
        """A file was installed (a streamed one while readers went on): its node is mirrored now."""
        node = self.table.find(event.rel)
        if node is not None and not node.cached:
            self.loader.installed(node, event.local)

    def note_installed(self, rel: RelPath) -> bool:
        """``rel`` was put in the mirror by a warm or a repair: update its node, if the tree has
        one. A file that replaced another gets a new node (a new inode), so a reader holding the
        old one keeps reading the old file to its end, never pages of both. True if replaced."""
        node = self.table.find(rel)
        if node is None or node.parent is None:
            return False
        if node.foreign:  # its stat could hang the loop: the folder is scanned again, off it
            node.parent.scanned_mtime_ns = -3
            return False
        local = self.mirror.entry(rel)
        if local is None:
            return False
        replaced = node.cached and not node.is_dir and (node.size, node.mtime_ns) != (local.size, local.mtime_ns)
        if replaced:
            node = self.table.replace(node)
        self.loader.installed(node, local)
        return replaced
