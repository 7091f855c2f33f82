"""warm, verify and reports on an unmounted mirror, against the in-memory upstream."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from isaacfs.core.categories import category_of, category_root, warm_command
from isaacfs.core.config import Settings
from isaacfs.core.errors import UserError
from isaacfs.core.paths import RelPath
from isaacfs.jobs import reports
from isaacfs.jobs.spec import WarmResult, WarmSpec, parse_manifest
from isaacfs.jobs.verify import VerifyResult, verify
from isaacfs.jobs.warm import run
from isaacfs.jobs.workspace import Workspace, run_on_mirror
from isaacfs.store.index import Index
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import FRANKA, GO2, mock_clock, sample_files

SETTINGS = Settings(upstream="memory://assets")


def warm(folder: Path, upstream: MemoryUpstream, spec: WarmSpec) -> tuple[WarmResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    async def job(ws: Workspace) -> WarmResult:
        return await run(ws, spec, events.append)

    # A closure's subject is the usd-core worker, a child process: its real time must not jump deadlines.
    clock = None if spec.closure else mock_clock()
    return run_on_mirror(SETTINGS, folder, job, read_only=spec.dry_run, upstream=upstream, clock=clock), events


def check(folder: Path, upstream: MemoryUpstream, repair: bool = False) -> VerifyResult:
    async def job(ws: Workspace) -> VerifyResult:
        return await verify(ws, repair, lambda event: None)

    return run_on_mirror(SETTINGS, folder, job, upstream=upstream, clock=mock_clock())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "offline_assets"
    made.mkdir()
    return made


def mirrored(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".isaacfs" not in p.parts}


def test_category_warm_fetches_exactly_the_category_then_nothing(folder: Path, upstream: MemoryUpstream) -> None:
    result, events = warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    expected = {k: v for k, v in upstream.files.items() if k.startswith("Isaac/IsaacLab/Robots/")}
    assert result.ok and mirrored(folder) == expected
    assert sum(g.fetched for g in result.groups) == len(expected)
    assert {e["event"] for e in events} >= {"phase", "plan", "start", "done"}
    gets = sum(n for k, n in upstream.requests.items() if k.startswith("get"))
    again, _ = warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    assert again.ok and sum(g.skipped for g in again.groups) == len(expected)
    assert sum(n for k, n in upstream.requests.items() if k.startswith("get")) == gets
    assert not any(k.startswith("list") for k, n in upstream.requests.items() if n > 1)  # listings reused


def test_a_warm_opens_connections_ahead_only_once_it_downloads(folder: Path, upstream: MemoryUpstream) -> None:
    """A no-op rerun opened (and waited for) a connection for every place, TLS handshakes in
    worker threads: some 0.1 s of a 0.5 s no-op warm."""
    warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    assert upstream.requests["connect_ahead"] == 1
    again, _ = warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    assert again.ok and upstream.requests["connect_ahead"] == 1


def test_a_category_is_planned_from_one_recursive_listing_where_the_upstream_has_it(
        folder: Path, upstream: MemoryUpstream) -> None:
    """S3 lists every key below a prefix in one request per 1,000: a category's plan costs one
    round trip, not one per level of folders (bench/bench_wan.py), and each folder's listing
    is kept for the mount."""
    upstream.recursive = True
    result, _ = warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    expected = {k: v for k, v in upstream.files.items() if k.startswith("Isaac/IsaacLab/Robots/")}
    assert result.ok and mirrored(folder) == expected
    assert upstream.requests["walk Isaac/IsaacLab/Robots"] == 1
    assert not any(k.startswith("list Isaac/IsaacLab/Robots/") for k in upstream.requests)  # no folder by folder
    index = Index(folder / ".isaacfs" / "index.db", read_only=True)
    try:
        stored = index.listing(RelPath.parse("Isaac/IsaacLab/Robots"))
        assert stored is not None and any(entry.is_dir for entry in stored[1])
    finally:
        index.close()


def test_dry_run_fetches_nothing(folder: Path, upstream: MemoryUpstream) -> None:
    result, _ = warm(folder, upstream, WarmSpec(categories=["Robots"], dry_run=True))
    assert result.dry_run and sum(g.files for g in result.groups) > 0
    assert mirrored(folder) == {} and not any(k.startswith("get") for k in upstream.requests)


def test_subset_and_unknown_category(folder: Path, upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(categories=["Robots"], subsets=["FrankaRobotics"]))
    assert set(mirrored(folder)) == {k for k in upstream.files if "/FrankaRobotics/" in k}
    with pytest.raises(UserError, match=r"unknown category 'Robotz'.*Robots"):
        warm(folder, upstream, WarmSpec(categories=["Robotz"]))


def test_manifest_reports_bad_lines_and_missing_paths(folder: Path, upstream: MemoryUpstream) -> None:
    lines = [f"{GO2}\n", "# a comment\n", "../../etc/passwd\n", "Isaac/NoSuch/x.usd\n", f"/{FRANKA}\n"]
    result, _ = warm(folder, upstream, WarmSpec(manifest=lines, manifest_name="list.txt"))
    assert set(mirrored(folder)) == {GO2, FRANKA}
    assert any("list.txt:3" in note for note in result.notes)
    assert result.failures == ["Isaac/NoSuch/x.usd: not found upstream"] and not result.ok


def test_warm_from_recorded_misses(folder: Path, upstream: MemoryUpstream) -> None:
    Path(folder, ".isaacfs").mkdir()
    index = Index(folder / ".isaacfs" / "index.db")
    index.record_miss(RelPath.parse(GO2), "strict")
    index.close()
    result, _ = warm(folder, upstream, WarmSpec(from_misses=True))
    assert result.ok and set(mirrored(folder)) == {GO2}


def test_a_dead_upstream_is_one_clear_error(folder: Path, upstream: MemoryUpstream) -> None:
    upstream.down = True
    with pytest.raises(UserError, match="cannot list the upstream"):
        warm(folder, upstream, WarmSpec(categories=["Robots"]))


def test_verify_finds_corruption_and_repair_fixes_it(folder: Path, upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(manifest=[GO2, FRANKA]))
    assert check(folder, upstream).ok
    target = folder / GO2
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit off
    target.write_bytes(bytes(data))
    found = check(folder, upstream)
    assert not found.ok and [p.split(":")[0] for p in found.problems] == [GO2]
    fixed = check(folder, upstream, repair=True)
    assert fixed.repaired == [GO2] and target.read_bytes() == upstream.files[GO2]


def test_verify_counts_files_the_index_does_not_know(folder: Path, upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(manifest=[GO2]))
    os.makedirs(folder / "Isaac" / "Extra")
    (folder / "Isaac" / "Extra" / "hand.usd").write_bytes(b"put there by hand")
    assert check(folder, upstream).unindexed == 1


def test_status_and_manifest_reports(folder: Path, upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(manifest=[GO2, FRANKA]))
    index = Index(folder / ".isaacfs" / "index.db", read_only=True)
    try:
        per = reports.mirrored_by_category(index)
        assert per["files"] == 2 and set(per["categories"]) == {"IsaacLab/Robots", "Robots"}
        assert sorted(reports.manifest(index, 0.0)) == sorted([GO2, FRANKA])
    finally:
        index.close()


def test_category_model_round_trips() -> None:
    assert category_of(RelPath.parse(GO2)) == ("IsaacLab/Robots", "Unitree")
    assert category_root("IsaacLab/Robots") == RelPath.parse("Isaac/IsaacLab/Robots")
    assert category_root("NVIDIA/Materials") == RelPath.parse("NVIDIA/Materials")
    assert warm_command(RelPath.parse(GO2)) == "isaacfs warm --categories IsaacLab/Robots --subset Unitree"
    with pytest.raises(UserError):
        category_root("../x")


def test_manifest_parser_keeps_odd_names() -> None:
    paths, problems = parse_manifest(["Isaac/Props/a b%+#é.usd", "", "Isaac/./x"], "m")
    assert paths == [RelPath.parse("Isaac/Props/a b%+#é.usd")] and len(problems) == 1


def test_all_covers_isaac_and_nvidia(folder: Path, upstream: MemoryUpstream) -> None:
    result, _ = warm(folder, upstream, WarmSpec(categories=["all"]))
    assert result.ok and mirrored(folder) == upstream.files
    assert any(path.startswith("NVIDIA/") for path in mirrored(folder))
    rows = {group.name: group.files for group in result.groups}  # a row per category, not one called all
    assert rows == {"Environments": 1, "IsaacLab": 8, "Props": 2, "Robots": 1, "NVIDIA/Materials": 2}


def test_a_subset_missing_from_one_category_is_a_note(folder: Path, upstream: MemoryUpstream) -> None:
    result, _ = warm(folder, upstream, WarmSpec(categories=["Robots", "IsaacLab/Robots"], subsets=["Unitree"]))
    assert set(mirrored(folder)) == {k for k in upstream.files if "/Unitree/" in k}
    assert "no subset Unitree in Robots" in result.notes and result.ok
    with pytest.raises(UserError, match="no subset Nope in Robots"):
        warm(folder, upstream, WarmSpec(categories=["Robots"], subsets=["Nope"]))


def test_a_mirror_keeps_its_upstream(folder: Path, upstream: MemoryUpstream) -> None:
    from dataclasses import replace

    from isaacfs.jobs.workspace import reconcile_upstream

    warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    index = Index(folder / ".isaacfs" / "index.db")
    try:
        assert index.get_meta("upstream") == "memory://assets"
        assert index.listing(RelPath.parse("Isaac/IsaacLab/Robots")) is not None
        # No upstream given (a bare `verify --repair`): the mirror's own, not the NVIDIA cloud.
        default = Settings()
        assert reconcile_upstream(index, default).upstream == "memory://assets"
        other = replace(Settings(upstream="https://other.example/Assets"), sources={"upstream": "flag"})
        with pytest.raises(UserError, match=r"filled from memory://assets.*--new-upstream"):
            reconcile_upstream(index, other)
        moved = reconcile_upstream(index, replace(other, new_upstream=True))
        assert moved.upstream == "https://other.example/Assets"
        assert index.get_meta("upstream") == "https://other.example/Assets"
        assert index.listing(RelPath.parse("Isaac/IsaacLab/Robots")) is None  # the old upstream's listings
        assert index.file_record(RelPath.parse(GO2)) is not None  # its files kept
    finally:
        index.close()


def test_an_empty_mirror_follows_another_upstream_without_being_told(folder: Path) -> None:
    """A mirror that only recorded an upstream (nothing ever fetched) holds nothing to mix."""
    from dataclasses import replace

    from isaacfs.jobs.workspace import reconcile_upstream

    index = Index(folder / "index.db")
    try:
        index.set_meta("upstream", "https://first.example/Assets")
        other = replace(Settings(upstream="https://other.example/Assets"), sources={"upstream": "flag"})
        assert reconcile_upstream(index, other).upstream == "https://other.example/Assets"
        assert index.get_meta("upstream") == "https://other.example/Assets"
        index.record_file(RelPath.parse(GO2), 10, 0.0, "", "upstream")
        third = replace(Settings(upstream="https://third.example/Assets"), sources={"upstream": "flag"})
        with pytest.raises(UserError, match="--new-upstream"):
            reconcile_upstream(index, third)  # now it holds a file: mixing is refused
    finally:
        index.close()


def check_upstream(folder: Path, upstream: MemoryUpstream, repair: bool = False) -> VerifyResult:
    async def job(ws: Workspace) -> VerifyResult:
        return await verify(ws, repair, lambda event: None, upstream=True)

    return run_on_mirror(SETTINGS, folder, job, upstream=upstream, clock=mock_clock())


def test_verify_finds_a_flipped_byte_without_etags(folder: Path) -> None:
    from tests.unit.conftest import sample_files

    upstream = MemoryUpstream(sample_files(), md5_etags=False)  # like a file: upstream
    warm(folder, upstream, WarmSpec(manifest=[GO2, FRANKA]))
    clean = check(folder, upstream)
    assert clean.ok and clean.by_hash == 2 and clean.size_only == 0
    data = bytearray((folder / FRANKA).read_bytes())
    data[-1] ^= 0x01
    (folder / FRANKA).write_bytes(bytes(data))
    found = check(folder, upstream)
    assert not found.ok and [p.split(":")[0] for p in found.problems] == [FRANKA]


def test_installs_survive_a_crash_before_the_index_is_saved(folder: Path, upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(manifest=[GO2]))
    state = folder / ".isaacfs"
    index = Index(state / "index.db")
    index.record_file(RelPath.parse(FRANKA), 5, 0.0, "", "upstream", "abc")  # journalled at once
    os.close(index._journal_fd)  # the process dies here: no save, no close
    again = Index(state / "index.db", read_only=True)
    try:
        assert again.file_md5(RelPath.parse(FRANKA)) == "abc" and again.replayed >= 1
    finally:
        again.close()


def test_verify_indexes_files_it_did_not_know_and_checks_them_next_time(folder: Path,
                                                                         upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(manifest=[GO2]))
    (folder / FRANKA).parent.mkdir(parents=True, exist_ok=True)
    (folder / FRANKA).write_bytes(upstream.files[FRANKA])  # on disk, not in the index
    first = check(folder, upstream)
    assert first.unindexed == 1 and first.indexed_now == 1
    (folder / FRANKA).write_bytes(b"X" + upstream.files[FRANKA][1:])
    second = check(folder, upstream)
    assert second.unindexed == 0 and [p.split(":")[0] for p in second.problems] == [FRANKA]


def test_verify_against_the_upstream_finds_a_same_size_change(folder: Path, upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    changed = bytearray(upstream.files[GO2])
    changed[10] ^= 0x01  # same size, new content, new ETag
    upstream.put(GO2, bytes(changed))
    assert check(folder, upstream).ok  # the mirror is intact: only the upstream knows
    found = check_upstream(folder, upstream)
    assert [line.split(":")[0] for line in found.changed_upstream] == [GO2] and not found.ok
    fixed = check_upstream(folder, upstream, repair=True)
    assert fixed.repaired == [GO2] and (folder / GO2).read_bytes() == bytes(changed)


def test_a_warm_with_listing_ttl_0_sees_new_upstream_files(folder: Path, upstream: MemoryUpstream) -> None:
    warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    upstream.put("Isaac/IsaacLab/Robots/Unitree/Go2/new_part.usda", b"#usda 1.0\n")
    stale, _ = warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    assert sum(g.fetched for g in stale.groups) == 0  # the stored listing is trusted for its TTL
    fresh, _ = warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"], listing_ttl=0))
    assert sum(g.fetched for g in fresh.groups) == 1
    assert (folder / "Isaac/IsaacLab/Robots/Unitree/Go2/new_part.usda").exists()


def test_closure_fetches_exactly_what_a_robot_needs_pipelined(folder: Path, upstream: MemoryUpstream) -> None:
    from tests.unit.test_prefetch import GO2_DEPENDENCIES

    result, _ = warm(folder, upstream, WarmSpec(closure=[GO2]))
    assert result.ok, result.failures
    assert set(mirrored(folder)) == GO2_DEPENDENCIES | {GO2}
    # One listing per folder and one body per file: no stat per file.
    assert not any(key.startswith("stat ") for key in upstream.requests)
    assert all(n == 1 for key, n in upstream.requests.items() if key.startswith("get "))


def test_a_folder_that_cannot_be_listed_costs_only_its_files(folder: Path, upstream: MemoryUpstream) -> None:
    from isaacfs.core.errors import Unavailable

    upstream.fail["Isaac/IsaacLab/Robots/Unitree/Go2/Props"] = Unavailable("list: upstream failed (ERROR)")
    result, _ = warm(folder, upstream, WarmSpec(categories=["IsaacLab/Robots"]))
    assert not result.ok and any("Go2/Props/: not listed" in failure for failure in result.failures)
    assert upstream.requests["list Isaac/IsaacLab/Robots/Unitree/Go2/Props"] == 3  # tried again with backoff
    assert (folder / GO2).exists()  # the rest was warmed


def _before_plan(events: list[dict[str, Any]]) -> set[str]:
    """The files whose download ended before planning did."""
    done: set[str] = set()
    for event in events:
        if event["event"] == "plan":
            return done
        if event["event"] == "done" and event["outcome"] == "fetched":
            done.add(str(event["path"]))
    raise AssertionError("no plan event")


def test_a_closure_fetches_what_it_found_while_it_still_parses(folder: Path, upstream: MemoryUpstream) -> None:
    """Over a long link a closure is as deep as its layers: the textures a layer names are
    fetched as soon as it is parsed, not after the last layer (bench/bench_wan.py)."""
    upstream.slow["NVIDIA/Materials/Base/Metals"] = 1.0  # the MDL's folder answers late
    result, events = warm(folder, upstream, WarmSpec(closure=[GO2]))
    assert result.ok, result.failures
    assert "Isaac/IsaacLab/Robots/Unitree/Go2/Textures/go2_body_albedo.png" in _before_plan(events)
    assert sum(g.fetched for g in result.groups) == 7  # counted once each, planned ones included


def test_a_manifest_fetches_each_file_as_soon_as_it_is_looked_up(folder: Path, upstream: MemoryUpstream) -> None:
    upstream.slow["Isaac/Robots/FrankaRobotics/FrankaPanda"] = 1.0
    result, events = warm(folder, upstream, WarmSpec(manifest=[GO2, FRANKA], manifest_name="list.txt"))
    assert result.ok, result.failures
    assert _before_plan(events) == {GO2}
    assert sum(g.fetched for g in result.groups) == 2
    # Looked up from the folders' listings: no stat per file.
    assert not any(key.startswith("stat ") for key in upstream.requests)


def test_a_closure_reads_the_robot_folders_layers_ahead_and_installs_only_what_it_reaches(
        folder: Path, upstream: MemoryUpstream) -> None:
    """With a recursive listing of the robot's folder, its layers are read into memory at
    once, so the chain root -> sublayers -> meshes costs one round trip; each body is read
    once, and a layer of that folder the robot does not name is never installed."""
    from tests.unit.test_prefetch import GO2_DEPENDENCIES

    upstream.recursive = True
    variant = "Isaac/IsaacLab/Robots/Unitree/Go2/go2_variant.usda"
    upstream.put(variant, b"#usda 1.0\n")
    result, _ = warm(folder, upstream, WarmSpec(closure=[GO2]))
    assert result.ok, result.failures
    assert set(mirrored(folder)) == GO2_DEPENDENCIES | {GO2}
    assert all(n == 1 for key, n in upstream.requests.items() if key.startswith("get "))
    index = Index(folder / ".isaacfs" / "index.db", read_only=True)
    try:
        counters = dict(index.counters())
    finally:
        index.close()
    assert counters.get("read_ahead_used", 0) >= 3  # the sublayers and the meshes layer


def test_a_closure_reads_a_layer_beside_its_folders_listing(folder: Path) -> None:
    """A layer a layer names, in a folder not listed yet (the MDL module under NVIDIA/): its
    read goes beside the folder's listing, not after it, as the mount's prefetch does; the
    download takes that body, checked: no second request."""
    from isaacfs.fetch.preload import BLIND_BYTES
    from tests.unit.test_prefetch import GO2_DEPENDENCIES

    upstream = MemoryUpstream(sample_files(), ranged=True)  # reads a file it has not listed (S3 by range)
    mdl = "NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl"
    result, _ = warm(folder, upstream, WarmSpec(closure=[GO2]))
    assert result.ok, result.failures
    assert set(mirrored(folder)) == GO2_DEPENDENCIES | {GO2}
    assert (mdl, 0, BLIND_BYTES) in upstream.ranges  # asked before its size was known
    assert upstream.requests[f"get {mdl}"] == 0 and upstream.requests[f"range {mdl}"] == 1
    assert (GO2, 0, BLIND_BYTES) in upstream.ranges  # the root layer too, beside its folder's listing
    assert upstream.requests[f"get {GO2}"] == 0


def test_a_closure_reads_a_new_folders_tree_beside_its_listing(folder: Path, upstream: MemoryUpstream) -> None:
    """The material library's folder is listed for the first time: its tree is read beside
    the listing (as on a mount), so the folder of the textures its module names is known
    when the module is parsed: no listing of its own, a round trip less."""
    upstream.recursive = True
    textures = "NVIDIA/Materials/Base/Metals/Aluminum_Anodized"
    result, _ = warm(folder, upstream, WarmSpec(closure=[GO2]))
    assert result.ok, result.failures
    assert f"{textures}/Aluminum_Anodized_BaseColor.png" in mirrored(folder)
    assert upstream.requests["walk NVIDIA/Materials/Base/Metals"] == 1
    assert upstream.requests[f"list {textures}"] == 0


def test_a_closure_opens_its_connections_beside_its_first_listings(folder: Path, upstream: MemoryUpstream) -> None:
    """A closure whose root layer is not mirrored will download: the connections are opened
    at its start, beside the root folder's listing, not once its first body is on its way
    (after that listing: three round trips more for a new connection); a rerun with
    everything mirrored opens none."""
    root_folder = str(RelPath.parse(GO2).parent)
    upstream.slow[root_folder] = 0.3
    listed: list[str] = []
    seen_at_connect: list[list[str]] = []
    real_list, real_connect = upstream.list, upstream.connect_ahead

    async def list_folder(rel: RelPath, fresh: bool = False) -> list[Any]:
        entries = await real_list(rel, fresh)
        listed.append(str(rel))
        return entries

    async def connect_ahead(count: int) -> None:
        seen_at_connect.append(list(listed))
        await real_connect(count)

    upstream.list = list_folder  # type: ignore[method-assign]
    upstream.connect_ahead = connect_ahead  # type: ignore[method-assign]
    first, _ = warm(folder, upstream, WarmSpec(closure=[GO2]))
    assert first.ok and len(seen_at_connect) == 1
    assert root_folder not in seen_at_connect[0]  # opened before the root's folder answered
    again, _ = warm(folder, upstream, WarmSpec(closure=[GO2]))
    assert again.ok and len(seen_at_connect) == 1


def test_a_manifest_warm_sees_what_the_upstream_holds_now(folder: Path, upstream: MemoryUpstream) -> None:
    """Looked up from folder listings, but not from one stored before the warm: a manifest
    warm after an upstream change replaces the file, as a stat per file did (a CI run of
    tests/mount/test_integrity.py caught the version that trusted stored listings)."""
    first, _ = warm(folder, upstream, WarmSpec(manifest=[GO2], manifest_name="list.txt"))
    assert first.ok and (folder / GO2).read_bytes() == upstream.files[GO2]
    upstream.put(GO2, upstream.files[GO2] + b"\n# changed upstream\n")
    again, _ = warm(folder, upstream, WarmSpec(manifest=[GO2], manifest_name="list.txt"))
    assert again.ok and sum(g.fetched for g in again.groups) == 1
    assert (folder / GO2).read_bytes() == upstream.files[GO2]


def test_verify_against_the_upstream_compares_files_it_only_now_indexed(folder: Path,
                                                                         upstream: MemoryUpstream) -> None:
    """A same-size file with the upstream's mtime that the index did not know, but whose bytes
    differ: --against-upstream --repair compares it (by MD5) and repairs it, not 'all match'."""
    warm(folder, upstream, WarmSpec(manifest=[GO2]))
    wrong = b"X" + upstream.files[FRANKA][1:]
    (folder / FRANKA).parent.mkdir(parents=True, exist_ok=True)
    (folder / FRANKA).write_bytes(wrong)
    os.utime(folder / FRANKA, (upstream.mtime, upstream.mtime))
    result = check_upstream(folder, upstream, repair=True)
    assert any(line.startswith(f"{FRANKA}: MD5") for line in result.changed_upstream), result.changed_upstream
    assert result.repaired == [FRANKA] and result.ok
    assert (folder / FRANKA).read_bytes() == upstream.files[FRANKA]
