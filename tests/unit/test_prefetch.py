"""Dependency prefetch against the in-memory upstream, with the real usd-core worker."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from isaacfs.core.paths import RelPath
from isaacfs.core.types import BULK
from isaacfs.jobs.parser import ParseFailed, Parser
from isaacfs.jobs.prefetch import Prefetcher
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from isaacfs.tree.namespace import Tree
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import GO2, Running, sample_files, trio_test, trio_test_real_clock

# What the sample Go2 stage names, directly or through its layers (tests/mount/test_usd_stage.py).
GO2_DEPENDENCIES = {
    "Isaac/IsaacLab/Robots/Unitree/Go2/go2_physics.usda",
    "Isaac/IsaacLab/Robots/Unitree/Go2/go2_sensors.usda",
    "Isaac/IsaacLab/Robots/Unitree/Go2/Props/instanceable_meshes.usda",
    "Isaac/IsaacLab/Robots/Unitree/Go2/Textures/go2_body_albedo.png",
    "NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl",  # reached by ../../../../../NVIDIA/...
    "NVIDIA/Materials/Base/Metals/Aluminum_Anodized/Aluminum_Anodized_BaseColor.png",  # the MDL's texture
}


async def walk(tree: Tree, path: str) -> object:
    node = tree.root
    for name in RelPath.parse(path).parts:
        found = await tree.lookup(node, name)
        assert found is not None, path
        node = found
    return node


def build(running: Running, mode: str = "permissive", max_files: int = 2000) -> tuple[Tree, Prefetcher]:
    ws = running.ws
    tree = Tree(ws.mirror, ws.index, ws.upstream, ws.fetcher, mode, 3600.0, "/mnt")  # type: ignore[arg-type]
    prefetcher = Prefetcher(ws.mirror, ws.index, tree.listings, ws.fetcher, Parser(), ws.upstream.root_url,
                            lambda: tree.mode == "permissive", max_files)
    ws.fetcher.on_fetched.append(prefetcher.fetched)
    tree.opened.append(prefetcher.opened)
    prefetcher.attach(running._nursery)
    return tree, prefetcher


def mirrored(mirror: Mirror) -> set[str]:
    root = Path(mirror.display)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".isaacfs" not in p.parts}


async def _open_go2_until_its_dependencies_land(running: Running, mirror: Mirror, read_ahead: bool = False) -> None:
    """A reader opens the Go2 root layer; returns once everything it names is in the mirror."""
    async with running:
        tree, prefetcher = build(running)
        if read_ahead:
            tree.opening.append(prefetcher.opening)
        node = await walk(tree, GO2)
        os.close((await tree.open(node))[0])  # type: ignore[arg-type]
        with trio.fail_after(30):
            while not mirrored(mirror) >= GO2_DEPENDENCIES:
                await trio.sleep(0.05)
        await prefetcher.aclose()


@trio_test
async def test_opening_a_robot_fetches_what_it_names_before_anyone_asks(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    await _open_go2_until_its_dependencies_land(Running(mirror, index, upstream), mirror)
    assert index.session["prefetched"] >= len(GO2_DEPENDENCIES)
    # Only what the robot names: nothing else of the upstream was fetched.
    assert mirrored(mirror) == GO2_DEPENDENCIES | {GO2}


@trio_test
async def test_a_root_layers_folder_is_read_ahead_while_the_root_comes_and_only_what_is_named_stays(
        mirror: Mirror, index: Index) -> None:
    """A reader's cold open of a root layer starts the read-ahead of its folder (one
    recursive listing, its layers into memory at once): the chain root -> payload -> meshes
    costs one round trip, not a listing and a GET per level. What no layer names is dropped:
    the mirror holds exactly what the robot names."""
    upstream = MemoryUpstream(sample_files(), ranged=True)  # S3: every GET pinned to the listed ETag
    upstream.recursive = True
    await _open_go2_until_its_dependencies_land(Running(mirror, index, upstream), mirror, read_ahead=True)
    assert index.session["read_ahead_used"] >= 3  # go2_physics, go2_sensors, instanceable_meshes
    assert mirrored(mirror) == GO2_DEPENDENCIES | {GO2}
    assert all(upstream.requests[f"get {layer}"] <= 1 for layer in GO2_DEPENDENCIES)


@trio_test
async def test_a_folder_of_many_independent_layers_is_not_read_ahead(mirror: Mirror, index: Index) -> None:
    """A category of props (40 layers that name nothing of each other): opening one reads
    no sibling ahead; only a robot's folder of a few layers is."""
    files = {f"Isaac/Props/Blocks/block_{n:02}.usda": b"#usda 1.0\n" for n in range(40)}
    upstream = MemoryUpstream(files, ranged=True)
    upstream.recursive = True
    running = Running(mirror, index, upstream)
    async with running:
        tree, prefetcher = build(running)
        tree.opening.append(prefetcher.opening)
        node = await walk(tree, "Isaac/Props/Blocks/block_00.usda")
        os.close((await tree.open(node))[0])  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        await prefetcher.aclose()
    assert sum(count for key, count in upstream.requests.items() if key.startswith("get ")) == 1
    assert mirrored(mirror) == {"Isaac/Props/Blocks/block_00.usda"}


