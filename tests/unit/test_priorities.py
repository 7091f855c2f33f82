"""Readers first: a reader's cold open behind a running warm waits for at most one transfer."""

from __future__ import annotations

from typing import Any

import trio

from isaacfs.core.paths import RelPath
from isaacfs.core.types import BULK, PREFETCH, READER
from isaacfs.fetch.limits import SMALL_FILE, SMALL_PER_PLACE, PriorityLimiter
from isaacfs.jobs.spec import WarmSpec
from isaacfs.jobs.warm import run
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import GO2, Running, trio_test


@trio_test
async def test_a_freed_slot_goes_to_the_best_ticket_and_promotion_counts() -> None:
    limiter = PriorityLimiter(1)
    order: list[str] = []
    first = limiter.ticket(BULK)
    await limiter.acquire(first)  # the one slot is taken
    tickets = {name: limiter.ticket(BULK) for name in ("b1", "b2", "b3")}

    async def wait(name: str, ticket: Any) -> None:
        await limiter.acquire(ticket)
        order.append(name)
        limiter.release(ticket)

    async with trio.open_nursery() as nursery:
        for name, ticket in tickets.items():
            nursery.start_soon(wait, name, ticket)
        await trio.sleep(0.01)
        nursery.start_soon(wait, "reader", limiter.ticket(READER))
        await trio.sleep(0.01)
        tickets["b3"].priority = READER  # a reader joined b3's download
        assert limiter.waiting == 4
        limiter.release(first)
    assert order == ["b3", "reader", "b1", "b2"]  # b3 is older than the reader's ticket
    assert limiter.busy == 0


@trio_test
async def test_cancelled_waiters_give_their_place_back() -> None:
    limiter = PriorityLimiter(1)
    first = limiter.ticket(BULK)
    await limiter.acquire(first)
    with trio.move_on_after(0.01):
        await limiter.acquire(limiter.ticket(READER))
    assert limiter.waiting == 0
    limiter.release(first)
    assert limiter.busy == 0


@trio_test
async def test_a_reader_behind_a_warm_waits_one_transfer(mirror: Mirror, index: Index,
                                                         upstream: MemoryUpstream) -> None:
    for number in range(100):
        upstream.put(f"Isaac/Props/Bulk/b{number:03}.usda", b"x" * 1000)
    transfer = 0.03
    running = Running(mirror, index, upstream, jobs=2)
    async with running as ws:
        waited: list[float] = []

        async def reader() -> None:
            await trio.sleep(0.3)  # the warm is well under way
            upstream.delay = 0.0
            entry = await upstream.stat(RelPath.parse(GO2))
            upstream.delay = transfer
            started = trio.current_time()
            await ws.fetcher.ensure(RelPath.parse(GO2), entry)
            waited.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            upstream.delay = transfer
            result = await run(ws, WarmSpec(categories=["Props/Bulk"]), lambda event: None)
        assert result.ok and sum(g.fetched for g in result.groups) == 100
    # Behind 100 queued files at 2 at a time (1.5 s of transfers), the reader waited for one
    # slot to free up and its own transfer.
    assert waited[0] < 3 * transfer + 0.1, waited


@trio_test
async def test_express_places_are_for_readers_and_layers_never_for_bulk_or_leaves() -> None:
    """A warm fills its places; a reader (or a layer a load or closure must parse, which is
    asked at READER priority) still starts at once, in one of the express places, which no
    bulk transfer and no prefetch of a leaf (a texture) ever takes."""
    limiter = PriorityLimiter(2, express=1)
    held = [limiter.ticket(BULK) for _ in range(2)]
    for ticket in held:
        await limiter.acquire(ticket)
    waiting_bulk = limiter.ticket(BULK)
    granted: list[str] = []

    async def wait(name: str, ticket: Any) -> None:
        await limiter.acquire(ticket)
        granted.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "bulk", waiting_bulk)
        await trio.sleep(0.01)
        assert granted == [] and limiter.waiting == 1  # no express place for bulk
        leaf = limiter.ticket(PREFETCH)
        nursery.start_soon(wait, "leaf", leaf)
        await trio.sleep(0.01)
        assert granted == [] and limiter.waiting == 2  # nor for a texture's prefetch
        layer = limiter.ticket(READER)
        with trio.fail_after(1):
            await limiter.acquire(layer)  # at once, past the waiting bulk and leaf
        reader = limiter.ticket(READER)
        nursery.start_soon(wait, "reader", reader)
        await trio.sleep(0.01)
        assert granted == [] and limiter.waiting == 3  # the express place is taken
        limiter.release(layer)  # the layer is in: the reader, not the others, gets its place
        await trio.sleep(0.01)
        assert granted == ["reader"]
        limiter.release(reader)
        limiter.release(held[0])  # one ordinary place free: the leaf before the bulk
        await trio.sleep(0.01)
        assert granted == ["reader", "leaf"]
        limiter.release(held[1])
        await trio.sleep(0.01)
        assert granted == ["reader", "leaf", "bulk"]
        limiter.release(leaf)
        limiter.release(waiting_bulk)
    assert limiter.busy == 0


@trio_test
async def test_a_promoted_ticket_takes_an_express_place_at_once() -> None:
    """A reader that joins a queued bulk download promotes it: it starts now, not after a
    warm's transfers."""
    limiter = PriorityLimiter(1, express=1)
    first = limiter.ticket(BULK)
    await limiter.acquire(first)
    queued = limiter.ticket(BULK)
    granted: list[str] = []

    async def wait() -> None:
        await limiter.acquire(queued)
        granted.append("promoted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(0.01)
        queued.priority = READER
        limiter.grant()
        await trio.sleep(0.01)
        assert granted == ["promoted"]
        limiter.release(first)
        limiter.release(queued)
    assert limiter.busy == 0


@trio_test
async def test_small_files_share_a_place() -> None:
    """A small file is bound by its round trip, not the link: SMALL_PER_PLACE of them take
    one place, so a warm of small files keeps enough requests in flight (bench_wan.py's
    category warm); a large file still takes a whole place."""
    limiter = PriorityLimiter(2)
    small = [limiter.ticket(BULK, SMALL_FILE) for _ in range(2 * SMALL_PER_PLACE)]
    with trio.fail_after(1):
        for ticket in small:
            await limiter.acquire(ticket)  # all at once
    large = limiter.ticket(BULK, SMALL_FILE + 1)
    with trio.move_on_after(0.05) as waited:
        await limiter.acquire(large)
    assert waited.cancelled_caught and limiter.busy == 2 * SMALL_PER_PLACE
    for ticket in small[:SMALL_PER_PLACE]:
        limiter.release(ticket)  # a whole place is free again
    with trio.fail_after(1):
        await limiter.acquire(large)
    limiter.release(large)
    for ticket in small[SMALL_PER_PLACE:]:
        limiter.release(ticket)
    assert limiter.busy == 0
