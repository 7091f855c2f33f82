"""`isaacfs warm`: fetch whole categories into the mirror, in parallel and resumably.

This first version works on a mirror that is not mounted (it takes the mirror's lock,
so it never races a daemon). Files already in the mirror are skipped without download;
Ctrl-C leaves only temporary files, which the next run or mount removes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from . import mounts
from .config import Settings
from .errors import UserError
from .fetch import Fetcher, FetchFailed
from .index import Index
from .mirror import Mirror
from .paths import InvalidPath, RelPath
from .upstream import Upstream, client_session
from .upstream_types import NotFound, RemoteEntry, UpstreamError

FileDone = Callable[[RelPath, int], None]  # called once per planned file, fetched or not


def category_root(category: str) -> RelPath:
    """`Robots` and `IsaacLab/Robots` are under Isaac/; `Isaac/...`, `NVIDIA/...` are from the root."""
    if category == "all":
        return RelPath(("Isaac",))
    try:
        rel = RelPath.parse(category)
    except InvalidPath as exc:
        raise UserError(f"category {category!r} is not a valid path: {exc}") from None
    if rel.is_root:
        raise UserError("an empty category; use `all` for everything under Isaac/")
    return rel if rel.parts[0] in ("Isaac", "NVIDIA") else RelPath(("Isaac", *rel.parts))


@dataclass
class CategoryReport:
    name: str
    files: int = 0
    size: int = 0
    fetched: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


async def _walk(upstream: Upstream, root: RelPath, limit: trio.CapacityLimiter) -> list[tuple[RelPath, RemoteEntry]]:
    found: list[tuple[RelPath, RemoteEntry]] = []

    async def visit(folder: RelPath, nursery: trio.Nursery) -> None:
        async with limit:
            entries = await upstream.list(folder)
        for entry in entries:
            child = folder.child(entry.name)
            if entry.is_dir:
                nursery.start_soon(visit, child, nursery)
            else:
                found.append((child, entry))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(visit, root, nursery)
    return sorted(found, key=lambda item: item[0].parts)


async def _folders(upstream: Upstream, folder: RelPath) -> list[str]:
    try:
        return sorted(e.name for e in await upstream.list(folder) if e.is_dir)
    except UpstreamError:
        return []


async def plan(upstream: Upstream, categories: list[str], subsets: list[str],
               jobs: int) -> dict[str, list[tuple[RelPath, RemoteEntry]]]:
    limit = trio.CapacityLimiter(jobs)
    planned: dict[str, list[tuple[RelPath, RemoteEntry]]] = {}
    for category in categories:
        root = category_root(category)
        try:
            entry = await upstream.stat(root)
            exists = entry.is_dir
        except NotFound:
            exists = False
        if not exists:
            known = await _folders(upstream, root.parent)
            raise UserError(f"unknown category {category!r}; under {root.parent or '/'}/ there are: "
                            + (", ".join(known) or "no folders"))
        files = await _walk(upstream, root, limit)
        if subsets:
            depth = len(root.parts)
            files = [(rel, e) for rel, e in files if set(rel.parts[depth:-1]) & set(subsets)]
            if not files:
                known = await _folders(upstream, root)
                raise UserError(f"no subset {', '.join(subsets)} in {category}; its folders are: "
                                + (", ".join(known) or "none"))
        planned[category] = files
    return planned


async def warm(settings: Settings, mirror_dir: Path, categories: list[str], subsets: list[str],
               dry_run: bool, on_file: FileDone | None = None) -> list[CategoryReport]:
    if mounts.find_mount(mirror_dir) is not None:
        raise UserError(f"{mirror_dir} is mounted; warming through a running mount is not supported yet:"
                        f" run `isaacfs umount {mirror_dir}` first, or use permissive mode")
    mirror_dir.mkdir(parents=True, exist_ok=True)
    upstream = Upstream.from_settings(settings)
    try:
        planned = await plan(upstream, categories, subsets, settings.fetch_jobs)
    except UpstreamError as exc:
        raise UserError(f"cannot list the upstream: {exc}") from None
    reports = {category: CategoryReport(category, len(files), sum(e.size for _r, e in files))
               for category, files in planned.items()}
    if dry_run:
        for category, files in planned.items():
            reports[category].skipped = sum(1 for rel, _e in files if (mirror_dir / str(rel)).is_file())
        return list(reports.values())
    mirror = Mirror(mirror_dir)
    mirror.prepare()
    index = Index(mirror.state / "index.db")
    fetcher = Fetcher(mirror, index, upstream, settings.fetch_jobs, settings.fetch_retries)
    try:
        async with trio.open_nursery() as nursery:
            fetcher.attach(nursery)
            for category, files in planned.items():
                async with trio.open_nursery() as batch:
                    for rel, entry in files:
                        batch.start_soon(_one, fetcher, mirror, rel, entry, reports[category], on_file)
            nursery.cancel_scope.cancel()
    finally:
        index.close()
        mirror.close()
    return list(reports.values())


async def _one(fetcher: Fetcher, mirror: Mirror, rel: RelPath, entry: RemoteEntry,
               report: CategoryReport, on_file: FileDone | None) -> None:
    local = mirror.entry(rel)
    if local is not None and not local.is_dir:
        report.skipped += 1
    else:
        try:
            await fetcher.ensure(rel, entry)
            report.fetched += 1
        except FetchFailed as exc:
            report.failed += 1
            report.failures.append(f"{rel}: {exc}")
    if on_file is not None:
        on_file(rel, entry.size)


def run(settings: Settings, mirror_dir: Path, categories: list[str], subsets: list[str],
        dry_run: bool, on_file: FileDone | None = None) -> tuple[list[CategoryReport], float]:
    started = time.monotonic()
    with client_session():
        reports = trio.run(warm, settings, mirror_dir, categories, subsets, dry_run, on_file)
    return reports, time.monotonic() - started
