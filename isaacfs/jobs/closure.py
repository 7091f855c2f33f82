"""The dependency closure of USD assets: the files one robot or scene really needs.

Breadth first from the given layers: each USD layer and MDL module met is fetched
(into the mirror, or for a dry run into a scratch folder), its asset paths are read by
usd-core in a child process (``isaacfs.usd_deps``), and each path is mapped to a path
under the asset root. Relative paths are resolved against the layer's folder; absolute
URLs inside the upstream root (or the NVIDIA cloud root of the same release) are mapped
into the mirror; anything else (another server, ``omniverse://localhost/...``, a local
absolute path) is reported as not available offline.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import trio

from ..core.config import CLOUD_ROOT
from ..core.errors import InvalidPath
from ..core.paths import RelPath
from ..core.types import RemoteEntry
from ..system.launch import python_module
from .usd_deps import wants_parsing

log = logging.getLogger("isaacfs.closure")

PARSE_TIMEOUT = 300.0  # seconds for usd-core to read one round of layers

# Puts a layer's bytes at a readable path; returns that path.
FetchLayer = Callable[[RelPath, RemoteEntry, Path], Awaitable[Path]]
StatPath = Callable[[RelPath], Awaitable[RemoteEntry]]


@dataclass
class Closure:
    files: dict[RelPath, RemoteEntry] = field(default_factory=dict)
    not_offline: list[str] = field(default_factory=list)  # "dep (named by layer): why"
    failures: list[tuple[RelPath, str]] = field(default_factory=list)


def resolve(dependency: str, layer: RelPath, root_url: str) -> RelPath | str | None:
    """Map an asset path written in ``layer`` to a path under the root.

    Returns a RelPath, a reason string when it cannot be had offline, or None for paths
    that name no separate file (inside a .usdz package, empty).
    """
    text = dependency.strip()
    if not text or "[" in text:
        return None  # a file inside a USDZ package comes with the package
    if "<UDIM>" in text or "<udim>" in text:
        return "UDIM texture sets are not expanded"
    if "://" in text or text.startswith(("omniverse:", "omni:", "file:")):
        relative = _inside_root(text, root_url)
        if relative is None:
            return "outside the upstream asset root"
        parts = [unquote(part) for part in relative.split("/") if part]
        base: tuple[str, ...] = ()
    elif text.startswith("/"):
        return "an absolute local path"
    else:
        parts = text.split("/")
        base = layer.parent.parts
    resolved: list[str] = list(base)
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return "points above the asset root"
            resolved.pop()
        else:
            resolved.append(part)
    try:
        return RelPath.parse("/".join(resolved))
    except InvalidPath as exc:
        return f"not a valid path ({exc})"


def _inside_root(url: str, root_url: str) -> str | None:
    roots = [root_url.rstrip("/")]
    release = root_url.rstrip("/").rsplit("/", 1)[-1]
    roots.append(f"{CLOUD_ROOT}/{release}")  # NVIDIA's assets name their own cloud root
    for root in roots:
        if url.startswith(root + "/"):
            return url[len(root) + 1:]
    return None


async def parse_layers(paths: list[Path]) -> dict[str, dict[str, object]]:
    command = python_module("isaacfs.jobs.usd_deps", *map(str, paths))
    with trio.fail_after(PARSE_TIMEOUT):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"usd-core could not read the layers (exit {done.returncode}): {tail[0]}")
    answer: dict[str, dict[str, object]] = json.loads(done.stdout)
    return answer


async def compute(roots: list[RelPath], stat: StatPath, fetch_layer: FetchLayer, root_url: str,
                  jobs: int) -> Closure:
    closure = Closure()
    seen: set[RelPath] = set(roots)
    frontier = list(roots)
    limit = trio.CapacityLimiter(jobs)
    scratch = Path(tempfile.mkdtemp(prefix="isaacfs-closure-"))
    try:
        round_number = 0
        while frontier:
            round_number += 1
            layers: dict[Path, RelPath] = {}

            async def visit(rel: RelPath, slot: int, layers: dict[Path, RelPath] = layers,
                            round_number: int = round_number) -> None:
                async with limit:
                    try:
                        entry = await stat(rel)
                    except Exception as exc:
                        closure.failures.append((rel, str(exc)))
                        return
                    if entry.is_dir:
                        closure.failures.append((rel, "is a folder, not an asset file"))
                        return
                    closure.files[rel] = entry
                    if not wants_parsing(rel.name):
                        return
                    folder = scratch / f"{round_number}-{slot}"
                    folder.mkdir()
                    try:
                        local = await fetch_layer(rel, entry, folder / rel.name)
                    except Exception as exc:
                        closure.failures.append((rel, str(exc)))
                        return
                    layers[local] = rel

            async with trio.open_nursery() as nursery:
                for slot, rel in enumerate(frontier):
                    nursery.start_soon(visit, rel, slot)
            frontier = []
            if not layers:
                break
            try:
                parsed = await parse_layers(list(layers))
            except (RuntimeError, trio.TooSlowError, ValueError) as exc:
                closure.failures.extend((rel, f"dependencies unknown: {exc}") for rel in layers.values())
                break
            for local, rel in layers.items():
                answer = parsed.get(str(local), {})
                if "error" in answer:
                    closure.failures.append((rel, f"usd-core could not read it: {answer['error']}"))
                    continue
                deps = answer.get("deps", [])
                for dependency in deps if isinstance(deps, list) else []:
                    target = resolve(str(dependency), rel, root_url)
                    if target is None:
                        continue
                    if isinstance(target, str):
                        closure.not_offline.append(f"{dependency} (named by {rel}): {target}")
                        continue
                    if target not in seen:
                        seen.add(target)
                        frontier.append(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    closure.not_offline = sorted(set(closure.not_offline))
    return closure
