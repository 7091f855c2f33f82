"""The one download pipeline's contract: whatever the size, the upstream's kind and the
strategy (whole body, ranged parts, a body read ahead), an installed file is checked, indexed
and announced once to every listener; and the one retry policy."""

from __future__ import annotations

import ast
import errno
import hashlib
from pathlib import Path

import pytest
import trio

from isaacfs.core.errors import (
    AccessDenied,
    ConnectionLost,
    FetchFailed,
    IntegrityError,
    MirrorFull,
    NotFound,
    TooSlow,
    Unavailable,
)
from isaacfs.core.paths import RelPath
from isaacfs.core.retry import RetryPolicy, is_temp_failure, retrying
from isaacfs.core.types import LocalEntry, RemoteEntry
from isaacfs.fetch.fetcher import Fetcher
from isaacfs.fetch.integrity import multipart_candidates
from isaacfs.fetch.stream import PART_SIZE
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import Running, mock_clock, trio_test

PACKAGE = Path(__file__).resolve().parents[2] / "isaacfs"
MIB = 1024 * 1024
SMALL, LARGE = "Isaac/Props/small.bin", "Isaac/Props/large.bin"


def blob(size: int, seed: int) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


@pytest.mark.parametrize("ranged", [False, True], ids=["whole-body upstream", "ranged upstream"])
@pytest.mark.parametrize("size", [0, 1000, PART_SIZE, PART_SIZE + 1, 3 * PART_SIZE + 7])
def test_every_install_is_checked_indexed_and_announced_once(
        mirror: Mirror, index: Index, size: int, ranged: bool) -> None:
    upstream = MemoryUpstream({SMALL: blob(size, 1)}, ranged=ranged)
    heard: list[tuple[str, int]] = []

    async def body() -> None:
        rel = RelPath.parse(SMALL)
        entry = await upstream.stat(rel)
        async with Running(mirror, index, upstream) as ws:
            ws.fetcher.on_fetched.append(lambda event: heard.append((str(event.rel), event.local.size)))
            await ws.fetcher.ensure(rel, entry)
            await ws.fetcher.ensure(rel, entry)  # mirrored: no second install, no second announcement
        assert index.file_record(rel) == (size, entry.etag, "upstream")

    trio.run(body, clock=mock_clock())
    assert heard == [(SMALL, size)]
    assert Path(mirror.display, SMALL).read_bytes() == upstream.files[SMALL]


@trio_test
async def test_a_body_read_ahead_is_announced_like_any_other(mirror: Mirror, index: Index) -> None:
    upstream = MemoryUpstream({SMALL: blob(5000, 2)})
    rel = RelPath.parse(SMALL)
    entry = await upstream.stat(rel)
    heard: list[LocalEntry] = []
    async with Running(mirror, index, upstream) as ws:
        ws.fetcher.on_fetched.append(lambda event: heard.append(event.local))
        assert ws.fetcher.preload(rel, entry)
        await ws.fetcher.ensure(rel, entry)
    assert [local.size for local in heard] == [5000] and index.session["read_ahead_used"] == 1


@pytest.mark.parametrize("ranged", [False, True], ids=["whole-body upstream", "ranged upstream"])
def test_a_corrupt_body_is_refused_by_both_strategies_after_the_policys_tries(
        mirror: Mirror, index: Index, ranged: bool) -> None:
    upstream = MemoryUpstream({LARGE: blob(2 * PART_SIZE, 3)}, ranged=ranged)
    upstream.corrupt.add(LARGE)
    heard: list[object] = []

    async def body() -> float:
        rel = RelPath.parse(LARGE)
        entry = await upstream.stat(rel)
        async with Running(mirror, index, upstream) as ws:
            ws.fetcher.on_fetched.append(heard.append)
            started = trio.current_time()
            with pytest.raises(FetchFailed) as caught:
                await ws.fetcher.ensure(rel, entry)
            assert caught.value.errno == errno.EIO and isinstance(caught.value.cause, IntegrityError)
            return trio.current_time() - started

    waited = trio.run(body, clock=mock_clock())
    assert heard == [] and mirror.entry(RelPath.parse(LARGE)) is None and list(mirror.tmp.iterdir()) == []
    assert 0.25 <= waited <= 0.25 + 0.5 + 1.0  # two backoffs of the one policy (jittered), in virtual time


