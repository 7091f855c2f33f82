"""The namespace a mount shows, per mode, driven without a kernel (Tree and AssetFS handlers)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest
import trio

from isaacfs.core.errors import FetchFailed
from isaacfs.core.paths import RelPath
from isaacfs.core.types import LocalEntry, Mode
from isaacfs.fuse.operations import AssetFS
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from isaacfs.tree.namespace import Node, Tree
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import FRANKA, GO2, Running, trio_test


def make_tree(ws_running: Running, mode: Mode, ttl: float = 3600.0) -> Tree:
    ws = ws_running.ws
    return Tree(ws.mirror, ws.index, ws.upstream, ws.fetcher, mode, ttl, "/mnt/assets")


async def walk(tree: Tree, path: str) -> Node | None:
    node: Node | None = tree.root
    for name in RelPath.parse(path).parts:
        assert node is not None
        node = await tree.lookup(node, name)
        if node is None:
            return None
    return node


@trio_test
async def test_permissive_shows_upstream_and_fetches_on_open(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "permissive")
        node = await walk(tree, GO2)
        assert node is not None and not node.cached and node.size == len(upstream.files[GO2])
        fd, _transfer = await tree.open(node)
        try:
            assert os.pread(fd, node.size + 10, 0) == upstream.files[GO2]
        finally:
            os.close(fd)
        assert node.cached and Path(mirror.display, GO2).exists()


@trio_test
async def test_strict_shows_only_the_mirror_and_records_the_whole_missing_path(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "strict")
        assert await tree.listdir(tree.root) == []
        assert await walk(tree, GO2) is None  # ghost folders let the walk reach the file
    assert [m[0] for m in index.misses()] == [GO2]
    assert sum(upstream.requests.values()) == 0  # strict mode never asks the upstream


@trio_test
async def test_strict_open_of_an_upstream_only_name_is_enoent(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "permissive")
        node = await walk(tree, GO2)
        assert node is not None
        tree.mode = "strict"
        with pytest.raises(FetchFailed) as caught:
            await tree.open(node)
        assert caught.value.errno == errno.ENOENT
        assert await walk(tree, GO2) is None


@trio_test
async def test_listings_are_reused_within_their_ttl(mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        await walk(make_tree(running, "permissive"), GO2)
        first = sum(n for k, n in upstream.requests.items() if k.startswith("list"))
        await walk(make_tree(running, "permissive"), GO2)  # a new mount of the same mirror
        assert sum(n for k, n in upstream.requests.items() if k.startswith("list")) == first > 0


@trio_test
async def test_a_dead_upstream_never_hides_the_mirror(mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "permissive", ttl=0.001)
        node = await walk(tree, GO2)
        assert node is not None
        os.close((await tree.open(node))[0])
        assert await walk(tree, FRANKA) is not None  # listed, not fetched
        upstream.down = True
        fresh = make_tree(running, "permissive", ttl=0.001)
        again = await walk(fresh, GO2)
        assert again is not None and again.cached
        franka = await walk(fresh, FRANKA)  # known from the stored listing, not fetchable now
        assert franka is not None
        with pytest.raises(FetchFailed) as caught:
            await fresh.open(franka)
        assert caught.value.errno == errno.EIO


@trio_test
async def test_upstream_state_folder_is_never_shown(mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    upstream.put(".isaacfs/index.db", b"someone else's index")
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "permissive")
        names = {node.name for node in await tree.listdir(tree.root)}
        assert names == {"Isaac", "NVIDIA"}
        assert await tree.lookup(tree.root, ".isaacfs") is None


@trio_test
async def test_fuse_handlers_answer_odd_names_and_a_broken_mirror(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    folder = Path(mirror.display, "Isaac")
    folder.mkdir()
    (folder / os.fsdecode(b"bad\xff.usd")).write_bytes(b"not utf-8 name")
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "strict")
        fs = AssetFS(tree, {"pid": "1"})
        isaac = await fs.lookup(pyfuse3.ROOT_INODE, b"Isaac")
        attr = await fs.lookup(isaac.st_ino, b"bad\xff.usd")
        assert attr.st_size == len(b"not utf-8 name")
        values = {name: await fs.getxattr(attr.st_ino, name, None) for name in await fs.listxattr(attr.st_ino, None)}
        assert values[b"user.isaacfs.state"] == b"cached"
        missing = await fs.lookup(isaac.st_ino, b"nothing.usd")
        assert missing.st_ino == 0  # a cached "no such name"
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.lookup(isaac.st_ino, b"a/b")
        assert caught.value.errno == errno.ENOENT
        # The mirror's folder becomes unreadable beside the daemon: an errno, not a dead mount.
        node = tree.nodes[isaac.st_ino]
        node.scanned_mtime_ns = -5
        os.chmod(folder, 0)
        try:
            if os.geteuid() != 0:
                with pytest.raises(pyfuse3.FUSEError) as caught:
                    await fs.opendir(isaac.st_ino, None)
                assert caught.value.errno == errno.EACCES
            else:
                await fs.opendir(isaac.st_ino, None)  # root reads it anyway; still no crash
        finally:
            os.chmod(folder, 0o755)


@trio_test
async def test_forgotten_folders_free_their_nodes_and_load_again(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    for number in range(500):
        upstream.put(f"Isaac/Props/Wide/f{number:03}.usda", b"#usda 1.0\n")
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "permissive")
        fs = AssetFS(tree, {})
        inodes = []
        parent = pyfuse3.ROOT_INODE
        for name in (b"Isaac", b"Props", b"Wide"):
            parent = (await fs.lookup(parent, name)).st_ino
            inodes.append(parent)
        files = [(await fs.lookup(parent, f"f{n:03}.usda".encode())).st_ino for n in range(0, 500, 50)]
        grown = len(tree.nodes)
        assert grown > 500
        await fs.forget([(inode, 1) for inode in files[:5]])
        assert len(tree.nodes) == grown  # the folder is still held: nothing freed yet
        await fs.forget([(inode, 1) for inode in files[5:]] + [(inodes[2], 1)])
        assert len(tree.nodes) <= grown - 500  # Wide's 500 entries are gone
        with pytest.raises(pyfuse3.FUSEError):
            await fs.getattr(files[0], None)
        again = await fs.lookup(inodes[1], b"Wide")  # Props is still held: Wide loads again
        assert again.st_ino == inodes[2]
        entry = await fs.lookup(again.st_ino, b"f123.usda")
        assert entry.st_size == len(b"#usda 1.0\n")


@trio_test
async def test_an_expired_listing_serves_at_once_while_a_stalled_upstream_is_asked_in_the_background(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        await walk(make_tree(running, "permissive", ttl=0.05), FRANKA)
        await trio.sleep(0.1)  # every stored listing has expired
        upstream.delay = 3.0  # a stalled upstream
        tree = make_tree(running, "permissive", ttl=0.05)
        tree.attach(running._nursery)
        with trio.fail_after(0.5):
            node = await walk(tree, FRANKA)
        assert node is not None
        upstream.delay = 0.0


@trio_test
async def test_a_warm_that_replaces_a_file_updates_its_node(mirror: Mirror, index: Index,
                                                            upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running as ws:
        tree = make_tree(running, "permissive")
        node = await walk(tree, GO2)
        assert node is not None
        os.close((await tree.open(node))[0])
        upstream.put(GO2, upstream.files[GO2] + b"\n# grown upstream\n" * 1000)
        entry = await upstream.stat(RelPath.parse(GO2))
        await ws.fetcher.ensure(RelPath.parse(GO2), entry, replace=True)
        old_size = node.size
        assert tree.note_installed(RelPath.parse(GO2))  # replaced: a new node, a new inode
        fresh = await walk(tree, GO2)
        assert fresh is not None and fresh.inode != node.inode and fresh.size == entry.size and fresh.cached
        assert node.size == old_size and tree.nodes[node.inode] is node  # the old one serves its readers
        node.lookups = 1
        assert node.inode in tree.forget(node.inode, 1) and node.inode not in tree.nodes


@trio_test
async def test_cold_files_in_one_folder_do_not_rescan_it_per_file(
        mirror: Mirror, index: Index, upstream: MemoryUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    for number in range(200):
        upstream.put(f"Isaac/Props/Many/m{number:03}.usda", b"#usda 1.0\n")
    scans: list[str] = []
    real_scan = mirror.scan

    def counted(rel: RelPath) -> object:
        scans.append(str(rel))
        return real_scan(rel)

    monkeypatch.setattr(mirror, "scan", counted)
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "permissive")
        folder = await walk(tree, "Isaac/Props/Many")
        assert folder is not None
        for number in range(200):
            node = await tree.lookup(folder, f"m{number:03}.usda")
            assert node is not None
            os.close((await tree.open(node))[0])
    assert scans.count("Isaac/Props/Many") <= 3, scans.count("Isaac/Props/Many")


@trio_test
async def test_tool_probes_are_not_recorded_as_misses(mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "strict")
        for probe in (".git", "HEAD", "Isaac/__pycache__", "Isaac/numpy.py", "Isaac/.git/HEAD", "pyvenv.cfg",
                      "Isaac/_ext.cpython-311-x86_64-linux-gnu.so"):
            assert await walk(tree, probe) is None
        assert await walk(tree, GO2) is None
    assert [m[0] for m in index.misses()] == [GO2]


@trio_test
async def test_what_cannot_be_known_is_eio_not_a_cached_no(mirror: Mirror, index: Index,
                                                           upstream: MemoryUpstream) -> None:
    upstream.down = True  # no network, nothing listed before
    running = Running(mirror, index, upstream)
    async with running:
        fs = AssetFS(make_tree(running, "permissive"), {})
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.lookup(pyfuse3.ROOT_INODE, b"Isaac")
        assert caught.value.errno == errno.EIO
        upstream.down = False
        upstream.health.mark(None)  # the network is back: the next lookup asks again
        assert (await fs.lookup(pyfuse3.ROOT_INODE, b"Isaac")).st_ino != 0


@trio_test
async def test_strict_ghosts_only_folders_the_listings_allow(mirror: Mirror, index: Index,
                                                            upstream: MemoryUpstream) -> None:
    upstream.put("Isaac/LICENSE", b"a file without a suffix")
    running = Running(mirror, index, upstream)
    async with running:
        await walk(make_tree(running, "permissive"), "Isaac/Robots")  # stores the listings of / and Isaac/
        tree = make_tree(running, "strict")
        assert await walk(tree, "Isaac/NoSuchFolder/Deeper") is None
        assert await walk(tree, "Isaac/LICENSE") is None  # a remote file never turns into a folder
        robots = await walk(tree, "Isaac/Robots")  # listed as a folder upstream: a ghost
        assert robots is not None and robots.ghost
        assert await walk(tree, "Makefile") is None  # the root's listing does not name it
    recorded = {path for path, *_ in index.misses()}
    assert {"Isaac/NoSuchFolder", "Isaac/LICENSE", "Makefile"} <= recorded
    assert "Isaac/NoSuchFolder/Deeper" not in recorded


@trio_test
async def test_without_listings_a_ghost_is_recorded_until_a_deeper_miss_replaces_it(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "strict")
        readme = await walk(tree, "README")
        assert readme is not None and readme.ghost
        assert [m[0] for m in index.misses()] == ["README"]
        assert await walk(tree, "Isaac/Robots/Foo/foo.usd") is None
    assert {m[0] for m in index.misses()} == {"README", "Isaac/Robots/Foo/foo.usd"}


@trio_test
async def test_a_big_mirror_folder_is_scanned_off_the_loop(mirror: Mirror, index: Index, upstream: MemoryUpstream,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of names take tens of ms of stats: such a scan runs in a worker thread, where
    it cannot stall other requests; a small folder's stays on the loop (cheaper there)."""
    import threading

    from isaacfs.tree import loader

    root = Path(mirror.display) / "Isaac" / "Props"
    (root / "Big").mkdir(parents=True)
    (root / "Small").mkdir()
    for number in range(400):
        (root / "Big" / f"p{number:05}.usda").write_bytes(b"#usda 1.0\n")
    (root / "Small" / "one.usda").write_bytes(b"#usda 1.0\n")
    # The rule, not the threshold's value (64 KiB of folder: some thousands of names): "big"
    # is anything larger than the small folder here.
    assert os.stat(root / "Big").st_size > os.stat(root / "Small").st_size
    monkeypatch.setattr(loader, "BIG_FOLDER_BYTES", os.stat(root / "Small").st_size)
    on_loop: dict[str, bool] = {}
    real = mirror.scan

    def spy(rel: RelPath) -> object:
        on_loop[str(rel)] = threading.current_thread() is threading.main_thread()
        return real(rel)

    mirror.scan = spy  # type: ignore[method-assign,assignment]
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "strict")
        big, small = await walk(tree, "Isaac/Props/Big"), await walk(tree, "Isaac/Props/Small")
        assert big is not None and small is not None
        assert len(await tree.listdir(big)) == 400 and len(await tree.listdir(small)) == 1
    assert on_loop["Isaac/Props/Big"] is False and on_loop["Isaac/Props/Small"] is True


