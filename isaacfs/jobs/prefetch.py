"""Dependency prefetch: in permissive mode, what a USD layer or MDL module names is fetched
before anyone asks for it, recursively, so a robot arrives in about as many round trips
as its dependency chain is deep.

Each layer that is fetched or opened is read by a long-lived usd-core worker (``parser``);
each asset it names is resolved under the asset root, its folder's listing fetched (in
parallel, from the index when fresh) and the file fetched at prefetch priority: behind
every reader, ahead of bulk warms. A reader that opens a file being prefetched joins that
download and promotes it; a failed prefetch costs nobody an error. Bounded per root layer
(files, bytes: a reference over budget is dropped when its layer is read, never queued),
in concurrency, and in memory (what it remembers is kept in bounded, oldest-first sets);
off with ``prefetch = false``.

It works for permissive askers only: a layer opened by a strict process (``isaacfs run
--offline``) is not expanded, whatever the mount's mode, and a bulk warm's installs are
the warm's own business (it fetches what it was asked, not what that names).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from ..core.errors import FetchFailed, UpstreamError
from ..core.paths import RelPath
from ..core.types import BULK, READER, Installed, Mode, RemoteEntry
from ..fetch.fetcher import Fetcher
from ..store.index import Index
from ..store.mirror import Mirror
from ..tree.listings import TREE_FILES, Listings
from .closure import fetch_priority, layers_in, resolve
from .parser import ParseFailed, Parser
from .usd_deps import wants_parsing

log = logging.getLogger("isaacfs.prefetch")


# What the prefetcher remembers (layers parsed, files queued, folders listed, budgets):
# at most this many of each, the oldest forgotten first. Forgetting costs at most a parse
# or a listing again, never a wrong answer.
REMEMBERED = 50_000

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """A map of at most ``cap`` entries; adding past it forgets the oldest."""

    def __init__(self, cap: int = REMEMBERED) -> None:
        self.cap = cap
        self._items: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.cap:
            self._items.popitem(last=False)

    def add(self, key: K) -> None:  # as a set
        self.put(key, None)  # type: ignore[arg-type]


READ_AHEAD_KEPT = 60.0  # seconds a layer read ahead waits for a layer to name it
READ_AHEAD_LAYERS = 32  # a root layer's folder of more layers than this is not read ahead


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
    remembered: int = REMEMBERED
    _nursery: trio.Nursery | None = None
    _parsed: Bounded[RelPath, None] = field(init=False)
    _queued: Bounded[RelPath, None] = field(init=False)
    _prefetched: Bounded[RelPath, None] = field(init=False)
    _read: Bounded[RelPath, None] = field(init=False)
    _budgets: Bounded[RelPath, _Budget] = field(init=False)
    _roots: Bounded[RelPath, RelPath] = field(init=False)  # a queued file -> the layer that led to it
    _ancestors_listed: Bounded[RelPath, None] = field(init=False)  # folders above prefetched files, listed
    _trees: Bounded[RelPath, None] = field(init=False)  # root layers' folders read ahead
    _limit: trio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        self._limit = trio.CapacityLimiter(self.parallel)
        self._parsed, self._queued, self._prefetched, self._read = (Bounded(self.remembered) for _ in range(4))
        self._budgets, self._roots, self._ancestors_listed = (Bounded(self.remembered) for _ in range(3))
        self._trees = Bounded(self.remembered)

    @property
    def remembering(self) -> int:
        """Entries held in all (bounded by 7 x ``remembered``)."""
        return sum(len(kept) for kept in (self._parsed, self._queued, self._prefetched, self._read,
                                          self._budgets, self._roots, self._ancestors_listed, self._trees))

    def _root_of(self, rel: RelPath) -> RelPath:
        return self._roots.get(rel) or rel

    def _budget(self, root: RelPath) -> _Budget:
        budget = self._budgets.get(root)
        if budget is None:
            budget = _Budget()
            self._budgets.put(root, budget)
        return budget

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    # -- what triggers it -----------------------------------------------------------
    def fetched(self, event: Installed) -> None:
        """A file was installed by a reader (permissive, or it could not have fetched) or a
        prefetch; a bulk warm's installs are not expanded."""
        if event.priority != BULK:
            self._consider(event.rel, self._root_of(event.rel))

    def opened(self, rel: RelPath, mode_of: Callable[[], Mode]) -> None:
        """A reader opened ``rel`` (from the mirror, or while it streams); ``mode_of`` gives
        its mode: a strict reader's layer is not expanded (its run must stay offline)."""
        if rel in self._prefetched and rel not in self._read:
            self._read.add(rel)
            self.index.count("prefetch_read")
        if self._wanted(rel) and mode_of() == "permissive":
            self._consider(rel, self._root_of(rel))

    def opening(self, rel: RelPath) -> None:
        """A permissive reader's cold open of ``rel``, before its fetch starts. A root layer (one
        no layer led to) has its folder read ahead meanwhile: one recursive listing (skipped
        over ``TREE_FILES`` files) stores every folder below as listed, and the layers in it
        are read into memory at once, so the chain root -> payload -> meshes costs one round
        trip, not a listing and a GET per level (the closure does the same)."""
        if (not self._wanted(rel) or rel in self._roots
                or any(RelPath(rel.parts[:depth]) in self._trees for depth in range(len(rel.parts)))):
            return  # a layer some other layer leads to, or a folder read ahead already
        assert self._nursery is not None
        self._trees.add(rel.parent)
        self._nursery.start_soon(self._read_ahead_folder, rel.parent)

    async def _read_ahead_folder(self, folder: RelPath) -> None:
        try:
            tree = self.listings.stored_tree(folder, TREE_FILES)  # read already beside a listing
            if tree is None:
                tree = await self.listings.fetch_tree(folder, max_files=TREE_FILES)
        except UpstreamError as exc:
            log.info("prefetch: the folder %s/ was not read ahead: %s", folder, exc)
            return
        layers = layers_in(tree or {})
        # A robot's folder holds a few layers that name each other; a folder of many is a
        # category of independent assets (props), of which the root names none: not read
        # ahead. And only bodies pinned to the listed version (S3's ETag, every GET If-Match)
        # are read before they are asked for.
        if len(layers) > READ_AHEAD_LAYERS or not self.fetcher.ranged:
            return
        started = [layer for layer, entry in layers if entry.etag and self.fetcher.preload(layer, entry)]
        if started:
            # What no layer named by then is dropped: its memory goes back.
            await trio.sleep(READ_AHEAD_KEPT)
            dropped = self.fetcher.drop_preloads(started)
            if dropped:
                log.debug("prefetch: %d layer(s) of %s/ read ahead and not named, dropped", dropped, folder)

    def _wanted(self, rel: RelPath) -> bool:
        return (self._nursery is not None and self.active() and rel not in self._parsed
                and wants_parsing(rel.name))

    def _consider(self, rel: RelPath, root: RelPath) -> None:
        if not self._wanted(rel):
            return
        local = self.mirror.entry(rel)
        if local is None or local.is_dir:
            # Still streaming (a layer of more than one part): the worker would find no file.
            # Its Installed event brings it back here once it is whole.
            return
        assert self._nursery is not None
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
        budget = self._budget(root)
        for dependency in deps:
            target = resolve(dependency, layer, self.root_url)
            if not isinstance(target, RelPath) or target in self._queued or target.is_state():
                continue
            if budget.files >= self.max_files:
                # Over budget: the rest of this layer's references are dropped here, not queued
                # (a layer naming 90,000 assets costs one count, not 90,000 tasks).
                self.index.count("prefetch_over_budget")
                break
            budget.files += 1  # taken now, before any task runs: the budget bounds what is queued
            self._queued.add(target)
            self._roots.put(target, root)
            self._list_ancestors(target)
            self._nursery.start_soon(self._prefetch, target, root, budget)

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

    async def _prefetch(self, rel: RelPath, root: RelPath, budget: _Budget) -> None:
        try:
            local = self.mirror.entry(rel)
            if local is not None:
                budget.files -= 1  # nothing to fetch: the place goes back
                if not local.is_dir:
                    self._consider(rel, root)  # mirrored already: what it names may not be
                return
            # A layer is parsed next: where its folder is not listed yet, its GET goes beside
            # the listing, not after it (a round trip less on the load's critical path).
            blind = (fetch_priority(rel) == READER and self.listings.fresh(rel.parent) is None
                     and self.fetcher.preload_blind(rel))
            entry = await self._entry(rel)
            if entry is None or entry.is_dir or budget.bytes + entry.size > self.max_bytes:
                budget.files -= 1
                if blind:
                    self.fetcher.drop_preloads([rel])
                if entry is not None and not entry.is_dir:
                    self.index.count("prefetch_over_budget")
                return
            budget.bytes += entry.size
            self._prefetched.add(rel)
            # A layer is on the load's critical path (usd-core opens it next); behind the
            # textures queued for places, the next level of layers waited (bench_wan's log).
            got = await self.fetcher.ensure(rel, entry, priority=fetch_priority(rel))
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
