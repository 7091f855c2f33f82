"""Ordered upstream tiers (backends/tiers.py): a site store with a manifest in front of the
cloud, against in-memory stores with their fault switches, on the mock clock."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import trio

from isaacfs.backends.tiers import TieredUpstream
from isaacfs.core.errors import AccessDenied, FetchFailed, NotFound, Unavailable
from isaacfs.core.manifest import MANIFEST_PATH, Held, Manifest
from isaacfs.core.paths import RelPath
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream
from tests.unit.conftest import Running, trio_test

ROBOT = "Isaac/Robots/Dog"
FILES = {f"{ROBOT}/dog.usd": b"#usda 1.0\n" + b"d" * 3000, f"{ROBOT}/Props/leg.usd": b"#usda 1.0\n" + b"l" * 900,
         "Isaac/Props/Blocks/cube.usd": b"#usda 1.0\n" + b"c" * 500}
RETRY_AFTER = 30.0


def manifest_of(files: dict[str, bytes], complete: list[str]) -> bytes:
    held = {RelPath.parse(path): Held(len(body), hashlib.md5(body).hexdigest(), hashlib.md5(body).hexdigest(), 0.0)
            for path, body in files.items()}
    return Manifest(CLOUD, "2026-12-02", held, {RelPath.parse(c) for c in complete}).to_json()


def filled_site(files: dict[str, bytes], complete: list[str]) -> MemoryUpstream:
    site = MemoryUpstream(dict(files), root_url="memory://site", retry_after=0.0)
    site.put(str(MANIFEST_PATH), manifest_of(files, complete))
    return site


CLOUD = "memory://cloud/Assets/Isaac/6.2"


def tiers(site: MemoryUpstream, cloud: MemoryUpstream) -> TieredUpstream:
    return TieredUpstream([site, cloud], RETRY_AFTER, manifest_ttl=3600.0)


def gets(upstream: MemoryUpstream) -> int:
    """Bodies asked for, the manifest's aside."""
    return sum(count for what, count in upstream.requests.items()
               if what.startswith(("get ", "range ")) and str(MANIFEST_PATH) not in what)


async def fetch(mirror: Mirror, index: Index, upstream: TieredUpstream, path: str) -> bytes:
    rel = RelPath.parse(path)
    async with Running(mirror, index, upstream) as ws:  # type: ignore[arg-type]
        entry = await upstream.stat(rel)
        await ws.fetcher.ensure(rel, entry)
    return Path(mirror.display, path).read_bytes()


@trio_test
async def test_a_robot_the_site_holds_whole_costs_the_cloud_nothing(mirror: Mirror, index: Index) -> None:
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    site = filled_site(FILES, [ROBOT, "Isaac/Props"])
    upstream = tiers(site, cloud)
    names = {entry.name for entry in await upstream.list(RelPath.parse(ROBOT))}
    assert names == {"dog.usd", "Props"}
    for path in (f"{ROBOT}/dog.usd", f"{ROBOT}/Props/leg.usd"):
        assert await fetch(mirror, index, upstream, path) == FILES[path]
    assert not cloud.requests  # not a listing, not a GET
    assert site.requests.get(f"list {ROBOT}", 0) == 0  # the manifest answered the listing
    assert upstream.tier_rows()[0]["state"] == "up" and upstream.tier_rows()[0]["manifest"]


@trio_test
async def test_a_name_the_site_lacks_comes_from_the_cloud_and_the_listing_is_the_union(
        mirror: Mirror, index: Index) -> None:
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    site = filled_site({f"{ROBOT}/dog.usd": FILES[f"{ROBOT}/dog.usd"]}, [])  # a closure's fill: no folder whole
    upstream = tiers(site, cloud)
    listed = {entry.name: entry for entry in await upstream.list(RelPath.parse(ROBOT))}
    assert set(listed) == {"dog.usd", "Props"}
    assert listed["dog.usd"].etag == hashlib.md5(FILES[f"{ROBOT}/dog.usd"]).hexdigest()
    assert await fetch(mirror, index, upstream, f"{ROBOT}/dog.usd") == FILES[f"{ROBOT}/dog.usd"]
    assert gets(cloud) == 0 and gets(site) == 1
    assert await fetch(mirror, index, upstream, f"{ROBOT}/Props/leg.usd") == FILES[f"{ROBOT}/Props/leg.usd"]
    assert gets(cloud) == 1


@trio_test
async def test_a_dead_site_fails_over_at_once_later_requests_skip_it_and_it_is_used_again(
        mirror: Mirror, index: Index, caplog: pytest.LogCaptureFixture) -> None:
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    site = filled_site(FILES, [ROBOT])
    upstream = tiers(site, cloud)
    await upstream.list(RelPath.parse(ROBOT))  # the manifest is read while the site is up
    site.down = True  # refused, reset: ConnectionLost
    assert await fetch(mirror, index, upstream, f"{ROBOT}/dog.usd") == FILES[f"{ROBOT}/dog.usd"]
    row = upstream.tier_rows()[0]
    assert row["state"] == "down" and "ERROR_CONNECTION" in row["reason"]
    assert upstream.last_failover is not None and "tier 1" in upstream.last_failover[1]
    asked = sum(site.requests.values())
    assert await fetch(mirror, index, upstream, f"{ROBOT}/Props/leg.usd") == FILES[f"{ROBOT}/Props/leg.usd"]
    assert sum(site.requests.values()) == asked  # resting: not asked again
    assert sum("is down" in record.message for record in caplog.records) == 1
    site.down = False
    await trio.sleep(RETRY_AFTER + 1)  # virtual time
    before = gets(site)
    assert await fetch(mirror, index, upstream, "Isaac/Props/Blocks/cube.usd") == FILES["Isaac/Props/Blocks/cube.usd"]
    assert upstream.tier_rows()[0]["state"] == "up" and gets(site) == before + 1


