"""`isaacfs verify`: every mirrored file checked against the index; `--repair` fetches again.

A file is wrong when it is gone from the mirror, its size differs from the index's, or
(where the upstream's ETag is an MD5) its MD5 differs. Files on disk the index does
not know (put there by hand) are counted, not judged. Runs in the daemon of a live
mount or in this process, like warm.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from ..core.errors import FetchFailed, InvalidPath, UpstreamError
from ..core.paths import RelPath
from ..fetch.fetcher import BULK, MD5_ETAG
from ..store.mirror import md5_of
from .spec import Emit
from .workspace import Workspace

HASH_THREADS = 2


@dataclass
class VerifyResult:
    checked: int = 0
    bytes: int = 0
    hashed: int = 0
    problems: list[str] = field(default_factory=list)  # "path: what is wrong"
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)  # "path: why not"
    unindexed: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return not self.unrepaired


async def _check(ws: Workspace, rel: RelPath, size: int, etag: str, limit: trio.CapacityLimiter,
                 result: VerifyResult) -> str | None:
    local = ws.mirror.entry(rel)
    if local is None or local.is_dir:
        return "missing from the mirror"
    if local.size != size:
        return f"size {local.size} differs from the index's {size}"
    if MD5_ETAG.match(etag):
        async with limit:
            digest = await trio.to_thread.run_sync(md5_of, ws.mirror.path(rel))
        result.hashed += 1
        if digest != etag:
            return f"MD5 {digest} differs from the upstream's {etag}"
    return None


async def _repair(ws: Workspace, rel: RelPath) -> str | None:
    try:
        entry = await ws.upstream.stat(rel)
        await ws.fetcher.ensure(rel, entry, replace=True, priority=BULK)
    except (UpstreamError, FetchFailed) as exc:
        return str(exc)
    ws.on_installed(rel)
    return None


async def verify(ws: Workspace, repair: bool, emit: Emit) -> VerifyResult:
    started = time.monotonic()
    result = VerifyResult()
    records = ws.index.files()
    emit({"event": "plan", "files": len(records), "bytes": sum(size for _p, size, *_r in records)})
    limit = trio.CapacityLimiter(HASH_THREADS)
    wrong: list[RelPath] = []

    async def one(path: str, size: int, etag: str) -> None:
        try:
            rel = RelPath.parse(path)
        except InvalidPath as exc:
            result.problems.append(f"{path}: invalid path in the index ({exc})")
            result.unrepaired.append(f"{path}: cannot be fetched")
            return
        problem = await _check(ws, rel, size, etag, limit, result)
        result.checked += 1
        result.bytes += size
        if problem is not None:
            result.problems.append(f"{path}: {problem}")
            wrong.append(rel)
        emit({"event": "done", "path": path, "size": size, "outcome": "failed" if problem else "ok"})

    async with trio.open_nursery() as nursery:
        for path, size, etag, _fetched, _access in records:
            nursery.start_soon(one, path, size, etag)
    indexed = {path for path, *_rest in records}
    on_disk = await trio.to_thread.run_sync(ws.mirror.walk_files)
    result.unindexed = sum(1 for path, _size, _mtime in on_disk if path not in indexed)
    if repair:
        for rel in wrong:
            why = await _repair(ws, rel)
            if why is None:
                result.repaired.append(str(rel))
            else:
                result.unrepaired.append(f"{rel}: {why}")
    else:
        result.unrepaired = list(result.problems)
    result.elapsed = time.monotonic() - started
    return result
