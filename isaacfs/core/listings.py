"""Upstream folder listings, kept in the mirror's index and trusted for a TTL.

The namespace (what a mount shows) and the warm planner both ask here, so a folder
listed by one is not listed again by the other within ``ttl``. isaacfs's own state
folder is never taken from an upstream listing (an upstream may itself be a mirror).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .paths import STATE_DIR_NAME, RelPath
from .types import RemoteEntry, Upstream

if TYPE_CHECKING:
    from ..store.index import Index


class Listings:
    def __init__(self, index: Index, upstream: Upstream, ttl: float) -> None:
        self.index = index
        self.upstream = upstream
        self.ttl = ttl
        # Told of every listing stored afresh (the mount's tree merges it on next use).
        self.observers: list[Callable[[RelPath], None]] = []

    def stored(self, rel: RelPath) -> tuple[float, list[RemoteEntry]] | None:
        """The listing stored by any earlier run, and when it was fetched (epoch seconds)."""
        return self.index.listing(rel)

    def fresh(self, rel: RelPath, ttl: float | None = None) -> tuple[float, list[RemoteEntry]] | None:
        """The stored listing if it is younger than the TTL (``ttl`` for this ask, else the default)."""
        stored = self.index.listing(rel)
        if stored is not None and time.time() - stored[0] < (self.ttl if ttl is None else ttl):
            return stored
        return None

    async def fetch(self, rel: RelPath) -> list[RemoteEntry]:
        """Ask the upstream now and store the answer. Raises UpstreamError kinds."""
        entries = await self.upstream.list(rel, fresh=True)  # a listing is asked for when the stored one is old
        if rel.is_root:
            entries = [entry for entry in entries if entry.name != STATE_DIR_NAME]
        self.index.store_listing(rel, entries)
        self.index.count("listings")
        for observer in self.observers:
            observer(rel)
        return entries

    async def fetch_tree(self, rel: RelPath) -> dict[RelPath, list[RemoteEntry]] | None:
        """Every folder below ``rel`` with its entries, in one go where the upstream can
        (``walk``), each stored as that folder's listing; None where it cannot."""
        walk = getattr(self.upstream, "walk", None)
        if walk is None:
            return None
        tree: dict[RelPath, list[RemoteEntry]] | None = await walk(rel)
        if tree is None:
            return None
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
        return kept

    async def get(self, rel: RelPath, ttl: float | None = None) -> list[RemoteEntry]:
        """The fresh stored listing, else the upstream's (raises UpstreamError kinds)."""
        fresh = self.fresh(rel, ttl)
        return fresh[1] if fresh is not None else await self.fetch(rel)
