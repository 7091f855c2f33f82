"""Isaac Lab's own assets.py (2.3 and 3.0, from their PyPI wheels) finds and reads assets through the mount."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.helpers import HERE, Mounts, Upstream, isaacfs, open_stage, sha256

GO2 = "IsaacLab/Robots/Unitree/Go2/go2.usd"  # below Isaac/
WHEELS = {
    "2.3": ["isaaclab==2.3.2.post1"],
    "3.0": ["isaaclab==3.0.0", "--python-version", "3.12"],
}


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "isaacfs-tests"


@pytest.fixture(scope="session", params=sorted(WHEELS))
def isaaclab_wheel(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """The unpacked Isaac Lab wheel of one version (downloaded once, kept in the user's cache)."""
    version = request.param
    folder = cache_dir() / f"isaaclab-{version}"
    if not (folder / ".unpacked").exists():
        download = cache_dir() / f"wheel-{version}"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(download), *WHEELS[version]], check=True, timeout=600)
        (wheel,) = download.glob("isaaclab-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
        (folder / ".unpacked").touch()
    return version, folder


def probe(version: str, wheel: Path, rel: str, env: dict[str, str], kit_args: str = "") -> dict[str, object]:
    result = subprocess.run([sys.executable, str(HERE / "isaaclab_probe.py"), version, str(wheel), rel, kit_args],
                            capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_isaaclab_assets_through_the_mount(isaaclab_wheel: tuple[str, Path], file_upstream: Upstream,
                                           upstream_tree: Path, tmp_path: Path, mounts: Mounts) -> None:
    version, wheel = isaaclab_wheel
    mountpoint = tmp_path / "offline_assets"
    mountpoint.mkdir()
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    env = {k: v for k, v in os.environ.items() if k != "ISAACSIM_ASSET_ROOT"}
    if version == "2.3":
        kit_args = isaacfs("kit-args", str(mountpoint), env=mounts.env).stdout.strip()
        report = probe(version, wheel, GO2, {}, kit_args)
    else:
        line = isaacfs("env", str(mountpoint), env=mounts.env).stdout.strip()
        assert line.startswith("export ISAACSIM_ASSET_ROOT=")
        report = probe(version, wheel, GO2, {**env, "ISAACSIM_ASSET_ROOT": line.split("=", 1)[1]})
    local = mountpoint / "Isaac" / GO2
    assert report["root"] == str(mountpoint)
    assert report["check"] == 1  # "exists locally": no omni.client round trip, no download
    assert report["size"] == (upstream_tree / "Isaac" / GO2).stat().st_size
    assert report["retrieved"] == str(local) and sha256(local) == sha256(upstream_tree / "Isaac" / GO2)
    stage = open_stage(Path(str(report["retrieved"])))
    assert stage["opened"] and stage["unresolved"] == []

    # Strict, offline: the same calls still succeed for what the mirror holds.
    assert isaacfs("mode", "strict", str(mountpoint), env=mounts.env).returncode == 0
    file_upstream_dir = Path(file_upstream.url.removeprefix("file://"))
    file_upstream_dir.rename(file_upstream_dir.with_name("gone"))
    again = probe(version, wheel, GO2, {**env, "ISAACSIM_ASSET_ROOT": str(mountpoint)} if version == "3.0" else {},
                  isaacfs("kit-args", str(mountpoint), env=mounts.env).stdout.strip())
    assert again["check"] == 1 and again["size"] == report["size"]


def test_isaaclab_configure_and_undo_byte_for_byte(isaaclab_wheel: tuple[str, Path], tmp_path: Path,
                                                   file_upstream: Upstream, mounts: Mounts) -> None:
    version, wheel = isaaclab_wheel
    checkout = tmp_path / "IsaacLab"
    apps = wheel / "isaaclab" / "apps"
    checkout.mkdir()
    shutil.copytree(apps, checkout / "apps")
    before = {p.name: p.read_bytes() for p in (checkout / "apps").glob("*.kit")}
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounts.mount(mountpoint, file_upstream)  # a file: upstream: no release to compare

    done = isaacfs("isaaclab", "configure", "--isaaclab", str(checkout), str(mountpoint), env=mounts.env)
    assert done.returncode == 0, done.stderr
    expected = "5.1" if version == "2.3" else "6.2"
    assert f"expects asset release {expected}" in done.stdout
    kit = (checkout / "apps" / "isaaclab.python.kit").read_text()
    assert f'persistent.isaac.asset_root.cloud = "{mountpoint}"' in kit
    assert f'persistent.isaac.asset_root.default = "{mountpoint}"' in kit
    # Isaac Lab 3.0's own parser reads the checkout's kit file: run it on ours.
    if version == "3.0":
        code = ("import re, sys; sys.path.insert(0, sys.argv[1]); import isaaclab.paths as p;"
                "p.ISAACLAB_ROOT = __import__('pathlib').Path(sys.argv[2]);"
                "import isaaclab.utils.assets as a;"
                "a._KIT_EXPERIENCE_PATH = sys.argv[2] + '/apps/isaaclab.python.kit'; print(a._parse_kit_asset_root())")
        env = {k: v for k, v in os.environ.items() if k != "ISAACSIM_ASSET_ROOT"}
        parsed = subprocess.run([sys.executable, "-c", code, str(wheel), str(checkout)], capture_output=True,
                                text=True, env=env, timeout=120)
        assert parsed.stdout.strip().splitlines()[-1] == str(mountpoint), parsed.stderr[-2000:]

    again = isaacfs("isaaclab", "configure", "--isaaclab", str(checkout), str(mountpoint), env=mounts.env)
    assert again.returncode == 0 and "already points" in again.stdout  # idempotent
    undone = isaacfs("isaaclab", "configure", "--isaaclab", str(checkout), "--undo", env=mounts.env)
    assert undone.returncode == 0
    assert {p.name: p.read_bytes() for p in (checkout / "apps").glob("*.kit")} == before
    bad = isaacfs("isaaclab", "configure", "--isaaclab", str(tmp_path), str(mountpoint), env=mounts.env)
    assert bad.returncode == 2 and "not an Isaac Lab checkout" in bad.stderr
