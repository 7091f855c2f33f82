"""What a running daemon answers on its control socket: status, misses, mode, warm, ..."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol, cast

import trio

from ..core.config import Settings, redact
from ..core.errors import UpstreamError
from ..core.health import cause_of
from ..core.paths import ROOT, RelPath
from ..core.types import MODES, Mode
from ..jobs import reports as status
from ..jobs.spec import WarmSpec
from ..jobs.verify import VerifyResult, index_unknown, verify
from ..jobs.warm import run
from ..jobs.workspace import Workspace
from ..system.runs import Runs
from ..tree.namespace import Tree
from .server import ControlError, Emit, Handler

log = logging.getLogger("isaacfs")

PROBE_TIMEOUT = 5.0  # seconds `status` waits for the upstream to answer


class KernelView(Protocol):
    """What the control commands may ask of the kernel's caches (``fuse.kernel.KernelCache``)."""

    def drop_pages(self, rel: RelPath) -> None: ...

    def refresh(self, rel: RelPath, replaced: bool = False) -> None: ...

    def set_mode(self, mode: Mode) -> None: ...

    def take_back_negatives(self) -> None: ...


class Mount(Protocol):
    """The daemon as the control socket sees it: its tree, the kernel's caches and the runs
    in their own modes (``fuse.operations.AssetFS`` is one); control never imports fuse."""

    @property
    def tree(self) -> Tree: ...

    @property
    def kernel(self) -> KernelView: ...

    @property
    def runs(self) -> Runs: ...