@trio_test
async def test_prefetch_is_bounded_and_off_in_strict_mode(mirror: Mirror, index: Index,
                                                         upstream: MemoryUpstream) -> None:
    parser = _ListParser(["./go2_physics.usda", "./go2_sensors.usda", "./Props/instanceable_meshes.usda"])
    running = Running(mirror, index, upstream)
    async with running:
        tree, prefetcher = _with_parser(running, parser, max_files=1)
        node = await walk(tree, GO2)
        os.close((await tree.open(node))[0])  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert len(mirrored(mirror)) == 2  # the root layer and the one file its budget allows
        assert index.session["prefetch_over_budget"] >= 1
        tree.mode = "strict"
        before = mirrored(mirror)
        prefetcher.opened(RelPath.parse("Isaac/IsaacLab/Robots/Unitree/Go2/go2_sensors.usda"), lambda: "permissive")
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert mirrored(mirror) == before  # strict mode never touches the network
        await prefetcher.aclose()


@trio_test_real_clock
async def test_a_layer_the_parser_cannot_read_costs_only_its_answer(tmp_path: Path) -> None:
    bad = tmp_path / "broken.usda"
    bad.write_text("#usda 1.0\n(\n  subLayers = [ @a.usda@ \n")  # cut short
    good = tmp_path / "good.usda"
    good.write_text('#usda 1.0\n(\n  subLayers = [@./part.usda@]\n)\n')
    parser = Parser(timeout=20)
    try:
        try:
            await parser.dependencies(str(bad))
            raise AssertionError("a broken layer parsed")
        except ParseFailed:
            pass
        assert await parser.dependencies(str(good)) == ["./part.usda"]
    finally:
        await parser.aclose()


