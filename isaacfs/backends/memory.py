"""An in-memory upstream for the unit tier: a dict of paths to bytes, with fault switches.

It behaves as the S3 cloud root does through omni.client: folders are implied by keys,
ETags are the MD5 of the body, a missing path is ``NotFound``. Tests flip ``down`` to
make every request fail as a dead host does, set ``fail[path]`` to make one path fail
with a given error, ``corrupt`` to flip a byte of a body in transit, ``delay`` to
answer late (``slow[path]``: requests about one path or folder), and read ``requests``
to count what was asked.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import trio

from ..core.errors import ConnectionLost, IntegrityError, NotFound, UpstreamError
from ..core.health import Health
from ..core.paths import RelPath
from ..core.types import RemoteEntry, Sink

Folders = dict[RelPath, list[RemoteEntry]]  # every folder below a root, with its entries


def _parents(path: RelPath, top: RelPath) -> list[RelPath]:
    found = []
    while len(path.parts) > len(top.parts):
        path = path.parent
        found.append(path)
    return found


class MemoryUpstream:
    kind = "memory"

    def __init__(self, files: dict[str, bytes] | None = None, root_url: str = "memory://assets",
                 retry_after: float = 30.0, mtime: float = 1_700_000_000.0, md5_etags: bool = True,
                 ranged: bool = False) -> None:
        self.root_url = root_url
        self.files: dict[str, bytes] = dict(files or {})
        self.mtime = mtime
        self.md5_etags = md5_etags
        self.health = Health(root_url, retry_after)
        self.down = False
        self.fail: dict[str, UpstreamError] = {}
        self.corrupt: set[str] = set()
        self.delay = 0.0
        self.slow: dict[str, float] = {}  # path -> seconds more for any request about it
        self.requests: Counter[str] = Counter()  # "list a/b", "stat a/b", "get a/b", "range a/b"
        # Ranged reads (as S3 serves them): files stream through fetch/stream.py.
        self.ranged = ranged
        self.etags: dict[str, str] = {}  # ETags other than the body's MD5 (a multipart upload's)
        self.chunk = 64 * 1024  # bytes per chunk of a ranged body
        self.chunk_delay = 0.0  # seconds between chunks: a slow link
        self.stall_after: dict[str, int] = {}  # path -> offset where ranged bodies stop arriving
        self.cut_after: dict[str, int] = {}  # path -> offset where ranged bodies end early, once each
        self.ranges: list[tuple[str, int, int]] = []  # (path, start, end) of every ranged read
        self.recursive = False  # answers recursive listings (``walk``), as S3 does

    # -- test controls --------------------------------------------------------------
    def put(self, path: str, body: bytes) -> None:
        self.files[path] = body

    def remove(self, path: str) -> None:
        del self.files[path]

    # -- the protocol -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.health.available

    def url_for(self, rel: RelPath) -> str:
        return "/".join([self.root_url, *(quote(p.encode("utf-8", "surrogateescape"), safe="") for p in rel.parts)])

    async def _answer(self, what: str, rel: RelPath, resting_ok: bool = False) -> None:
        if not resting_ok:
            self.health.check(what)
        self.requests[f"{what.split()[0]} {rel}"] += 1
        if self.delay or str(rel) in self.slow:
            await trio.sleep(self.delay + self.slow.get(str(rel), 0.0))
        problem: UpstreamError | None = None
        if self.down:
            problem = ConnectionLost(f"{what}: upstream unavailable (ERROR_CONNECTION)")
        elif str(rel) in self.fail:
            problem = self.fail[str(rel)]
        self.health.mark(problem)
        if problem is not None:
            raise problem

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

    async def list(self, rel: RelPath, fresh: bool = False, counted: bool = True) -> list[RemoteEntry]:
        if counted:
            await self._answer(f"list {rel}", rel)
        prefix = f"{rel}/" if rel.parts else ""
        names = {key[len(prefix):].split("/", 1)[0] for key in self.files if key.startswith(prefix)}
        found = [self._entry(f"{prefix}{name}", name) for name in sorted(names)]
        return [entry for entry in found if entry is not None]

    body_in_memory = False

    @property
    def download_path(self) -> str:
        return "in memory" + (", ranged parts" if self.ranged else "")

    async def connect_ahead(self, count: int) -> None:
        pass  # no connections

    async def walk(self, rel: RelPath, max_files: int = 5000) -> Folders | None:
        """Every folder below ``rel`` with its entries, in one request (where ``recursive``);
        None over ``max_files`` files (as S3 over that many pages)."""
        if not self.recursive:
            return None
        await self._answer(f"walk {rel}", rel)
        prefix = f"{rel}/" if rel.parts else ""
        folders: dict[RelPath, list[RemoteEntry]] = {}
        below = {key[len(prefix):] for key in self.files if key.startswith(prefix)}
        if len(below) > max(1000, max_files):
            return None
        paths = {RelPath.parse(f"{prefix}{key}").parent for key in below} | {rel}
        for folder in paths | {parent for path in paths for parent in _parents(path, rel)}:
            folders[folder] = await self.list(folder, counted=False)
        return folders

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry:
        await self._answer(f"stat {rel}", rel)
        entry = self._entry(str(rel), rel.name)
        if entry is None:
            raise NotFound(f"stat {rel}: not found upstream")
        return entry

    async def probe(self, rel: RelPath, timeout: float) -> None:
        await self._answer("probe", rel, resting_ok=True)

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: Callable[[bytes], Awaitable[None]],
                         etag: str = "", size: int = -1) -> None:
        await self._answer(f"range {rel}", rel)
        body = self.files.get(str(rel))
        if body is None:
            raise NotFound(f"fetch {rel}: not found upstream")
        self._same_object(rel, etag, size)
        if str(rel) in self.corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        self.ranges.append((str(rel), start, end))
        stall = self.stall_after.get(str(rel))
        cut = self.cut_after.pop(str(rel), None)
        position = start
        while position < min(end, len(body)):
            if stall is not None and position >= stall:
                await trio.sleep_forever()
            if cut is not None and position >= cut:
                return  # the connection closed early
            piece = body[position:min(end, position + self.chunk)]
            if self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            await on_data(piece)
            position += len(piece)

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
        await self._answer(f"get {rel}", rel)
        body = self.files.get(str(rel))
        if body is None:
            raise NotFound(f"fetch {rel}: not found upstream")
        if etag:
            self._same_object(rel, etag, -1)
        if str(rel) in self.corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        await sink.write(body)
