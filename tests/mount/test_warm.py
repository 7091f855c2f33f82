"""isaacfs warm: categories, manifests, closures, misses; on a bare mirror and through a live mount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.helpers import (
    FRANKA,
    GO2,
    Mounts,
    Upstream,
    bytes_wrong,
    isaacfs,
    open_stage,
    sha256,
    tree_digests,
    wait_for,
)

GO2_DIR = "Isaac/IsaacLab/Robots/Unitree"


def table_row(stdout: str, name: str) -> list[str]:
    row = next(line for line in stdout.splitlines() if line.startswith("│") and f" {name} " in line)
    return [cell.strip() for cell in row.strip("│ ").split("│")]


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
    assert f"isaacfs mount {mirror}" in first.stdout

    second = isaacfs(*args, env=env)
    assert second.returncode == 0
    cells = table_row(second.stdout, "IsaacLab/Robots")
    assert cells[1] == cells[3] and cells[4] == "0"  # all skipped, nothing fetched

    # The warmed mirror serves in strict mode with no upstream at all.
    mounts.mount(mirror)
    assert sha256(mirror / GO2) == sha256(upstream_tree / GO2)


def test_warm_dry_run_fetches_nothing(file_upstream: Upstream, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    result = isaacfs("warm", "--mirror", str(mirror), "--upstream", file_upstream.url, "--categories", "all",
                     "--dry-run")
    assert result.returncode == 0 and "dry run" in result.stdout
    # One row per category, as users know the table, and the total: Isaac/ (12) and NVIDIA/ (2).
    assert table_row(result.stdout, "IsaacLab")[1] == "8" and table_row(result.stdout, "Robots")[1] == "1"
    assert table_row(result.stdout, "NVIDIA/Materials")[1] == "2" and table_row(result.stdout, "total")[1] == "14"
    assert [p for p in mirror.rglob("*") if p.is_file()] == []


def test_warm_unknown_category_lists_what_exists(file_upstream: Upstream, tmp_path: Path) -> None:
    result = isaacfs("warm", "--mirror", str(tmp_path / "m"), "--upstream", file_upstream.url,
                     "--categories", "Robotz")
    assert result.returncode == 2
    assert "unknown category 'Robotz'" in result.stderr and "Robots" in result.stderr
    result = isaacfs("warm", "--mirror", str(tmp_path / "m"), "--upstream", file_upstream.url,
                     "--categories", "Robots", "--subset", "Nope")
    assert result.returncode == 2 and "FrankaRobotics" in result.stderr
    result = isaacfs("warm", "--mirror", str(tmp_path / "m"), "--upstream", file_upstream.url)
    assert result.returncode == 2 and "--categories, --manifest" in result.stderr


def test_closure_fetches_what_usd_needs_and_opens_offline(any_upstream: Upstream, upstream_tree: Path,
                                                          tmp_path: Path, mounts: Mounts) -> None:
    # The reference: what usd-core itself reports for Go2, read through a permissive mount.
    reference_mount = tmp_path / "reference"
    reference_mount.mkdir()
    mounts.mount(reference_mount, any_upstream, "--mode", "permissive")
    reference = open_stage(reference_mount / GO2)
    needed = {str(Path(p).relative_to(reference_mount)) for p in [*reference["layers"], *reference["assets"]]}

    mirror = tmp_path / "mirror"
    result = isaacfs("warm", "--mirror", str(mirror), "--upstream", any_upstream.url, "--closure", GO2,
                     env={**mounts.env, **any_upstream.env})
    assert result.returncode == 0, result.stdout + result.stderr
    got = set(tree_digests(mirror))
    # Everything USD needs, plus the texture the MDL module names; nothing else of the root.
    assert needed <= got
    assert got - needed == {"NVIDIA/Materials/Base/Metals/Aluminum_Anodized/Aluminum_Anodized_BaseColor.png"}
    assert all(sha256(mirror / rel) == sha256(upstream_tree / rel) for rel in got)

    offline = tmp_path / "offline"
    offline.mkdir()
    mounts.mount(offline, None, "--mirror", str(mirror))
    report = open_stage(offline / GO2)
    assert report["opened"] and report["unresolved"] == []


def test_closure_maps_absolute_urls_and_lists_what_is_not_offline(file_upstream: Upstream, upstream_tree: Path,
                                                                  tmp_path: Path) -> None:
    scene = upstream_tree / "Isaac/Environments/Lab/scene.usda"
    scene.parent.mkdir(parents=True)
    scene.write_text(f'''#usda 1.0
def Xform "World" {{
    def "Cube" (references = @{file_upstream.url}/Isaac/Props/Blocks/DexCube/dex_cube_instanceable.usda@) {{}}
    def "Remote" (references = @omniverse://localhost/Projects/elsewhere.usd@) {{}}
    def "Franka" (payload = @../../Robots/FrankaRobotics/FrankaPanda/franka.usda@) {{}}
}}
''')
    mirror = tmp_path / "mirror"
    result = isaacfs("warm", "--mirror", str(mirror), "--upstream", file_upstream.url,
                     "--closure", "Isaac/Environments/Lab/scene.usda")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(tree_digests(mirror)) == {"Isaac/Environments/Lab/scene.usda", FRANKA,
                                         "Isaac/Props/Blocks/DexCube/dex_cube_instanceable.usda"}
    assert "not available offline: omniverse://localhost/Projects/elsewhere.usd" in result.stdout
    assert "outside the upstream asset root" in result.stdout


def test_manifest_reports_bad_lines_and_replays_a_recorded_session(any_upstream: Upstream, upstream_tree: Path,
                                                                   tmp_path: Path, mounts: Mounts) -> None:
    # Record: a task's run in permissive mode reads a robot and a policy.
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    mounts.mount(recorded, any_upstream, "--mode", "permissive")
    open_stage(recorded / GO2)
    (recorded / "Isaac/IsaacLab/Policies/ANYmal-C/Blind/policy.pt").read_bytes()
    listing = tmp_path / "task.txt"
    made = isaacfs("manifest", str(recorded), "-o", str(listing), env=mounts.env)
    assert made.returncode == 0, made.stderr
    paths = [line for line in listing.read_text().splitlines() if not line.startswith("#")]
    assert GO2 in paths and "Isaac/IsaacLab/Policies/ANYmal-C/Blind/policy.pt" in paths and FRANKA not in paths

    # Replay on another box: the same files, plus a malformed and a missing line reported.
    listing.write_text(listing.read_text() + "../../etc/passwd\nIsaac/Props/none.usd\n")
    replay = tmp_path / "replay"
    result = isaacfs("warm", "--mirror", str(replay), "--upstream", any_upstream.url, "--manifest", str(listing),
                     env={**mounts.env, **any_upstream.env})
    assert result.returncode == 1  # one listed path does not exist upstream
    assert f"{listing}:{len(paths) + 2}: skipped malformed line '../../etc/passwd'" in result.stdout
    assert "Isaac/Props/none.usd: not found upstream" in result.stdout
    assert set(tree_digests(replay)) == set(paths)
    assert all(sha256(replay / rel) == sha256(upstream_tree / rel) for rel in paths)


def test_warm_through_a_live_strict_mount(file_upstream: Upstream, upstream_tree: Path, tmp_path: Path,
                                          mounts: Mounts) -> None:
    mountpoint = tmp_path / "offline_assets"
    mountpoint.mkdir()
    mounts.mount(mountpoint, file_upstream)
    with pytest.raises(FileNotFoundError):
        (mountpoint / GO2).read_bytes()  # strict: a miss (and the kernel now caches the negative entry)
    misses = isaacfs("misses", str(mountpoint), env=mounts.env)
    assert GO2 in misses.stdout and f"isaacfs warm {mountpoint} --categories IsaacLab/Robots --subset Unitree" \
        in misses.stdout and f"isaacfs warm {mountpoint} --from-misses" in misses.stdout

    result = isaacfs("warm", "--mirror", str(mountpoint), "--from-misses", env=mounts.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256(mountpoint / GO2) == sha256(upstream_tree / GO2)  # visible at once, no remount
    assert "warm requested: recorded misses" in mounts.log(mountpoint)
    assert GO2 not in isaacfs("misses", str(mountpoint), env=mounts.env).stdout

    result = isaacfs("warm", "--mirror", str(mountpoint), "--categories", "Robots", env=mounts.env)
    assert result.returncode == 0
    assert sha256(mountpoint / FRANKA) == sha256(upstream_tree / FRANKA)

    other = isaacfs("warm", "--mirror", str(mountpoint), "--upstream", "https://example.com/x",
                    "--categories", "Robots", env=mounts.env)
    assert other.returncode == 2 and "is mounted with upstream" in other.stderr


def test_warm_stops_on_a_full_disk_without_partial_files(tmp_path: Path, upstream_tree: Path,
                                                         record_property: Callable[[str, object], None]) -> None:
    big = upstream_tree / "Isaac/Props/Large/big_texture.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(24 * 1024 * 1024))
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], check=True)
    try:
        result = isaacfs("warm", "--mirror", str(disk / "mirror"), "--upstream", upstream_tree.as_uri(),
                         "--categories", "Props")
        assert result.returncode == 1
        assert "stopped: mirror disk is full" in result.stdout
        assert not (disk / "mirror" / "Isaac/Props/Large/big_texture.bin").exists()
        assert list((disk / "mirror" / ".isaacfs" / "tmp").iterdir()) == []
        record_property("bytes_wrong", bytes_wrong(disk / "mirror", upstream_tree))
        assert bytes_wrong(disk / "mirror", upstream_tree) == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_parallel_downloads_that_fit_one_after_another_all_land(tmp_path: Path, upstream_tree: Path) -> None:
    folder = upstream_tree / "Isaac/Props/Domes"
    folder.mkdir(parents=True)
    for number in range(8):  # 8 x 5 MiB on a 50 MiB disk: they fit, but not all in flight at once plus copies
        (folder / f"dome{number}.hdr").write_bytes(os.urandom(5 * 1024 * 1024))
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "mirror").mkdir()
        (disk / "filler").write_bytes(b"\0" * (4 * 1024 * 1024))  # the disk is not empty either
        result = isaacfs("warm", "--mirror", str(disk / "mirror"), "--upstream", upstream_tree.as_uri(),
                         "--categories", "Props/Domes", "--jobs", "8")
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(list((disk / "mirror" / "Isaac/Props/Domes").iterdir())) == 8
        assert bytes_wrong(disk / "mirror", upstream_tree) == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_warm_with_an_unreachable_upstream_ends_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    result = isaacfs("warm", "--mirror", str(tmp_path / "m"), "--upstream", "https://127.0.0.1:9/Assets/Isaac/5.1",
                     "--upstream-timeout", "3", "--categories", "Robots")
    assert result.returncode == 2 and "cannot list the upstream" in result.stderr
    assert time.monotonic() - started < 30
    listing = tmp_path / "list.txt"
    listing.write_text(f"{GO2}\n{FRANKA}\n")
    result = isaacfs("warm", "--mirror", str(tmp_path / "m"), "--upstream", "https://127.0.0.1:9/Assets/Isaac/5.1",
                     "--upstream-timeout", "3", "--manifest", str(listing))
    assert result.returncode == 1 and table_row(result.stdout, "total")[5] == "2"
    assert time.monotonic() - started < 60


def test_verify_finds_and_repairs_a_corrupt_file(s3_sample: Upstream, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    env = s3_sample.env
    assert isaacfs("warm", "--mirror", str(mirror), "--upstream", s3_sample.url, "--categories", "Robots",
                   env=env).returncode == 0
    good = sha256(mirror / FRANKA)
    assert isaacfs("verify", "--mirror", str(mirror), env=env).returncode == 0
    target = mirror / FRANKA
    data = bytearray(target.read_bytes())
    data[10] ^= 0xFF  # same size, one flipped byte: only the MD5 can tell
    target.write_bytes(bytes(data))
    found = isaacfs("verify", "--mirror", str(mirror), "--upstream", s3_sample.url, env=env)
    assert found.returncode == 1 and f"wrong: {FRANKA}: MD5" in found.stdout
    fixed = isaacfs("verify", "--mirror", str(mirror), "--upstream", s3_sample.url, "--repair", env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"repaired: {FRANKA}" in fixed.stdout and sha256(target) == good
    target.unlink()
    assert isaacfs("verify", "--mirror", str(mirror), env=env).returncode == 1
    assert isaacfs("verify", "--mirror", str(mirror), "--upstream", s3_sample.url, "--repair",
                   env=env).returncode == 0 and sha256(target) == good


def test_ctrl_c_stops_cleanly_and_the_next_run_carries_on(tmp_path: Path) -> None:
    source = tmp_path / "upstream"
    # 1,200 files: a warm of 400 takes under a second with its bytecode compiled.
    for index in range(1200):
        folder = source / "Isaac" / "Props" / f"Set{index % 20}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"prop_{index}.usda").write_bytes(os.urandom(64 * 1024))
    mirror = tmp_path / "mirror"
    command = [sys.executable, "-m", "isaacfs", "warm", "--mirror", str(mirror), "--upstream", source.as_uri(),
               "--categories", "Props", "--jobs", "2"]
    # As from a terminal: a suite started in the background by a shell without job control
    # inherits SIGINT ignored, and so did this warm (it then ran to its end, exit 0).
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: len(list(mirror.rglob("*.usda"))) >= 20, timeout=60)
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "Traceback" not in err, err + out[-600:]
    done_before = len(list(mirror.rglob("*.usda")))
    assert 20 <= done_before < 1200
    assert list((mirror / ".isaacfs" / "tmp").iterdir()) == []  # nothing half-written left
    second = isaacfs(*command[3:])
    assert second.returncode == 0, second.stdout + second.stderr
    cells = table_row(second.stdout, "Props")
    skipped, fetched = (int(cell.replace(",", "")) for cell in cells[3:5])
    assert cells[1] == "1,200" and skipped == done_before and fetched == 1200 - done_before
    assert tree_digests(mirror) == tree_digests(source)
