"""What a job (warm, verify) works with, and running one on a mirror no daemon serves.

A daemon lends its own ``Workspace`` (its mirror, index, upstream and fetcher); a
command on an unmounted mirror builds one here, holding the mirror's lock while it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import trio

from ..core.config import Settings, redact
from ..core.errors import UserError
from ..core.paths import RelPath
from ..core.types import RemoteEntry, Upstream
from ..fetch.fetcher import Fetcher
from ..store.index import Index
from ..store.mirror import Mirror
from ..tree.listings import Listings
from .closure import fetch_priority


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
    listings: Listings = field(default=None)  # type: ignore[assignment]  # a daemon lends its tree's

    def __post_init__(self) -> None:
        if self.listings is None:
            self.listings = Listings(self.index, self.upstream, self.listing_ttl)


def _present(ws: Workspace, rel: RelPath, entry: RemoteEntry) -> bool:
    local = ws.mirror.entry(rel)
    return local is not None and not local.is_dir and local.size == entry.size


async def ensure_present(ws: Workspace, rel: RelPath, entry: RemoteEntry) -> bool:
    """Fetch unless present; True if a download happened."""
    if _present(ws, rel, entry):
        return False
    local = ws.mirror.entry(rel)
    await ws.fetcher.ensure(rel, entry, replace=local is not None and not local.is_dir, priority=fetch_priority(rel))
    ws.on_installed(rel)
    return True


T = TypeVar("T")
log = logging.getLogger("isaacfs")


def reconcile_upstream(index: Index, settings: Settings) -> Settings:
    """The settings to use with the mirror whose index is ``index``.

    A mirror records the upstream it is filled from. Used again without an upstream given
    (flag, variable, config file), it keeps its own (a `verify --repair` of a mirror of an
    on-prem bucket never goes to the NVIDIA cloud); given another one, it refuses to mix the
    two, unless ``new_upstream``: then its files stay and its stored listings are dropped.
    """
    wanted = settings.upstream.rstrip("/")
    recorded = index.get_meta("upstream")
    if recorded is None or recorded.rstrip("/") == redact(wanted):
        if recorded is None and not index.read_only:
            index.set_meta("upstream", redact(wanted))
        return settings
    if settings.new_upstream or ("upstream" in settings.sources and index.file_count() == 0):
        # Asked for, or nothing was ever mirrored from the old one: nothing to mix.
        dropped = index.clear_listings()
        index.set_meta("upstream", redact(wanted))
        log.warning("the mirror now follows %s (was %s): kept its files, dropped %d stored listings",
                    redact(wanted), recorded, dropped)
        return settings
    if "upstream" not in settings.sources and "***" not in recorded:
        return replace(settings, upstream=recorded)
    raise UserError(f"this mirror was filled from {recorded}, not {redact(wanted)}; using it with another upstream"
                    f" would mix the two: leave out --upstream (or give {recorded}), or add --new-upstream to"
                    " keep its files and list the new upstream afresh")


def run_on_mirror(settings: Settings, mirror_dir: Path, job: Callable[[Workspace], Awaitable[T]],
                  read_only: bool = False, upstream: Upstream | None = None,
                  clock: trio.abc.Clock | None = None) -> T:
    """Run ``job`` on the mirror in ``mirror_dir``, against ``upstream`` (default: the
    settings' upstream, reconciled with the one the mirror records, through its backend).

    ``read_only`` (a dry run) neither takes the lock nor saves the index. ``clock``: trio's
    clock for the run (tests pass a MockClock, so backoffs and timeouts take no real time).
    """
    if upstream is not None:
        given = upstream
        return trio.run(_run, settings, mirror_dir, job, read_only, lambda _settings: given, clock=clock)
    from ..backends import client_session, open_upstream

    with client_session(lazy=True):  # a job that never asks omni.client does not import it
        return trio.run(_run, settings, mirror_dir, job, read_only, open_upstream)


async def _run(settings: Settings, mirror_dir: Path, job: Callable[[Workspace], Awaitable[T]],
               read_only: bool, make_upstream: Callable[[Settings], Upstream]) -> T:
    mirror = Mirror(mirror_dir)
    mirror.io_timeout = settings.stall_timeout
    try:
        if not read_only:
            mirror.prepare()  # takes the lock: never two writers on one mirror
        index = Index(mirror.state / "index.db", read_only=read_only)
        try:
            settings = reconcile_upstream(index, settings)
            upstream = make_upstream(settings)
            fetcher = Fetcher(mirror, index, upstream, settings.fetch_jobs, settings.fetch_retries,
                              settings.stall_timeout, settings.download_memory_mb * 1024 * 1024)
            workspace = Workspace(mirror, index, upstream, fetcher, settings.fetch_jobs,
                                  listing_ttl=settings.listing_ttl)
            outcome: list[T | UserError] = []
            async with trio.open_nursery() as nursery:
                fetcher.attach(nursery)
                try:
                    outcome.append(await job(workspace))
                except UserError as exc:
                    outcome.append(exc)  # raised below, outside the nursery, as itself
                nursery.cancel_scope.cancel()
            with trio.move_on_after(5):
                await upstream.aclose()
            if isinstance(outcome[0], UserError):
                raise outcome[0]
            return outcome[0]
        finally:
            index.close()
    finally:
        mirror.close()
