"""What the kernel remembers of the tree, and taking it back when it becomes wrong.

The kernel keeps names and attributes for ``ATTR_TIMEOUT`` and "no such name" answers
for ``NEGATIVE_TIMEOUT``. When the tree changes beside it (a mode switch, a file put
in the mirror or replaced by a warm or a repair), the affected entries are invalidated
here, so the next lookup reaches the daemon again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import pyfuse3
import trio

from ..core.paths import RelPath
from ..core.types import Mode
from ..tree.namespace import Node, Tree

# Seconds the kernel may keep names and attributes without asking again.
ATTR_TIMEOUT = 24 * 3600.0
# Seconds the kernel may remember that a name does not exist.
NEGATIVE_TIMEOUT = 10.0
MAX_NEGATIVES = 50_000  # remembered "no such name" answers, to take back when they become wrong

Key = tuple[int, bytes]  # (parent inode, name)


def encoded(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class KernelCache:
    def __init__(self, tree: Tree, clock: Callable[[], float] = time.monotonic) -> None:
        self.tree = tree
        self._clock = clock
        # (parent inode, name) -> when the kernel was told the name does not exist (or is a
        # ghost), oldest first: expired entries leave from the front, and a full memo evicts
        # its oldest, so each answer and each install costs O(1), never a scan.
        self._negatives: OrderedDict[Key, float] = OrderedDict()

    def told_missing(self, key: Key) -> None:
        """The kernel was told ``key`` does not exist (or is a short-lived ghost folder)."""
        now = self._clock()
        self._expire(now)
        self._negatives[key] = now
        self._negatives.move_to_end(key)
        while len(self._negatives) > MAX_NEGATIVES:
            # A probe storm: the oldest answer the kernel may still hold is taken back from it
            # now, so nothing it keeps can go stale unseen.
            oldest, _told = self._negatives.popitem(last=False)
            self._forget_entry(*oldest)

    def _expire(self, now: float) -> None:
        """Forget the answers the kernel itself has dropped by now."""
        horizon = now - NEGATIVE_TIMEOUT
        while self._negatives:
            key, told = next(iter(self._negatives.items()))
            if told >= horizon:
                return
            del self._negatives[key]

    def __len__(self) -> int:
        return len(self._negatives)

    def set_mode(self, mode: Mode) -> None:
        """Switch strict/permissive for the next lookup; open files are not touched."""
        self.tree.mode = mode
        if mode == "strict":
            # Names the kernel may hold that only the upstream has: they must vanish now.
            for node in list(self.tree.nodes.values()):
                if not node.cached and node.parent is not None:
                    self._forget_entry(node.parent.inode, encoded(node.name))
        else:
            self._take_back(lambda key: True)

    def refresh(self, rel: RelPath, replaced: bool = False) -> None:
        """``rel`` was just put in the mirror beside the kernel's view of it. ``replaced``: the
        name now has a new node (a new inode): the kernel must look the name up again, while
        open handles keep the old inode, its pages and its file."""
        node: Node | None = self.tree.root
        parent: Node | None = None
        self._expire(self._clock())
        for part in rel.parts:
            if node is None:
                break
            key = (node.inode, encoded(part))
            if self._negatives.pop(key, None) is not None:  # one look-up per level, not a scan
                self._forget_entry(*key)
            parent = node
            node = node.children.get(part) if node.children is not None else None
        if replaced and parent is not None:
            self._forget_entry(parent.inode, encoded(rel.name))
        elif node is not None and node.cached:
            self.invalidate(node.inode)

    def take_back_negatives(self) -> None:
        """Every "no such name" the kernel may still hold: a run in another mode must not see them."""
        self._take_back(lambda key: True)

    def drop_pages(self, rel: RelPath) -> None:
        """The kernel must forget what it read of ``rel`` (bytes that failed their check)."""
        node: Node | None = self.tree.root
        for part in rel.parts:
            if node is None or node.children is None:
                return
            node = node.children.get(part)
        if node is not None:
            self.invalidate(node.inode)

    def invalidate(self, inode: int) -> None:
        """Make the kernel drop an inode's attributes and pages, from a side thread: the call
        can wait on the kernel, which must never stall the loop that answers it."""
        trio.lowlevel.spawn_system_task(invalidate_inode, inode)

    def _take_back(self, wanted: Callable[[Key], bool]) -> None:
        """Take back every live answer ``wanted`` picks (a mode switch: all of them)."""
        self._expire(self._clock())
        for key in [key for key in self._negatives if wanted(key)]:
            del self._negatives[key]
            self._forget_entry(*key)

    @staticmethod
    def _forget_entry(parent_inode: int, name: bytes) -> None:
        pyfuse3.invalidate_entry_async(parent_inode, name, ignore_enoent=True)


async def invalidate_inode(inode: int) -> None:
    """Drop the kernel's attributes and pages of ``inode``, waiting in a worker thread."""
    try:
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, False, abandon_on_cancel=True)
    except OSError:
        pass  # the kernel never cached it, or has forgotten it
