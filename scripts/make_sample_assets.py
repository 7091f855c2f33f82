"""Regenerate isaacfs/sample_assets: a tiny asset root shaped like NVIDIA's.

It exercises what a real robot asset does to a resolver: a binary (crate) root layer,
text sublayers, references, payloads, textures, an MDL material reached by a relative
path that climbs from Isaac/ into NVIDIA/Materials/, and names with odd characters.
Run: python scripts/make_sample_assets.py (needs usd-core).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

from pxr import Sdf, Usd, UsdGeom, UsdShade

ROOT = Path(__file__).resolve().parent.parent / "isaacfs" / "sample_assets"
GO2 = "Isaac/IsaacLab/Robots/Unitree/Go2"
MDL = "NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl"


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    raw = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def write(rel: str, data: bytes | str) -> Path:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def stage(rel: str) -> Usd.Stage:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return Usd.Stage.CreateNew(str(path))


def robot_parts() -> None:
    meshes = stage(f"{GO2}/Props/instanceable_meshes.usda")
    UsdGeom.Xform.Define(meshes, "/Meshes")
    cube = UsdGeom.Cube.Define(meshes, "/Meshes/base")
    cube.CreateSizeAttr(0.4)
    meshes.SetDefaultPrim(meshes.GetPrimAtPath("/Meshes"))
    meshes.GetRootLayer().Save()

    physics = stage(f"{GO2}/go2_physics.usda")
    over = physics.OverridePrim("/Go2")
    over.CreateAttribute("physics:mass", Sdf.ValueTypeNames.Float).Set(15.0)
    physics.GetRootLayer().Save()

    sensors = stage(f"{GO2}/go2_sensors.usda")
    UsdGeom.Xform.Define(sensors, "/Sensors")
    UsdGeom.Camera.Define(sensors, "/Sensors/front_cam")
    sensors.SetDefaultPrim(sensors.GetPrimAtPath("/Sensors"))
    sensors.GetRootLayer().Save()

    write(f"{GO2}/Textures/go2_body_albedo.png", png(8, 8, (40, 40, 48)))
    write(MDL, "mdl 1.6;\nimport ::anno::*;\nimport ::base::*;\n\n"
          "export material Aluminum_Anodized() = material(\n"
          "    surface: material_surface(scattering: df::diffuse_reflection_bsdf(\n"
          "        tint: base::file_texture(\n"
          "            texture_2d(\"./Aluminum_Anodized/Aluminum_Anodized_BaseColor.png\")).tint)));\n")
    write("NVIDIA/Materials/Base/Metals/Aluminum_Anodized/Aluminum_Anodized_BaseColor.png", png(4, 4, (180, 180, 190)))


def go2() -> None:
    # The root layer is binary crate, like the real assets.
    layer = Sdf.Layer.CreateNew(str(ROOT / f"{GO2}/go2.usd"), args={"format": "usdc"})
    root = Usd.Stage.Open(layer)
    root.GetRootLayer().subLayerPaths.append("./go2_physics.usda")
    robot = UsdGeom.Xform.Define(root, "/Go2")
    root.SetDefaultPrim(robot.GetPrim())
    body = root.DefinePrim("/Go2/base")
    body.GetReferences().AddReference("./Props/instanceable_meshes.usda", "/Meshes")
    sensors = root.DefinePrim("/Go2/sensors")
    sensors.GetPayloads().AddPayload("./go2_sensors.usda")
    material = UsdShade.Material.Define(root, "/Go2/Looks/Aluminum")
    shader = UsdShade.Shader.Define(root, "/Go2/Looks/Aluminum/Shader")
    shader.SetSourceAsset(Sdf.AssetPath("../../../../../NVIDIA/Materials/Base/Metals/Aluminum_Anodized.mdl"), "mdl")
    shader.SetSourceAssetSubIdentifier("Aluminum_Anodized", "mdl")
    shader.CreateInput("diffuse_texture", Sdf.ValueTypeNames.Asset).Set(
        Sdf.AssetPath("./Textures/go2_body_albedo.png"))
    material.CreateSurfaceOutput("mdl").ConnectToSource(shader.ConnectableAPI(), "out")
    root.GetRootLayer().Save()


def simple(rel: str, prim: str, refs: tuple[str, ...] = ()) -> None:
    s = stage(rel)
    xform = UsdGeom.Xform.Define(s, prim)
    s.SetDefaultPrim(xform.GetPrim())
    for ref in refs:
        xform.GetPrim().GetReferences().AddReference(ref)
    s.GetRootLayer().Save()


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    robot_parts()
    go2()
    simple("Isaac/IsaacLab/Robots/ANYbotics/ANYmal-C/anymal_c.usda", "/anymal_c")
    simple("Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda", "/panda")
    simple("Isaac/Props/Blocks/DexCube/dex_cube_instanceable.usda", "/cube")
    simple("Isaac/Environments/Grid/default_environment.usda", "/World",
           ("../../Props/Blocks/DexCube/dex_cube_instanceable.usda",))
    simple("Isaac/Props/Odd Names/a b%+#é.usda", "/odd")
    write("Isaac/IsaacLab/Policies/ANYmal-C/Blind/policy.pt", bytes(range(256)) * 64)
    write("Isaac/IsaacLab/ActuatorNets/ANYbotics/anydrive_3_lstm_jit.pt", bytes(reversed(range(256))) * 32)
    print(f"wrote {sum(1 for p in ROOT.rglob('*') if p.is_file())} files under {ROOT}")


if __name__ == "__main__":
    main()
