"""Plain types every layer shares, and the ``Upstream`` protocol every backend implements.

Nothing here knows omni.client, HTTP or FUSE: a backend (``isaacfs.backends``) turns its
own library's answers into these, and the core, the store, the fetcher and the jobs
speak only these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from .paths import RelPath

Mode = Literal["strict", "permissive"]
MODES: tuple[Mode, ...] = ("strict", "permissive")

# Fetch priorities: a reader's demand first, then prefetch, then bulk warm.
READER, PREFETCH, BULK = 0, 1, 2


# What a ranged read hands each block to, as it lands (see ``Upstream.read_range``).
OnData = Callable[[bytes | memoryview], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One item of an upstream listing, with a validated name."""

    name: str
    is_dir: bool
    size: int
    mtime: float  # seconds since the epoch; 0 where the upstream gives none (S3 folders)
    etag: str  # S3 ETag (an MD5 for single-part objects) or provider version; "" if none


class LocalEntry(NamedTuple):
    """One item of a mirror folder. (A named tuple: a cold scan makes one per file, and a
    frozen dataclass took three times as long to make.)"""

    name: str
    is_dir: bool
    size: int
    mtime_ns: int
    dev: int = 0  # the file system it is on (st_dev); 0: not known


class Walked(dict[RelPath, list[RemoteEntry]]):
    """A recursive listing that stopped at the end of a page (``walk(partial=True)``): the
    folders it holds whole, as a dict; ``partly``: for each folder the page ended inside, the
    entries it saw there. Those exist (a key was listed below each), but are not all there
    are: enough to answer that a name is there, never that one is not."""

    def __init__(self, whole: dict[RelPath, list[RemoteEntry]],
                 partly: dict[RelPath, list[RemoteEntry]]) -> None:
        super().__init__(whole)
        self.partly = partly


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


# Each tier's state, counters and manifest (``Upstream.tier_rows``), for ``status``.
TierRows = list[dict[str, Any]]


class Upstream(Protocol):
    """An asset root seen as a read-only tree. Raises ``isaacfs.core.errors.UpstreamError`` kinds.

    ``available`` is False while the upstream rests after failing to answer: callers that
    can do without it (a lookup, a listing) skip it then instead of waiting.

    The capabilities that only some upstreams have are members too, typed, each with its
    "cannot" answer (``ranged`` False, ``walk`` None, ``connect_ahead`` a no-op): callers
    ask the protocol, never ``getattr``.
    """

    root_url: str

    @property
    def available(self) -> bool: ...

    @property
    def ranged(self) -> bool:
        """Files of more than one part stream in ranged parts (``read_range``). Asked each
        time: an upstream may learn at its first listing how it is reached."""
        ...

    @property
    def reads_unlisted(self) -> bool:
        """``read_range`` serves a file whose size and ETag are not known yet (``etag`` "",
        ``size`` -1; the answer stops at the file's end), from where a read of it once listed
        would come. False for tiers: their manifests choose a tier by size and ETag."""
        ...

    @property
    def body_in_memory(self) -> bool:
        """``download`` gets each body whole in memory before it is written (omni.client's
        whole-body reads), rather than block by block."""
        ...

    @property
    def download_path(self) -> str:
        """How files come, in words, for ``isaacfs status``."""
        ...

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: OnData,
                         etag: str = "", size: int = -1) -> None:
        """Bytes [start, end) of ``rel``, in order, to ``on_data`` (only where ``ranged``).
        A block handed to ``on_data`` may be a view of the reader's own buffer, filled again
        once ``on_data`` returns: ``on_data`` copies or writes what it keeps. Every answer is
        of the object the caller expects: with ``etag``, of that version (``If-Match``, and
        the answer's own ETag); with ``size``, of that size, and the range asked for.
        Anything else is ``IntegrityError`` (the object changed: list it afresh)."""
        ...

    async def walk(self, rel: RelPath, max_files: int = 5000,
                   partial: bool = False) -> dict[RelPath, list[RemoteEntry]] | None:
        """Every folder below ``rel`` with its entries in one go; None where the upstream
        cannot, or over ``max_files`` files. With ``partial``, over ``max_files`` files: the
        folders the first ``max_files`` keys hold whole, never ``rel`` itself (None if none),
        as a ``Walked`` where the upstream also tells what it saw of the others."""
        ...

    async def connect_ahead(self, count: int) -> None:
        """Open up to ``count`` connections for a burst that follows (a no-op where requests
        do not go over a pool of isaacfs's own)."""
        ...

    def url_for(self, rel: RelPath) -> str: ...

    async def list(self, rel: RelPath, fresh: bool = False) -> list[RemoteEntry]:
        """A folder's entries. ``fresh``: bypass any cache the backend's library keeps."""
        ...

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry: ...

    async def probe(self, rel: RelPath, timeout: float) -> None:
        """Ask now, even while resting; raise if there is no answer (NotFound is an answer)."""
        ...

    async def download(self, rel: RelPath, size: int, sink: Sink, etag: str = "") -> None:
        """Write the body of ``rel`` (``size`` bytes expected) into ``sink``, in order; with
        ``etag``, only bytes of that version (IntegrityError where the object changed)."""
        ...

    def tier_rows(self) -> TierRows:
        """Each tier's state, counters and manifest, for ``status`` (empty for one upstream)."""
        ...

    def rejected(self, rel: RelPath, why: str) -> None:
        """The last body of ``rel`` failed its check (size, hash): an upstream of several
        tiers serves it from another next time (a no-op for one)."""
        ...

    async def aclose(self) -> None:
        """Release connections (at the end of the trio run that used them)."""
        ...
