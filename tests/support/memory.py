"""An in-memory upstream for the unit tier: a dict of paths to bytes behaving as the S3
cloud root does (folders implied by keys, ETags the MD5 of the body, a missing path is
``NotFound``, ranged reads and If-Match as S3 answers them). ``MemoryStore`` is the plain
store; ``MemoryUpstream`` is that store inside ``faults.FaultyUpstream``, whose switches
(down, fail, corrupt, delay, slow, chunk_delay, stall_after, cut_after) and counters
(requests, ranges) work around any upstream.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

from isaacfs.core.errors import IntegrityError, NotFound
from isaacfs.core.paths import RelPath
from isaacfs.core.types import OnData, RemoteEntry, Sink, TierRows, Walked
from tests.support.faults import FaultyUpstream

Folders = dict[RelPath, list[RemoteEntry]]  # every folder below a root, with its entries


def _parents(path: RelPath, top: RelPath) -> list[RelPath]:
    found = []
    while len(path.parts) > len(top.parts):
        path = path.parent
        found.append(path)
    return found


class MemoryStore:
    kind = "memory"

    def __init__(self, files: dict[str, bytes] | None = None, root_url: str = "memory://assets",
                 mtime: float = 1_700_000_000.0, md5_etags: bool = True, ranged: bool = False) -> None:
        self.root_url = root_url
        self.files: dict[str, bytes] = dict(files or {})
        self.mtime = mtime
        self.md5_etags = md5_etags
        # Ranged reads (as S3 serves them): files stream through fetch/stream.py.
        self.ranged = ranged
        self.etags: dict[str, str] = {}  # ETags other than the body's MD5 (a multipart upload's)
        self.chunk = 64 * 1024  # bytes per chunk of a ranged body
        self.rejections: list[tuple[str, str]] = []  # (path, why) the fetcher refused
        self.recursive = False  # answers recursive listings (``walk``), as S3 does

    # -- test controls --------------------------------------------------------------
    def put(self, path: str, body: bytes) -> None:
        self.files[path] = body

    def remove(self, path: str) -> None:
        del self.files[path]

    # -- the protocol -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return True

    def url_for(self, rel: RelPath) -> str:
        return "/".join([self.root_url, *(quote(p.encode("utf-8", "surrogateescape"), safe="") for p in rel.parts)])

    def _entry(self, path: str, name: str) -> RemoteEntry | None:
        body = self.files.get(path)
        if body is not None:
            etag = self.etags.get(path) or (hashlib.md5(body, usedforsecurity=False).hexdigest()
                                            if self.md5_etags else "")
            return RemoteEntry(name, False, len(body), self.mtime, etag)
        prefix = f"{path}/" if path else ""
        if any(key.startswith(prefix) for key in self.files):
            return RemoteEntry(name, True, 0, 0.0, "")
        return None

    async def list(self, rel: RelPath, fresh: bool = False) -> list[RemoteEntry]:
        prefix = f"{rel}/" if rel.parts else ""
        names = {key[len(prefix):].split("/", 1)[0] for key in self.files if key.startswith(prefix)}
        found = [self._entry(f"{prefix}{name}", name) for name in sorted(names)]
        return [entry for entry in found if entry is not None]

    body_in_memory = False

    @property
    def reads_unlisted(self) -> bool:
        return self.ranged

    @property
    def download_path(self) -> str:
        return "in memory" + (", ranged parts" if self.ranged else "")

    async def connect_ahead(self, count: int) -> None:
        pass  # no connections

    async def walk(self, rel: RelPath, max_files: int = 5000, partial: bool = False) -> Folders | None:
        """Every folder below ``rel`` with its entries, in one request (where ``recursive``);
        None over ``max_files`` files (as S3 over that many pages); ``partial``: the folders
        the first keys, in S3's order, hold whole."""
        if not self.recursive:
            return None
        prefix = f"{rel}/" if rel.parts else ""
        folders: dict[RelPath, list[RemoteEntry]] = {}
        below = sorted(key[len(prefix):] for key in self.files if key.startswith(prefix))
        limit = max(1000, max_files)
        whole = len(below) <= limit
        if not whole and not partial:
            return None
        seen = below[:limit]
        paths = {RelPath.parse(f"{prefix}{key}").parent for key in seen} | {rel}
        going = set() if whole else {rel, *_parents(RelPath.parse(f"{prefix}{seen[-1]}"), rel)}
        for folder in paths | {parent for path in paths for parent in _parents(path, rel)}:
            if folder not in going:
                folders[folder] = await self.list(folder)
        if whole:
            return folders or None
        # What the page saw of the folders it ended inside, as S3's answer shows it.
        partly: dict[RelPath, list[RemoteEntry]] = {}
        for folder in going:
            names = {RelPath.parse(f"{prefix}{key}").parts[len(folder.parts)] for key in seen
                     if RelPath.parse(f"{prefix}{key}").parts[:len(folder.parts)] == folder.parts}
            partly[folder] = [entry for entry in await self.list(folder) if entry.name in names]
        return Walked(folders, partly) if folders or partly else None

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry:
        entry = self._entry(str(rel), rel.name)
        if entry is None:
            raise NotFound(f"stat {rel}: not found upstream")
        return entry

    async def probe(self, rel: RelPath, timeout: float) -> None:
        pass  # always answers

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: OnData,
                         etag: str = "", size: int = -1) -> None:
        body = self.files.get(str(rel))
        if body is None:
            raise NotFound(f"fetch {rel}: not found upstream")
        self._same_object(rel, etag, size)
        # As the HTTP reader does: each block is a view of one buffer, released and filled
        # again once on_data returns, so a consumer that kept a block fails or hashes junk.
        buffer = bytearray(self.chunk)
        position = start
        while position < min(end, len(body)):
            piece = body[position:min(end, position + self.chunk)]
            buffer[:len(piece)] = piece
            with memoryview(buffer)[:len(piece)] as block:
                await on_data(block)
            buffer[:] = b"\xa5" * len(buffer)
            position += len(piece)

    def rejected(self, rel: RelPath, why: str) -> None:
        self.rejections.append((str(rel), why))

    def tier_rows(self) -> TierRows:
        return []

    async def aclose(self) -> None:
        return None

    def _same_object(self, rel: RelPath, etag: str, size: int) -> None:
        """As S3 answers a GET with If-Match (412), and as isaacfs checks Content-Range."""
        now = self._entry(str(rel), rel.name)
        assert now is not None
        if etag and now.etag and now.etag != etag:
            raise IntegrityError(f"fetch {rel}: the object changed upstream (ETag {now.etag}, not {etag})")
        if size >= 0 and now.size != size:
            raise IntegrityError(f"fetch {rel}: the object is {now.size} bytes now, not {size}")

    async def download(self, rel: RelPath, size: int, sink: Sink, etag: str = "") -> None:
        body = self.files.get(str(rel))
        if body is None:
            raise NotFound(f"fetch {rel}: not found upstream")
        if etag:
            self._same_object(rel, etag, -1)
        await sink.write(body)


