"""The mount's lifecycle: checks, the pre-mount directory fd, serving, clean stop."""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import resource
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import trio

from ..backends import client_session, open_upstream
from ..control import server as control
from ..control.commands import DaemonCommands
from ..core.config import Settings, redact
from ..core.errors import MountError, UpstreamError, UserError
from ..core.health import cause_of
from ..core.paths import RelPath
from ..fetch.fetcher import Fetcher
from ..fuse import session
from ..fuse.operations import AssetFS
from ..jobs.parser import Parser
from ..jobs.prefetch import Prefetcher
from ..jobs.workspace import reconcile_upstream
from ..store.index import Index
from ..store.mirror import Mirror, classify_folder
from ..system import mounts, sdnotify
from ..tree.listings import TREE_FILES
from ..tree.namespace import Tree

log = logging.getLogger("isaacfs")

INDEX_FLUSH_SECONDS = 10.0
PROBE_AT_MOUNT = 5.0  # seconds a permissive mount waits to tell whether its upstream answers
POOL_WARM_EVERY = 60.0  # seconds between two rounds of connections opened ahead
GC_YOUNG_OBJECTS = 20_000  # allocations between two collections of the youngest objects (Python: 700)
# Requests served at once. Opens waiting on downloads each hold one; trio tasks are cheap,
# so thousands of blocked readers never keep a mirrored read from being answered.


@dataclass(frozen=True)
class MountRequest:
    mountpoint: Path
    settings: Settings
    log_path: Path | None = None
    ready_fd: int | None = None  # the background launcher reads "READY ..." or "ERROR ..." here


def check_mountpoint(mountpoint: Path, settings: Settings) -> tuple[Path, str]:
    """Refuse what must not be mounted; return the mirror folder and what it holds."""
    if mounts.is_stale(mountpoint):
        mounts.recover_stale(mountpoint)
        log.warning("recovered a stale mount at %s (its daemon had died)", mountpoint)
    if not mountpoint.exists():
        raise MountError(f"mountpoint {mountpoint} does not exist; create it with: mkdir -p {mountpoint}")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a folder")
    existing = mounts.find_mount(mountpoint)
    if existing is not None:
        if existing.fstype == mounts.FSTYPE:
            raise MountError(f"{mountpoint} is already an isaacfs mount; to remount: isaacfs umount {mountpoint}")
        raise MountError(f"{mountpoint} is already a mount point ({existing.fstype}); pick an empty folder")
    if settings.allow_other and os.getuid() != 0 and not mounts.fuse_conf_allows_other():
        raise MountError(mounts.ALLOW_OTHER_REFUSED)
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: FUSE is not available here (load the fuse module,"
                         " or give the container --device /dev/fuse --cap-add SYS_ADMIN)")
    if settings.upstream.startswith("file:"):
        local = Path(unquote(urlsplit(settings.upstream).path))
        if not local.is_dir():  # offline on purpose, or a typo: the mirror serves either way
            log.warning("the upstream folder %s does not exist; serving the mirror only (check --upstream)", local)
    mirror = settings.mirror or mountpoint
    kind = classify_folder(mirror)
    if kind == "missing":
        raise MountError(f"mirror folder {mirror} does not exist; create it with: mkdir -p {mirror}")
    if kind == "other":
        raise MountError(
            f"{mirror} holds files that are neither an isaacfs mirror nor an asset tree (Isaac/, NVIDIA/);"
            " refusing to mount over them: pick an empty folder")
    if settings.mirror is not None and os.listdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not empty; with --mirror the mountpoint must be an empty folder")
    return mirror, kind


# glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8


def give_freed_buffers_back() -> None:
    """Download buffers (blocks of a MiB, from many threads) go back to the system when they
    are freed. glibc otherwise raises its mmap threshold after the first such block is freed
    and keeps later ones in per-thread arenas: 32 concurrent cold reads of 24 MiB files left
    the daemon at 334 MB RSS when idle; with this call, 68 MB (twice, 2026-12-02: a scratch
    script over the project's S3 test server, 15 s after the reads; tests/mount/test_fetch.py
    keeps it under 150 MB). A no-op off glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def mount_options(settings: Settings) -> set[str]:
    options = {"fsname=isaacfs", "subtype=isaacfs", "ro", "default_permissions", "noatime"}
    if settings.allow_other:
        options.add("allow_other")
    return options


def explain_mount_failure(settings: Settings, mountpoint: Path, exc: BaseException) -> str:
    if settings.allow_other and os.getuid() != 0 and not mounts.fuse_conf_allows_other():
        return mounts.ALLOW_OTHER_REFUSED
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable by this user (permission denied)"
    return f"the kernel refused to mount {mountpoint}: {exc}"


def _settle_heap() -> None:
    """Keep what start-up made out of the garbage collector's passes (``gc.freeze``: the
    modules, the settings and the clients live as long as the mount), and collect young
    objects less often. A cold walk makes tens of thousands of nodes, and every collection
    traced the start-up heap too: about a tenth of the daemon's CPU in a walk of 20,000 files
    (perf; bench/bench_mount.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])


