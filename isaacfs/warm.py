"""`isaacfs warm`: put chosen assets in the mirror on purpose, in parallel and resumably.

What to fetch comes from categories (folders of the upstream, walked), a manifest (a
list of paths), the dependency closure of USD assets, or the misses strict mode
recorded. The same job runs in two places: in this process on a mirror that is not
mounted (taking the mirror's lock), or inside the daemon of a live mount (which owns
the mirror), driven over the control socket. Either way it reports by events, so the
command shows the same progress and the same table.

Files already in the mirror with the listed size are skipped without download; Ctrl-C
leaves only temporary files, which the next run or mount removes.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import closure as closures
from .errors import UserError
from .fetch import Fetcher, FetchFailed
from .hints import category_of
from .index import Index
from .mirror import Mirror
from .paths import InvalidPath, RelPath
from .upstream import Upstream
from .upstream_types import NotFound, RemoteEntry, UpstreamError

Emit = Callable[[dict[str, Any]], None]


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
class WarmSpec:
    """What one warm asks for; crosses the control socket as a plain dict."""

    categories: list[str] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)
    manifest: list[str] | None = None  # the lines of a manifest file
    manifest_name: str = ""
    closure: list[str] = field(default_factory=list)
    from_misses: bool = False
    dry_run: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmSpec:
        try:
            spec = cls(**{key: data[key] for key in asdict(cls()) if key in data})
        except TypeError as exc:
            raise UserError(f"malformed warm request: {exc}") from None
        lists = (spec.categories, spec.subsets, spec.closure, spec.manifest or [])
        if not all(isinstance(items, list) and all(isinstance(i, str) for i in items) for items in lists):
            raise UserError("malformed warm request: lists of strings expected")
        return spec

    def describe(self) -> str:
        parts = []
        if self.categories:
            parts.append("categories " + " ".join(self.categories))
        if self.subsets:
            parts.append("subset " + " ".join(self.subsets))
        if self.manifest is not None:
            parts.append(f"manifest {self.manifest_name or '-'}")
        if self.closure:
            parts.append("closure of " + " ".join(self.closure))
        if self.from_misses:
            parts.append("recorded misses")
        return ", ".join(parts) or "nothing"


@dataclass
class GroupReport:
    """One row of the summary table: a category, or the category of listed paths."""

    name: str
    files: int = 0
    size: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass
class WarmResult:
    groups: list[GroupReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "path: why"
    notes: list[str] = field(default_factory=list)  # malformed lines, not offline dependencies
    stopped: str = ""  # why the run stopped early (a full disk)
    elapsed: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmResult:
        groups = [GroupReport(**group) for group in data.get("groups", [])]
        return cls(groups, data.get("failures", []), data.get("notes", []), data.get("stopped", ""),
                   data.get("elapsed", 0.0), data.get("dry_run", False))

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped


@dataclass
class Workspace:
    """What a warm works with: the daemon passes its own, a command builds one."""

    mirror: Mirror
    index: Index
    upstream: Upstream
    fetcher: Fetcher
    jobs: int
    on_installed: Callable[[RelPath], None] = lambda rel: None
    listing_ttl: float = 24 * 3600.0  # upstream listings younger than this are taken from the index


Planned = dict[str, dict[RelPath, RemoteEntry]]


@dataclass
class Plan:
    groups: Planned = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (group, "path: why")
    notes: list[str] = field(default_factory=list)
    prefetched: set[RelPath] = field(default_factory=set)  # closure layers fetched while planning


def parse_manifest(lines: list[str], name: str) -> tuple[list[RelPath], list[str]]:
    """Paths of a manifest (one per line, # comments); malformed lines are reported, not fatal."""
    paths: list[RelPath] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            rel = RelPath.parse(text.lstrip("/") if text.startswith("/") else text)
            if rel.is_root or rel.is_state():
                raise InvalidPath("names no asset")
        except InvalidPath as exc:
            problems.append(f"{name}:{number}: skipped malformed line {text[:200]!r}: {exc}")
            continue
        paths.append(rel)
    return paths, problems


# -- planning -------------------------------------------------------------------------
async def _list(ws: Workspace, folder: RelPath) -> list[RemoteEntry]:
    """A folder's upstream listing; one the index fetched within listing_ttl is used as is
    (an asset release does not change), so a repeated warm asks the upstream nothing."""
    stored = ws.index.listing(folder)
    if stored is not None and time.time() - stored[0] < ws.listing_ttl:
        return stored[1]
    entries = await ws.upstream.list(folder)
    ws.index.store_listing(folder, entries)
    return entries


async def _walk(ws: Workspace, root: RelPath, limit: trio.CapacityLimiter) -> dict[RelPath, RemoteEntry]:
    found: dict[RelPath, RemoteEntry] = {}
    errors: list[UpstreamError] = []

    async def visit(folder: RelPath, nursery: trio.Nursery) -> None:
        try:
            async with limit:
                entries = await _list(ws, folder)
        except UpstreamError as exc:
            errors.append(exc)  # a walk with a hole in it is no plan: stop the whole walk
            nursery.cancel_scope.cancel()
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


async def _plan_categories(ws: Workspace, spec: WarmSpec, plan: Plan) -> None:
    limit = trio.CapacityLimiter(max(ws.jobs, 8))
    for category in spec.categories:
        root = category_root(category)
        try:
            exists = ws.index.listing(root) is not None or (await ws.upstream.stat(root)).is_dir
        except NotFound:
            exists = False
        if not exists:
            known = await _folders(ws.upstream, root.parent)
            raise UserError(f"unknown category {category!r}; under {root.parent or '/'}/ there are: "
                            + (", ".join(known) or "no folders"))
        files = await _walk(ws, root, limit)
        if spec.subsets:
            depth = len(root.parts)
            files = {rel: e for rel, e in files.items() if set(rel.parts[depth:-1]) & set(spec.subsets)}
            if not files:
                known = await _folders(ws.upstream, root)
                raise UserError(f"no subset {', '.join(spec.subsets)} in {category}; its folders are: "
                                + (", ".join(known) or "none"))
        plan.groups.setdefault(category, {}).update(files)


async def _plan_paths(ws: Workspace, paths: list[RelPath], plan: Plan) -> None:
    """Listed paths (manifest, misses): stat each upstream, grouped by category."""
    limit = trio.CapacityLimiter(max(ws.jobs, 8))

    async def one(rel: RelPath) -> None:
        group = category_of(rel)[0]
        async with limit:
            try:
                entry = await ws.upstream.stat(rel)
            except NotFound:
                plan.failures.append((group, f"{rel}: not found upstream"))
                return
            except UpstreamError as exc:
                plan.failures.append((group, f"{rel}: {exc}"))
                return
        if entry.is_dir:
            plan.notes.append(f"{rel} is a folder: use --categories {rel} for a whole folder")
            return
        plan.groups.setdefault(group, {})[rel] = entry

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
            await ws.upstream.download(rel, scratch, entry.size)
            return scratch
        if await _ensure(ws, rel, entry):
            plan.prefetched.add(rel)
        fd = ws.mirror.open_read(rel)
        with open(fd, "rb") as source, open(scratch, "wb") as copy:
            while chunk := source.read(1 << 20):
                copy.write(chunk)
        return scratch

    found = await closures.compute(roots, ws.upstream.stat, fetch_layer, ws.upstream.root_url, ws.jobs)
    for rel, entry in found.files.items():
        plan.groups.setdefault(category_of(rel)[0], {})[rel] = entry
    for rel, why in found.failures:
        plan.failures.append((category_of(rel)[0], f"{rel}: {why}"))
    plan.notes.extend(f"not available offline: {line}" for line in found.not_offline)


async def make_plan(ws: Workspace, spec: WarmSpec) -> Plan:
    plan = Plan()
    try:
        await _plan_categories(ws, spec, plan)
        if spec.manifest is not None:
            paths, problems = parse_manifest(spec.manifest, spec.manifest_name or "manifest")
            plan.notes.extend(problems)
            await _plan_paths(ws, paths, plan)
        if spec.from_misses:
            misses = [RelPath.parse(path) for path, *_rest in ws.index.misses()]
            if not misses:
                plan.notes.append("no misses are recorded: nothing to fetch")
            await _plan_paths(ws, misses, plan)
        if spec.closure:
            await _plan_closure(ws, spec, plan)
    except UpstreamError as exc:
        raise UserError(f"cannot list the upstream: {exc}") from None
    return plan


# -- running --------------------------------------------------------------------------
def _present(ws: Workspace, rel: RelPath, entry: RemoteEntry) -> bool:
    local = ws.mirror.entry(rel)
    return local is not None and not local.is_dir and local.size == entry.size


def _local_sizes(ws: Workspace, planned: Planned) -> dict[RelPath, int]:
    """Sizes of the planned files the mirror already holds: one scan per folder, not a stat per file."""
    folders = {rel.parent for files in planned.values() for rel in files}
    sizes: dict[RelPath, int] = {}
    for folder in folders:
        for local in ws.mirror.scan(folder) or ():
            if not local.is_dir:
                sizes[folder.child(local.name)] = local.size
    return sizes


async def _ensure(ws: Workspace, rel: RelPath, entry: RemoteEntry) -> bool:
    """Fetch unless present; True if a download happened."""
    if _present(ws, rel, entry):
        return False
    local = ws.mirror.entry(rel)
    await ws.fetcher.ensure(rel, entry, replace=local is not None and not local.is_dir)
    ws.on_installed(rel)
    return True


async def run(ws: Workspace, spec: WarmSpec, emit: Emit) -> WarmResult:
    started = time.monotonic()
    emit({"event": "phase", "text": f"planning: {spec.describe()}"})
    plan = await make_plan(ws, spec)
    reports = {name: GroupReport(name, len(files), sum(e.size for e in files.values()))
               for name, files in plan.groups.items()}
    result = WarmResult(notes=plan.notes, dry_run=spec.dry_run)
    for group, failure in plan.failures:
        reports.setdefault(group, GroupReport(group)).failed += 1
        result.failures.append(failure)
    total_files = sum(r.files for r in reports.values())
    total_bytes = sum(r.size for r in reports.values())
    emit({"event": "plan", "files": total_files, "bytes": total_bytes})
    local = await trio.to_thread.run_sync(_local_sizes, ws, plan.groups)
    if spec.dry_run:
        for name, files in plan.groups.items():
            reports[name].skipped = sum(1 for rel, e in files.items() if local.get(rel) == e.size)
    else:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                for name, files in plan.groups.items():
                    for rel, entry in sorted(files.items(), key=lambda item: item[0].parts):
                        if rel in plan.prefetched:
                            state = "prefetched"
                        elif rel not in local:
                            state = "missing"
                        else:
                            state = "present" if local[rel] == entry.size else "different"
                            if state == "different" and (ws.index.file_record(rel) or ("", "", ""))[2] == "adopted":
                                state = "present"  # an adopted tree is the user's: never rewritten
                        nursery.start_soon(_one, ws, rel, entry, reports[name], result, emit, scope, state)
    result.groups = sorted(reports.values(), key=lambda r: r.name)
    result.elapsed = time.monotonic() - started
    return result


async def _one(ws: Workspace, rel: RelPath, entry: RemoteEntry, report: GroupReport, result: WarmResult,
               emit: Emit, scope: trio.CancelScope, state: str) -> None:
    outcome = "skipped"
    if state == "prefetched":
        report.fetched += 1
        report.fetched_bytes += entry.size
        outcome = "fetched"
    elif state == "present":
        report.skipped += 1
    else:
        emit({"event": "start", "path": str(rel), "size": entry.size})
        try:
            # A file of another size than the upstream's is a stale or broken copy: replace it.
            await ws.fetcher.ensure(rel, entry, replace=state == "different")
            ws.on_installed(rel)
            report.fetched += 1
            report.fetched_bytes += entry.size
            outcome = "fetched"
        except FetchFailed as exc:
            report.failed += 1
            result.failures.append(f"{rel}: {exc}")
            outcome = "failed"
            if exc.errno == errno.ENOSPC and not result.stopped:
                result.stopped = f"stopped: {exc}; free space on the mirror's disk and run the same command again"
                scope.cancel()
    emit({"event": "done", "path": str(rel), "size": entry.size, "outcome": outcome})
