"""The pyfuse3 Operations: a thin, read-only FUSE face over the Tree.

This is the only module that knows pyfuse3. Attributes carry long kernel timeouts and
files are opened with ``keep_cache``: an asset does not change under a given upstream
release, so repeat lookups, stats and re-reads are answered by the kernel alone.

Nodes live as long as the mount (the tree is bounded by the asset root), so inode
numbers are never reused and ``forget`` has nothing to free.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Sequence
from typing import Any

import pyfuse3

from .config import Mode
from .fetch import FetchFailed
from .paths import InvalidPath, RelPath, name_from_bytes
from .tree import Node, Tree

log = logging.getLogger("isaacfs.fs")

# Seconds the kernel may keep names and attributes without asking again.
ATTR_TIMEOUT = 24 * 3600.0
# Seconds the kernel may remember that a name does not exist.
NEGATIVE_TIMEOUT = 10.0
# Advertised I/O size: tools that honour st_blksize read in 1 MiB steps.
BLOCK_SIZE = 1024 * 1024
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

XATTR_STATE = b"user.isaacfs.state"
XATTR_URL = b"user.isaacfs.url"
MAX_NEGATIVES = 50_000  # remembered "no such name" answers, to take back when they become wrong


class AssetFS(pyfuse3.Operations):
    def __init__(self, tree: Tree, root_info: dict[str, str]) -> None:
        super().__init__()
        self.tree = tree
        self.root_info = root_info  # values of the root's user.isaacfs.* attributes
        self.uid, self.gid = os.getuid(), os.getgid()
        self._attrs: dict[int, tuple[int, pyfuse3.EntryAttributes]] = {}
        self._dirs: dict[int, list[Node]] = {}
        self._next_dir_handle = 1
        # (parent inode, name) -> when the kernel was told the name does not exist.
        self._negatives: dict[tuple[int, bytes], float] = {}

    # -- changes the kernel must hear about -----------------------------------------
    def set_mode(self, mode: Mode) -> None:
        """Switch strict/permissive for the next lookup; open files are not touched."""
        self.tree.mode = mode
        if mode == "strict":
            # Names the kernel may hold that only the upstream has: they must vanish now.
            for node in list(self.tree.nodes.values()):
                if not node.cached and node.parent is not None:
                    self._forget_entry(node.parent.inode, node.name.encode("utf-8", "surrogateescape"))
        else:
            self._take_back_negatives(lambda key: True)

    def refresh(self, rel: RelPath) -> None:
        """``rel`` was just put in the mirror (or replaced) beside the kernel's view of it."""
        node: Node | None = self.tree.root
        chain: set[tuple[int, bytes]] = set()
        for part in rel.parts:
            if node is None:
                break
            chain.add((node.inode, part.encode("utf-8", "surrogateescape")))
            node = node.children.get(part) if node.children is not None else None
        self._take_back_negatives(chain.__contains__)
        if node is not None and node.cached:
            try:
                pyfuse3.invalidate_inode(node.inode, attr_only=False)  # a replaced file: drop old pages
            except OSError:
                pass  # the kernel never cached it

    def _take_back_negatives(self, wanted: Any) -> None:
        horizon = time.monotonic() - NEGATIVE_TIMEOUT
        for key, told in list(self._negatives.items()):
            if told < horizon:
                del self._negatives[key]
            elif wanted(key):
                del self._negatives[key]
                self._forget_entry(*key)

    @staticmethod
    def _forget_entry(parent_inode: int, name: bytes) -> None:
        pyfuse3.invalidate_entry_async(parent_inode, name, ignore_enoent=True)

    # -- attributes -----------------------------------------------------------------
    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        cached = self._attrs.get(node.inode)
        if cached is not None and cached[0] == node.gen:
            return cached[1]
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        # A ghost folder (strict mode's stand-in for a missing one) is forgotten as soon
        # as a "no such name" would be.
        attr.entry_timeout = attr.attr_timeout = NEGATIVE_TIMEOUT if node.ghost else ATTR_TIMEOUT
        if node.is_dir:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
            attr.st_size = 4096
        else:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = node.size
            # Blocks only for what is on local disk, so `du` shows how much is mirrored.
            attr.st_blocks = (node.size + 511) // 512 if node.cached else 0
        attr.st_blksize = BLOCK_SIZE
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        self._attrs[node.inode] = (node.gen, attr)
        return attr

    def _node(self, inode: int) -> Node:
        try:
            return self.tree.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    # -- names ----------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        try:
            text = name_from_bytes(name)
        except InvalidPath:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        node = await self.tree.lookup(parent, text)
        if node is not None and node.ghost:
            self._negatives[(parent_inode, name)] = time.monotonic()  # to take back on a mode switch
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a cached "no such name": repeated probes stay in the kernel
            negative.entry_timeout = NEGATIVE_TIMEOUT
            if len(self._negatives) >= MAX_NEGATIVES:
                self._take_back_negatives(lambda key: False)  # drop the expired ones
                if len(self._negatives) >= MAX_NEGATIVES:
                    self._negatives.clear()  # a probe storm; these expire in the kernel anyway
            self._negatives[(parent_inode, name)] = time.monotonic()
            return negative
        return self.attributes(node)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # nodes are kept for the life of the mount

    # -- folders --------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        children = await self.tree.listdir(node)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._dirs[handle] = children  # a snapshot, so offsets stay valid while it is read
        return handle

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = self._dirs[fh]
        reply, attributes = pyfuse3.readdir_reply, self.attributes
        for position in range(start_id, len(children)):
            child = children[position]
            if not reply(token, child.name.encode("utf-8", "surrogateescape"), attributes(child), position + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            fd = await self.tree.open(node)
        except FetchFailed as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.warning("cannot open %s in the mirror: %s", self.tree.rel(node), exc.strerror)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def release(self, fh: int) -> None:
        os.close(fh)

    # -- the rest -------------------------------------------------------------------
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = self.tree.mirror.statvfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize, data.f_frsize = st.f_bsize, st.f_frsize
        data.f_blocks, data.f_bfree, data.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        data.f_files, data.f_ffree, data.f_favail = st.f_files, st.f_ffree, st.f_favail
        data.f_namemax = 255
        return data

    def _xattrs(self, node: Node) -> dict[bytes, str]:
        values = {XATTR_STATE: "cached" if node.cached else "remote",
                  XATTR_URL: self.tree.upstream.url_for(self.tree.rel(node))}
        if node.inode == self.tree.root.inode:
            values[XATTR_STATE] = "root"
            values[b"user.isaacfs.mode"] = self.tree.mode
            for key, value in self.root_info.items():
                values[f"user.isaacfs.{key}".encode()] = value
        return values

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._xattrs(self._node(inode)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value.encode("utf-8", "surrogateescape")

    async def listxattr(self, inode: int, ctx: Any) -> Sequence[bytes]:
        return list(self._xattrs(self._node(inode)))
