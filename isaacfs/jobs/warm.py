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

import math
import time

import trio

from ..core.errors import FetchFailed, MirrorFull, UserError
from ..core.paths import RelPath
from ..core.types import BULK, RemoteEntry
from ..fetch.limits import SMALL_PER_PLACE
from .plan import Plan, Planned, make_plan
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


async def run(ws: Workspace, spec: WarmSpec, emit: Emit, plan: Plan | None = None) -> WarmResult:
    """Warm ``spec`` into the mirror; ``plan``, if given, is filled with what was planned
    (``warm --to`` copies it on into a store)."""
    started = time.monotonic()
    emit({"event": "phase", "text": f"planning: {spec.describe()}"})
    result = WarmResult(dry_run=spec.dry_run)
    reports: dict[str, GroupReport] = {}
    plan = plan if plan is not None else Plan()
    if spec.dry_run:
        await make_plan(ws, spec, plan)
        local = await trio.to_thread.run_sync(_local_sizes, ws, plan.groups)
        for name, files in plan.groups.items():
            reports[name] = GroupReport(name, skipped=sum(1 for rel, e in files.items() if local.get(rel) == e.size))
    else:
        # Each file's download starts as soon as the plan names it (a closure's textures while
        # its layers are still parsed, a manifest's files as each is looked up), handed to the
        # fetcher a few at a time at bulk priority, so a reader's cold open never queues
        # behind a whole category.
        send, receive = trio.open_memory_channel[tuple[str, RelPath, RemoteEntry]](math.inf)
        sent: set[tuple[str, RelPath]] = set()

        def found(group: str, rel: RelPath, entry: RemoteEntry) -> None:
            if (group, rel) not in sent:
                sent.add((group, rel))
                send.send_nowait((group, rel, entry))

        plan.found = found
        refused: list[UserError] = []
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as outer:
                # Every place's connection (the express ones too) is opened once the first
                # download starts, beside it; a warm with nothing to fetch opens none, and no
                # warm waits for connections it no longer needs.
                outer.start_soon(_connect_ahead, ws)
                async with trio.open_nursery() as nursery:
                    async with receive:
                        # Enough to fill every place with small files (a share of a place each).
                        for _ in range(max((SMALL_PER_PLACE + 1) * ws.jobs, 8)):
                            nursery.start_soon(_worker, ws, plan, receive.clone(), reports, result, emit, scope)
                    async with send:
                        try:
                            await make_plan(ws, spec, plan)
                        except UserError as exc:
                            refused.append(exc)  # raised below, outside the nursery, as itself
                            nursery.cancel_scope.cancel()
                        _announce(plan, emit)
                outer.cancel_scope.cancel()
        if refused:
            raise refused[0]
    if spec.dry_run:
        _announce(plan, emit)
    for name, files in plan.groups.items():
        report = reports.setdefault(name, GroupReport(name))
        report.files, report.size = len(files), sum(e.size for e in files.values())
    for group, failure in plan.failures:
        reports.setdefault(group, GroupReport(group)).failed += 1
        result.failures.append(failure)
    result.notes = plan.notes + result.notes
    result.groups = sorted(reports.values(), key=lambda r: r.name)
    result.elapsed = time.monotonic() - started
    return result


async def _connect_ahead(ws: Workspace) -> None:
    await ws.fetcher.downloading.wait()
    # As many as a burst can use at once: every place (the express ones too), and as many
    # again for the listings, trees and reads beside them that go out with it (a closure's
    # ten props named by one scene: a listing, a tree and a layer each). A request that
    # finds none idle opens its own: three round trips instead of one (bench_wan's log).
    await ws.upstream.connect_ahead(2 * (ws.jobs + ws.fetcher.limit.express))


def _announce(plan: Plan, emit: Emit) -> None:
    emit({"event": "plan", "files": sum(len(files) for files in plan.groups.values()),
          "bytes": sum(e.size for files in plan.groups.values() for e in files.values())})


def _state(ws: Workspace, plan: Plan, rel: RelPath, entry: RemoteEntry) -> str:
    """What the mirror holds of a planned file: prefetched (by the plan itself), missing,
    present, or different (another size: a stale or broken copy, replaced)."""
    if rel in plan.prefetched:
        return "prefetched"
    local = ws.mirror.entry(rel)
    if local is None or local.is_dir:
        return "missing"
    if local.size == entry.size:
        return "present"
    if (ws.index.file_record(rel) or ("", "", ""))[2] == "adopted":
        return "present"  # an adopted tree is the user's: never rewritten
    return "different"


async def _worker(ws: Workspace, plan: Plan, receive: trio.MemoryReceiveChannel[tuple[str, RelPath, RemoteEntry]],
                  reports: dict[str, GroupReport], result: WarmResult, emit: Emit, scope: trio.CancelScope) -> None:
    async with receive:
        async for group, rel, entry in receive:
            report = reports.setdefault(group, GroupReport(group))
            await _fetch_one(ws, rel, entry, report, result, emit, scope, _state(ws, plan, rel, entry))


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
            if isinstance(exc.cause, MirrorFull) and not result.stopped:
                result.stopped = f"stopped: {exc}; free space on the mirror's disk and run the same command again"
                scope.cancel()
    emit({"event": "done", "path": str(rel), "size": entry.size, "outcome": outcome})
