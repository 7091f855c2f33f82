"""`isaacfs warm`: put chosen assets in the mirror on purpose, in parallel and resumably.

What to fetch comes from categories (folders of the upstream, walked), a manifest (a
list of paths), the dependency closure of USD assets, or the misses strict mode
recorded (``plan``). The same job runs in two places: in this process on a mirror that
is not mounted (``workspace.run_on_mirror``, taking the mirror's lock), or inside the
daemon of a live mount (which owns the mirror), driven over the control socket. Either
way it reports by events, so the command shows the same progress and the same table.

Files already in the mirror with the listed size are skipped without download; Ctrl-C
leaves only temporary files, which the next run or mount removes.
"""

from __future__ import annotations

import errno
import time

import trio

from ..core.errors import FetchFailed
from ..core.paths import RelPath
from ..core.types import RemoteEntry
from ..fetch.fetcher import BULK
from .plan import Planned, make_plan
from .spec import Emit, GroupReport, WarmResult, WarmSpec
from .workspace import Workspace


# -- running --------------------------------------------------------------------------
def _local_sizes(ws: Workspace, planned: Planned) -> dict[RelPath, int]:
    """Sizes of the planned files the mirror already holds: one scan per folder, not a stat per file."""
    folders = {rel.parent for files in planned.values() for rel in files}
    sizes: dict[RelPath, int] = {}
    for folder in folders:
        for local in ws.mirror.scan(folder) or ():
            if not local.is_dir:
                sizes[folder.child(local.name)] = local.size
    return sizes


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
        # Downloads are handed to the fetcher a few at a time (at bulk priority), so a reader's
        # cold open never queues behind a whole category.
        feed = trio.Semaphore(max(2 * ws.jobs, 4))
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
                        held = state in ("missing", "different")
                        if held:
                            await feed.acquire()
                        nursery.start_soon(_one, ws, rel, entry, reports[name], result, emit, scope, state,
                                           feed if held else None)
    result.groups = sorted(reports.values(), key=lambda r: r.name)
    result.elapsed = time.monotonic() - started
    return result


async def _one(ws: Workspace, rel: RelPath, entry: RemoteEntry, report: GroupReport, result: WarmResult,
               emit: Emit, scope: trio.CancelScope, state: str, feed: trio.Semaphore | None) -> None:
    try:
        await _fetch_one(ws, rel, entry, report, result, emit, scope, state)
    finally:
        if feed is not None:
            feed.release()


async def _fetch_one(ws: Workspace, rel: RelPath, entry: RemoteEntry, report: GroupReport, result: WarmResult,
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
            await ws.fetcher.ensure(rel, entry, replace=state == "different", priority=BULK)
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
