"""The inode table: every node the kernel may hold, by inode number, and the kernel's
references to them (mountpoint-s3's superblock, apart from loading and reading).

A node's inode number is stable while the kernel knows it. The kernel's lookup count of
each node is kept (``remember``/``forget``); once the kernel has forgotten a folder and
everything below it, the folder's children are dropped (and loaded again on next use), so
memory follows what the kernel holds, not everything ever listed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable

from ..core.paths import RelPath
from ..core.types import LocalEntry, RemoteEntry

ROOT_INODE = 1


class Node:
    """One file or folder of the tree. ``gen`` changes whenever its attributes do."""

    __slots__ = (
        "cached",
        "children",
        "foreign",
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
        # On a file system that can hang (a network mirror, a mount inside it): its I/O runs
        # off the loop, under a deadline (store.mirror.Mirror.io). Children inherit it.
        self.foreign: bool = parent.foreign if parent is not None else False


class InodeTable:
    """The nodes by inode, their names and attributes; nothing here does I/O."""

    def __init__(self) -> None:
        self._inodes = itertools.count(ROOT_INODE + 1)
        self.root = Node(ROOT_INODE, None, "", True)
        self.root.cached = True
        self.root.mtime_ns = time.time_ns()
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self.ghosts = 0

    def rel(self, node: Node) -> RelPath:
        parts: list[str] = []
        current: Node | None = node
        while current is not None and current.parent is not None:
            parts.append(current.name)
            current = current.parent
        return RelPath(tuple(reversed(parts)))

    def find(self, rel: RelPath) -> Node | None:
        """The node at ``rel`` if the tree has loaded it, without loading anything."""
        node: Node | None = self.root
        for part in rel.parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(part)
        return node

    def child(self, parent: Node, name: str, is_dir: bool) -> Node:
        assert parent.children is not None
        node = parent.children.get(name)
        if node is None:
            node = Node(next(self._inodes), parent, name, is_dir)
            parent.children[name] = node
            self.nodes[node.inode] = node
        return node

    def add_local(self, parent: Node, entries: Iterable[LocalEntry], foreign: Callable[[LocalEntry], bool]) -> None:
        """New children of ``parent`` (which has none yet) for mirror entries, as ``child``
        then ``set_local`` would make them, without their per-entry calls (a cold walk makes
        one per file). ``foreign(entry)``: the entry is on a file system that can hang."""
        children, nodes, inodes = parent.children, self.nodes, self._inodes
        assert children is not None
        for entry in entries:
            name = entry.name
            node = Node(next(inodes), parent, name, entry.is_dir)
            node.cached, node.size, node.mtime_ns, node.gen = True, entry.size, entry.mtime_ns, 1
            if not node.foreign and foreign(entry):
                node.foreign = True
            children[name] = node
            nodes[node.inode] = node

    def replace(self, node: Node) -> Node:
        """A new node (a new inode) for ``node``'s name: the old one lives on for its open
        handles until the kernel forgets it."""
        parent = node.parent
        assert parent is not None and parent.children is not None
        del parent.children[node.name]
        fresh = self.child(parent, node.name, node.is_dir)
        fresh.remote = node.remote
        return fresh

    def ghost(self, parent: Node, name: str) -> Node:
        if parent.children is None or name not in parent.children:
            self.ghosts += 1
        node = self.child(parent, name, True)
        if not node.ghost:
            node.ghost, node.is_dir = True, True
            node.mtime_ns = node.mtime_ns or self.root.mtime_ns
            node.gen += 1
        return node

    @staticmethod
    def set_local(node: Node, local: LocalEntry) -> None:
        if node.ghost:
            node.ghost = False
            node.gen += 1
        if (node.cached, node.is_dir, node.size, node.mtime_ns) != (True, local.is_dir, local.size, local.mtime_ns):
            node.cached, node.is_dir, node.size, node.mtime_ns = True, local.is_dir, local.size, local.mtime_ns
            node.gen += 1

    def set_remote(self, node: Node, remote: RemoteEntry) -> None:
        node.remote = remote
        if node.ghost:
            node.ghost = False
            node.gen += 1
        if not node.cached:
            mtime_ns = int(remote.mtime * 1e9) or self.root.mtime_ns
            if (node.is_dir, node.size, node.mtime_ns) != (remote.is_dir, remote.size, mtime_ns):
                node.is_dir, node.size, node.mtime_ns = remote.is_dir, remote.size, mtime_ns
                node.gen += 1

    @staticmethod
    def drop_if_gone(parent: Node, node: Node) -> None:
        if not node.cached and node.remote is None and not node.ghost and parent.children is not None:
            parent.children.pop(node.name, None)

    # -- the kernel's references ----------------------------------------------------
    @staticmethod
    def remember(node: Node) -> None:
        """The kernel was handed ``node`` (a lookup, or an entry of readdirplus)."""
        node.lookups += 1

    def forget(self, inode: int, count: int, busy: Callable[[int], bool]) -> list[int]:
        """The kernel dropped ``count`` references to ``inode``; the inodes freed as a result.
        ``busy(inode)``: the folder is being loaded, and is kept."""
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
        while current is not None and current is not self.root and self._collapse(current, freed, busy):
            current = current.parent
        return freed

    def _collapse(self, folder: Node, freed: list[int], busy: Callable[[int], bool]) -> bool:
        """Drop a forgotten folder's children (all forgotten too); True if it was dropped."""
        if folder.lookups > 0 or busy(folder.inode):
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
            self.ghosts -= 1
        self.nodes.pop(node.inode, None)
        freed.append(node.inode)
