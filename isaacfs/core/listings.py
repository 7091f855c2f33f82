"""Upstream folder listings, kept in the mirror's index and trusted for a TTL.

The namespace (what a mount shows) and the warm planner both ask here, so a folder
listed by one is not listed again by the other within ``ttl``. isaacfs's own state
folder is never taken from an upstream listing (an upstream may itself be a mirror).
"""

from __future__ import annotations

import time
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

    def stored(self, rel: RelPath) -> tuple[float, list[RemoteEntry]] | None:
        """The listing stored by any earlier run, and when it was fetched (epoch seconds)."""
        return self.index.listing(rel)

    def fresh(self, rel: RelPath) -> tuple[float, list[RemoteEntry]] | None:
        """The stored listing if it is younger than the TTL."""
        stored = self.index.listing(rel)
        if stored is not None and time.time() - stored[0] < self.ttl:
            return stored
        return None

    async def fetch(self, rel: RelPath) -> list[RemoteEntry]:
        """Ask the upstream now and store the answer. Raises UpstreamError kinds."""
        entries = await self.upstream.list(rel, fresh=True)  # a listing is asked for when the stored one is old
        if rel.is_root:
            entries = [entry for entry in entries if entry.name != STATE_DIR_NAME]
        self.index.store_listing(rel, entries)
        self.index.count("listings")
        return entries

    async def get(self, rel: RelPath) -> list[RemoteEntry]:
        """The fresh stored listing, else the upstream's (raises UpstreamError kinds)."""
        fresh = self.fresh(rel)
        return fresh[1] if fresh is not None else await self.fetch(rel)
