"""`isaacfs warm --to s3://...`: fill a site's store once, so a whole cluster reaches the
cloud once.

The selection is warmed into the filler's mirror first (the usual warm: what the mirror
holds is not fetched again; every file is checked as it lands), then copied into the store:
in parallel, each object skipped if the store holds it with the same MD5 already (one HEAD),
otherwise PUT with ``Content-MD5`` (multipart above 64 MiB), never visible half written.
The store's manifest (``core.manifest``: every file, size, MD5, the folders held whole) is
written last, naming only what the store holds: it is the commit point nodes read. A fill
stopped part way (killed, Ctrl-C, a refused key) leaves the manifest as it was; running the
same command again goes on where it stopped, skipping what is there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import trio

from ..backends.s3store import S3Store
from ..core.categories import category_root
from ..core.config import redact
from ..core.errors import AccessDenied, UpstreamError, UserError
from ..core.manifest import MANIFEST_PATH, Held, Manifest, ManifestError
from ..core.paths import RelPath
from ..core.retry import RetryPolicy, is_temp_failure, retrying
from ..core.types import RemoteEntry
from ..store.mirror import md5_of
from .plan import Plan
from .spec import Emit, WarmResult, WarmSpec
from .warm import run
from .workspace import Workspace

PUT_RETRY = RetryPolicy(tries=4)


@dataclass
class StoreRow:
    name: str
    files: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    present: int = 0
    failed: int = 0


@dataclass
class FillResult:
    warm: WarmResult
    store: str
    rows: list[StoreRow] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    manifest_id: str = ""
    manifest_files: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.warm.ok and not self.failures and bool(self.manifest_id)


def complete_folders(spec: WarmSpec, plan: Plan) -> set[RelPath]:
    """The folders this fill copies whole: categories without a subset, every folder of which
    was listed (a closure, a manifest or a subset copies some files of a folder, not all)."""
    if spec.subsets:
        return set()
    failed = {group for group, _why in plan.failures}
    folders: set[RelPath] = set()
    for category in spec.categories:
        if category == "all":
            if not failed:
                folders |= {RelPath(("Isaac",)), RelPath(("NVIDIA",))}
        elif category not in failed:
            folders.add(category_root(category))
    return folders


async def fill(ws: Workspace, spec: WarmSpec, store: S3Store, emit: Emit, jobs: int) -> FillResult:
    started = time.monotonic()
    plan = Plan()
    warmed = await run(ws, spec, emit, plan)
    result = FillResult(warmed, store.name)
    if warmed.stopped or warmed.dry_run:
        return result
    emit({"event": "phase", "text": f"copying into {store.name}"})
    source = redact(ws.upstream.root_url)
    try:
        raw = await trio.to_thread.run_sync(store.get, MANIFEST_PATH)
    except AccessDenied as exc:
        raise UserError(str(exc)) from None
    except UpstreamError as exc:
        raise UserError(f"cannot reach the store {store.name}: {exc}; check its endpoint and run the same"
                        " command again (what was warmed is kept)") from None
    previous: Manifest | None = None
    if raw is not None:
        try:
            previous = Manifest.from_json(raw)
        except ManifestError as exc:
            result.warm.notes.append(f"the store's manifest could not be read ({exc}); a new one replaces it")
    if previous is not None and previous.source and previous.source != source:
        raise UserError(f"{store.name} was filled from {previous.source}, not {source}: a store holds one"
                        " upstream's files; fill it from the same upstream, or give another s3:// prefix")
    manifest = Manifest(source, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        dict(previous.files) if previous else {}, set(previous.complete) if previous else set())
    rows: dict[str, StoreRow] = {}
    limit = trio.CapacityLimiter(max(1, jobs))
    refused: list[AccessDenied] = []

    async def one(group: str, rel: RelPath, entry: RemoteEntry, scope: trio.CancelScope) -> None:
        row = rows.setdefault(group, StoreRow(group))
        row.files += 1
        local = ws.mirror.entry(rel)
        if local is None or local.is_dir or local.size != entry.size:
            row.failed += 1
            result.failures.append(f"{rel}: not in the mirror with its {entry.size} bytes (its warm failed);"
                                   " not copied")
            return
        path = ws.mirror.path(rel)
        async with limit:
            md5 = ws.index.file_md5(rel) or await trio.to_thread.run_sync(md5_of, path)
            try:
                held = await retrying(lambda _n: trio.to_thread.run_sync(store.held_md5, rel, entry.size),
                                      f"HEAD {rel}", PUT_RETRY, temporary=is_temp_failure)
                if held == md5:
                    row.present += 1
                else:
                    await retrying(lambda _n: trio.to_thread.run_sync(store.put_file, rel, path, md5, entry.size),
                                   f"PUT {rel}", PUT_RETRY, temporary=is_temp_failure)
                    row.uploaded += 1
                    row.uploaded_bytes += entry.size
                    emit({"event": "done", "path": str(rel), "size": entry.size, "outcome": "stored"})
            except AccessDenied as exc:
                refused.append(exc)
                scope.cancel()
                return
            except UpstreamError as exc:
                row.failed += 1
                result.failures.append(f"{rel}: {exc}")
                return
        manifest.files[rel] = Held(entry.size, md5, entry.etag, entry.mtime)

    async with trio.open_nursery() as nursery:
        for group, files in sorted(plan.groups.items()):
            for rel, entry in sorted(files.items(), key=lambda item: item[0].parts):
                nursery.start_soon(one, group, rel, entry, nursery.cancel_scope)
    if refused:
        raise UserError(str(refused[0]))
    if not result.failures and not warmed.failures:
        manifest.complete |= complete_folders(spec, plan)  # whole only if every file of it is held
    body = manifest.to_json()  # sets manifest.id
    if previous is None or previous.id != manifest.id:
        try:
            await retrying(lambda _n: trio.to_thread.run_sync(store.put_bytes, MANIFEST_PATH, body,
                                                              "application/json"),
                           "PUT manifest", PUT_RETRY, temporary=is_temp_failure)
        except UpstreamError as exc:
            raise UserError(f"the store's manifest could not be written ({exc}): nodes see the store as it was;"
                            " run the same command again (what is there is skipped)") from None
    result.manifest_id, result.manifest_files = manifest.id, len(manifest.files)
    result.rows = sorted(rows.values(), key=lambda row: row.name)
    result.elapsed = time.monotonic() - started
    return result
