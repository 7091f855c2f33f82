"""USD's own resolver opens a robot through the mount: permissive from empty, then strict offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import GO2, Mounts, Upstream, copy_sample, open_stage, sha256, start_s3, tree_digests

EXPECTED_LAYERS = {
    "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd",
    "Isaac/IsaacLab/Robots/Unitree/Go2/go2_physics.usda",
    "Isaac/IsaacLab/Robots/Unitree/Go2/go2_sensors.usda",
    "Isaac/IsaacLab/Robots/Unitree/Go2/Props/instanceable_meshes.usda",
}
EXPECTED_ASSETS = {
    "Isaac/IsaacLab/Robots/Unitree/Go2/Textures/go2_body_albedo.png",
    "NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl",  # reached by ../../../../../NVIDIA/...
}
# Named by the MDL module, which usd-core does not open: prefetch may have fetched it too.
PREFETCHED_TOO = {"NVIDIA/Materials/Base/Metals/Aluminum_Anodized/Aluminum_Anodized_BaseColor.png"}



def relative(paths: object, root: Path) -> set[str]:
    assert isinstance(paths, list)
    return {str(Path(p).relative_to(root)) for p in paths}


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_stage_opens_permissive_then_strict_offline(kind: str, tmp_path: Path, mounts: Mounts) -> None:
    source = copy_sample(tmp_path / "source")
    if kind == "s3":
        upstream = start_s3(source, tmp_path / "s3")
    else:
        upstream = Upstream(source.as_uri())
    mountpoint = tmp_path / "offline_assets"
    mountpoint.mkdir()
    try:
        mounts.mount(mountpoint, upstream, "--mode", "permissive")
        report = open_stage(mountpoint / GO2)
        assert report["opened"]
        assert relative(report["layers"], mountpoint) == EXPECTED_LAYERS
        assert relative(report["assets"], mountpoint) == EXPECTED_ASSETS
        assert report["unresolved"] == []
        assert "/Go2/base" in report["prims"] and "/Go2/sensors/front_cam" in report["prims"]
        assert mounts.umount(mountpoint).returncode == 0
    finally:
        upstream.stop()
        if kind == "file":
            source.rename(tmp_path / "source-gone")  # the upstream is gone for the strict run

    # Unmounted, the folder is a plain asset tree holding exactly what the stage needed.
    mirrored = tree_digests(mountpoint)
    assert EXPECTED_LAYERS | EXPECTED_ASSETS <= set(mirrored) <= EXPECTED_LAYERS | EXPECTED_ASSETS | PREFETCHED_TOO
    original = tmp_path / ("source" if kind == "s3" else "source-gone")
    for rel, digest in mirrored.items():
        assert digest == sha256(original / rel), rel

    mounts.mount(mountpoint, upstream if kind == "file" else None, "--mode", "strict")
    offline = open_stage(mountpoint / GO2)
    assert offline["opened"] and offline["unresolved"] == []
    assert relative(offline["layers"], mountpoint) == EXPECTED_LAYERS
    assert offline["digests"] == {str(mountpoint / a): sha256(original / a) for a in EXPECTED_ASSETS}
