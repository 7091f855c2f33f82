"""The main job, end to end, on the embedded sample asset root (nothing from the internet).

1. serve the sample asset root as a local upstream (a file: URL);
2. mount it in permissive mode over an empty folder;
3. open a robot stage through the mount with USD (usd-core), as Isaac Sim would;
4. unmount and show that the mirror filled with exactly what the stage needed;
5. take the upstream away, remount in strict mode, open the stage again offline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import sample_assets
from ..system.launch import python_module

STAGE = "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd"

OPEN_STAGE = r"""
import json, sys
from pxr import Usd, UsdUtils
stage = Usd.Stage.Open(sys.argv[1])
layers, assets, unresolved = UsdUtils.ComputeAllDependencies(sys.argv[1])
for asset in assets:
    open(asset, "rb").read()  # a renderer reads textures and MDL modules
print(json.dumps({"prims": len(list(stage.Traverse())), "layers": len(layers), "assets": len(assets),
                  "unresolved": list(unresolved)}))
"""

console = Console()


def isaacfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(python_module("isaacfs", *args), capture_output=True, text=True)
    for line in (result.stdout + result.stderr).splitlines():
        console.print(f"  [dim]{escape(line)}[/dim]")
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `isaacfs {' '.join(args)}` failed")
    return result


def open_stage(path: Path) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", OPEN_STAGE, str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: USD could not open {path}:\n{result.stderr}")
    report: dict[str, object] = json.loads(result.stdout)
    return report


def mirror_table(mirror: Path) -> Table:
    table = Table(title=f"mirror {mirror} (unmounted: a plain asset tree)")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for path in sorted(mirror.rglob("*")):
        if path.is_file() and ".isaacfs" not in path.parts:
            table.add_row(str(path.relative_to(mirror)), f"{path.stat().st_size:,}")
    return table


def run(work: Path) -> None:
    upstream = work / "upstream"
    mountpoint = work / "offline_assets"
    shutil.copytree(sample_assets(), upstream)
    mountpoint.mkdir()
    total = sum(1 for p in upstream.rglob("*") if p.is_file())
    console.rule("1. an upstream asset root")
    console.print(f"{upstream} ({total} files), served as {upstream.as_uri()}")

    console.rule("2. isaacfs mount, permissive, over an empty folder")
    isaacfs("mount", str(mountpoint), "--upstream", upstream.as_uri(), "--mode", "permissive")
    try:
        console.rule("3. USD opens the robot through the mount")
        report = open_stage(mountpoint / STAGE)
        console.print(f"{STAGE}: {report}")
    finally:
        isaacfs("umount", str(mountpoint))

    console.rule("4. the mirror filled with what the stage needed")
    console.print(mirror_table(mountpoint))

    console.rule("5. upstream gone, strict mode: the stage still opens")
    shutil.rmtree(upstream)
    isaacfs("mount", str(mountpoint), "--mode", "strict")
    try:
        offline = open_stage(mountpoint / STAGE)
        console.print(f"{STAGE}: {offline}")
        if offline["unresolved"]:
            raise SystemExit("demo: unresolved dependencies offline")
        missing = mountpoint / "Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda"
        console.print(f"a file never fetched, {missing.relative_to(mountpoint)}: exists={missing.exists()}"
                      " (strict mode logs how to fetch it:)")
        log_lines = [line for line in logs_for(mountpoint) if line.startswith("  ") or "NOT FOUND" in line]
        for line in log_lines[-4:]:
            console.print(f"  [yellow]{escape(line)}[/yellow]")
    finally:
        isaacfs("umount", str(mountpoint))
    console.rule("done")
    console.print(f"Isaac Lab 3.x would use it with: export ISAACSIM_ASSET_ROOT={mountpoint}")


def logs_for(mountpoint: Path) -> list[str]:
    from ..system.logs import log_path_for

    path = log_path_for(mountpoint)
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m isaacfs.cli.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keep the demo's folders here (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("OMNICLIENT_HUB_MODE", "disabled")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=False)
        run(args.workdir.absolute())
    else:
        with tempfile.TemporaryDirectory(prefix="isaacfs-demo-") as temp:
            run(Path(temp))


if __name__ == "__main__":
    main()
