"""Run Isaac Lab's own isaaclab/utils/assets.py against a mount, in a fresh process.

argv: VERSION (2.3 or 3.0), the unpacked wheel, the asset path below the root, and for
2.3 the Kit arguments (as `isaacfs kit-args` prints them). Prints JSON.

Isaac Lab 2.3 reads the Kit setting /persistent/isaac/asset_root/cloud through
`carb.settings`; outside Kit, a stand-in `carb` module answers from the Kit arguments,
parsed the way Kit parses `--/path=value`. Isaac Lab 3.0 is imported as a package and
takes ISAACSIM_ASSET_ROOT from the environment, as it does in a training run.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import types
from pathlib import Path
from typing import cast


def carb_stand_in(kit_args: str) -> types.ModuleType:
    values: dict[str, str] = {}
    for arg in shlex.split(kit_args):
        key, _, value = arg.removeprefix("--").partition("=")
        values[key] = value

    class Settings:
        def get(self, key: str) -> str | None:
            return values.get(key)

    carb = types.ModuleType("carb")
    carb.settings = types.SimpleNamespace(get_settings=Settings)  # type: ignore[attr-defined]
    return carb


def load(version: str, wheel: Path, kit_args: str) -> types.ModuleType:
    if version == "2.3":
        sys.modules["carb"] = carb_stand_in(kit_args)
        path = wheel / "isaaclab/source/isaaclab/isaaclab/utils/assets.py"
        spec = importlib.util.spec_from_file_location("isaaclab_assets_2_3", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    sys.path.insert(0, str(wheel))
    import isaaclab.utils.assets as assets  # from the unpacked 3.0 wheel

    return cast(types.ModuleType, assets)


def main() -> None:
    version, wheel, rel = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    assets = load(version, wheel, sys.argv[4] if len(sys.argv) > 4 else "")
    path = f"{assets.ISAAC_NUCLEUS_DIR}/{rel}"
    report = {"root": assets.NUCLEUS_ASSET_ROOT_DIR, "path": path, "check": assets.check_file_path(path),
              "size": len(assets.read_file(path).read()), "retrieved": assets.retrieve_file_path(path)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
