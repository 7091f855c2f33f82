"""isaacfs warm on an unmounted mirror: exact bytes, idempotent, clear errors, then strict offline."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.helpers import Mounts, Upstream, isaacfs, sha256, tree_digests

GO2_DIR = "Isaac/IsaacLab/Robots/Unitree"


def test_warm_fetches_exactly_the_category_and_is_idempotent(any_upstream: Upstream, upstream_tree: Path,
                                                             tmp_path: Path, mounts: Mounts) -> None:
    mirror = tmp_path / "offline_assets"
    env = {**mounts.env, **any_upstream.env}
    args = ("warm", "--mirror", str(mirror), "--upstream", any_upstream.url,
            "--categories", "IsaacLab/Robots", "NVIDIA/Materials", "--subset", "Unitree", "Base")
    first = isaacfs(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    expected = {rel: digest for rel, digest in tree_digests(upstream_tree).items()
                if rel.startswith((GO2_DIR, "NVIDIA/Materials/Base"))}
    assert tree_digests(mirror) == expected  # byte for byte, nothing more
    assert "export ISAACSIM_ASSET_ROOT=" in first.stdout

    second = isaacfs(*args, env=env)
    assert second.returncode == 0
    row = next(line for line in second.stdout.splitlines() if "IsaacLab/Robots" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[1] == cells[3] and cells[4] == "0"  # all skipped, nothing fetched

    # The warmed mirror serves in strict mode with no upstream at all.
    mounts.mount(mirror)
    go2 = "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd"
    assert sha256(mirror / go2) == sha256(upstream_tree / go2)


def test_warm_dry_run_fetches_nothing(file_upstream: Upstream, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    result = isaacfs("warm", "--mirror", str(mirror), "--upstream", file_upstream.url, "--categories", "all",
                     "--dry-run")
    assert result.returncode == 0 and "dry run" in result.stdout
    assert not mirror.exists() or [p for p in mirror.rglob("*") if p.is_file()] == []


def test_warm_unknown_category_lists_what_exists(file_upstream: Upstream, tmp_path: Path) -> None:
    result = isaacfs("warm", "--mirror", str(tmp_path / "m"), "--upstream", file_upstream.url,
                     "--categories", "Robotz")
    assert result.returncode == 2
    assert "unknown category 'Robotz'" in result.stderr and "Robots" in result.stderr
    result = isaacfs("warm", "--mirror", str(tmp_path / "m"), "--upstream", file_upstream.url,
                     "--categories", "Robots", "--subset", "Nope")
    assert result.returncode == 2 and "FrankaRobotics" in result.stderr


def test_warm_refuses_a_live_mount(file_upstream: Upstream, tmp_path: Path, mounts: Mounts) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounts.mount(mountpoint, file_upstream)
    result = isaacfs("warm", "--mirror", str(mountpoint), "--upstream", file_upstream.url, "--categories", "Robots")
    assert result.returncode == 2 and "isaacfs umount" in result.stderr
    assert os.path.ismount(mountpoint)