@pytest.mark.parametrize("damage", ["same size", "truncated", "stale"])
@trio_test
async def test_a_bad_object_in_the_site_is_refused_by_the_manifests_hash_and_fetched_from_the_cloud(
        mirror: Mirror, index: Index, damage: str) -> None:
    path = f"{ROBOT}/dog.usd"
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    site = filled_site(FILES, [ROBOT])
    good = FILES[path]
    site.put(path, {"same size": b"X" + good[1:], "truncated": good[:100],
                    "stale": b"#usda 1.0\n" + b"old" * 10}[damage])
    upstream = tiers(site, cloud)
    assert await fetch(mirror, index, upstream, path) == good  # 0 wrong bytes installed
    assert upstream.tier_rows()[0]["rejected"] == 1 and gets(cloud) == 1
    assert "failed its check" in (upstream.last_failover or (0, ""))[1]


@trio_test
async def test_a_refused_key_is_one_configuration_error_and_the_next_tier_serves(
        mirror: Mirror, index: Index, caplog: pytest.LogCaptureFixture) -> None:
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    site = filled_site(FILES, [ROBOT])
    site.fail[str(MANIFEST_PATH)] = AccessDenied("stat .isaacfs/manifest.json: access denied by upstream"
                                                 " (HTTP 403 SignatureDoesNotMatch)")
    upstream = tiers(site, cloud)
    for _ in range(3):
        assert {entry.name for entry in await upstream.list(RelPath.parse(ROBOT))} == {"dog.usd", "Props"}
        await trio.sleep(RETRY_AFTER + 1)  # tried again each time, said once
    assert upstream.tier_rows()[0]["state"] == "misconfigured"
    assert sum("configuration error" in record.message for record in caplog.records
               if record.levelno == logging.ERROR) == 1
    assert await fetch(mirror, index, upstream, f"{ROBOT}/dog.usd") == FILES[f"{ROBOT}/dog.usd"]


@trio_test
async def test_with_the_cloud_down_the_site_serves_and_a_name_it_lacks_fails_at_once(
        mirror: Mirror, index: Index) -> None:
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD, retry_after=0.0)
    cloud.down = True
    site = filled_site({f"{ROBOT}/dog.usd": FILES[f"{ROBOT}/dog.usd"]}, [])
    upstream = tiers(site, cloud)
    assert {entry.name for entry in await upstream.list(RelPath.parse(ROBOT))} == {"dog.usd"}
    assert await fetch(mirror, index, upstream, f"{ROBOT}/dog.usd") == FILES[f"{ROBOT}/dog.usd"]
    started = trio.current_time()
    with pytest.raises(Unavailable, match="no tier could serve it"):
        await upstream.stat(RelPath.parse(f"{ROBOT}/Props/leg.usd"))
    assert trio.current_time() - started < 1
    leg = RelPath.parse(f"{ROBOT}/Props/leg.usd")
    async with Running(mirror, index, upstream) as ws:  # type: ignore[arg-type]
        with pytest.raises(FetchFailed, match="no tier could serve it"):
            await ws.fetcher.ensure(leg, await cloud.inner.stat(leg))  # an entry known from before


@trio_test
async def test_a_name_no_tier_has_is_not_found(mirror: Mirror, index: Index) -> None:
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    upstream = tiers(filled_site(FILES, [ROBOT]), cloud)
    with pytest.raises(NotFound):
        await upstream.stat(RelPath.parse(f"{ROBOT}/cat.usd"))  # the site holds the folder whole: no request
    assert not cloud.requests
    with pytest.raises(NotFound):
        await upstream.stat(RelPath.parse("Isaac/Other/cat.usd"))
    assert cloud.requests["stat Isaac/Other/cat.usd"] == 1


@trio_test
async def test_the_sites_own_folder_never_shows(mirror: Mirror, index: Index) -> None:
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    site = MemoryUpstream(dict(FILES), root_url="memory://site")  # no manifest: a whole copy
    site.put(".isaacfs/notes.txt", b"x")
    upstream = tiers(site, cloud)
    assert ".isaacfs" not in {entry.name for entry in await upstream.list(RelPath.parse(""))}
    assert upstream.tiers[0].manifest is None


@trio_test
async def test_a_store_filled_from_another_upstream_is_not_used(mirror: Mirror, index: Index) -> None:
    """Another release holds other files under the same names: its manifest says where it was
    filled from, and a node whose origin differs does not use it (said as a configuration error)."""
    cloud = MemoryUpstream(dict(FILES), root_url=CLOUD)
    site = MemoryUpstream({path: b"#usda 1.0\n# the other release\n" for path in FILES}, root_url="memory://site",
                          retry_after=0.0)
    held = {RelPath.parse(path): Held(len(body), hashlib.md5(body).hexdigest(), "", 0.0)
            for path, body in site.files.items()}
    other = Manifest("memory://cloud/Assets/Isaac/5.1", "2026-12-02", held, {RelPath.parse(ROBOT)})
    site.put(str(MANIFEST_PATH), other.to_json())
    upstream = tiers(site, cloud)
    assert await fetch(mirror, index, upstream, f"{ROBOT}/dog.usd") == FILES[f"{ROBOT}/dog.usd"]
    row = upstream.tier_rows()[0]
    assert row["state"] == "misconfigured" and row["manifest"] is None and gets(site) == 0