class MemoryUpstream(FaultyUpstream):
    """The in-memory store with fault switches around it; the store's own settings (files,
    etags, ranged, recursive, chunk, md5_etags, mtime, put, remove) read and set through."""

    _STORE = frozenset({"files", "etags", "ranged", "recursive", "chunk", "md5_etags", "mtime"})

    def __init__(self, files: dict[str, bytes] | None = None, root_url: str = "memory://assets",
                 retry_after: float = 30.0, mtime: float = 1_700_000_000.0, md5_etags: bool = True,
                 ranged: bool = False) -> None:
        super().__init__(MemoryStore(files, root_url, mtime, md5_etags, ranged), retry_after)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._STORE:
            setattr(self.inner, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def files(self) -> dict[str, bytes]:
        return self.inner.files  # type: ignore[attr-defined, no-any-return]

    @property
    def etags(self) -> dict[str, str]:
        return self.inner.etags  # type: ignore[attr-defined, no-any-return]

    @property
    def mtime(self) -> float:
        return self.inner.mtime  # type: ignore[attr-defined, no-any-return]

    def put(self, path: str, body: bytes) -> None:
        self.inner.put(path, body)  # type: ignore[attr-defined]

    def remove(self, path: str) -> None:
        self.inner.remove(path)  # type: ignore[attr-defined]