def test_the_tries_after_a_bad_body_are_checked_as_strictly_as_the_first(mirror: Mirror, index: Index) -> None:
    """After a body fails its check, the entry is learnt afresh. From a stat that carries no
    ETag (omni.client's stat of an S3 object may not), the next try was checked by size
    alone, and a corrupt body of the right size was installed. It is learnt from the folder's
    listing, as it was first learnt: every try is checked by MD5."""
    upstream = MemoryUpstream({SMALL: blob(5000, 4)})
    upstream.corrupt.add(SMALL)  # every body: one flipped byte, the right size
    real_stat = upstream.stat

    async def stat_without_etag(rel: RelPath, fresh: bool = False) -> RemoteEntry:
        entry = await real_stat(rel, fresh)
        return RemoteEntry(entry.name, entry.is_dir, entry.size, entry.mtime, "")

    upstream.stat = stat_without_etag  # type: ignore[method-assign]

    async def body() -> None:
        rel = RelPath.parse(SMALL)
        entry = next(e for e in await upstream.list(rel.parent) if e.name == rel.name)
        assert entry.etag  # the listing's entry carries the MD5
        async with Running(mirror, index, upstream) as ws:
            with pytest.raises(FetchFailed) as caught:
                await ws.fetcher.ensure(rel, entry)
            assert isinstance(caught.value.cause, IntegrityError)

    trio.run(body, clock=mock_clock())
    assert mirror.entry(RelPath.parse(SMALL)) is None  # never installed


def test_the_policy_says_which_failures_are_temporary() -> None:
    assert is_temp_failure(Unavailable("503")) and is_temp_failure(IntegrityError("md5"))
    for final in (NotFound("x"), AccessDenied("x"), ConnectionLost("refused"), TooSlow("deadline"),
                  MirrorFull("full"), OSError(errno.EIO, "disk"), KeyError("bug")):
        assert not is_temp_failure(final), final


def test_backoff_is_capped_exponential_with_jitter() -> None:
    policy = RetryPolicy(tries=8, base=0.25, cap=4.0, jitter=0.5)
    assert [policy.delay(n, rng=lambda: 0.0) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [policy.delay(n, rng=lambda: 1.0) for n in (1, 5)] == [0.125, 2.0]
    with pytest.raises(ValueError):
        RetryPolicy(tries=0)


@trio_test
async def test_retrying_stops_at_a_final_failure_and_after_the_last_try() -> None:
    calls: list[int] = []

    async def flaky(number: int) -> str:
        calls.append(number)
        if number < 3:
            raise Unavailable("503")
        return "ok"

    started = trio.current_time()
    assert await retrying(flaky, "get x", RetryPolicy(tries=3, jitter=0.0)) == "ok"
    assert calls == [1, 2, 3] and trio.current_time() - started == pytest.approx(0.75)

    async def gone(number: int) -> str:
        calls.append(number)
        raise NotFound("no such key")

    calls.clear()
    with pytest.raises(NotFound):
        await retrying(gone, "get x")
    assert calls == [1]


def test_multipart_part_sizes_uploaders_use_are_candidates() -> None:
    # MinIO's 16 MiB parts on a 17 MiB object, 64 MiB parts, decimal 10,000,000-byte parts.
    assert 16 * MIB in multipart_candidates(17 * MIB, 2)
    assert 64 * MIB in multipart_candidates(65 * MIB, 2)
    assert 10_000_000 in multipart_candidates(25_000_000, 3)
    assert all(len(multipart_candidates(size, 2)) <= 8 for size in (17 * MIB, 1024 * MIB))


def _names_an_errno(path: Path, root: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(root)}:{node.lineno}: errno.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "errno"
            and node.attr.startswith("E")]


