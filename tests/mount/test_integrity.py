"""Never a wrong byte: files that change upstream, are replaced under open readers, or are
corrupted in the mirror. Every read is compared with what the upstream held when the file
was opened."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.support.helpers import Mounts, Upstream, isaacfs

PROPS = "Isaac/Props/Changing"


def body(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def test_a_file_that_grew_upstream_after_its_folder_was_listed_is_read_whole(
        file_upstream: Upstream, upstream_tree: Path, mountpoint: Path, mounts: Mounts) -> None:
    folder = upstream_tree / PROPS
    folder.mkdir(parents=True)
    (folder / "grows.usd").write_bytes(body(1, 100_000))
    (folder / "shrinks.usd").write_bytes(body(10, 90_000))
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert (mountpoint / PROPS / "grows.usd").stat().st_size == 100_000  # the kernel holds this size
    grown = body(2, 150_000)
    (folder / "grows.usd").write_bytes(grown)
    assert (mountpoint / PROPS / "grows.usd").read_bytes() == grown
    assert (mountpoint / PROPS / "grows.usd").stat().st_size == 150_000  # and is told so afterwards
    assert (mountpoint / PROPS / "grows.usd").read_bytes() == grown
    assert (mountpoint / PROPS / "shrinks.usd").stat().st_size == 90_000
    shrunk = body(11, 30_000)
    (folder / "shrinks.usd").write_bytes(shrunk)  # truncated upstream after it was listed
    assert (mountpoint / PROPS / "shrinks.usd").read_bytes() == shrunk
    assert (mountpoint / PROPS / "shrinks.usd").stat().st_size == 30_000


def test_a_reader_keeps_reading_the_file_it_opened_while_a_warm_replaces_it(
        file_upstream: Upstream, upstream_tree: Path, mountpoint: Path, tmp_path: Path, mounts: Mounts) -> None:
    folder = upstream_tree / PROPS
    folder.mkdir(parents=True)
    old, new = body(3, 8 * 1024 * 1024), body(4, 8 * 1024 * 1024 + 4096)
    (folder / "dome.exr").write_bytes(old)
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    target = mountpoint / PROPS / "dome.exr"
    with open(target, "rb") as held:
        first = held.read(1024 * 1024)
        (folder / "dome.exr").write_bytes(new)  # the upstream changes
        manifest = tmp_path / "list.txt"
        manifest.write_text(f"{PROPS}/dome.exr\n")
        warmed = isaacfs("warm", str(mountpoint), "--manifest", str(manifest), env=mounts.env)
        assert warmed.returncode == 0, warmed.stdout + warmed.stderr
        assert target.read_bytes() == new  # a new open reads the new file (and fills its cache)
        rest = held.read()
    assert first + rest == old  # the open handle read the file it opened, to its end
    assert target.read_bytes() == new


def test_verify_finds_a_corrupted_mirror_file_and_repair_serves_the_right_bytes(
        file_upstream: Upstream, upstream_tree: Path, tmp_path: Path, mounts: Mounts) -> None:
    folder = upstream_tree / PROPS
    folder.mkdir(parents=True)
    good = body(5, 300_000)
    (folder / "mesh.usd").write_bytes(good)
    mountpoint, mirror = tmp_path / "mnt", tmp_path / "mirror"
    mountpoint.mkdir()
    mirror.mkdir()
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive", "--mirror", str(mirror))
    assert (mountpoint / PROPS / "mesh.usd").read_bytes() == good
    damaged = bytearray(good)
    damaged[123_456] ^= 0x20  # one flipped bit, same size, on the mirror's disk
    with open(mirror / PROPS / "mesh.usd", "r+b") as stream:
        stream.write(damaged)
        os.fsync(stream.fileno())
    found = isaacfs("verify", str(mountpoint), env=mounts.env)
    assert found.returncode != 0 and f"{PROPS}/mesh.usd" in found.stdout + found.stderr
    repaired = isaacfs("verify", str(mountpoint), "--repair", env=mounts.env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert (mirror / PROPS / "mesh.usd").read_bytes() == good
    assert (mountpoint / PROPS / "mesh.usd").read_bytes() == good


def test_an_s3_object_changed_during_the_mount_is_fetched_as_it_is_now(tmp_path: Path, mounts: Mounts) -> None:
    from tests.support.helpers import copy_sample, start_s3

    source = copy_sample(tmp_path / "source")
    (source / PROPS).mkdir(parents=True)
    (source / PROPS / "same.usd").write_bytes(body(6, 50_000))
    (source / PROPS / "other.usd").write_bytes(body(7, 50_000))
    server = start_s3(source, tmp_path / "s3")
    try:
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        mounts.mount(mountpoint, server, "--mode", "permissive")
        assert (mountpoint / PROPS / "same.usd").stat().st_size == 50_000  # listed (and cached by omni.client)
        same_size, bigger = body(8, 50_000), body(9, 60_000)
        server.put(f"{PROPS}/same.usd", same_size)  # same size, new content: a new ETag
        server.put(f"{PROPS}/other.usd", bigger)
        assert (mountpoint / PROPS / "same.usd").read_bytes() == same_size
        assert (mountpoint / PROPS / "other.usd").read_bytes() == bigger
    finally:
        server.stop()
