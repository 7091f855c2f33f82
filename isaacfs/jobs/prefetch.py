"""Dependency prefetch: in permissive mode, what a USD layer or MDL module names is fetched
before anyone asks for it, recursively, so a robot arrives in about as many round trips
as its dependency chain is deep.

Each layer that is fetched or opened is read by a long-lived usd-core worker (``parser``);
each asset it names is resolved under the asset root, its folder's listing fetched (in
parallel, from the index when fresh) and the file fetched at prefetch priority: behind
every reader, ahead of bulk warms. A reader that opens a file being prefetched joins that
download and promotes it; a failed prefetch costs nobody an error. Bounded per root layer
(files, bytes) and in concurrency; off with ``prefetch = false``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..core.errors import FetchFailed, UpstreamError
from ..core.listings import Listings
from ..core.paths import RelPath
from ..core.types import LocalEntry, RemoteEntry
from ..fetch.fetcher import PREFETCH, Fetcher
from ..store.index import Index
from ..store.mirror import Mirror
from .closure import resolve
from .parser import ParseFailed, Parser
from .usd_deps import wants_parsing

log = logging.getLogger("isaacfs.prefetch")


@dataclass
class _Budget:
    files: int = 0
    bytes: int = 0


@dataclass
class Prefetcher:
    mirror: Mirror
    index: Index
    listings: Listings
    fetcher: Fetcher
    parser: Parser
    root_url: str
    active: Callable[[], bool]  # permissive mode now (strict mode never touches the network)
    max_files: int = 2000  # per root layer
    max_bytes: int = 2 * 1024 * 1024 * 1024  # per root layer
    parallel: int = 16
    _nursery: trio.Nursery | None = None
    _parsed: set[RelPath] = field(default_factory=set)
    _queued: set[RelPath] = field(default_factory=set)
    _prefetched: set[RelPath] = field(default_factory=set)
    _read: set[RelPath] = field(default_factory=set)
    _budgets: dict[RelPath, _Budget] = field(default_factory=dict)
    _roots: dict[RelPath, RelPath] = field(default_factory=dict)  # a queued file -> the layer that led to it
    _ancestors_listed: set[RelPath] = field(default_factory=set)  # folders above prefetched files, listed
    _limit: trio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        self._limit = trio.CapacityLimiter(self.parallel)

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    # -- what triggers it -----------------------------------------------------------
    def fetched(self, rel: RelPath, local: LocalEntry) -> None:
        """A file was installed (fetched by a reader, a warm, or a prefetch)."""
        self._consider(rel, self._roots.get(rel, rel))

    def opened(self, rel: RelPath) -> None:
        """A reader opened ``rel`` (from the mirror, or while it streams)."""
        if rel in self._prefetched and rel not in self._read:
            self._read.add(rel)
            self.index.count("prefetch_read")
        self._consider(rel, self._roots.get(rel, rel))

    def _consider(self, rel: RelPath, root: RelPath) -> None:
        if self._nursery is None or not self.active() or rel in self._parsed or not wants_parsing(rel.name):
            return
        self._parsed.add(rel)
        self._nursery.start_soon(self._expand, rel, root)

    # -- the work -------------------------------------------------------------------
    async def _expand(self, layer: RelPath, root: RelPath) -> None:
        try:
            async with self._limit:
                path = f"/proc/{os.getpid()}/fd/{self.mirror.fd}/{layer}"  # the mirror, as a child sees it
                deps = await self.parser.dependencies(path)
        except ParseFailed as exc:
            log.info("prefetch: dependencies of %s unknown: %s", layer, exc)
            return
        except Exception:
            log.exception("prefetch: reading %s failed", layer)
            return
        assert self._nursery is not None
        for dependency in deps:
            target = resolve(dependency, layer, self.root_url)
            if isinstance(target, RelPath) and target not in self._queued and not target.is_state():
                self._queued.add(target)
                self._roots[target] = root
                self._list_ancestors(target)
                self._nursery.start_soon(self._prefetch, target, root)

    def _list_ancestors(self, rel: RelPath) -> None:
        """List the folders above ``rel``'s own, all at once, where not fresh: a reader's path
        lookups go down one folder at a time (NVIDIA/, Materials/, Base/ ...), a round trip
        each; with their listings stored, the kernel's lookups answer locally."""
        assert self._nursery is not None
        folder = rel.parent
        while not folder.is_root:
            folder = folder.parent
            if folder.is_root or folder in self._ancestors_listed:
                break
            self._ancestors_listed.add(folder)
            if self.listings.fresh(folder) is None:
                self._nursery.start_soon(self._list_quietly, folder)

    async def _list_quietly(self, folder: RelPath) -> None:
        try:
            await self.listings.get(folder, limit=self._limit)
        except UpstreamError as exc:
            log.info("prefetch: listing %s/ did not happen: %s", folder, exc)
        except Exception:
            log.exception("prefetch: listing %s/ failed", folder)

    async def _prefetch(self, rel: RelPath, root: RelPath) -> None:
        try:
            local = self.mirror.entry(rel)
            if local is not None:
                if not local.is_dir:
                    self._consider(rel, root)  # mirrored already: what it names may not be
                return
            budget = self._budgets.setdefault(root, _Budget())
            if budget.files >= self.max_files:
                self.index.count("prefetch_over_budget")
                return
            budget.files += 1  # taken now: the tasks running beside this one see it
            entry = await self._entry(rel)
            if entry is None or entry.is_dir:
                budget.files -= 1
                return
            if budget.bytes + entry.size > self.max_bytes:
                budget.files -= 1
                self.index.count("prefetch_over_budget")
                return
            budget.bytes += entry.size
            self._prefetched.add(rel)
            got = await self.fetcher.ensure(rel, entry, priority=PREFETCH)
            self.index.count("prefetched")
            self.index.count("prefetched_bytes", got.size)
            self._consider(rel, root)  # when it was there already, no install told us
        except (FetchFailed, UpstreamError) as exc:
            log.info("prefetch of %s did not happen: %s", rel, exc)  # a reader will ask, and see
        except Exception:
            log.exception("prefetch of %s failed", rel)

    async def _entry(self, rel: RelPath) -> RemoteEntry | None:
        # Only the listing's request takes a place: the files waiting for their folder's
        # listing do not hold up the listing of another folder (a deeper layer's).
        listing = await self.listings.get(rel.parent, limit=self._limit)
        return next((entry for entry in listing if entry.name == rel.name), None)

    async def aclose(self) -> None:
        await self.parser.aclose()
