"""Plain types every layer shares, and the ``Upstream`` protocol every backend implements.

Nothing here knows omni.client, HTTP or FUSE: a backend (``isaacfs.backends``) turns its
own library's answers into these, and the core, the store, the fetcher and the jobs
speak only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from .paths import RelPath

Mode = Literal["strict", "permissive"]
MODES: tuple[Mode, ...] = ("strict", "permissive")

# Fetch priorities: a reader's demand first, then prefetch, then bulk warm.
READER, PREFETCH, BULK = 0, 1, 2


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One item of an upstream listing, with a validated name."""

    name: str
    is_dir: bool
    size: int
    mtime: float  # seconds since the epoch; 0 where the upstream gives none (S3 folders)
    etag: str  # S3 ETag (an MD5 for single-part objects) or provider version; "" if none


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """One item of a mirror folder."""

    name: str
    is_dir: bool
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Installed:
    """The one announcement of a file put in the mirror (checked, indexed, renamed into
    place), whatever the strategy that moved it: every listener hears this and only this.
    ``priority``: the download's at install time (a reader that joined a warm's promotes it)."""

    rel: RelPath
    local: LocalEntry
    priority: int


class Sink(Protocol):
    """Where a download's body goes, in order (the store's temporary file, hashed as written)."""

    async def write(self, data: bytes | memoryview) -> None: ...


class Upstream(Protocol):
    """An asset root seen as a read-only tree. Raises ``isaacfs.core.errors.UpstreamError`` kinds.

    ``available`` is False while the upstream rests after failing to answer: callers that
    can do without it (a lookup, a listing) skip it then instead of waiting.
    """

    root_url: str

    @property
    def available(self) -> bool: ...

    def url_for(self, rel: RelPath) -> str: ...

    async def list(self, rel: RelPath, fresh: bool = False) -> list[RemoteEntry]:
        """A folder's entries. ``fresh``: bypass any cache the backend's library keeps."""
        ...

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry: ...

    async def probe(self, rel: RelPath, timeout: float) -> None:
        """Ask now, even while resting; raise if there is no answer (NotFound is an answer)."""
        ...

    async def download(self, rel: RelPath, size: int, sink: Sink) -> None:
        """Write the body of ``rel`` (``size`` bytes expected) into ``sink``, in order."""
        ...

    async def aclose(self) -> None:
        """Release connections (at the end of the trio run that used them)."""
        ...
