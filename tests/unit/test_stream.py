"""Streaming ranged downloads against the in-memory upstream (ranged, as S3 is)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest
import trio

from isaacfs.core.errors import FetchFailed
from isaacfs.core.paths import RelPath
from isaacfs.fetch.integrity import multipart_candidates
from isaacfs.fetch.stream import PART_SIZE, Transfer
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import Running, trio_test

BIG = "Isaac/Environments/Sky/dome.exr"
CRATE = "Isaac/Environments/Sky/stage.usd"
MIB = 1024 * 1024


def blob(size: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def multipart_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@pytest.fixture
def ranged() -> MemoryUpstream:
    return MemoryUpstream({BIG: blob(20 * MIB, 1), CRATE: blob(3 * PART_SIZE + 5, 2)}, ranged=True)


def running(mirror: Mirror, index: Index, upstream: MemoryUpstream, stall: float = 30.0) -> Running:
    made = Running(mirror, index, upstream)
    made.fetcher.stall_timeout = stall
    return made


@trio_test
async def test_a_large_file_arrives_in_ranged_parts_checked_and_hashed(
        mirror: Mirror, index: Index, ranged: MemoryUpstream) -> None:
    rel = RelPath.parse(BIG)
    entry = await ranged.stat(rel)
    async with running(mirror, index, ranged) as ws:
        local = await ws.fetcher.ensure(rel, entry)
    assert local.size == 20 * MIB and Path(mirror.display, BIG).read_bytes() == ranged.files[BIG]
    assert sorted(start for path, start, _ in ranged.ranges if path == BIG) == list(range(0, 20 * MIB, PART_SIZE))
    assert index.file_md5(rel) == entry.etag
    assert list(mirror.tmp.iterdir()) == []


@trio_test
async def test_a_reader_gets_its_first_bytes_before_the_file_is_whole(
        mirror: Mirror, index: Index, ranged: MemoryUpstream) -> None:
    ranged.chunk_delay = 0.01  # 64 KiB per 10 ms: 20 MiB take seconds
    rel = RelPath.parse(BIG)
    entry = await ranged.stat(rel)
    async with running(mirror, index, ranged) as ws:
        got = await ws.fetcher.stream(rel, entry)
        assert isinstance(got, Transfer)
        with trio.fail_after(0.5):
            await got.wait_for(0, 64 * 1024)
        with open(got.path, "rb") as stream:
            assert stream.read(64 * 1024) == ranged.files[BIG][:64 * 1024]
        assert not got.complete
        # Seeking to the middle: that part is fetched next, before the ones a reader does not wait for.
        with trio.fail_after(3):
            await got.wait_for(PART_SIZE + 5 * MIB, 4096)
        await ws.fetcher.ensure(rel, entry)
    assert Path(mirror.display, BIG).read_bytes() == ranged.files[BIG]


@trio_test
async def test_a_reader_of_the_whole_file_has_its_answer_once_it_is_checked_not_once_it_is_on_disk(
        mirror: Mirror, index: Index, ranged: MemoryUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read that completes a file waited for the file's fsync and install too: on a slow
    disk, a 256 MiB file's last read waited for 256 MiB to be written back. It waits for the
    check only; the file counts as mirrored once it is on disk."""
    held, fsync = threading.Event(), os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (held.wait(10), fsync(fd)))
    rel = RelPath.parse(BIG)
    entry = await ranged.stat(rel)
    async with running(mirror, index, ranged) as ws:
        got = await ws.fetcher.stream(rel, entry)
        assert isinstance(got, Transfer)
        await got.wait_for(0, 20 * MIB, settle=True)
        assert got.complete and not got.settled.is_set() and got.error is None
        assert index.file_record(rel) is None and not Path(mirror.display, BIG).exists()  # not mirrored yet
        held.set()
        await got.settled.wait()
    assert Path(mirror.display, BIG).read_bytes() == ranged.files[BIG] and index.file_md5(rel) == entry.etag


@trio_test
async def test_a_crate_file_fetches_its_table_of_contents_first(mirror: Mirror, index: Index,
                                                                 ranged: MemoryUpstream) -> None:
    rel = RelPath.parse(CRATE)
    async with running(mirror, index, ranged) as ws:
        await ws.fetcher.ensure(rel, await ranged.stat(rel))
    starts = [start for path, start, _ in ranged.ranges if path == CRATE]
    assert starts[0] == 3 * PART_SIZE  # the last part first