class DaemonCommands:
    def __init__(self, fs: Mount, settings: Settings, mountpoint: Path) -> None:
        self.fs = fs
        self.tree = fs.tree
        self.settings = settings
        self.mountpoint = mountpoint
        self.started = time.time()
        self._ends: dict[int, trio.Event] = {}
        self.workspace = Workspace(self.tree.mirror, self.tree.index, self.tree.upstream, self.tree.fetcher,
                                   settings.fetch_jobs, on_installed=self._installed,
                                   listing_ttl=settings.listing_ttl, listings=self.tree.listings)
        self.tree.fetcher.on_discarded = self._discarded

    def _discarded(self, rel: RelPath) -> None:
        """Bytes of ``rel`` that readers may have been served failed the final check."""
        self.fs.kernel.drop_pages(rel)

    def _installed(self, rel: RelPath) -> None:
        """A warm or a repair put ``rel`` in the mirror: the tree and the kernel see it now."""
        replaced = self.tree.note_installed(rel)
        self.fs.kernel.refresh(rel, replaced)

    async def reindex(self) -> None:
        """After a damaged index was set aside: index (and hash) what the mirror holds."""
        result = VerifyResult()
        known = await status.off_loop(self.tree.index, lambda copy: {record.path for record in copy.records()})
        await index_unknown(self.workspace, known, result, trio.CapacityLimiter(1))
        log.info("indexed %d files found in the mirror after its index was damaged", result.indexed_now)

    def handlers(self) -> dict[str, Handler]:
        return {"status": self.status, "misses": self.misses, "mode": self.mode, "warm": self.warm,
                "verify": self.verify, "manifest": self.manifest, "clear-misses": self.clear_misses,
                "run": self.run, "run-end": self.run_end}

    async def run(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """`isaacfs run`: the process tree of ``root_pid`` gets ``mode`` (None: the mount's);
        its misses and fetches stream back as events until it ends; the answer is its summary."""
        root_pid, mode = request.get("root_pid"), request.get("mode")
        if not isinstance(root_pid, int) or root_pid <= 1:
            raise ControlError("malformed run request: root_pid must be a process id")
        if mode is not None and mode not in MODES:
            raise ControlError(f"malformed run request: mode must be one of {', '.join(MODES)} or null")
        run = self.fs.runs.register(root_pid, cast(Mode | None, mode), emit)
        if run is None:
            raise ControlError(f"process {root_pid} does not exist")
        self._ends[root_pid] = trio.Event()
        if mode is not None and mode != self.tree.mode:
            self.fs.kernel.take_back_negatives()  # the mount's "no such name" answers are not this run's
        log.info("run of pid %d registered (%s mode)", root_pid, mode or f"the mount's {self.tree.mode}")
        emit({"event": "registered", "mode": mode or self.tree.mode, "mountpoint": str(self.mountpoint)})
        try:
            while not self._ends[root_pid].is_set():
                with trio.move_on_after(2.0):
                    await self._ends[root_pid].wait()
                gone = self.fs.runs.prune()
                if run in gone or (root_pid, run.start) not in self.fs.runs.runs:
                    break  # its root process is gone: a `run` that crashed
            return run.summary()
        finally:
            self.fs.runs.unregister(run)
            self._ends.pop(root_pid, None)
            log.info("run of pid %d ended: %d served, %d fetched, %d missed", root_pid, run.counts["served"],
                     run.counts["fetched"], len(run.missed))

    async def run_end(self, request: dict[str, Any], emit: Emit) -> bool:
        end = self._ends.get(request.get("root_pid"))  # type: ignore[arg-type]
        if end is not None:
            end.set()
        return end is not None

    def prefetch_stats(self) -> dict[str, int] | None:
        counters = self.tree.index.session
        if not self.settings.prefetch:
            return None
        return {"prefetched": counters["prefetched"], "prefetched_bytes": counters["prefetched_bytes"],
                "read_after_prefetch": counters["prefetch_read"], "over_budget": counters["prefetch_over_budget"]}

    async def status(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        upstream = self.tree.upstream
        problem = ""
        try:
            await upstream.probe(ROOT, PROBE_TIMEOUT)
        except UpstreamError as exc:
            problem = cause_of(exc)
        free, _total = await self.tree.mirror.io(self.tree.mirror.network, self.tree.mirror.free_and_total_bytes)
        index = self.tree.index
        mirrored, total, recorded_misses = await status.off_loop(index, lambda copy: (
            status.mirrored_by_category(copy), status.counters(copy, False), copy.miss_count()))
        return {"running": True, "mountpoint": str(self.mountpoint), "pid": os.getpid(),
                "uptime": time.time() - self.started, "mode": self.tree.mode,
                "upstream": redact(self.settings.upstream), "upstream_answers": not problem,
                "upstream_problem": problem, "mirror": str(self.tree.mirror.display), "disk_free": free,
                "mirrored": mirrored, "session": status.counters(index, True),
                "total": total, "in_flight": self.tree.fetcher.in_flight,
                "nodes": len(self.tree.nodes),
                "download_path": upstream.download_path,
                "tiers": upstream.tier_rows(),
                "prefetch": self.prefetch_stats(),
                "recorded_misses": recorded_misses}

    async def misses(self, request: dict[str, Any], emit: Emit) -> list[dict[str, Any]]:
        limit = request.get("limit")
        limit = limit if isinstance(limit, int) and limit > 0 else None
        mount = str(self.mountpoint)
        return await status.off_loop(self.tree.index, lambda copy: status.misses(copy, limit, mount))

    async def clear_misses(self, request: dict[str, Any], emit: Emit) -> int:
        return self.tree.index.clear_misses()

    async def mode(self, request: dict[str, Any], emit: Emit) -> dict[str, str]:
        new = request.get("mode")
        if new not in MODES:
            raise ControlError(f"mode must be one of {', '.join(MODES)}, not {new!r}")
        old = self.tree.mode
        if new != old:
            self.fs.kernel.set_mode(cast(Mode, new))
            log.info("mode switched from %s to %s (by control request)", old, new)
        return {"old": old, "mode": new}

    async def warm(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        spec = request.get("spec")
        if not isinstance(spec, dict):
            raise ControlError("malformed warm request: no spec")
        warm_spec = WarmSpec.from_dict(spec)
        log.info("warm requested: %s%s", warm_spec.describe(), " (dry run)" if warm_spec.dry_run else "")
        result = await run(self.workspace, warm_spec, emit)
        fetched = sum(group.fetched for group in result.groups)
        log.info("warm done: %d fetched, %d failed in %.1fs", fetched, len(result.failures), result.elapsed)
        return result.to_dict()

    async def verify(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        result = await verify(self.workspace, bool(request.get("repair")), emit, bool(request.get("upstream")))
        log.info("verify: %d files checked, %d wrong, %d changed upstream, %d repaired", result.checked,
                 len(result.problems), len(result.changed_upstream), len(result.repaired))
        return result.to_dict()

    async def manifest(self, request: dict[str, Any], emit: Emit) -> list[str]:
        since = request.get("since", 0.0)
        if not isinstance(since, (int, float)):
            raise ControlError("malformed manifest request: since must be a number")
        return await status.off_loop(self.tree.index, lambda copy: status.manifest(copy, float(since)))