async def _guarded(what: str, job: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run a side task of the daemon; if it fails, log it: the mount goes on."""
    try:
        await job(*args)
    except Exception:
        log.exception("%s failed; the mount goes on", what)


def _save_copy(index: Index, copy: Index) -> None:
    """Write ``copy`` (a private copy of ``index``) as the index file; in a worker thread."""
    index.write_snapshot(copy.serialized())


def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard limit: readers, downloads and control
    clients all hold descriptors, and systemd's default soft limit is 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)


class Daemon:
    def __init__(self, request: MountRequest) -> None:
        self.request = request
        self.settings = request.settings
        self.mountpoint = request.mountpoint

    def report(self, line: str) -> None:
        fd = self.request.ready_fd
        if fd is not None:
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
            self.request = MountRequest(self.mountpoint, self.settings, self.request.log_path, None)

    def run(self) -> int:
        raise_fd_limit()
        give_freed_buffers_back()
        try:
            mirror_folder, kind = check_mountpoint(self.mountpoint, self.settings)
            mirror = Mirror(mirror_folder)
            mirror.io_timeout = self.settings.stall_timeout  # a hung part of the mirror: EIO after it
        except MountError as exc:
            log.error("%s", exc)
            self.report(f"ERROR {exc}")
            return exc.exit_code
        try:
            mirror.prepare()
        except MountError as exc:
            mirror.close()
            log.error("%s", exc)
            self.report(f"ERROR {exc}")
            return exc.exit_code
        mirror.start_scan_ahead()
        index = Index(mirror.state / "index.db")
        try:
            try:
                self.settings = reconcile_upstream(index, self.settings)
            except UserError as exc:
                log.error("%s", exc)
                self.report(f"ERROR {exc}")
                return exc.exit_code
            with client_session():
                return self._serve(mirror, index, adopt=(kind == "assets"))
        finally:
            index.close()
            mirror.close()

    def _serve(self, mirror: Mirror, index: Index, adopt: bool) -> int:
        s = self.settings
        upstream = open_upstream(s)
        fetcher = Fetcher(mirror, index, upstream, s.fetch_jobs, s.fetch_retries, s.stall_timeout,
                          s.download_memory_mb * 1024 * 1024)
        tree = Tree(mirror, index, upstream, fetcher, s.mode, s.listing_ttl, str(self.mountpoint))
        self.prefetcher: Prefetcher | None = None
        if s.prefetch:
            self.prefetcher = Prefetcher(mirror, index, tree.listings, fetcher, Parser(), upstream.root_url,
                                         lambda: tree.mode == "permissive", s.prefetch_files,
                                         s.prefetch_mb * 1024 * 1024)
            fetcher.on_fetched.append(self.prefetcher.fetched)
            tree.opened.append(self.prefetcher.opened)
            tree.opening.append(self.prefetcher.opening)
        socket_path = control.socket_path_for(self.mountpoint)
        root_info = {"pid": str(os.getpid()), "upstream": redact(s.upstream), "mirror": str(mirror.display),
                     "log": str(self.request.log_path or "stderr"), "control": str(socket_path)}
        operations = AssetFS(tree, root_info)
        commands = self.commands = DaemonCommands(operations, s, self.mountpoint)
        server = control.ControlServer(socket_path, commands.handlers())
        try:
            session.mount(operations, str(self.mountpoint), mount_options(s))
        except RuntimeError as exc:
            message = explain_mount_failure(s, self.mountpoint, exc)
            log.error("%s", message)
            self.report(f"ERROR {message}")
            return 1
        try:
            trio.run(self._main, tree, index, adopt, server)
        finally:
            sdnotify.notify("STOPPING=1")
            session.unmount()
            log.info("unmounted %s", self.mountpoint)
        return 0

    async def _main(self, tree: Tree, index: Index, adopt: bool, server: control.ControlServer) -> None:
        async with trio.open_nursery() as nursery:
            downloads: trio.Nursery = await nursery.start(self._run_downloads, tree)
            nursery.start_soon(self._serve_control, server)
            nursery.start_soon(self._stop_on_signals, tree, downloads)
            nursery.start_soon(_guarded, "announcing the mount", self._announce_ready, tree)
            nursery.start_soon(self._flush_periodically, index)
            if index.damaged:
                nursery.start_soon(_guarded, "indexing the mirror again", self.commands.reindex)
            if adopt and index.get_meta("adopted") is None:
                nursery.start_soon(_guarded, "adopting the asset tree", self._adopt, tree.mirror, index)
            _settle_heap()
            await session.serve()
            self._discard_downloads(tree, downloads)
            nursery.cancel_scope.cancel()
        with trio.move_on_after(5):
            await tree.upstream.aclose()
            if self.prefetcher is not None:
                await self.prefetcher.aclose()

    async def _serve_control(self, server: control.ControlServer) -> None:
        """The control socket, apart from the FUSE loop: whatever ends it is logged and it starts
        again; it never takes the mount down."""
        while True:
            try:
                await server.serve()
            except OSError as exc:
                log.warning("no control socket at %s (%s): status, mode and warm through the mount"
                            " will not work; trying again in 30 s", server.path, exc.strerror)
                await trio.sleep(30)
            except Exception:
                log.exception("the control socket failed; starting it again")
                await trio.sleep(1)

    async def _run_downloads(self, tree: Tree, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        """Own the downloads' nursery, so a stop can discard them before the mount goes."""
        async with trio.open_nursery() as downloads:
            tree.fetcher.attach(downloads)
            tree.attach(downloads)
            if self.settings.listing_trees:
                tree.listings.read_trees(downloads, TREE_FILES)  # a cold path's folders in fewer round trips
            if self.prefetcher is not None:
                self.prefetcher.attach(downloads)
                if tree.mode == "permissive":  # usd-core loads now, not when the first robot is opened
                    downloads.start_soon(_guarded, "starting the usd-core worker", self.prefetcher.parser.start)
            tree.listings.observers.append(self._pool_warmer(tree, downloads, tree.upstream.connect_ahead))
            task_status.started(downloads)
            await trio.sleep_forever()

    def _pool_warmer(self, tree: Tree, downloads: trio.Nursery,
                     connect_ahead: Callable[[int], Awaitable[None]]) -> Callable[[RelPath], None]:
        """A reader's first lookups after a quiet spell (a folder listed upstream) start a burst:
        the path's folders one by one, then the robot's layers and textures all at once. The
        connections for that burst are opened during the lookups (each costs two round trips
        on its own), at most once a minute."""
        last = [-math.inf]
        places = tree.fetcher.limit.total + tree.fetcher.limit.express

        def listed(_rel: RelPath) -> None:
            now = trio.current_time()
            if tree.mode == "permissive" and now - last[0] >= POOL_WARM_EVERY:
                last[0] = now
                downloads.start_soon(_guarded, "opening connections ahead", connect_ahead, places)

        return listed

    def _discard_downloads(self, tree: Tree, downloads: trio.Nursery) -> None:
        # Cancelled downloads delete their temporary files; their readers get EINTR.
        in_flight = tree.fetcher.in_flight
        if in_flight:
            log.info("discarding %d unfinished download(s)", in_flight)
        downloads.cancel_scope.cancel()

    async def _announce_ready(self, tree: Tree) -> None:
        # The mount answers once the kernel's first request has been served by us.
        await trio.to_thread.run_sync(os.stat, self.mountpoint)
        info = mounts.find_mount(self.mountpoint)
        read_ahead = ""
        if info is not None and mounts.set_read_ahead(info, self.settings.read_ahead_kb):
            read_ahead = f", read-ahead {self.settings.read_ahead_kb} KiB"
        s = self.settings
        mirror = "" if tree.mirror.display == self.mountpoint else f", mirror {tree.mirror.display}"
        upstream = f"upstream {redact(s.upstream)}"
        if s.mode == "permissive":  # strict mode never touches the network, not even to look
            upstream += await self._upstream_state(tree)
        summary = f"mounted {self.mountpoint} ({s.mode} mode, {upstream}{mirror}{read_ahead})"
        log.info("%s", summary)
        self.report(f"READY {summary}")
        sdnotify.notify(f"READY=1\nSTATUS={summary}")

    async def _upstream_state(self, tree: Tree) -> str:
        """What the upstream said when asked at mount time, in words for the mount's reply."""
        try:
            await tree.upstream.probe(RelPath(), min(PROBE_AT_MOUNT, self.settings.upstream_timeout))
        except UpstreamError as exc:
            cause = cause_of(exc)
            log.warning("the upstream %s did not answer at mount time: %s", redact(self.settings.upstream), cause)
            return f" does not answer: {cause}; the mirror serves, misses fail until it answers"
        return " answers"

    async def _stop_on_signals(self, tree: Tree, downloads: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                self._discard_downloads(tree, downloads)
                session.stop()
                return

    async def _flush_periodically(self, index: Index) -> None:
        while True:
            await trio.sleep(INDEX_FLUSH_SECONDS)
            try:
                await trio.to_thread.run_sync(index.sync_journal)
                # A copy of the in-memory database is taken on this thread (sqlite3 connections are
                # not safe to use from two threads at once: a serialize beside a write corrupted
                # one); serializing and writing the copy happen in a worker thread.
                if index.pending():
                    copy = index.copy()
                    try:
                        await trio.to_thread.run_sync(_save_copy, index, copy)
                    finally:
                        copy.close()
            except OSError as exc:
                log.warning("could not save the mirror index: %s", exc.strerror)
            except Exception:
                log.exception("saving the mirror index failed; trying again in %.0f s", INDEX_FLUSH_SECONDS)

    async def _adopt(self, mirror: Mirror, index: Index) -> None:
        files = await trio.to_thread.run_sync(mirror.walk_files)
        index.record_adopted(files)
        index.set_meta("adopted", str(len(files)))
        total = sum(size for _path, size, _mtime in files)
        log.info("adopted the existing asset tree in %s: %d files, %.1f MB (never deleted or rewritten)",
                 mirror.display, len(files), total / 1e6)

