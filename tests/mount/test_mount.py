"""The mount as a user meets it: what exists in each mode, read-only, attributes, misses."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.helpers import GO2, POLICY, Mounts, Upstream, sha256, tree_digests


def test_permissive_shows_upstream_tree_one_to_one(any_upstream: Upstream, upstream_tree: Path,
                                                   mountpoint: Path, mounts: Mounts) -> None:
    mounts.mount(mountpoint, any_upstream, "--offline-permissive")
    (mountpoint / POLICY).stat()  # warms the kernel's attribute cache: must stay 'remote'
    for dirpath, dirs, files in os.walk(upstream_tree):
        rel = Path(dirpath).relative_to(upstream_tree)
        assert sorted(os.listdir(mountpoint / rel)) == sorted(dirs + files), rel
        for name in files:
            theirs, ours = os.stat(Path(dirpath) / name), os.stat(mountpoint / rel / name)
            assert ours.st_size == theirs.st_size
            if any_upstream.url.startswith("file:"):  # S3's modification time is the upload time
                assert abs(ours.st_mtime - theirs.st_mtime) < 1e-3
            else:
                assert abs(ours.st_mtime - time.time()) < 3600
    # Nothing was downloaded by listing and stat alone.
    assert getxattr(mountpoint / GO2, "state") == "remote"
    assert os.stat(mountpoint / GO2).st_blocks == 0
    assert (mountpoint / POLICY).read_bytes() == (upstream_tree / POLICY).read_bytes()
    assert getxattr(mountpoint / POLICY, "state") == "cached"
    assert getxattr(mountpoint / POLICY, "url").endswith("/Isaac/IsaacLab/Policies/ANYmal-C/Blind/policy.pt")
    assert getxattr(mountpoint, "mode") == "permissive"


def getxattr(path: Path, name: str) -> str:
    return os.getxattr(path, f"user.isaacfs.{name}").decode()


def test_read_only(file_upstream: Upstream, mountpoint: Path, mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    target = mountpoint / POLICY
    for attempt in (lambda: open(target, "r+b"), lambda: open(target, "ab"),
                    lambda: (mountpoint / "Isaac" / "new.usd").write_bytes(b"x"),
                    lambda: (mountpoint / "Isaac" / "newdir").mkdir(),
                    lambda: target.unlink(), lambda: target.rename(mountpoint / "Isaac" / "moved"),
                    lambda: os.chmod(target, 0o777)):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS


def test_strict_shows_only_the_mirror_and_reports_misses(file_upstream: Upstream, upstream_tree: Path,
                                                         mountpoint: Path, mounts: Mounts) -> None:
    # Fill the mirror with one file in permissive mode, then remount strict.
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert (mountpoint / POLICY).read_bytes() == (upstream_tree / POLICY).read_bytes()
    assert mounts.umount(mountpoint).returncode == 0

    mounts.mount(mountpoint, file_upstream)  # strict is the default
    assert os.listdir(mountpoint) == ["Isaac"]
    assert os.listdir(mountpoint / "Isaac/IsaacLab") == ["Policies"]
    assert (mountpoint / POLICY).read_bytes() == (upstream_tree / POLICY).read_bytes()
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            (mountpoint / "Isaac/IsaacLab/Policies/ANYmal-C/Blind/missing.pt").read_bytes()
    assert time.monotonic() - started < 1.0  # at once: strict never waits on a network
    log = mounts.log(mountpoint)
    assert log.count("ASSET NOT FOUND (strict mode)") == 1  # once per path
    assert "missing:  Isaac/IsaacLab/Policies/ANYmal-C/Blind/missing.pt" in log
    assert f"expected: {mountpoint}/Isaac/IsaacLab/Policies/ANYmal-C/Blind/missing.pt" in log
    assert f"fetch it: isaacfs warm {mountpoint} --categories IsaacLab/Policies --subset ANYmal-C" in log
    assert mounts.umount(mountpoint).returncode == 0
    with sqlite3.connect(mountpoint / ".isaacfs" / "index.db") as db:
        rows = db.execute("SELECT path, mode FROM misses").fetchall()
    assert ("Isaac/IsaacLab/Policies/ANYmal-C/Blind/missing.pt", "strict") in rows


def test_fetched_files_carry_upstream_metadata_and_are_indexed(file_upstream: Upstream, upstream_tree: Path,
                                                               mountpoint: Path, mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert sha256(mountpoint / GO2) == sha256(upstream_tree / GO2)
    assert mounts.umount(mountpoint).returncode == 0
    mirrored = mountpoint / GO2
    assert abs(mirrored.stat().st_mtime - (upstream_tree / GO2).stat().st_mtime) < 1e-3
    assert mirrored.stat().st_mode & 0o777 == 0o644  # readable by others when used unmounted
    assert os.listdir(mountpoint / ".isaacfs" / "tmp") == []
    with sqlite3.connect(mountpoint / ".isaacfs" / "index.db") as db:
        size, source = db.execute("SELECT size, source FROM files WHERE path=?", (GO2,)).fetchone()
    assert (size, source) == ((upstream_tree / GO2).stat().st_size, "upstream")


def test_odd_names_round_trip(any_upstream: Upstream, upstream_tree: Path, mountpoint: Path,
                              mounts: Mounts) -> None:
    folder = "Isaac/Props/Odd Names"
    mounts.mount(mountpoint, any_upstream, "--mode", "permissive")
    names = sorted(os.listdir(mountpoint / folder))
    assert names == sorted(os.listdir(upstream_tree / folder))
    assert "a b%+#é.usda" in names
    for name in names:
        assert sha256(mountpoint / folder / name) == sha256(upstream_tree / folder / name)


def test_adopts_an_existing_asset_tree_without_touching_it(upstream_tree: Path, mountpoint: Path,
                                                           mounts: Mounts) -> None:
    # An unzipped asset pack: the folder already holds Isaac/ and NVIDIA/.
    import shutil

    shutil.rmtree(mountpoint)
    shutil.copytree(upstream_tree, mountpoint)
    before = tree_digests(mountpoint)
    mtimes = {p: p.stat().st_mtime_ns for p in mountpoint.rglob("*") if p.is_file()}
    mounts.mount(mountpoint)  # strict, default upstream: nothing may touch the network
    assert tree_digests(mountpoint) == before
    deadline = time.monotonic() + 10
    while "adopted the existing asset tree" not in mounts.log(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"{len(before)} files" in mounts.log(mountpoint)
    assert mounts.umount(mountpoint).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert tree_digests(mountpoint) == before
    with sqlite3.connect(mountpoint / ".isaacfs" / "index.db") as db:
        assert db.execute("SELECT count(*) FROM files WHERE source='adopted'").fetchone()[0] == len(before)


def test_leftovers_of_a_crash_are_cleaned_at_start(file_upstream: Upstream, mountpoint: Path,
                                                   mounts: Mounts) -> None:
    # A crash while a download was being written leaves a temporary file, never a tree file.
    temp = mountpoint / ".isaacfs" / "tmp"
    temp.mkdir(parents=True)
    (temp / "0123abcd.part").write_bytes(b"half a texture")
    mounts.mount(mountpoint, file_upstream)
    assert "removed 1 unfinished download(s) left by an earlier stop" in mounts.log(mountpoint)
    assert os.listdir(mountpoint) == []
    assert mounts.umount(mountpoint).returncode == 0
    assert os.listdir(temp) == []
