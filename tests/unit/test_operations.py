"""The FUSE operations themselves, called without a kernel (S3QL's t3_fs_api style): lookup,
open, read and release over the in-memory upstream, whole-body and streaming."""

from __future__ import annotations

import errno
import hashlib
import os
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from isaacfs.core.paths import RelPath
from isaacfs.fetch.stream import PART_SIZE
from isaacfs.fuse.operations import AssetFS
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from isaacfs.tree.namespace import ROOT_INODE, Tree
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import GO2, Running, sample_files, trio_test

BIG = "Isaac/Environments/Sky/dome.exr"
CTX = SimpleNamespace(pid=0, uid=0, gid=0, umask=0o022)


def blob(size: int) -> bytes:
    return (hashlib.sha256(b"big").digest() * (size // 32 + 1))[:size]


def _fs(running: Running, mode: str = "permissive") -> AssetFS:
    ws = running.ws
    tree = Tree(ws.mirror, ws.index, ws.upstream, ws.fetcher, mode, 3600.0, "/mnt")  # type: ignore[arg-type]
    tree.attach(running._nursery)
    return AssetFS(tree, {})


async def _lookup(fs: AssetFS, path: str) -> int:
    inode = ROOT_INODE
    for name in RelPath.parse(path).parts:
        entry = await fs.lookup(inode, name.encode(), CTX)
        assert entry.st_ino, f"{name} of {path} not found"
        inode = entry.st_ino
    return inode


async def _read_all(fs: AssetFS, fh: int, size: int, step: int = 128 * 1024) -> bytes:
    out = bytearray()
    for offset in range(0, size, step):
        out += await fs.read(fh, offset, step)
    return bytes(out)


@trio_test
async def test_a_cold_open_fetches_then_serves_from_the_page_cache(mirror: Mirror, index: Index) -> None:
    upstream = MemoryUpstream(sample_files())
    running = Running(mirror, index, upstream)
    async with running:
        fs = _fs(running)
        inode = await _lookup(fs, GO2)
        info = await fs.open(inode, os.O_RDONLY, CTX)
        assert info.keep_cache and not info.direct_io  # a checked, installed file
        assert await _read_all(fs, info.fh, len(upstream.files[GO2])) == upstream.files[GO2]
        await fs.release(info.fh)
        assert (await fs.getattr(inode, CTX)).st_blocks > 0  # mirrored now: du counts it
    assert upstream.requests[f"get {GO2}"] == 1


@trio_test
async def test_a_large_cold_file_streams_to_a_reader_in_order_and_is_installed(mirror: Mirror, index: Index) -> None:
    data = blob(3 * PART_SIZE + 12345)
    upstream = MemoryUpstream({BIG: data}, ranged=True)
    running = Running(mirror, index, upstream)
    async with running:
        fs = _fs(running)
        inode = await _lookup(fs, BIG)
        info = await fs.open(inode, os.O_RDONLY, CTX)
        assert not info.keep_cache  # nothing kept for later opens until it is verified
        assert await _read_all(fs, info.fh, len(data), step=1024 * 1024) == data
        await fs.release(info.fh)
        assert fs._streams == {}
        with trio.fail_after(30):
            while mirror.entry(RelPath.parse(BIG)) is None:
                await trio.sleep(0.01)
        again = await fs.open(inode, os.O_RDONLY, CTX)
        assert again.keep_cache  # the installed file, cached from now on
        await fs.release(again.fh)


@trio_test
async def test_a_reader_of_a_stream_that_fails_its_check_gets_eio(mirror: Mirror, index: Index) -> None:
    data = blob(2 * PART_SIZE)
    upstream = MemoryUpstream({BIG: data}, ranged=True)
    upstream.corrupt.add(BIG)
    running = Running(mirror, index, upstream)
    async with running:
        fs = _fs(running)
        inode = await _lookup(fs, BIG)
        try:
            info = await fs.open(inode, os.O_RDONLY, CTX)
        except pyfuse3.FUSEError as early:  # failed before the open could follow it
            assert early.errno == errno.EIO
            return
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await _read_all(fs, info.fh, len(data), step=1024 * 1024)
        assert caught.value.errno == errno.EIO
        await fs.release(info.fh)
    assert mirror.entry(RelPath.parse(BIG)) is None


@trio_test
async def test_writes_folders_and_strict_misses_get_their_errnos(mirror: Mirror, index: Index) -> None:
    upstream = MemoryUpstream(sample_files())
    running = Running(mirror, index, upstream)
    async with running:
        fs = _fs(running, mode="strict")
        negative = await fs.lookup(ROOT_INODE, b"missing.usd", CTX)
        assert negative.st_ino == 0 and negative.entry_timeout > 0  # a cached "no such name"
        fs.tree.mode = "permissive"
        inode = await _lookup(fs, GO2)
        for flags, expected in ((os.O_WRONLY, errno.EROFS), (os.O_RDWR, errno.EROFS)):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await fs.open(inode, flags, CTX)
            assert caught.value.errno == expected
        folder = await _lookup(fs, "Isaac")
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.open(folder, os.O_RDONLY, CTX)
        assert caught.value.errno == errno.EISDIR
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.opendir(inode, CTX)
        assert caught.value.errno == errno.ENOTDIR
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.getxattr(inode, b"user.nothing", CTX)
        assert caught.value.errno == errno.ENODATA
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.getattr(999_999, CTX)
        assert caught.value.errno == errno.ENOENT


def test_coverage_completes_whatever_the_order_of_the_reads() -> None:
    from isaacfs.fetch.stream import Coverage

    cover = Coverage(100)
    assert not cover.add(90, 10) and not cover.add(0, 30) and not cover.add(60, 30)
    assert cover.add(25, 40)  # the read that fills the last gap completes it
    assert not cover.add(0, 100)  # once
    assert Coverage(10).add(0, 4096)  # one read past the end
    assert not Coverage(10).add(20, 5)


@trio_test
async def test_a_reader_whose_reads_come_out_of_order_gets_eio_when_the_check_fails(
        mirror: Mirror, index: Index) -> None:
    """The kernel's read-ahead sends a sequential reader's reads concurrently: however they
    come, the read that completes the file waits for its check (it used to pass, exit 0)."""
    data = blob(2 * PART_SIZE)
    upstream = MemoryUpstream({BIG: data}, ranged=True)
    upstream.corrupt.add(BIG)
    upstream.chunk, upstream.chunk_delay = 512 * 1024, 0.001  # the last bytes land before the check
    running = Running(mirror, index, upstream)
    async with running:
        fs = _fs(running)
        inode = await _lookup(fs, BIG)
        info = await fs.open(inode, os.O_RDONLY, CTX)
        step = 1024 * 1024
        offsets = list(range(0, len(data), step))
        offsets[0], offsets[1] = offsets[1], offsets[0]  # read-ahead ahead of the reader
        with pytest.raises(pyfuse3.FUSEError) as caught:
            for offset in offsets:
                await fs.read(info.fh, offset, step)
        assert caught.value.errno == errno.EIO
        await fs.release(info.fh)


@trio_test
async def test_the_kernel_keeps_a_folders_entries_only_while_they_are_what_an_open_lists(
        mirror: Mirror, index: Index) -> None:
    """With the patched binding (FOPEN_CACHE_DIR), an open whose listing is the one the kernel
    was last handed lets it keep its entries; a listing that differs (a process in another
    mode, a file put in the mirror) has it drop them: no process reads another's listing."""
    upstream = MemoryUpstream(sample_files())
    running = Running(mirror, index, upstream)
    async with running:
        fs = _fs(running, mode="strict")
        fs.cache_dirs = True
        parent = RelPath.parse(GO2).parent
        await running.ws.fetcher.ensure(RelPath.parse(GO2), await upstream.stat(RelPath.parse(GO2)))
        folder = await _lookup(fs, str(parent))

        async def opened() -> tuple[bool, list[str]]:
            info = await fs.opendir(folder, CTX)
            assert isinstance(info, pyfuse3.FileInfo)
            names = [child.name for child in fs._dirs[info.fh][1]]
            await fs.releasedir(info.fh)
            return bool(info.keep_cache), names

        first = await opened()
        assert first == (False, [RelPath.parse(GO2).name])  # nothing kept yet
        assert (await opened())[0]  # the same listing: kept
        fs.tree.mode = "permissive"  # another process's view: more names
        kept, names = await opened()
        assert not kept and len(names) > 1
        fs.tree.mode = "strict"
        assert await opened() == first  # back: dropped again, the strict names
        fs.cache_dirs = False
        assert isinstance(await fs.opendir(folder, CTX), int)  # the plain binding: a handle
