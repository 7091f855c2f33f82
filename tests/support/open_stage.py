"""Open a USD stage the way Isaac Sim does, in a fresh process (USD caches layers per process).

Prints JSON: the layers USD loaded, the assets (textures, MDL) it resolved, what it
could not resolve, and the sha256 of every asset file read through the filesystem.
"""

from __future__ import annotations

import hashlib
import json
import sys

from pxr import Usd, UsdUtils


def main() -> None:
    path = sys.argv[1]
    stage = Usd.Stage.Open(path, Usd.Stage.LoadAll)
    report: dict[str, object] = {"opened": stage is not None}
    layers, assets, unresolved = UsdUtils.ComputeAllDependencies(path)
    report["layers"] = sorted(layer.realPath for layer in layers)
    report["assets"] = sorted(assets)
    report["unresolved"] = sorted(unresolved)
    digests = {}
    for asset in assets:  # a renderer reads textures and MDL modules: so do we
        with open(asset, "rb") as stream:
            digests[asset] = hashlib.sha256(stream.read()).hexdigest()
    report["digests"] = digests
    report["prims"] = sorted(str(prim.GetPath()) for prim in stage.Traverse()) if stage else []
    print(json.dumps(report))


if __name__ == "__main__":
    main()
