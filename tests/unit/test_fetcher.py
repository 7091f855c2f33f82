"""The fetcher against the in-memory upstream: single flight, checks, errors, clean temp area."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest
import trio

from isaacfs.core.errors import AccessDenied, FetchFailed
from isaacfs.core.paths import RelPath
from isaacfs.core.types import LocalEntry
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import FRANKA, GO2, Running, trio_test


@trio_test
async def test_many_readers_of_one_cold_file_cause_one_download(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    upstream.delay = 0.05
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    results: list[LocalEntry] = []
    async with Running(mirror, index, upstream) as ws, trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(lambda: _append(results, ws.fetcher.ensure(rel, entry)))
    assert upstream.requests[f"get {GO2}"] == 1
    assert len(results) == 32 and all(r.size == entry.size for r in results)
    assert Path(mirror.display, GO2).read_bytes() == upstream.files[GO2]
    assert index.file_record(rel) == (entry.size, entry.etag, "upstream")


async def _append(into: list, awaitable) -> None:  # type: ignore[type-arg,no-untyped-def]
    into.append(await awaitable)


@trio_test
async def test_a_corrupted_body_is_retried_then_refused(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    upstream.corrupt.add(GO2)
    async with Running(mirror, index, upstream) as ws:
        with pytest.raises(FetchFailed) as caught:
            await ws.fetcher.ensure(rel, entry)
    assert caught.value.errno == errno.EIO and "integrity" in str(caught.value)
    assert upstream.requests[f"get {GO2}"] == 3
    assert mirror.entry(rel) is None and list(mirror.tmp.iterdir()) == []


@trio_test
async def test_a_body_that_heals_is_installed(mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    upstream.corrupt.add(GO2)

    class Heal:
        calls = 0

    real = upstream.download

    async def heal_after_first(rel: RelPath, size: int, sink, etag: str = "") -> None:  # type: ignore[no-untyped-def]
        Heal.calls += 1
        if Heal.calls == 2:
            upstream.corrupt.clear()
        await real(rel, size, sink, etag)

    upstream.download = heal_after_first  # type: ignore[method-assign]
    async with Running(mirror, index, upstream) as ws:
        local = await ws.fetcher.ensure(rel, entry)
    assert local.size == entry.size and Heal.calls == 2
    assert hashlib.md5(Path(mirror.display, GO2).read_bytes()).hexdigest() == entry.etag


@trio_test
async def test_upstream_errors_map_to_reader_errnos(mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    async with Running(mirror, index, upstream) as ws:
        upstream.fail[GO2] = AccessDenied("fetch: access denied by upstream")
        with pytest.raises(FetchFailed) as caught:
            await ws.fetcher.ensure(rel, entry)
        assert caught.value.errno == errno.EACCES
        del upstream.fail[GO2]
        upstream.remove(GO2)
        with pytest.raises(FetchFailed) as caught:
            await ws.fetcher.ensure(rel, entry)
        assert caught.value.errno == errno.ENOENT
        upstream.down = True
        with pytest.raises(FetchFailed) as caught:
            await ws.fetcher.ensure(RelPath.parse("Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda"), entry)
        assert caught.value.errno == errno.EIO
    assert list(mirror.tmp.iterdir()) == []


@trio_test
async def test_a_bug_in_a_download_costs_one_fetch_not_the_nursery(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)

    async def broken(rel: RelPath, size: int, sink, etag: str = "") -> None:  # type: ignore[no-untyped-def]
        raise KeyError("a bug")

    real = upstream.download
    upstream.download = broken  # type: ignore[method-assign]
    async with Running(mirror, index, upstream) as ws:
        with pytest.raises(FetchFailed) as caught:
            await ws.fetcher.ensure(rel, entry)
        assert caught.value.errno == errno.EIO
        upstream.download = real  # type: ignore[method-assign]
        assert (await ws.fetcher.ensure(rel, entry)).size == entry.size  # the fetcher still works


@trio_test
async def test_a_full_disk_is_enospc_before_downloading(
        mirror: Mirror, index: Index, upstream: MemoryUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    monkeypatch.setattr(mirror, "free_and_total_bytes", lambda: (1000, 20_000))
    async with Running(mirror, index, upstream) as ws:
        with pytest.raises(FetchFailed) as caught:
            await ws.fetcher.ensure(rel, entry)
    assert caught.value.errno == errno.ENOSPC and "full" in str(caught.value)
    assert upstream.requests[f"get {GO2}"] == 0


@trio_test
async def test_a_body_read_ahead_serves_its_ensure_with_one_request(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    upstream.delay = 0.05
    async with Running(mirror, index, upstream) as ws:
        assert ws.fetcher.preload(rel, entry)
        assert not ws.fetcher.preload(rel, entry)  # once
        await trio.sleep(0.2)  # it has landed in memory
        upstream.down = True  # the ensure asks the upstream nothing
        await ws.fetcher.ensure(rel, entry)
    assert upstream.requests[f"get {GO2}"] == 1 and index.session["read_ahead_used"] == 1
    assert Path(mirror.display, GO2).read_bytes() == upstream.files[GO2]
    assert index.file_record(rel) == (entry.size, entry.etag, "upstream")


@trio_test
async def test_a_body_read_ahead_goes_through_the_same_checks(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    """A body read ahead that is not what the listing said (the object changed since, same
    size) fails the MD5 check like any download; the file is fetched again, as it is now."""
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    async with Running(mirror, index, upstream) as ws:
        upstream.corrupt.add(GO2)
        assert ws.fetcher.preload(rel, entry)
        await trio.sleep(0.05)
        upstream.corrupt.discard(GO2)
        await ws.fetcher.ensure(rel, entry)
    assert upstream.requests[f"get {GO2}"] == 2 and index.session["read_ahead_used"] == 1
    assert Path(mirror.display, GO2).read_bytes() == upstream.files[GO2]


@trio_test
async def test_bodies_read_ahead_that_nobody_asks_for_are_dropped(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    rel = RelPath.parse(GO2)
    entry = await upstream.stat(rel)
    upstream.delay = 0.5
    async with Running(mirror, index, upstream) as ws:
        assert ws.fetcher.preload(rel, entry)
        await trio.sleep(0.01)
        assert ws.fetcher.drop_preloads([RelPath.parse(FRANKA), rel]) == 1  # still coming: cancelled
        upstream.delay = 0.0
        await ws.fetcher.ensure(rel, entry)  # downloads it itself
        assert ws.fetcher.limit.busy == 0
    assert upstream.requests[f"get {GO2}"] == 2 and index.session["read_ahead_used"] == 0
    assert mirror.entry(rel) is not None and list(mirror.tmp.iterdir()) == []
