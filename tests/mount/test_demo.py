"""The README's first command, `scripts/demo`, end to end: its module on a real mount."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from isaacfs import sample_assets

GO2 = "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd"


def test_the_demo_runs_end_to_end_and_leaves_a_plain_mirror(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    env = {**os.environ, "OMNICLIENT_HUB_MODE": "disabled", "HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "isaacfs.cli.demo", "--workdir", str(work)],
                            capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "'unresolved': []" in result.stdout
    # Unmounted at the end: the mountpoint is a plain tree holding the stage, byte for byte.
    mirror = work / "offline_assets"
    assert not os.path.ismount(mirror)
    assert (mirror / GO2).read_bytes() == (sample_assets() / GO2).read_bytes()
    assert not (mirror / "Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda").exists()


def test_the_sample_root_is_found_from_the_installed_package() -> None:
    assert (sample_assets() / GO2).is_file()