@trio_test
async def test_a_stalled_part_is_detected_by_progress_and_readers_get_eio(
        mirror: Mirror, index: Index, ranged: MemoryUpstream) -> None:
    ranged.stall_after[BIG] = PART_SIZE + 100_000  # the second part stops arriving
    rel = RelPath.parse(BIG)
    entry = await ranged.stat(rel)
    async with running(mirror, index, ranged, stall=0.2) as ws:
        got = await ws.fetcher.stream(rel, entry)
        assert isinstance(got, Transfer)
        got.readers += 1
        started = trio.current_time()
        with pytest.raises(FetchFailed) as caught:
            await got.wait_for(PART_SIZE + 200_000, 4096)
        assert caught.value.errno == errno.EIO and "no byte arrived" in str(caught.value)
        assert trio.current_time() - started < 3  # 3 tries of 0.2 s without progress, not size-based
    assert Path(mirror.display, BIG).exists() is False and list(mirror.tmp.iterdir()) == []


@trio_test
async def test_a_body_cut_short_resumes_from_where_it_stopped(mirror: Mirror, index: Index,
                                                              ranged: MemoryUpstream) -> None:
    ranged.cut_after[BIG] = 3 * MIB
    rel = RelPath.parse(BIG)
    async with running(mirror, index, ranged) as ws:
        await ws.fetcher.ensure(rel, await ranged.stat(rel))
    assert Path(mirror.display, BIG).read_bytes() == ranged.files[BIG]
    assert (BIG, 3 * MIB, PART_SIZE) in ranged.ranges  # the part went on from byte 3 MiB


@trio_test
async def test_multipart_etags_are_checked(mirror: Mirror, index: Index, ranged: MemoryUpstream) -> None:
    ranged.etags[BIG] = multipart_etag(ranged.files[BIG], 16 * MIB)  # uploaded in 16 MiB parts
    rel = RelPath.parse(BIG)
    async with running(mirror, index, ranged) as ws:
        await ws.fetcher.ensure(rel, await ranged.stat(rel))
    assert index.file_md5(rel) == hashlib.md5(ranged.files[BIG]).hexdigest()  # verify checks against it
    os.unlink(Path(mirror.display, BIG))
    ranged.corrupt.add(BIG)  # one flipped byte in the first part
    async with running(mirror, index, ranged) as ws:
        got = await ws.fetcher.stream(rel, await ranged.stat(rel))
        assert isinstance(got, Transfer)
        got.readers += 1  # as Tree.open does
        got.served = True
        with pytest.raises(FetchFailed) as caught:
            await got.wait_for(20 * MIB - 10, 10)
            await ws.fetcher.ensure(rel, await ranged.stat(rel))
            await got.wait_for(0, 1)  # the transfer it read from failed its check
        assert "multipart ETag" in str(caught.value) or "integrity" in str(caught.value)
    assert not Path(mirror.display, BIG).exists()
    assert index.counters().get("streamed_then_failed", 0) >= 1


