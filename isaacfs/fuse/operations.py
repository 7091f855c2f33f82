"""The pyfuse3 Operations: a thin, read-only FUSE face over the namespace.

Attributes carry long kernel timeouts and files are opened with ``keep_cache``: an
asset does not change under a given upstream release, so repeat lookups, stats and
re-reads are answered by the kernel alone (``kernel.py`` takes entries back when the
tree changes beside it).

Every handler answers through :func:`answers`: a typed error becomes its errno
through the core's one table (``errno_for``); anything unexpected is logged with its
traceback and answered EIO. No exception ever leaves a handler, since one would end
``pyfuse3.main`` and with it the mount.

Every node handed to the kernel (a lookup, a readdirplus entry) is counted, and
``forget`` gives it back: the namespace drops what the kernel no longer holds.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from ..core.categories import warm_command
from ..core.errors import (
    FetchFailed,
    IsAFolder,
    NoSuchAttribute,
    NotAFolder,
    NotInMirror,
    ReadOnly,
    answer_for,
    errno_for,
    is_missing,
)
from ..core.paths import RelPath, name_from_bytes
from ..core.policy import is_probe
from ..core.types import Mode
from ..fetch.stream import Coverage, Transfer
from ..system.runs import Run, Runs
from ..tree.namespace import Node, Tree
from .kernel import ATTR_TIMEOUT, NEGATIVE_TIMEOUT, KernelCache, encoded, invalidate_inode

log = logging.getLogger("isaacfs.fs")

# Advertised I/O size: tools that honour st_blksize read in 1 MiB steps.
BLOCK_SIZE = 1024 * 1024
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

XATTR_STATE = b"user.isaacfs.state"
XATTR_URL = b"user.isaacfs.url"

T = TypeVar("T")
P = ParamSpec("P")
_logged_bugs: set[tuple[str, str]] = set()


class _Asked:
    """The requesting process's mode, looked up only if the namespace asks (a miss)."""

    def __init__(self, fs: AssetFS, ctx: Any) -> None:
        self.fs, self.pid = fs, int(getattr(ctx, "pid", 0) or 0)
        self.looked = False
        self.mode: Mode | None = None
        self.run: Run | None = None

    def run_now(self) -> Run | None:
        self()
        return self.run

    def __call__(self) -> Mode:
        if not self.looked:
            self.looked = True
            self.mode, self.run = self.fs.runs.lookup(self.pid)
        return self.mode or self.fs.tree.mode

    @property
    def overridden(self) -> bool:
        """The answer was given in another mode than the mount's: the kernel must not keep it."""
        return self.looked and self.mode is not None and self.mode != self.fs.tree.mode


