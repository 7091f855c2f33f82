"""Planning a warm: which files each source (categories, manifest, misses, closure) names.

Listings come through the core's ``Listings`` (trusted for the listing TTL), so a
repeated warm asks the upstream nothing it was already told.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..core.categories import category_of, category_root
from ..core.errors import InvalidPath, NotFound, UpstreamError, UserError
from ..core.paths import RelPath
from ..core.retry import RetryPolicy, retrying
from ..core.types import READER, RemoteEntry, Upstream
from ..store.mirror import TempWriter
from ..tree.listings import TREE_FILES
from . import closure as closures
from .spec import WarmSpec, parse_manifest
from .workspace import Workspace, ensure_present

Planned = dict[str, dict[RelPath, RemoteEntry]]


@dataclass
class Plan:
    groups: Planned = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (group, "path: why")
    notes: list[str] = field(default_factory=list)
    prefetched: set[RelPath] = field(default_factory=set)  # closure layers fetched while planning
    # Told of each file as soon as it is planned, so its download can start while the
    # rest is still being listed, stat'ed or parsed (a warm); None for a dry run.
    found: Callable[[str, RelPath, RemoteEntry], None] | None = None

    def add(self, group: str, rel: RelPath, entry: RemoteEntry) -> None:
        self.groups.setdefault(group, {})[rel] = entry
        if self.found is not None:
            self.found(group, rel, entry)


# -- planning -------------------------------------------------------------------------
LIST_RETRY = RetryPolicy(tries=3, base=1.0)  # a folder listing during a walk


async def _walk(ws: Workspace, root: RelPath, limit: trio.CapacityLimiter,
                ttl: float | None, unreachable: list[tuple[RelPath, str]] | None = None) -> dict[RelPath, RemoteEntry]:
    """Every file below ``root``, listing folders in parallel. A listing that fails is tried
    again with backoff; one that still fails is reported in ``unreachable`` and the walk goes
    on with the rest (without ``unreachable``, or if the root itself fails, it raises)."""
    found: dict[RelPath, RemoteEntry] = {}
    errors: list[UpstreamError] = []
    if ws.listings.fresh(root, ttl) is None:
        # One recursive listing where the upstream has it (S3): a request per 1,000 files
        # instead of a round trip per level of folders. A failure falls back to the walk.
        try:
            async with limit:
                tree = await ws.listings.fetch_tree(root)
        except UpstreamError:
            tree = None
        if tree is not None:
            return {folder.child(entry.name): entry for folder, entries in tree.items()
                    for entry in entries if not entry.is_dir}

    async def listing(folder: RelPath) -> list[RemoteEntry]:
        async def attempt(_number: int) -> list[RemoteEntry]:
            async with limit:
                return await ws.listings.get(folder, ttl)

        return await retrying(attempt, f"list {folder}", LIST_RETRY)

    async def visit(folder: RelPath, nursery: trio.Nursery) -> None:
        try:
            entries = await listing(folder)
        except UpstreamError as exc:
            if unreachable is None or folder == root:
                errors.append(exc)  # no plan at all: stop the whole walk
                nursery.cancel_scope.cancel()
            else:
                unreachable.append((folder, str(exc)))
            return
        for entry in entries:
            child = folder.child(entry.name)
            if entry.is_dir:
                nursery.start_soon(visit, child, nursery)
            else:
                found[child] = entry

    async with trio.open_nursery() as nursery:
        nursery.start_soon(visit, root, nursery)
    if errors:
        raise errors[0]
    return found


async def _folders(upstream: Upstream, folder: RelPath) -> list[str]:
    try:
        return sorted(e.name for e in await upstream.list(folder) if e.is_dir)
    except UpstreamError:
        return []


def _all_row(rel: RelPath) -> str:
    """The row of `warm --categories all`'s table a file counts in: the folder under Isaac/
    (Environments, IsaacLab, Materials, People, Props, Robots, Samples, Sensors ...), or
    NVIDIA/<folder>."""
    if len(rel.parts) < 3:
        return "/".join(rel.parts[:1]) or "all"  # a file right under Isaac/ or NVIDIA/
    return rel.parts[1] if rel.parts[0] == "Isaac" else f"{rel.parts[0]}/{rel.parts[1]}"


async def _plan_categories(ws: Workspace, spec: WarmSpec, plan: Plan) -> None:
    limit = trio.CapacityLimiter(max(ws.jobs, 8))
    without_subset: list[str] = []
    for category in spec.categories:
        files: dict[RelPath, RemoteEntry] = {}
        roots = [RelPath(("Isaac",)), RelPath(("NVIDIA",))] if category == "all" else [category_root(category)]
        for root in roots:
            unreachable: list[tuple[RelPath, str]] = []
            found = await _walk_if_there(ws, root, limit, spec.listing_ttl, unreachable)
            if found is None:
                if category == "all":
                    continue  # a root without NVIDIA/ (or Isaac/) is still "all" of it
                known = await _folders(ws.upstream, root.parent)
                raise UserError(f"unknown category {category!r}; under {root.parent or '/'}/ there are: "
                                + (", ".join(known) or "no folders"))
            plan.failures.extend((category, f"{folder}/: not listed, its files were not warmed ({why})")
                                 for folder, why in unreachable)
            if spec.subsets:
                depth = len(root.parts)
                found = {rel: e for rel, e in found.items() if set(rel.parts[depth:-1]) & set(spec.subsets)}
            files.update(found)
        if spec.subsets and not files:
            without_subset.append(category)
            continue
        if category != "all":
            plan.groups.setdefault(category, {})
        for rel, entry in sorted(files.items(), key=lambda item: item[0].parts):
            plan.add(_all_row(rel) if category == "all" else category, rel, entry)
    if without_subset and not plan.groups:
        known = await _folders(ws.upstream, category_root(without_subset[0]))
        raise UserError(f"no subset {', '.join(spec.subsets)} in {', '.join(without_subset)}; the folders of"
                        f" {without_subset[0]} are: " + (", ".join(known) or "none"))
    plan.notes.extend(f"no subset {', '.join(spec.subsets)} in {category}" for category in without_subset)


async def _walk_if_there(ws: Workspace, root: RelPath, limit: trio.CapacityLimiter, ttl: float | None,
                         unreachable: list[tuple[RelPath, str]]) -> dict[RelPath, RemoteEntry] | None:
    """The walk of ``root``, or None if there is no such folder upstream. The walk starts
    beside the check (a round trip each, which a long link makes worth saving); a walk's
    failure counts only once the folder is known to be there."""
    walked: list[dict[RelPath, RemoteEntry]] = []
    failed: list[UpstreamError] = []

    async def walk() -> None:
        try:
            walked.append(await _walk(ws, root, limit, ttl, unreachable))
        except UpstreamError as exc:
            failed.append(exc)

    there: list[bool] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(walk)
        try:
            there.append(await _exists(ws, root))
        except UpstreamError as exc:
            failed.insert(0, exc)  # raised outside the nursery, as itself
        if not there or not there[0]:
            nursery.cancel_scope.cancel()
    if failed and (not there or there[0]):
        raise failed[0]
    return walked[0] if there[0] else None


async def _exists(ws: Workspace, root: RelPath) -> bool:
    """Whether ``root`` is a folder upstream: from its parent's listing (one request, and the
    listing is kept), not a stat (omni.client's costs several round trips on S3)."""
    if ws.index.listing(root) is not None:
        return True
    try:
        return any(entry.is_dir and entry.name == root.name for entry in await ws.listings.get(root.parent, None))
    except NotFound:
        return False


async def _entry_of(ws: Workspace, rel: RelPath, ttl: float | None, limit: trio.CapacityLimiter) -> RemoteEntry:
    """Size and ETag of ``rel`` from its folder's listing (one request per folder, shared by
    all its files, from the index when fresh); a stat where the listing does not have it.
    Raises UpstreamError kinds (NotFound)."""
    if not rel.is_root:
        try:
            listed = await ws.listings.get(rel.parent, ttl, limit)
        except UpstreamError:
            listed = []
        found = next((entry for entry in listed if entry.name == rel.name), None)
        if found is not None:
            return found
    async with limit:
        return await ws.upstream.stat(rel)


def _expect_downloads(ws: Workspace, rels: list[RelPath]) -> None:
    """Where one of ``rels`` is not mirrored, downloads will come: the connections are opened
    beside the first listings, not after them (a new one costs two round trips before its
    request)."""
    if any(ws.mirror.entry(rel) is None for rel in rels):
        ws.fetcher.expect_downloads()


async def _plan_paths(ws: Workspace, paths: list[RelPath], plan: Plan, dry_run: bool = False) -> None:
    """Listed paths (manifest, misses): each looked up upstream now, grouped by category;
    each file's download starts as soon as it is found (``plan.found``). A folder's listing
    is asked for once in this warm and shared by its files (a stat each before): a listing
    stored before the warm began is not trusted, so a manifest warm sees what the upstream
    holds now, as a stat did."""
    limit = trio.CapacityLimiter(max(ws.jobs, 8))
    began = time.time()
    if not dry_run:
        _expect_downloads(ws, paths[:100])

    async def one(rel: RelPath) -> None:
        group = category_of(rel)[0]
        try:
            entry = await _entry_of(ws, rel, time.time() - began, limit)
        except NotFound:
            plan.failures.append((group, f"{rel}: not found upstream"))
            return
        except UpstreamError as exc:
            plan.failures.append((group, f"{rel}: {exc}"))
            return
        if entry.is_dir:
            plan.notes.append(f"{rel} is a folder: use --categories {rel} for a whole folder")
            return
        plan.add(group, rel, entry)

    async with trio.open_nursery() as nursery:
        for rel in dict.fromkeys(paths):
            nursery.start_soon(one, rel)


async def _plan_closure(ws: Workspace, spec: WarmSpec, plan: Plan) -> None:
    roots = []
    for text in spec.closure:
        target = closures.resolve(text, RelPath(), ws.upstream.root_url) if "://" in text else None
        try:
            roots.append(target if isinstance(target, RelPath) else RelPath.parse(text.lstrip("/")))
        except InvalidPath as exc:
            raise UserError(f"--closure {text!r} is not a path under the asset root: {exc}") from None

    async def fetch_layer(rel: RelPath, entry: RemoteEntry, scratch: Path) -> Path:
        if spec.dry_run:
            writer = TempWriter(scratch)
            try:
                await ws.upstream.download(rel, entry.size, writer, entry.etag)
                await writer.finish()
            except BaseException:
                writer.discard()
                raise
            return scratch
        if await ensure_present(ws, rel, entry):
            plan.prefetched.add(rel)
        return Path(f"/proc/{os.getpid()}/fd/{ws.mirror.fd}/{rel}")  # the mirror, as the worker sees it

    asks = trio.CapacityLimiter(max(ws.jobs, 16))

    read_ahead: list[RelPath] = []

    async def entry_of(rel: RelPath) -> RemoteEntry:
        # A layer is parsed next: where its folder is not listed yet, its GET goes beside the
        # listing, not after it (a round trip less per level of the chain; ``preload_blind``).
        if (not spec.dry_run and closures.fetch_priority(rel) == READER
                and ws.listings.fresh(rel.parent, spec.listing_ttl) is None and ws.fetcher.preload_blind(rel)):
            read_ahead.append(rel)
        return await _entry_of(ws, rel, spec.listing_ttl, asks)

    def leaf(rel: RelPath, entry: RemoteEntry) -> None:
        plan.add(category_of(rel)[0], rel, entry)  # a texture or mesh: its download starts now

    async def folder_tree(folder: RelPath) -> None:
        # A robot's folder holds most of what its layers name (Props/, Textures/,
        # Materials/): one recursive listing of it, beside the root layer's own, spares a
        # round trip per level of folders on the way down. Skipped over 1,000 files.
        try:
            tree = await ws.listings.fetch_tree(folder, max_files=TREE_FILES)
        except UpstreamError:
            return  # the folders are listed one by one as they are met
        if tree is None or spec.dry_run:
            return
        # And the layers in it are read ahead into memory (bounded; only those the closure
        # then reaches are installed), so the chain root -> payload -> meshes costs one round
        # trip, not one per level.
        read_ahead.extend(layer for layer, entry in closures.layers_in(tree) if ws.fetcher.preload(layer, entry))

    if not spec.dry_run:
        _expect_downloads(ws, roots)
    async with trio.open_nursery() as nursery:
        for folder in dict.fromkeys(root.parent for root in roots):
            if ws.listings.fresh(folder, spec.listing_ttl) is None:
                nursery.start_soon(folder_tree, folder)
        # Layers go through the fetcher, which bounds the transfers itself (with express places
        # ahead of the textures): the closure's own bound is only for a dry run's scratch reads.
        jobs = max(ws.jobs, 16) * (1 if spec.dry_run else 4)
        try:
            # A folder listed for the first time (a material library) has its tree read beside
            # its listing, as on a mount: the folder its module's textures are in (Textures/)
            # is then known when the module names them, a round trip less.
            with ws.listings.trees_read(nursery, TREE_FILES):
                found = await closures.compute(roots, entry_of, fetch_layer, ws.upstream.root_url, jobs,
                                               on_file=None if spec.dry_run else leaf)
        finally:
            nursery.cancel_scope.cancel()
            ws.fetcher.drop_preloads(read_ahead)  # the folder's layers the closure did not reach
    for rel, entry in found.files.items():
        plan.add(category_of(rel)[0], rel, entry)
    for rel, why in found.failures:
        plan.failures.append((category_of(rel)[0], f"{rel}: {why}"))
    plan.notes.extend(f"not available offline: {line}" for line in found.not_offline)


async def make_plan(ws: Workspace, spec: WarmSpec, plan: Plan | None = None) -> Plan:
    """What ``spec`` names, into ``plan`` (whose ``found`` hears of each file as it is planned)."""
    plan = Plan() if plan is None else plan
    try:
        await _plan_categories(ws, spec, plan)
        if spec.manifest is not None:
            paths, problems = parse_manifest(spec.manifest, spec.manifest_name or "manifest")
            plan.notes.extend(problems)
            await _plan_paths(ws, paths, plan, spec.dry_run)
        if spec.from_misses:
            misses = [RelPath.parse(path) for path, *_rest in ws.index.misses()]
            if not misses:
                plan.notes.append("no misses are recorded: nothing to fetch")
            await _plan_paths(ws, misses, plan, spec.dry_run)
        if spec.closure:
            await _plan_closure(ws, spec, plan)
    except UpstreamError as exc:
        raise UserError(f"cannot list the upstream: {exc}") from None
    return plan