class _ListParser:
    """Stands in for the usd-core worker: every layer names the same references."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def dependencies(self, path: str) -> list[str]:
        self.asked.append(path)
        return self.names

    async def aclose(self) -> None:
        pass


def _with_parser(running: Running, parser: _ListParser, max_files: int = 2000,
                 remembered: int = 50_000) -> tuple[Tree, Prefetcher]:
    ws = running.ws
    tree = Tree(ws.mirror, ws.index, ws.upstream, ws.fetcher, "permissive", 3600.0, "/mnt")
    prefetcher = Prefetcher(ws.mirror, ws.index, tree.listings, ws.fetcher, parser,  # type: ignore[arg-type]
                            ws.upstream.root_url,
                            lambda: tree.mode == "permissive", max_files, remembered=remembered)
    ws.fetcher.on_fetched.append(prefetcher.fetched)
    tree.opened.append(prefetcher.opened)
    prefetcher.attach(running._nursery)
    return tree, prefetcher


@trio_test
async def test_a_strict_asker_on_a_permissive_mount_prefetches_nothing(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    parser = _ListParser(["./go2_physics.usda"])
    running = Running(mirror, index, upstream)
    async with running as ws:
        _tree, prefetcher = _with_parser(running, parser)
        layer = RelPath.parse(GO2)
        await ws.fetcher.ensure(layer, await upstream.stat(layer), priority=BULK)  # mirrored, not expanded
        prefetcher.opened(layer, lambda: "strict")  # `isaacfs run --offline` on a permissive mount
        await trio.testing.wait_all_tasks_blocked()
        assert parser.asked == [] and "Isaac/IsaacLab/Robots/Unitree/Go2/go2_physics.usda" not in mirrored(mirror)
        prefetcher.opened(layer, lambda: "permissive")
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert parser.asked and parser.asked[0].endswith(GO2)


@trio_test
async def test_a_layer_naming_90000_assets_queues_only_its_budget(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    parser = _ListParser([f"./Props/missing_{number}.usda" for number in range(90_000)])
    running = Running(mirror, index, upstream)
    async with running as ws:
        _tree, prefetcher = _with_parser(running, parser, max_files=100, remembered=300)
        layer = RelPath.parse(GO2)
        await ws.fetcher.ensure(layer, await upstream.stat(layer), priority=BULK)
        prefetcher.opened(layer, lambda: "permissive")
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert len(prefetcher._queued) == 100  # not 90,000 tasks
        assert index.session["prefetch_over_budget"] == 1  # counted once, where it was cut
        assert upstream.requests["list Isaac/IsaacLab/Robots/Unitree/Go2/Props"] <= 1
        # Many more layers: what it remembers stays bounded.
        parser.names = ["./a.usda"]
        layers = Path(mirror.display, "Isaac/Layers")
        layers.mkdir(parents=True)
        for number in range(1000):
            (layers / f"l{number}.usda").write_bytes(b"#usda 1.0\n")
            prefetcher.opened(RelPath.parse(f"Isaac/Layers/l{number}.usda"), lambda: "permissive")
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert prefetcher.remembering <= 7 * 300


@trio_test
async def test_a_bulk_warms_installs_are_not_expanded(mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    parser = _ListParser(["./go2_physics.usda"])
    running = Running(mirror, index, upstream)
    async with running as ws:
        _with_parser(running, parser)
        rel = RelPath.parse(GO2)
        await ws.fetcher.ensure(rel, await upstream.stat(rel), priority=BULK)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert parser.asked == []


@trio_test_real_clock
async def test_a_layer_name_with_a_newline_does_not_put_the_worker_out_of_step(tmp_path: Path) -> None:
    odd = tmp_path / "a\nb.usda"
    odd.write_text("#usda 1.0\n(\n  subLayers = [@./x.usda@]\n)\n")
    good = tmp_path / "good.usda"
    good.write_text("#usda 1.0\n(\n  subLayers = [@./y.usda@]\n)\n")
    parser = Parser(timeout=20)
    try:
        assert await parser.dependencies(str(odd)) == ["./x.usda"]
        assert await parser.dependencies(str(good)) == ["./y.usda"]  # its own answer, not the one before
    finally:
        await parser.aclose()


@trio_test
async def test_a_layer_still_streaming_is_read_once_it_is_installed(mirror: Mirror, index: Index) -> None:
    """A layer of more than one part is opened while it streams: its dependencies are read
    when it is whole (they used to be never read: the worker found no file, once)."""
    from isaacfs.fetch.stream import PART_SIZE

    big = "Isaac/Robots/Big/big.usda"
    upstream = MemoryUpstream({big: b"#usda 1.0\n" + b" " * (2 * PART_SIZE), "Isaac/Robots/Big/part.usda": b"x"},
                              ranged=True)
    parser = _ListParser(["./part.usda"])
    running = Running(mirror, index, upstream)
    async with running:
        tree, _prefetcher = _with_parser(running, parser)
        node = await walk(tree, big)
        fd, transfer = await tree.open(node)  # type: ignore[arg-type]
        assert transfer is not None  # streaming: not in the mirror yet
        assert parser.asked == []  # not read from a file that is not there
        await transfer.settled.wait()
        os.close(fd)
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert [path.rsplit("/", 1)[-1] for path in parser.asked][:1] == ["big.usda"]
        assert "Isaac/Robots/Big/part.usda" in mirrored(mirror)


@trio_test
async def test_a_layer_in_a_folder_not_listed_yet_is_read_beside_the_listing(mirror: Mirror, index: Index) -> None:
    """A layer a layer names, in a folder nobody listed (the MDL module in NVIDIA/...): its
    read goes beside the folder's listing, not after it, and the download takes that body,
    checked against the listing's size and ETag: no second request for it."""
    from isaacfs.fetch.preload import BLIND_BYTES

    upstream = MemoryUpstream(sample_files(), ranged=True)
    await _open_go2_until_its_dependencies_land(Running(mirror, index, upstream), mirror)
    mdl = "NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl"
    assert (mdl, 0, BLIND_BYTES) in upstream.ranges  # read before its size was known
    assert upstream.requests[f"get {mdl}"] == 0 and upstream.requests[f"range {mdl}"] == 1
    assert index.session["read_ahead_used"] >= 1
    assert mirrored(mirror) == GO2_DEPENDENCIES | {GO2}
    assert index.file_md5(RelPath.parse(mdl)) is not None


@trio_test
async def test_a_layer_read_before_its_listing_that_the_listing_does_not_name_is_dropped(
        mirror: Mirror, index: Index) -> None:
    """The blind read of a named layer that is not upstream (the listing says so): dropped,
    nothing installed, its memory given back."""
    files = sample_files()
    del files["NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl"]
    upstream = MemoryUpstream(files, ranged=True)
    running = Running(mirror, index, upstream)
    async with running:
        tree, prefetcher = build(running)
        node = await walk(tree, GO2)
        os.close((await tree.open(node))[0])  # type: ignore[arg-type]
        with trio.fail_after(30):
            while not mirrored(mirror) >= GO2_DEPENDENCIES - {"NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl",
                                                              "NVIDIA/Materials/Base/Metals/Aluminum_Anodized/"
                                                              "Aluminum_Anodized_BaseColor.png"}:
                await trio.sleep(0.05)
        await trio.testing.wait_all_tasks_blocked()
        assert RelPath.parse("NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl") not in running.ws.fetcher.read_aheads
        assert upstream.requests["range NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl"] == 1  # it was read
        assert running.ws.fetcher.budget.used == 0
        await prefetcher.aclose()