def test_only_the_one_table_names_an_errno() -> None:
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "core" / "errors.py"
                 for hit in _names_an_errno(path)]
    assert not offenders, offenders


def test_the_errno_check_sees_a_named_errno(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"  # never in the source tree
    probe.write_text("import errno\n\ndef f():\n    raise OSError(errno.EIO, 'x')\n")
    assert _names_an_errno(probe, tmp_path) == ["probe.py:4: errno.EIO"]


def test_a_flood_of_large_cold_reads_stays_inside_the_memory_budget(mirror: Mirror, index: Index) -> None:
    from isaacfs.fetch.stream import PART_BUFFER

    files = {f"Isaac/Props/big{number}.bin": blob(3 * PART_SIZE + number, number) for number in range(8)}
    upstream = MemoryUpstream(files, ranged=True)
    limit = 2 * PART_BUFFER + 1  # two parts' buffers at a time, for 8 files of 3 parts

    async def body() -> tuple[int, int]:
        running = Running(mirror, index, upstream, jobs=8)
        running.fetcher.budget = type(running.fetcher.budget)(limit)
        async with running as ws, trio.open_nursery() as nursery:
            for path in files:
                rel = RelPath.parse(path)
                nursery.start_soon(ws.fetcher.ensure, rel, await upstream.stat(rel))
        return running.fetcher.budget.peak, running.fetcher.budget.waits

    peak, waits = trio.run(body, clock=mock_clock())
    assert peak <= limit and waits > 0  # it held them back, and never went over
    for path, data in files.items():
        assert Path(mirror.display, path).read_bytes() == data


@trio_test
async def test_the_budget_waits_for_room_and_a_buffer_larger_than_it_takes_it_whole() -> None:
    from isaacfs.core.budget import MemoryBudget

    budget = MemoryBudget(100)
    order: list[str] = []

    async def holder(name: str, amount: int) -> None:
        async with budget.hold(amount):
            order.append(name)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder, "a", 60)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(holder, "b", 60)  # waits for a
        nursery.start_soon(holder, "huge", 10_000)  # takes the whole budget, alone
    assert budget.peak == 100 and budget.used == 0 and order[0] == "a" and budget.waits == 2


def test_the_fault_switches_work_around_a_real_backend(tmp_path: Path, mirror: Mirror, index: Index) -> None:
    """The failure wrapper is not a fake: around the real backend on a file: tree, a dead
    upstream and a refused path are answered as the fetcher answers them on any upstream."""
    from isaacfs.backends import client_session
    from isaacfs.backends.omni import OmniUpstream
    from isaacfs.core.config import Settings
    from tests.support.faults import FaultyUpstream

    root = tmp_path / "root"
    (root / "Isaac/Props").mkdir(parents=True)
    (root / SMALL).write_bytes(blob(5000, 7))

    async def body() -> None:
        upstream = FaultyUpstream(OmniUpstream.from_settings(Settings(upstream=root.as_uri())))
        rel = RelPath.parse(SMALL)
        entry = await upstream.stat(rel)
        fetcher = Fetcher(mirror, index, upstream, 4, retries=2)
        async with trio.open_nursery() as nursery:
            fetcher.attach(nursery)
            upstream.fail[SMALL] = AccessDenied("fetch small.bin: access denied by upstream")
            with pytest.raises(FetchFailed) as denied:
                await fetcher.ensure(rel, entry)
            assert denied.value.errno == errno.EACCES and upstream.requests[f"get {SMALL}"] == 1  # final: once
            del upstream.fail[SMALL]
            upstream.down = True
            with pytest.raises(FetchFailed) as dead:
                await fetcher.ensure(rel, entry)
            assert dead.value.errno == errno.EIO and not upstream.available  # it rests
            upstream.down = False
            upstream.health.mark(None)
            assert (await fetcher.ensure(rel, entry)).size == 5000
            nursery.cancel_scope.cancel()
        await upstream.aclose()

    with client_session():
        trio.run(body)
    assert Path(mirror.display, SMALL).read_bytes() == blob(5000, 7)
