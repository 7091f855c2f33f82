"""Upstream folder listings, kept in the mirror's index and trusted for a TTL.

The namespace (what a mount shows) and the warm planner both ask here, so a folder
listed by one is not listed again by the other within ``ttl``. isaacfs's own state
folder is never taken from an upstream listing (an upstream may itself be a mirror).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import trio

from ..core.paths import STATE_DIR_NAME, RelPath
from ..core.types import RemoteEntry, Upstream, Walked
from ..store.index import Index

# A folder's tree is read in one request where it holds at most this many files (S3 answers
# 1,000 keys a page): beside a folder's first listing (read_trees), a closure's robot folder,
# a root layer's folder read ahead.
TREE_FILES = 1000


class _Flight:
    """One listing on its way; those who ask for the same folder meanwhile wait for it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.entries: list[RemoteEntry] | None = None
        self.error: Exception | None = None


class Listings:
    def __init__(self, index: Index, upstream: Upstream, ttl: float) -> None:
        self.index = index
        self.upstream = upstream
        self.ttl = ttl
        # Told of every listing stored afresh (the mount's tree merges it on next use).
        self.observers: list[Callable[[RelPath], None]] = []
        self._flights: dict[RelPath, _Flight] = {}
        self._trees: trio.Nursery | None = None  # read_trees(): where trees are read beside listings
        self._tree_files = 0
        self._trees_tried: dict[RelPath, None] = {}
        self._tree_flights: dict[RelPath, tuple[trio.Event, int]] = {}  # trees on their way, and their bound
        # What trees that ended inside a folder saw of it (``Walked.partly``): names that are
        # there, with when they were seen; never all there are.
        self._seen: dict[RelPath, tuple[float, dict[str, RemoteEntry]]] = {}

    def read_trees(self, nursery: trio.Nursery, max_files: int) -> None:
        """From now on, a folder listed upstream for the first time has its whole tree read
        beside its listing, in one request (``fetch_tree``; given up over ``max_files`` files
        below it). A reader's path goes down one folder at a time, a round trip each: with the
        tree of a folder small enough stored, the folders below it answer with no request.
        A path from the root to a robot six folders deep costs the levels above the first
        folder of at most ``max_files`` files, not six. A tree that is too large costs one
        request of ``max_files`` entries, once per folder."""
        self._trees = nursery
        self._tree_files = max_files

    @contextlib.contextmanager
    def trees_read(self, nursery: trio.Nursery, max_files: int) -> Iterator[None]:
        """``read_trees`` for the length of a job (a closure warm), where it is not on already
        (a mount's daemon has it on for good); off again after."""
        if self._trees is not None:
            yield
            return
        self.read_trees(nursery, max_files)
        try:
            yield
        finally:
            self._trees = None

    def read_tree_ahead(self, rel: RelPath) -> None:
        """With ``read_trees`` on, read ``rel``'s tree now (once), where its listing is not
        fresh: a lookup of ``rel`` in a folder whose listing is on its way."""
        if self._trees is not None and not rel.is_state() and self.fresh(rel) is None:
            self._start_tree(rel)

    def _start_tree(self, rel: RelPath) -> None:
        if self._trees is None or rel in self._trees_tried:
            return
        if len(self._trees_tried) >= 100_000:
            self._trees_tried.clear()  # bounded: at worst a folder's tree is asked again
        self._trees_tried[rel] = None
        self._trees.start_soon(self._tree_quietly, rel)

    async def _tree_quietly(self, rel: RelPath) -> None:
        try:
            await self.fetch_tree(rel, self._tree_files)
        except Exception:  # an upstream error: the folders are listed one by one, as before
            self.index.count("trees_failed")

    def stored(self, rel: RelPath) -> tuple[float, list[RemoteEntry]] | None:
        """The listing stored by any earlier run, and when it was fetched (epoch seconds)."""
        return self.index.listing(rel)

    def fresh(self, rel: RelPath, ttl: float | None = None) -> tuple[float, list[RemoteEntry]] | None:
        """The stored listing if it is younger than the TTL (``ttl`` for this ask, else the default)."""
        stored = self.index.listing(rel)
        if stored is not None and time.time() - stored[0] < (self.ttl if ttl is None else ttl):
            return stored
        return None

    async def fetch(self, rel: RelPath, limit: trio.CapacityLimiter | None = None) -> list[RemoteEntry]:
        """Ask the upstream now and store the answer. Raises UpstreamError kinds.

        One request per folder at a time: who asks while a listing of the same folder is on
        its way gets that listing's answer (a layer's textures all name one folder). Only
        the request holds a place of ``limit``: those who wait for its answer do not, so
        a crowd waiting for one folder never holds up the listing of another."""
        while (flight := self._flights.get(rel)) is not None:
            await flight.done.wait()
            if flight.entries is not None:
                return flight.entries
            if flight.error is not None:
                raise flight.error
            # the one who asked was cancelled: ask again
        flight = self._flights[rel] = _Flight()
        self._start_tree(rel)
        try:
            if limit is None:
                flight.entries = await self._fetch(rel)
            else:
                async with limit:
                    flight.entries = await self._fetch(rel)
            return flight.entries
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[rel]
            flight.done.set()

    async def _fetch(self, rel: RelPath) -> list[RemoteEntry]:
        entries = await self.upstream.list(rel, fresh=True)  # a listing is asked for when the stored one is old
        if rel.is_root:
            entries = [entry for entry in entries if entry.name != STATE_DIR_NAME]
        self.index.store_listing(rel, entries)
        self.index.count("listings")
        for observer in self.observers:
            observer(rel)
        return entries

    def stored_tree(self, rel: RelPath, max_files: int) -> dict[RelPath, list[RemoteEntry]] | None:
        """Every folder below ``rel`` with its entries, from fresh stored listings alone (no
        request); None where one of them is not fresh, or over ``max_files`` files."""
        kept: dict[RelPath, list[RemoteEntry]] = {}
        folders, files = [rel], 0
        while folders:
            folder = folders.pop()
            fresh = self.fresh(folder)
            if fresh is None:
                return None
            kept[folder] = fresh[1]
            files += sum(not entry.is_dir for entry in fresh[1])
            if files > max_files:
                return None
            folders += [folder.child(entry.name) for entry in fresh[1] if entry.is_dir]
        return kept

    async def fetch_tree(self, rel: RelPath, max_files: int = 5000) -> dict[RelPath, list[RemoteEntry]] | None:
        """Every folder below ``rel`` with its entries, in one go where the upstream can
        (``walk``), each stored as that folder's listing; None where it cannot, or where
        there are more than about ``max_files`` files below."""
        going = self._tree_flights.get(rel)
        if going is not None and going[1] >= max_files:
            # One on its way (beside the folder's listing, say), as large: its answer, from the
            # listings it stored, and no second request.
            await going[0].wait()
            return self.stored_tree(rel, max_files)
        flight = trio.Event()
        self._tree_flights[rel] = (flight, max_files)
        try:
            return await self._fetch_tree(rel, max_files)
        finally:
            if self._tree_flights.get(rel, (None, 0))[0] is flight:
                del self._tree_flights[rel]
            flight.set()

    async def _fetch_tree(self, rel: RelPath, max_files: int) -> dict[RelPath, list[RemoteEntry]] | None:
        # A tree too large still holds some folders whole (those its first keys cover, as S3
        # lists in order): they are stored too, so a path into one of them needs no listing;
        # the answer is a tree only where ``rel`` itself came whole.
        tree = await self.upstream.walk(rel, max_files, partial=True)
        if tree is None:
            return None
        if isinstance(tree, Walked):
            self._saw(tree.partly)
        kept: dict[RelPath, list[RemoteEntry]] = {}
        for folder, entries in tree.items():
            if folder.parts[:1] == (STATE_DIR_NAME,):
                continue
            if folder.is_root:
                entries = [entry for entry in entries if entry.name != STATE_DIR_NAME]
            self.index.store_listing(folder, entries)
            kept[folder] = entries
            for observer in self.observers:
                observer(folder)
        self.index.count("listings")
        return kept if rel in kept else None

    def _saw(self, partly: dict[RelPath, list[RemoteEntry]]) -> None:
        if len(self._seen) > 10_000:
            self._seen.clear()  # bounded: at worst a folder is listed to answer a lookup
        now = time.time()
        for folder, entries in partly.items():
            if folder.parts[:1] == (STATE_DIR_NAME,):
                continue
            known = self._seen.get(folder)
            names = dict(known[1]) if known is not None and now - known[0] < self.ttl else {}
            names.update((entry.name, entry) for entry in entries if entry.name != STATE_DIR_NAME)
            self._seen[folder] = (now, names)

    def seen(self, folder: RelPath, name: str) -> RemoteEntry | None:
        """``name`` in ``folder`` as a tree that ended inside the folder saw it, within the
        TTL: it is there (a key was listed below it), though the folder's listing is not known.
        Enough for a lookup to go on down a path without listing every folder on it."""
        known = self._seen.get(folder)
        if known is None or time.time() - known[0] >= self.ttl:
            return None
        return known[1].get(name)

    async def get(self, rel: RelPath, ttl: float | None = None,
                  limit: trio.CapacityLimiter | None = None) -> list[RemoteEntry]:
        """The fresh stored listing, else the upstream's (raises UpstreamError kinds)."""
        fresh = self.fresh(rel, ttl)
        return fresh[1] if fresh is not None else await self.fetch(rel, limit)
