"""The floor of a walk through pyfuse3 and trio on this machine: a minimal read-only file
system that serves a folder's names and sizes from memory (read once, before mounting), with
the kernel caching as isaacfs asks it to (readdirplus, 24 h attributes, the folder cache
where the binding has it). No disk, no isaacfs: what is left of a cold walk through it is
pyfuse3's, trio's and the kernel's work per request.

    python bench/fuse_floor.py MOUNTPOINT SOURCE     (foreground; unmount to stop)

bench/bench_mount.py runs it beside the isaacfs walk, in the same run.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

DAY = 24 * 3600.0


class Floor(pyfuse3.Operations):
    def __init__(self, source: str) -> None:
        super().__init__()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.children: dict[int, list[tuple[bytes, int]]] = {}
        self.handles: dict[int, int] = {}
        self._next = 1
        self._add(source, True)
        folders = [(source, 1)]
        while folders:
            path, inode = folders.pop()
            entries = self.children[inode]
            with os.scandir(path) as listing:
                for entry in listing:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    child = self._add(entry.path, is_dir)
                    entries.append((os.fsencode(entry.name), child))
                    if is_dir:
                        folders.append((entry.path, child))

    def _add(self, path: str, is_dir: bool) -> int:
        inode, self._next = self._next, self._next + 1
        st = os.stat(path)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = DAY
        attr.st_mode = (stat.S_IFDIR | 0o555) if is_dir else (stat.S_IFREG | 0o444)
        attr.st_nlink = 2 if is_dir else 1
        attr.st_size = 4096 if is_dir else st.st_size
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = st.st_mtime_ns
        self.attrs[inode] = attr
        if is_dir:
            self.children[inode] = []
        return inode

    async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
        return self.attrs[inode]

    async def lookup(self, parent: int, name: bytes, ctx: object = None) -> pyfuse3.EntryAttributes:
        for child_name, child in self.children.get(parent, []):
            if child_name == name:
                return self.attrs[child]
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: object) -> int | pyfuse3.FileInfo:  # type: ignore[override]
        handle = len(self.handles) + 1
        while handle in self.handles:
            handle += 1
        self.handles[handle] = inode
        if getattr(pyfuse3, "OPENDIR_CACHE_READDIR", False):
            return pyfuse3.FileInfo(fh=handle, keep_cache=True)
        return handle

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self.children[self.handles[fh]]
        for position in range(start_id, len(entries)):
            name, inode = entries[position]
            if not pyfuse3.readdir_reply(token, name, self.attrs[inode], position + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    floor = Floor(sys.argv[2])
    options = set(pyfuse3.default_options)
    options.add("fsname=fuse-floor")
    options.discard("default_permissions")
    pyfuse3.init(floor, sys.argv[1], options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main()
