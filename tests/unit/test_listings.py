"""Folder listings: one request per folder at a time, and waiting for one holds no place."""

from __future__ import annotations

import trio

from isaacfs.core.errors import Unavailable
from isaacfs.core.paths import RelPath
from isaacfs.store.index import Index
from isaacfs.tree.listings import Listings
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import trio_test

TEXTURES = "Isaac/IsaacLab/Robots/Unitree/Go2/Textures"
PROPS = "Isaac/IsaacLab/Robots/Unitree/Go2/Props"


@trio_test
async def test_many_asking_for_one_folder_make_one_request(index: Index, upstream: MemoryUpstream) -> None:
    """A layer naming 36 textures of one folder: one listing, not 36 (bench_wan saw 16)."""
    listings = Listings(index, upstream, ttl=3600)
    upstream.delay = 0.05
    answers: list[int] = []

    async def ask() -> None:
        answers.append(len(await listings.get(RelPath.parse(TEXTURES))))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
    assert upstream.requests[f"list {TEXTURES}"] == 1
    assert answers == [answers[0]] * 10 and answers[0] > 0


@trio_test
async def test_waiting_for_a_listing_holds_no_place(index: Index, upstream: MemoryUpstream) -> None:
    """Many files waiting for a slow folder's listing do not hold up another folder's."""
    listings = Listings(index, upstream, ttl=3600)
    limit = trio.CapacityLimiter(2)
    upstream.slow[TEXTURES] = 0.5
    finished: list[str] = []

    async def ask(folder: str) -> None:
        await listings.get(RelPath.parse(folder), limit=limit)
        finished.append(folder)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask, TEXTURES)
        await trio.sleep(0.01)
        nursery.start_soon(ask, PROPS)
    assert finished[0] == PROPS


@trio_test
async def test_a_failed_listing_fails_those_waiting_and_the_next_ask_tries_again(
        index: Index, upstream: MemoryUpstream) -> None:
    listings = Listings(index, upstream, ttl=3600)
    upstream.delay = 0.05
    upstream.fail[TEXTURES] = Unavailable("list: upstream failed (HTTP 503)")
    errors: list[str] = []

    async def ask() -> None:
        try:
            await listings.get(RelPath.parse(TEXTURES))
        except Unavailable as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
    assert len(errors) == 3 and upstream.requests[f"list {TEXTURES}"] == 1
    del upstream.fail[TEXTURES]
    assert await listings.get(RelPath.parse(TEXTURES))
    assert upstream.requests[f"list {TEXTURES}"] == 2


@trio_test
async def test_a_cancelled_asker_does_not_leave_the_others_waiting(index: Index, upstream: MemoryUpstream) -> None:
    listings = Listings(index, upstream, ttl=3600)
    upstream.delay = 0.2
    got: list[int] = []
    first = trio.CancelScope()

    async def leader() -> None:
        with first:
            await listings.get(RelPath.parse(TEXTURES))

    async def follower() -> None:
        got.append(len(await listings.get(RelPath.parse(TEXTURES))))

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.sleep(0.01)
            nursery.start_soon(follower)  # waits for the leader's listing
            await trio.sleep(0.05)
            first.cancel()  # the leader gives up: the follower asks itself
    assert got and got[0] > 0
    assert upstream.requests[f"list {TEXTURES}"] == 2


@trio_test
async def test_a_folder_listed_first_has_its_tree_read_beside_so_the_path_below_costs_no_request(
        index: Index, upstream: MemoryUpstream) -> None:
    """A reader's path goes down a folder at a time. With read_trees, the first listing of a
    folder small enough also reads its whole tree in one request: the folders below are then
    fresh, and the lookups down to a robot ask the upstream nothing more."""
    upstream.recursive = True
    listings = Listings(index, upstream, ttl=3600)
    robots = RelPath.parse("Isaac/IsaacLab/Robots")
    async with trio.open_nursery() as nursery:
        listings.read_trees(nursery, 1000)
        await listings.get(robots)
    before = dict(upstream.requests)
    for folder in ("Isaac/IsaacLab/Robots/Unitree", "Isaac/IsaacLab/Robots/Unitree/Go2", PROPS, TEXTURES):
        assert listings.fresh(RelPath.parse(folder)) is not None, folder
        await listings.get(RelPath.parse(folder))
    assert upstream.requests == before  # every folder below answered with no request
    stored = listings.stored_tree(RelPath.parse("Isaac/IsaacLab/Robots/Unitree/Go2"), 1000)
    assert stored is not None and RelPath.parse(TEXTURES) in stored
    assert listings.stored_tree(RelPath.parse("Isaac/IsaacLab/Robots/Unitree/Go2"), 1) is None  # over the bound


@trio_test
async def test_without_read_trees_or_a_recursive_upstream_folders_are_listed_one_by_one(
        index: Index, upstream: MemoryUpstream) -> None:
    listings = Listings(index, upstream, ttl=3600)
    async with trio.open_nursery() as nursery:
        listings.read_trees(nursery, 1000)  # the upstream cannot walk: nothing more is stored
        await listings.get(RelPath.parse("Isaac/IsaacLab/Robots"))
    assert listings.fresh(RelPath.parse("Isaac/IsaacLab/Robots/Unitree")) is None
    assert listings.stored_tree(RelPath.parse("Isaac/IsaacLab/Robots"), 1000) is None


@trio_test
async def test_a_tree_asked_for_while_one_is_on_its_way_is_that_one(index: Index, upstream: MemoryUpstream) -> None:
    """The tree read beside a folder's first listing and a root layer's read-ahead of the same
    folder, at once: one recursive request, both answered from it."""
    upstream.recursive = True
    upstream.delay = 0.05
    listings = Listings(index, upstream, ttl=3600)
    go2 = RelPath.parse("Isaac/IsaacLab/Robots/Unitree/Go2")
    answers: list[object] = []

    async def ask() -> None:
        answers.append(await listings.fetch_tree(go2, 1000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        nursery.start_soon(ask)
    assert upstream.requests[f"walk {go2}"] == 1
    assert answers[0] is not None and answers[1] is not None
    assert sorted(map(str, answers[0])) == sorted(map(str, answers[1]))  # type: ignore[call-overload]


@trio_test
async def test_a_tree_too_large_still_stores_the_folders_its_first_keys_hold_whole(index: Index) -> None:
    """S3 lists keys in order: of a tree of 1,100 files, the first 1,000 keys hold the first
    folders whole. Those are stored (a path into one needs no listing); the folder holding
    the last key listed, the ones after it, and the tree's own folder are not, and the
    answer is not a tree."""
    files = {f"Isaac/Big/A{folder:02}/f{index:02}.usd": b"x" for folder in range(22) for index in range(50)}
    upstream = MemoryUpstream(files)
    upstream.recursive = True
    listings = Listings(index, upstream, ttl=3600)
    assert await listings.fetch_tree(RelPath.parse("Isaac/Big"), 1000) is None
    assert upstream.requests["walk Isaac/Big"] == 1
    for folder in range(19):
        stored = listings.fresh(RelPath.parse(f"Isaac/Big/A{folder:02}"))
        assert stored is not None and len(stored[1]) == 50, folder
    for unknown in ("Isaac/Big/A19", "Isaac/Big/A20", "Isaac/Big/A21", "Isaac/Big"):
        assert listings.fresh(RelPath.parse(unknown)) is None, unknown
    before = dict(upstream.requests)
    await listings.get(RelPath.parse("Isaac/Big/A07"))
    assert upstream.requests == before
