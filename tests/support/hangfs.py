"""A FUSE file system whose reads hang, as a hung NFS server's do: the upstream folder of a
``file:`` asset root that stops answering mid-file.

Usage: python hangfs.py MOUNTPOINT   (prints "ready" once mounted; SIGKILL and
``fusermount3 -uz`` end it, failing the reads still waiting.)

It holds ``Isaac/Props/ok.usda`` (read whole) and ``Isaac/Props/stuck.bin`` (200 MiB, whose
first 1 MiB reads, after which every read waits forever).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

OK = b"#usda 1.0\n(doc = \"served\")\n"
STUCK_SIZE = 200 * 1024 * 1024
READABLE = 1024 * 1024

# inode: (name, child inodes, or None for a file)
TREE = {
    pyfuse3.ROOT_INODE: ("", [2]),
    2: ("Isaac", [3]),
    3: ("Props", [4, 5]),
    4: ("ok.usda", None),
    5: ("stuck.bin", None),
}


class HangFS(pyfuse3.Operations):
    def attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        children = TREE[inode][1]
        if children is not None:
            attr.st_mode, attr.st_size, attr.st_nlink = stat.S_IFDIR | 0o555, 4096, 2
        else:
            attr.st_mode, attr.st_nlink = stat.S_IFREG | 0o444, 1
            attr.st_size = len(OK) if inode == 4 else STUCK_SIZE
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        attr.entry_timeout = attr.attr_timeout = 60
        return attr

    async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
        return self.attrs(inode)

    async def lookup(self, parent: int, name: bytes, ctx: object = None) -> pyfuse3.EntryAttributes:
        for child in TREE[parent][1] or []:
            if TREE[child][0].encode() == name:
                return self.attrs(child)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: object) -> int:
        return inode

    async def readdir(self, inode: int, start: int, token: pyfuse3.ReaddirToken) -> None:
        children = TREE[inode][1] or []
        for position in range(start, len(children)):
            child = children[position]
            if not pyfuse3.readdir_reply(token, TREE[child][0].encode(), self.attrs(child), position + 1):
                return

    async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh == 4:
            return OK[off:off + size]
        if off + size > READABLE:
            await trio.sleep_forever()  # the server stopped answering
        return b"\0" * max(0, min(size, STUCK_SIZE - off))


def main() -> None:
    pyfuse3.init(HangFS(), sys.argv[1], {"fsname=hangfs", "ro"})
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