class _Hints:
    """Stands in for the scan-ahead helper: records what the loader hands it and asks of it,
    and answers ``take`` from ``scans``."""

    def __init__(self, scans: dict[str, list[LocalEntry]] | None = None) -> None:
        self.given: list[list[str]] = []
        self.asked: list[tuple[str, int, int]] = []
        self.scans = scans or {}

    def hint(self, folder: RelPath, names: list[str]) -> None:
        self.given.append([str(folder.child(name)) for name in names])

    def take(self, folder: RelPath, mtime_ns: int, size: int) -> list[LocalEntry] | None:
        self.asked.append((str(folder), mtime_ns, size))
        return self.scans.pop(str(folder), None)


async def _listed_with(hints: _Hints, mirror: Mirror, index: Index, upstream: MemoryUpstream, path: str) -> list[str]:
    """The names a strict tree lists at ``path``, with ``hints`` in the scan-ahead helper's place."""
    mirror.scan_ahead = hints  # type: ignore[assignment]
    running = Running(mirror, index, upstream)
    try:
        async with running:
            tree = make_tree(running, "strict")
            folder = await walk(tree, path)
            assert folder is not None
            return [node.name for node in await tree.listdir(folder)]
    finally:
        mirror.scan_ahead = None


@trio_test
async def test_a_scanned_folder_hands_its_subfolders_to_scan_ahead_the_first_last(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    robots = mirror.display / "Isaac" / "Robots"
    for name in ("A", "B", "C"):
        (robots / name).mkdir(parents=True)
    (robots / "readme.txt").write_bytes(b"x")
    hints = _Hints()
    listed = await _listed_with(hints, mirror, index, upstream, "Isaac/Robots")
    subfolders = [f"Isaac/Robots/{name}" for name in listed if name != "readme.txt"]
    assert sorted(subfolders) == ["Isaac/Robots/A", "Isaac/Robots/B", "Isaac/Robots/C"]
    # In the order a walk goes down: the helper takes the last hint first.
    assert hints.given[-1] == subfolders[::-1]
    assert ["Isaac"] in hints.given  # the root's one subfolder, when the root was scanned


@trio_test
async def test_a_folder_the_helper_scanned_is_listed_from_its_scan_not_scanned_again(
        mirror: Mirror, index: Index, upstream: MemoryUpstream) -> None:
    robots = mirror.display / "Isaac" / "Robots"
    (robots / "A").mkdir(parents=True)
    (robots / "on_disk.usda").write_bytes(b"x")
    st = os.stat(robots)
    # The helper's scan names a file the disk does not (it is what the loader lists, so the
    # loader took it) and a folder (handed on as a hint, as the daemon's own scan's would be).
    helper_scan = [LocalEntry("from_helper.usda", False, 3, st.st_mtime_ns, st.st_dev),
                   LocalEntry("B", True, 0, st.st_mtime_ns, st.st_dev)]
    hints = _Hints({"Isaac/Robots": helper_scan})
    listed = await _listed_with(hints, mirror, index, upstream, "Isaac/Robots")
    assert sorted(listed) == ["B", "from_helper.usda"]
    # Asked with the folder's mtime and size as the loader's own stat read them.
    assert ("Isaac/Robots", st.st_mtime_ns, st.st_size) in hints.asked
    assert ["Isaac/Robots/B"] in hints.given


@trio_test
async def test_a_first_scan_makes_the_nodes_a_rescan_would(mirror: Mirror, index: Index,
                                                           upstream: MemoryUpstream) -> None:
    folder_path = mirror.display / "Isaac" / "Props"
    folder_path.mkdir(parents=True)
    (folder_path / "a.usda").write_bytes(b"#usda 1.0\n")
    (folder_path / "Sub").mkdir()
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "strict")
        folder = await walk(tree, "Isaac/Props")
        assert folder is not None
        first = {node.name: (node.cached, node.is_dir, node.size, node.mtime_ns, node.gen, node.foreign)
                 for node in await tree.listdir(folder)}
        assert all(tree.table.nodes[node.inode] is node for node in await tree.listdir(folder))
        (folder_path / "b.usda").write_bytes(b"#usda 1.0\n# two\n")  # a rescan, through child/set_local
        names = {node.name: node for node in await tree.listdir(folder)}
    made = names["b.usda"]
    assert first["a.usda"] == (True, False, 10, (folder_path / "a.usda").stat().st_mtime_ns, 1, False)
    assert first["Sub"][:2] == (True, True) and first["Sub"][4:] == (1, False)
    assert (made.cached, made.is_dir, made.size, made.gen, made.foreign) == (True, False, 16, 1, False)


