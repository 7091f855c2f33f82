"""Every process gets its own mode's answer, whatever other processes asked before: the
FUSE operations driven without a kernel, with runs registered for real processes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pyfuse3
import pytest

from isaacfs.fuse.operations import AssetFS
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from isaacfs.tree.namespace import ROOT_INODE, Tree
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import Running, sample_files, trio_test

MISSING = "Isaac/Props/Blocks/DexCube/missing.usda"
THERE = "Isaac/Props/Blocks/DexCube/dex_cube_instanceable.usda"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    made = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        yield made
    finally:
        for process in made:
            process.kill()
            process.wait()


def permissive_mount(running: Running) -> AssetFS:
    """The FUSE operations of a permissive mount over the running workspace, without a kernel."""
    ws = running.ws
    tree = Tree(ws.mirror, ws.index, ws.upstream, ws.fetcher, "permissive", 3600.0, "/mnt")
    tree.attach(running._nursery)
    return AssetFS(tree, {})


async def _open(fs: AssetFS, path: str, pid: int) -> int:
    """What `cat MOUNT/path` by process ``pid`` gets: 0, or the errno of the first failing step."""
    ctx = SimpleNamespace(pid=pid, uid=0, gid=0, umask=0o022)
    inode = ROOT_INODE
    try:
        for name in path.split("/"):
            entry = await fs.lookup(inode, name.encode(), ctx)
            if entry.st_ino == 0:
                return errno.ENOENT
            inode = entry.st_ino
        info = await fs.open(inode, os.O_RDONLY, ctx)
    except pyfuse3.FUSEError as exc:
        return exc.errno
    await fs.release(info.fh)
    return 0


@trio_test
async def test_a_permissive_run_fetches_after_a_strict_run_looked_at_the_same_folder(
        mirror: Mirror, index: Index, processes: list[subprocess.Popen[bytes]]) -> None:
    upstream = MemoryUpstream(sample_files())
    running = Running(mirror, index, upstream)
    async with running:
        fs = permissive_mount(running)
        tree = fs.tree
        strict, permissive = processes
        fs.runs.register(strict.pid, "strict", lambda event: None)
        assert await _open(fs, MISSING, strict.pid) == errno.ENOENT  # a miss, correct
        tree.mode = "strict"  # isaacfs mode strict
        fs.runs.register(permissive.pid, "permissive", lambda event: None)
        assert await _open(fs, THERE, permissive.pid) == 0  # its own mode's answer: fetched
        assert await _open(fs, THERE.replace("dex_cube", "other"), permissive.pid) == errno.ENOENT
        assert await _open(fs, MISSING, os.getpid()) == errno.ENOENT  # the mount's own mode: strict


@trio_test
async def test_a_permissive_run_finds_a_new_folder_under_mirrored_ones_a_strict_run_walked_first(
        mirror: Mirror, index: Index, processes: list[subprocess.Popen[bytes]]) -> None:
    """Issue 22's first finding, as reported: the folders down to A are in the mirror (an
    earlier warm), A/b is not. A strict run walks to A first: the folders are loaded from the
    mirror alone, no listing, so none of them has an upstream entry. A permissive run then
    asked for A/b: A was taken for a folder only the mirror has, never listed, and the run
    got ENOENT for the folder A/b."""
    from pathlib import Path

    upstream = MemoryUpstream(sample_files())
    kept = "Isaac/Props/Blocks/DexCube/dex_cube_instanceable.usda"
    target = Path(mirror.display, kept)
    target.parent.mkdir(parents=True)
    target.write_bytes(upstream.files[kept])  # A = Isaac/Props is mirrored; A/b = Isaac/Props/Odd Names is not
    wanted = "Isaac/Props/Odd Names/a b%+#é.usda"
    running = Running(mirror, index, upstream)
    async with running:
        fs = permissive_mount(running)
        strict, permissive = processes
        fs.runs.register(strict.pid, "strict", lambda event: None)
        assert await _open(fs, kept, strict.pid) == 0  # walks Isaac/Props in strict mode
        assert await _open(fs, wanted, strict.pid) == errno.ENOENT
        fs.runs.register(permissive.pid, "permissive", lambda event: None)
        assert await _open(fs, wanted, permissive.pid) == 0  # fetched, in its own mode
