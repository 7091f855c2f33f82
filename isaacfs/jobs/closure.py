"""The dependency closure of USD assets: the files one robot or scene really needs.

From the given layers, pipelined: each USD layer and MDL module met is fetched (into
the mirror, or for a dry run into a scratch folder) and read by the long-lived usd-core
worker (``parser``) as soon as it lands; each asset path it names is mapped to a path
under the asset root and looked up and fetched at once. Relative paths are resolved against the layer's folder; absolute
URLs inside the upstream root (or the NVIDIA cloud root of the same release) are mapped
into the mirror; anything else (another server, ``omniverse://localhost/...``, a local
absolute path) is reported as not available offline.
"""

from __future__ import annotations

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
from ..core.types import PREFETCH, READER, RemoteEntry
from .parser import ParseFailed, Parser
from .usd_deps import wants_parsing

log = logging.getLogger("isaacfs.closure")


# Puts a layer's bytes at a readable path; returns that path.
FetchLayer = Callable[[RelPath, RemoteEntry, Path], Awaitable[Path]]
# Size and ETag of a file; bounds its own requests.
StatPath = Callable[[RelPath], Awaitable[RemoteEntry]]


@dataclass
class Closure:
    files: dict[RelPath, RemoteEntry] = field(default_factory=dict)
    not_offline: list[str] = field(default_factory=list)  # "dep (named by layer): why"
    failures: list[tuple[RelPath, str]] = field(default_factory=list)


def fetch_priority(rel: RelPath) -> int:
    """A layer (USD, MDL) is parsed next, and what it names is unknown until it is in: it is
    fetched as a reader's open is, before the leaves (textures) queued for places."""
    return READER if wants_parsing(rel.name) else PREFETCH


def layers_in(tree: dict[RelPath, list[RemoteEntry]]) -> list[tuple[RelPath, RemoteEntry]]:
    """The layers (USD, MDL) among a tree's files: what a read-ahead of a robot's folder reads."""
    return [(folder.child(entry.name), entry) for folder, entries in tree.items() for entry in entries
            if not entry.is_dir and wants_parsing(entry.name)]


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


async def compute(roots: list[RelPath], entry_of: StatPath, fetch_layer: FetchLayer, root_url: str,
                  jobs: int, parser: Parser | None = None,
                  on_file: Callable[[RelPath, RemoteEntry], None] | None = None) -> Closure:
    """Every file the root layers need, transitively. Pipelined: each layer is read by the
    usd-core worker as soon as it has landed, and what it names is looked up and fetched at
    once; there are no rounds to wait for. ``on_file`` hears of each file that is not a
    layer as soon as it is found (a warm starts its download then)."""
    closure = Closure()
    seen: set[RelPath] = set(roots)
    limit = trio.CapacityLimiter(jobs)
    own_parser = parser is None
    reader = parser or Parser()
    scratch = Path(tempfile.mkdtemp(prefix="isaacfs-closure-"))
    slots = iter(range(1 << 30))

    async def visit(rel: RelPath, nursery: trio.Nursery) -> None:
        try:
            entry = await entry_of(rel)  # bounds its own requests (many wait for one listing)
        except Exception as exc:
            closure.failures.append((rel, str(exc)))
            return
        if entry.is_dir:
            closure.failures.append((rel, "is a folder, not an asset file"))
            return
        closure.files[rel] = entry
        if not wants_parsing(rel.name):
            if on_file is not None:
                on_file(rel, entry)
            return
        folder = scratch / str(next(slots))
        folder.mkdir()
        async with limit:
            try:
                local = await fetch_layer(rel, entry, folder / rel.name)
            except Exception as exc:
                closure.failures.append((rel, str(exc)))
                return
        try:
            deps = await reader.dependencies(str(local))
        except ParseFailed as exc:
            closure.failures.append((rel, f"usd-core could not read it: {exc}"))
            return
        for dependency in deps:
            target = resolve(dependency, rel, root_url)
            if target is None:
                continue
            if isinstance(target, str):
                closure.not_offline.append(f"{dependency} (named by {rel}): {target}")
            elif target not in seen:
                seen.add(target)
                nursery.start_soon(visit, target, nursery)

    try:
        async with trio.open_nursery() as nursery:
            await reader.start()  # usd-core loads while the root layers are fetched
            for root in roots:
                nursery.start_soon(visit, root, nursery)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if own_parser:
            await reader.aclose()
    closure.not_offline = sorted(set(closure.not_offline))
    return closure