@trio_test
async def test_a_path_a_trees_first_page_saw_is_looked_up_without_listing_each_folder(
        mirror: Mirror, index: Index) -> None:
    """A tree read upstream that ends inside a folder (more than 1,000 keys below) still saw
    some of its names: a lookup of one of those goes on down the path without that folder's
    listing. Isaac/, IsaacLab/, Robots/ and Bench/ are each answered from the root's first
    page, not listed one after the other (a round trip each on a long link). A name the page
    did not see, or a listing of the folder, asks the upstream as before, and the name's own
    tree is read beside that listing."""
    from isaacfs.tree.listings import TREE_FILES

    files = {f"Isaac/IsaacLab/Robots/Bench/Walker{n:02}/f{i:02}.usda": b"#usda 1.0\n"
             for n in range(30) for i in range(50)}
    files["Isaac/IsaacLab/Robots/Bench/Walker26/Sub/x.usda"] = b"#usda 1.0\n"
    files["Isaac/IsaacLab/Robots/Bench/Walker27/__pycache__/x.pyc"] = b"x"  # counted only if read
    upstream = MemoryUpstream(files)
    upstream.recursive = True
    running = Running(mirror, index, upstream)
    async with running:
        tree = make_tree(running, "permissive")
        tree.listings.read_trees(running._nursery, TREE_FILES)
        isaac = await tree.lookup(tree.root, "Isaac")
        assert isaac is not None
        await trio.testing.wait_all_tasks_blocked()  # the root's tree, read beside its listing
        node = await walk(tree, "Isaac/IsaacLab/Robots/Bench/Walker03/f07.usda")
        assert node is not None and not node.is_dir and node.size == 10
        for folder in ("Isaac", "Isaac/IsaacLab", "Isaac/IsaacLab/Robots", "Isaac/IsaacLab/Robots/Bench",
                       "Isaac/IsaacLab/Robots/Bench/Walker03"):
            assert upstream.requests[f"list {folder}"] == 0, folder
        assert index.session["lookups_from_pages"] == 4
        bench = await walk(tree, "Isaac/IsaacLab/Robots/Bench")
        assert bench is not None
        assert await tree.lookup(bench, "Walker25") is not None  # not seen by the page: Bench is listed
        assert upstream.requests["list Isaac/IsaacLab/Robots/Bench"] == 1
        # ... and the looked-up name's own tree is read beside that listing: the robot's folder
        # is known whole when the kernel asks inside it.
        await trio.testing.wait_all_tasks_blocked()
        assert await walk(tree, "Isaac/IsaacLab/Robots/Bench/Walker25/f03.usda") is not None
        assert upstream.requests["walk Isaac/IsaacLab/Robots/Bench/Walker25"] == 1
        assert upstream.requests["list Isaac/IsaacLab/Robots/Bench/Walker25"] == 0
        unlisted = await tree.lookup(bench, "Walker26")
        probed = await tree.lookup(bench, "Walker27")
        assert unlisted is not None and probed is not None and not unlisted.listed_at and not probed.listed_at
        assert await tree.lookup(unlisted, "Sub") is not None
        await tree.lookup(probed, "__pycache__")
        await trio.testing.wait_all_tasks_blocked()
        assert upstream.requests["walk Isaac/IsaacLab/Robots/Bench/Walker26/Sub"] == 1
        assert upstream.requests["walk Isaac/IsaacLab/Robots/Bench/Walker27/__pycache__"] == 0  # a probe: no tree
        assert len(await tree.listdir(bench)) == 30
        assert await tree.lookup(bench, "Walker99") is None  # a miss is answered from the listing, never a page