def test_multipart_part_sizes() -> None:
    assert 16 * MIB in multipart_candidates(20 * MIB, 2)
    assert 8 * MIB in multipart_candidates(20 * MIB, 3)
    assert all(-(-20 * MIB // size) == 3 for size in multipart_candidates(20 * MIB, 3))


@trio_test
async def test_64_readers_of_one_cold_file_share_one_transfer(mirror: Mirror, index: Index,
                                                              ranged: MemoryUpstream) -> None:
    rel = RelPath.parse(BIG)
    entry = await ranged.stat(rel)
    seen: list[object] = []
    async with running(mirror, index, ranged) as ws:
        async def reader() -> None:
            got = await ws.fetcher.stream(rel, entry)
            if isinstance(got, Transfer):
                await got.wait_for(0, 20 * MIB)
            seen.append(got)

        async with trio.open_nursery() as nursery:
            for _ in range(64):
                nursery.start_soon(reader)
    assert len(seen) == 64
    assert len([r for r in ranged.ranges if r[0] == BIG]) == -(-20 * MIB // PART_SIZE)  # each part fetched once


@trio_test
async def test_a_reader_deep_in_a_part_nobody_fetches_yet_waits_for_its_own_bytes(
        mirror: Mirror, index: Index) -> None:
    """The last 64 KiB of a file of 10 parts (a USD crate's table of contents, an EXR's tail):
    the part holding them is split at the reader's offset, so the reader waits for 256 KiB,
    not for the 4 MiB from the part's start, and the file still lands whole and checked."""
    size = 10 * PART_SIZE
    data = blob(size, 3)
    name = "Isaac/Environments/Sky/big.exr"
    upstream = MemoryUpstream({name: data}, ranged=True)
    upstream.chunk, upstream.chunk_delay = 256 * 1024, 0.04  # 256 KiB per 40 ms: a 4 MiB part takes 0.64 s
    rel = RelPath.parse(name)
    entry = await upstream.stat(rel)
    async with running(mirror, index, upstream) as ws:
        got = await ws.fetcher.stream(rel, entry)
        assert isinstance(got, Transfer)
        await got.wait_for(size - 64 * 1024, 64 * 1024)
        served_early = not got.complete and sum(part.done for part in got.parts) < len(got.parts) // 2
        with open(got.path, "rb") as stream:
            stream.seek(size - 64 * 1024)
            assert stream.read() == data[-64 * 1024:]
        await ws.fetcher.ensure(rel, entry)
    assert (name, size - 256 * 1024, size) in upstream.ranges  # the split part: only the reader's bytes
    assert served_early  # its bytes came before most of the file: it did not wait for the parts before
    assert Path(mirror.display, name).read_bytes() == data
    assert index.file_md5(rel) == hashlib.md5(data).hexdigest()


@trio_test
async def test_a_part_splits_for_a_jump_not_for_read_ahead(tmp_path: Path) -> None:
    """The rule itself: a reader (or the kernel's read-ahead) 2 MiB into a part nobody fetches
    splits it only if the part before is not being fetched either (a jump); behind a part
    in flight it is read-ahead of an in-order reader, and the part stays whole."""
    from isaacfs.core.types import RemoteEntry
    from isaacfs.fetch.stream import RUNNING
    size = 10 * PART_SIZE
    for before, splits in ((RUNNING, False), (None, True)):
        transfer = Transfer(RelPath.parse("Isaac/a.exr"), RemoteEntry("a.exr", False, size, 0.0, ""),
                            tmp_path / f"t{splits}", PART_SIZE)
        try:
            if before is not None:
                transfer.parts[5].state = before
            with trio.move_on_after(0.05):  # nothing fetches: it only registers what it waits for
                await transfer.wait_for(6 * PART_SIZE + 2 * MIB, 64 * 1024)
            assert (len(transfer.parts) == 11) is splits
            if splits:
                assert transfer.parts[7].start == 6 * PART_SIZE + 2 * MIB
        finally:
            transfer.close()


@trio_test
async def test_a_reader_reading_on_in_order_does_not_split_parts(mirror: Mirror, index: Index) -> None:
    """The kernel's read-ahead asks 1 MiB past where a sequential reader is: that is not a
    jump, and must not cut the parts ahead into small requests (each a round trip)."""
    size = 10 * PART_SIZE
    data = blob(size, 4)
    name = "Isaac/Environments/Sky/seq.exr"
    upstream = MemoryUpstream({name: data}, ranged=True)
    upstream.chunk, upstream.chunk_delay = 256 * 1024, 0.008
    rel = RelPath.parse(name)
    entry = await upstream.stat(rel)
    async with running(mirror, index, upstream) as ws:
        got = await ws.fetcher.stream(rel, entry)
        assert isinstance(got, Transfer)
        for offset in range(0, size, 512 * 1024):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(got.wait_for, offset, 128 * 1024)
                nursery.start_soon(got.wait_for, min(size - 1, offset + MIB + 256 * 1024), 128 * 1024)  # read-ahead
        await ws.fetcher.ensure(rel, entry)
    assert sorted(start for path, start, _ in upstream.ranges if path == name) == list(range(0, size, PART_SIZE))
    assert Path(mirror.display, name).read_bytes() == data