def _uncached(attr: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
    copy = pyfuse3.EntryAttributes()
    for name in ("st_ino", "st_mode", "st_nlink", "st_size", "st_blocks", "st_blksize", "st_uid", "st_gid",
                 "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
        setattr(copy, name, getattr(attr, name))
    copy.entry_timeout = copy.attr_timeout = 0
    return copy


def answers(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap a FUSE handler so that whatever it raises reaches the kernel as an errno."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except (pyfuse3.FUSEError, trio.Cancelled):
            raise
        except Exception as exc:
            if errno_for(exc) is None:
                where = (handler.__name__, type(exc).__name__)
                if where not in _logged_bugs:
                    _logged_bugs.add(where)
                    log.exception("bug: %s failed with %r; answered EIO (logged once per kind)", *where[:1], exc)
            raise pyfuse3.FUSEError(answer_for(exc)) from None

    return wrapper


# pyfuse3 built with scripts/patches/ (scripts/bootstrap does it): opendir may return a
# FileInfo, and the kernel keeps a folder's entries between opens (FOPEN_CACHE_DIR), so a
# second walk reads no folder from the daemon. The plain binding lists each open afresh.
CACHE_DIRS = bool(getattr(pyfuse3, "OPENDIR_CACHE_READDIR", False))


class AssetFS(pyfuse3.Operations):
    def __init__(self, tree: Tree, root_info: dict[str, str], runs: Runs | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.runs = runs or Runs()
        self.kernel = KernelCache(tree)
        self.root_info = root_info  # values of the root's user.isaacfs.* attributes
        self.uid, self.gid = os.getuid(), os.getgid()
        self._attrs: dict[int, tuple[int, pyfuse3.EntryAttributes]] = {}
        self._dirs: dict[int, tuple[Node, list[Node], bool]] = {}
        self.cache_dirs = CACHE_DIRS
        self._shown: dict[int, int] = {}  # folder inode -> the entries the kernel was last handed
        # Open handles reading a file still being fetched: the transfer, and what of the file
        # the handle has read.
        self._streams: dict[int, tuple[Transfer, Coverage]] = {}
        self._foreign: set[int] = set()  # handles of files where I/O can hang (read off the loop)
        self._next_dir_handle = 1
        self._read_buffer = bytearray(0)  # what read() reads into, reused (see read)

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
            raise NotInMirror(f"inode {inode} is not known (forgotten)") from None

    # -- names ----------------------------------------------------------------------
    @answers
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise NotAFolder(self.tree.rel(parent))
        text = name_from_bytes(name)  # InvalidPath: ENOENT
        asked = _Asked(self, ctx)
        node = await self.tree.lookup(parent, text, asked)
        if node is None:
            if asked.run is not None:
                self._report_miss(asked.run, self.tree.rel(parent).child(text))
            if asked.overridden or self.runs.overriding(self.tree.mode):
                raise NotInMirror(text)  # this process's answer only: never cached
            self.kernel.told_missing((parent_inode, name))  # to take back when it becomes wrong
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a cached "no such name": repeated probes stay in the kernel
            negative.entry_timeout = NEGATIVE_TIMEOUT
            return negative
        if node.ghost:
            self.kernel.told_missing((parent_inode, name))
        self.tree.remember(node)
        if asked.overridden and not node.cached:
            return _uncached(self.attributes(node))  # another process in another mode must ask again
        return self.attributes(node)

    def _report_miss(self, run: Run, rel: RelPath) -> None:
        if is_probe(rel) or not run.miss(str(rel)):
            return
        run.emit({"event": "miss", "path": str(rel), "fetch": warm_command(rel, self.tree.misses.mount_display)})

    @answers
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    @answers
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            for freed in self.tree.forget(inode, count):
                self._attrs.pop(freed, None)

    # -- folders --------------------------------------------------------------------
    @answers
    async def opendir(self, inode: int, ctx: Any) -> int | pyfuse3.FileInfo:  # type: ignore[override]
        node = self._node(inode)
        if not node.is_dir:
            raise NotAFolder(self.tree.rel(node))
        asked = _Asked(self, ctx)
        # A folder's listing differs per mode: the process is asked only while a run in its own
        # mode is registered (a plain listing costs no /proc reads).
        mode = asked() if self.runs.runs else self.tree.mode
        children = await self.tree.listdir(node, mode)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        # A snapshot, so offsets stay valid while it is read; "." and ".." come first.
        self._dirs[handle] = (node, children, asked.overridden)
        if not self.cache_dirs:
            return handle
        # Every open still comes here. The kernel keeps the entries it read last time only
        # while they are what this open lists: an open that lists otherwise (a file installed
        # by a warm, a listing refreshed, a process in another mode) has the kernel drop them
        # and read this snapshot instead.
        shown = hash(tuple((child.name, child.inode) for child in children))
        kept = self._shown.get(inode) == shown
        self._shown[inode] = shown
        return pyfuse3.FileInfo(fh=handle, keep_cache=kept)

    @answers
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        folder, children, overridden = self._dirs[fh]
        reply, attributes = pyfuse3.readdir_reply, self.attributes
        dots = ((b".", folder), (b"..", folder.parent or folder))
        for position in range(start_id, len(children) + 2):
            if position < 2:
                name, node = dots[position]  # the kernel takes no reference for these
                if not reply(token, name, attributes(node), position + 1):
                    break
                continue
            child = children[position - 2]
            attribute = _uncached(attributes(child)) if overridden and not child.cached else attributes(child)
            if not reply(token, encoded(child.name), attribute, position + 1):
                break
            self.tree.remember(child)  # readdirplus hands the kernel the entry: a lookup

    @answers
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------------
    @answers
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & WRITE_FLAGS:
            raise ReadOnly("isaacfs is read-only")
        node = self._node(inode)
        if node.is_dir:
            raise IsAFolder(self.tree.rel(node))
        told = self._attrs.get(node.inode)  # what the kernel holds of this inode
        asked = _Asked(self, ctx)
        run = asked.run_now() if self.runs.runs else None  # per-run counts only while runs exist
        was_cached = node.cached
        started = time.monotonic()
        try:
            fd, transfer = await self.tree.open(node, asked)
            if node.foreign and transfer is None:
                self._foreign.add(fd)
        except FetchFailed as exc:
            run = run or asked.run
            if run is not None and is_missing(exc):
                self._report_miss(run, self.tree.rel(node))
            raise
        except OSError as exc:
            log.warning("cannot open %s in the mirror: %s", self.tree.rel(node), exc.strerror)
            raise
        run = run or asked.run
        if run is not None:
            if was_cached:
                run.counts["served"] += 1
                run.counts["served_bytes"] += node.size
            else:
                run.counts["fetched"] += 1
                run.counts["fetched_bytes"] += node.size
                run.upstream_wait += time.monotonic() - started
                run.emit({"event": "fetch", "path": str(self.tree.rel(node)), "size": node.size})
        if transfer is not None:
            # Streaming: each read waits for its bytes to land. Nothing is kept in the page
            # cache for later opens until the file is verified and installed.
            self._streams[fd] = (transfer, Coverage(transfer.size))
            return pyfuse3.FileInfo(fh=fd, keep_cache=False)
        if told is not None and told[1].st_size != node.size:
            # The file fetched has another size than the listing the kernel was given (it
            # changed upstream). The kernel would cut reads at the old size: this handle reads
            # past its caches, and the kernel is told the new attributes for the next one.
            with trio.move_on_after(1.0):  # the next stat is answered afresh
                await invalidate_inode(node.inode)
            return pyfuse3.FileInfo(fh=fd, direct_io=True)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @answers
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        stream = self._streams.get(fh)
        if stream is not None:
            transfer, coverage = stream
            # The read that completes this handle's reading of the whole file (in any order:
            # the kernel's read-ahead runs reads concurrently) waits for the whole file's
            # check: a program that reads a file through gets verified bytes or EIO.
            await transfer.wait_for(off, size, settle=coverage.add(off, size))  # FetchFailed (EIO): check failed
        if fh in self._foreign:  # a network mirror, a mount inside it: never on the loop
            return await self.tree.mirror.io(True, os.pread, fh, size, off)
        # On this thread: trying the page cache without blocking (RWF_NOWAIT) and reading the
        # rest in a worker thread halved a cold sequential read (bench/bench_mount.py).
        # Into the one read buffer, handed to pyfuse3 as a view: it replies with it before any
        # other request runs (no await between here and the reply). A new bytes object per
        # read was a fresh mapping and a page fault per 4 KiB of it.
        if len(self._read_buffer) < size:
            self._read_buffer = bytearray(size)
        view = memoryview(self._read_buffer)[:size]
        return view[:os.preadv(fh, [view], off)]

    @answers
    async def release(self, fh: int) -> None:
        stream = self._streams.pop(fh, None)
        if stream is not None:
            stream[0].readers -= 1
        if fh in self._foreign:
            self._foreign.discard(fh)
            await self.tree.mirror.io(True, os.close, fh)
            return
        os.close(fh)

    # -- the rest -------------------------------------------------------------------
    @answers
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = await self.tree.mirror.io(self.tree.mirror.network, self.tree.mirror.statvfs)
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

    @answers
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._xattrs(self._node(inode)).get(name)
        if value is None:
            raise NoSuchAttribute(name)
        return value.encode("utf-8", "surrogateescape")

    @answers
    async def listxattr(self, inode: int, ctx: Any) -> Sequence[bytes]:
        return list(self._xattrs(self._node(inode)))
