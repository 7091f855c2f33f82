"""`isaacfs verify`: every mirrored file checked; `--repair` fetches the wrong ones again.

A file is wrong when it is gone from the mirror, its size differs from the index's, or
its content differs from the hash recorded for it: the MD5 computed while it was
installed, else the upstream's ETag where that is an MD5. Files the index holds no hash
for (an adopted asset pack, a mirror indexed before hashes were kept) can be checked by
size only, and the result says how many were. Files on disk the index does not know
(installed just before a crash that lost the record, or put there by hand) are hashed
and indexed, so the next verify checks them, and counted.

With ``upstream``, each mirrored folder is listed afresh and every file compared with
the upstream's size and ETag (size and modification time where there is no ETag, as on
``file:``): what changed upstream is reported, and refetched with ``repair``.

Runs in the daemon of a live mount or in this process, like warm.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from ..core.errors import FetchFailed, InvalidPath, NotFound, UpstreamError
from ..core.paths import RelPath
from ..core.types import BULK, RemoteEntry
from ..fetch.integrity import MD5_ETAG
from ..store.index import FileRecord, Index
from ..store.mirror import md5_of
from .reports import off_loop
from .spec import Emit
from .workspace import Workspace

HASH_THREADS = 2
LIST_PARALLEL = 8


@dataclass
class VerifyResult:
    checked: int = 0
    bytes: int = 0
    hashed: int = 0  # content compared (by_hash + by_etag)
    by_hash: int = 0  # against the MD5 computed at install
    by_etag: int = 0  # against the upstream's MD5 ETag
    size_only: int = 0  # no hash known: size checked only
    problems: list[str] = field(default_factory=list)  # "path: what is wrong"
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)  # "path: why not"
    unindexed: int = 0  # files on disk the index did not know
    indexed_now: int = 0  # of those, hashed and indexed by this run
    upstream_checked: int = 0  # files compared with a fresh upstream listing
    changed_upstream: list[str] = field(default_factory=list)  # "path: what changed"
    gone_upstream: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return not self.unrepaired


async def _check(ws: Workspace, record: FileRecord, rel: RelPath, limit: trio.CapacityLimiter,
                 result: VerifyResult) -> str | None:
    local = ws.mirror.entry(rel)
    if local is None or local.is_dir:
        return "missing from the mirror"
    if local.size != record.size:
        return f"size {local.size} differs from the index's {record.size}"
    expected = record.md5 or (record.etag if MD5_ETAG.match(record.etag) else "")
    if not expected:
        result.size_only += 1
        return None
    async with limit:
        digest = await trio.to_thread.run_sync(md5_of, ws.mirror.path(rel))
    result.hashed += 1
    if record.md5:
        result.by_hash += 1
        if digest != record.md5:
            return f"MD5 {digest} differs from the one recorded at install ({record.md5})"
    else:
        result.by_etag += 1
        if digest != record.etag:
            return f"MD5 {digest} differs from the upstream's {record.etag}"
    return None


async def _repair(ws: Workspace, rel: RelPath) -> str | None:
    try:
        entry = await ws.upstream.stat(rel, fresh=True)
        await ws.fetcher.ensure(rel, entry, replace=True, priority=BULK)
    except (UpstreamError, FetchFailed) as exc:
        return str(exc)
    ws.on_installed(rel)
    return None


def _changed(record: FileRecord, entry: RemoteEntry) -> str | None:
    """What differs between a mirrored file's record and the upstream's entry, or None."""
    if entry.size != record.size:
        return f"size {record.size} here, {entry.size} upstream"
    if record.etag and entry.etag:
        return None if record.etag == entry.etag else f"ETag {record.etag} here, {entry.etag} upstream"
    if record.md5 and MD5_ETAG.match(entry.etag):
        # A file the index learnt of from the disk (no ETag of its own): its bytes' MD5
        # against the upstream's, whatever its size and mtime say.
        return None if record.md5 == entry.etag else f"MD5 {record.md5} here, {entry.etag} upstream"
    if entry.mtime and record.mtime and abs(entry.mtime - record.mtime) > 1.0:
        return "modified upstream since it was fetched"
    return None


async def _against_upstream(ws: Workspace, records: list[FileRecord], result: VerifyResult,
                            wrong: dict[RelPath, None]) -> None:
    folders: dict[RelPath, list[tuple[RelPath, FileRecord]]] = defaultdict(list)
    for record in records:
        if record.source == "adopted":
            continue  # the user's own asset pack: never judged against the upstream
        try:
            rel = RelPath.parse(record.path)
        except InvalidPath:
            continue
        folders[rel.parent].append((rel, record))
    limit = trio.CapacityLimiter(LIST_PARALLEL)

    async def folder(path: RelPath, files: list[tuple[RelPath, FileRecord]]) -> None:
        async with limit:
            try:
                listed = {entry.name: entry for entry in await ws.listings.fetch(path)}
            except NotFound:
                listed = {}
            except UpstreamError as exc:
                result.unrepaired.extend(f"{rel}: not compared with the upstream ({exc})" for rel, _r in files)
                return
        for rel, record in files:
            result.upstream_checked += 1
            entry = listed.get(rel.name)
            if entry is None or entry.is_dir:
                result.gone_upstream.append(str(rel))
                continue
            why = _changed(record, entry)
            if why is not None:
                result.changed_upstream.append(f"{rel}: {why}")
                wrong[rel] = None

    async with trio.open_nursery() as nursery:
        for path, files in folders.items():
            nursery.start_soon(folder, path, files)


async def index_unknown(ws: Workspace, known: set[str], result: VerifyResult,
                         limit: trio.CapacityLimiter) -> None:
    on_disk = await trio.to_thread.run_sync(ws.mirror.walk_files)
    unknown = [(path, size, mtime) for path, size, mtime in on_disk if path not in known]
    result.unindexed = len(unknown)
    if ws.index.read_only:
        return

    async def one(path: str, size: int, mtime: float) -> None:
        try:
            rel = RelPath.parse(path)
        except InvalidPath:
            return
        async with limit:
            digest = await trio.to_thread.run_sync(md5_of, ws.mirror.path(rel))
        ws.index.record_file(rel, size, mtime, "", "found", digest)
        result.indexed_now += 1

    async with trio.open_nursery() as nursery:
        for path, size, mtime in unknown:
            nursery.start_soon(one, path, size, mtime)


async def verify(ws: Workspace, repair: bool, emit: Emit, upstream: bool = False) -> VerifyResult:
    started = time.monotonic()
    result = VerifyResult()
    records = await off_loop(ws.index, Index.records)
    emit({"event": "plan", "files": len(records), "bytes": sum(r.size for r in records)})
    limit = trio.CapacityLimiter(HASH_THREADS)
    wrong: dict[RelPath, None] = {}

    async def one(record: FileRecord) -> None:
        try:
            rel = RelPath.parse(record.path)
        except InvalidPath as exc:
            result.problems.append(f"{record.path}: invalid path in the index ({exc})")
            result.unrepaired.append(f"{record.path}: cannot be fetched")
            return
        problem = await _check(ws, record, rel, limit, result)
        result.checked += 1
        result.bytes += record.size
        if problem is not None:
            result.problems.append(f"{record.path}: {problem}")
            wrong[rel] = None
        emit({"event": "done", "path": record.path, "size": record.size, "outcome": "failed" if problem else "ok"})

    async with trio.open_nursery() as nursery:
        for record in records:
            nursery.start_soon(one, record)
    known = {record.path for record in records}
    await index_unknown(ws, known, result, limit)
    if upstream:
        # Files just indexed from the disk are compared too (they were only hashed so far).
        found = [record for record in await off_loop(ws.index, Index.records) if record.path not in known]
        await _against_upstream(ws, records + found, result, wrong)
    if repair:
        for rel in wrong:
            why = await _repair(ws, rel)
            if why is None:
                result.repaired.append(str(rel))
            else:
                result.unrepaired.append(f"{rel}: {why}")
    else:
        result.unrepaired.extend(result.problems)
        result.unrepaired.extend(result.changed_upstream)
    result.elapsed = time.monotonic() - started
    return result
