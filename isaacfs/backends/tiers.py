"""Ordered upstream tiers: a site's store first, the cloud after it (CernVM-FS's ordered
proxies and Stratum-1s; the Nucleus cache's UPSTREAM_CACHE chain).

Every request goes to the first tier that is usable and holds the file; the next one
serves when it cannot:

- Connection refused, resets, timeouts, 5xx and stalls mark a tier *down* for
  ``retry_after`` seconds (the tier is probed by the first request after that, and used
  again once it answers); the request goes on to the next tier at once.
- 403 or a bad signature is a *configuration error*: said once in the log and in
  ``status``, not a flap; the tier is skipped, and tried again after ``retry_after``.
- A tier with a manifest (``core.manifest``, written last by ``warm --to``) is never asked
  what it holds: its manifest says. A name it does not hold goes to the next tier; a
  listing of a folder it holds whole is answered from the manifest with no request. Every
  body it serves is checked against the manifest's size and MD5 (the entries it gives carry
  them), so a wrong, cut or stale object is refused by the fetcher's check, the fetcher
  says so (``rejected``), and the file comes from the next tier: no tier can poison a node.
- A tier without a manifest (an HTTP cache in front of the cloud, a copy of it) is taken as
  a whole copy: its listings and its "not found" are answers.

A request waits on a down tier at most once, for its own timeout; the tiers are asked in
turn, never all at once, so the worst wait before an error is the sum of their timeouts,
and later requests skip the dead ones.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from ..core.config import redact
from ..core.errors import AccessDenied, IntegrityError, NotFound, Unavailable, UpstreamError
from ..core.health import cause_of
from ..core.manifest import MANIFEST_PATH, Manifest, ManifestError
from ..core.paths import STATE_DIR_NAME, RelPath, shown
from ..core.types import OnData, RemoteEntry, Sink, Upstream

log = logging.getLogger("isaacfs.upstream")

T = TypeVar("T")
Entries = list[RemoteEntry]
Errors = list[UpstreamError]
Servers = list[tuple["Tier", str]]
Folders = dict[RelPath, list[RemoteEntry]]
Rows = list[dict[str, Any]]
Usable = list[tuple["Tier", Manifest | None]]  # tiers worth asking now, each with its manifest
Upstreams = list[Upstream]

UP, DOWN, MISCONFIGURED, UNKNOWN = "up", "down", "misconfigured", "unknown"
SERVED_MEMORY = 20_000  # paths whose serving tier is remembered (for ``rejected``)
LATENCIES = 2048  # request times kept per tier, for p50/p95


@dataclass
class TierStats:
    requests: int = 0
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    rejected: int = 0  # bodies that failed their check
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES))

    def percentile(self, fraction: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Tier:
    """One upstream of the list, its state and its manifest."""

    def __init__(self, number: int, upstream: Upstream, retry_after: float, manifest_ttl: float,
                 manifests: bool = True, source: str = "") -> None:
        self.number = number
        # The upstream a manifest must say it was filled from (the origin, the last tier): a
        # store filled from another release holds other files under the same names.
        self.source = source
        self.manifests = manifests  # whether to look for one (the cloud has none)
        self.upstream = upstream
        self.name = redact(upstream.root_url)
        self.retry_after = retry_after
        self.manifest_ttl = manifest_ttl
        self.state = UNKNOWN
        self.since = time.time()
        self.reason = ""
        self._retry_at = 0.0
        self.manifest: Manifest | None = None
        self._manifest_at = -1.0  # trio time of the last look; -1: never looked
        self._manifest_etag: str | None = None
        self._manifest_lock = trio.Lock()
        self.stats = TierStats()
        self.last_failover: tuple[float, str] | None = None  # (epoch, why) the next tier last served for it

    def usable(self) -> bool:
        return self.state not in (DOWN, MISCONFIGURED) or trio.current_time() >= self._retry_at

    def _set(self, state: str, reason: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
        self.reason = reason

    def answered(self, started: float) -> None:
        self.stats.latencies.append(trio.current_time() - started)
        if self.state in (DOWN, MISCONFIGURED):
            log.info("tier %d (%s) answers again", self.number + 1, self.name)
        self._set(UP, "")

    def failed(self, exc: UpstreamError) -> str:
        """Record a failure of the tier itself; returns its state."""
        self.stats.errors[type(exc).__name__] += 1
        self._retry_at = trio.current_time() + self.retry_after
        cause = cause_of(exc)
        if isinstance(exc, AccessDenied):
            if self.state != MISCONFIGURED:  # said once, not at every retry
                log.error("tier %d (%s) refuses isaacfs: %s; this is a configuration error (credentials, bucket"
                          " policy): fix it, the tier is skipped until then", self.number + 1, self.name, exc)
            self._set(MISCONFIGURED, cause)
        else:
            if self.state != DOWN:
                log.warning("tier %d (%s) is down: %s; the next tier serves for %.0fs", self.number + 1, self.name,
                            cause, self.retry_after)
            self._set(DOWN, cause)
        return self.state

    def manifest_current(self) -> bool:
        return not self.manifests or (self._manifest_at >= 0
                                      and trio.current_time() - self._manifest_at < self.manifest_ttl)

    async def load_manifest(self) -> Manifest | None:
        """The tier's manifest, read on first use and again after ``manifest_ttl``; None for a
        tier without one (or one that cannot be read: said once)."""
        if self.manifest_current():
            return self.manifest
        async with self._manifest_lock:
            if self.manifest_current():  # another request read it meanwhile
                return self.manifest
            started = trio.current_time()
            try:
                entry = await self.upstream.stat(MANIFEST_PATH, fresh=True)
                if self.manifest is None or entry.etag != self._manifest_etag or not entry.etag:
                    body = _Collect()
                    await self.upstream.download(MANIFEST_PATH, entry.size, body, "")
                    manifest = Manifest.from_json(bytes(body.data))
                    if self.source and manifest.source and _release(manifest.source) != _release(self.source):
                        raise AccessDenied(f"its manifest says it was filled from {manifest.source}, not"
                                           f" {self.source}: it holds another upstream's files")
                    if self.manifest is None or manifest.id != self.manifest.id:
                        log.info("tier %d (%s): manifest %s (%d files, filled from %s)", self.number + 1, self.name,
                                 manifest.id, len(manifest.files), redact(manifest.source))
                    self.manifest = manifest
                    self._manifest_etag = entry.etag
            except NotFound:
                self.manifest = None
            except ManifestError as exc:
                if self.manifest is None:
                    log.warning("tier %d (%s): %s; it is used as a tier without one", self.number + 1, self.name, exc)
            self._manifest_at = trio.current_time()
            self.answered(started)
            return self.manifest


def _release(url: str) -> str:
    """The part of an upstream URL that names what it holds (its path: the bucket prefix of a
    release), without the host, which a proxy or another name for the same server changes."""
    return urlsplit(url).path.rstrip("/")


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes | memoryview) -> None:
        self.data += data


class _Counting:
    """A sink that tells ``count`` how much went through it."""

    def __init__(self, sink: Sink, count: Callable[[int], None]) -> None:
        self.sink = sink
        self.count = count

    async def write(self, data: bytes | memoryview) -> None:
        await self.sink.write(data)
        self.count(len(data))


class AllTiersFailed(Unavailable):
    """No tier could answer."""


class TieredUpstream:
    """Several upstreams as one (the ``Upstream`` protocol), in tier order."""

    kind = "tiers"

    def __init__(self, upstreams: Upstreams, retry_after: float, manifest_ttl: float,
                 manifests: list[bool] | None = None) -> None:
        assert upstreams
        # Where a manifest is looked for (``manifests``, by tier): by default in every tier
        # but the last of several (the origin: the cloud has none).
        last = len(upstreams) - 1
        looks = manifests or [number < last or last == 0 for number in range(len(upstreams))]
        origin = "" if looks[last] else redact(upstreams[last].root_url)
        self.tiers = [Tier(number, upstream, retry_after, manifest_ttl, manifests=looks[number],
                           source=origin if number < last else "")
                      for number, upstream in enumerate(upstreams)]
        # The mirror's identity is the last tier's: a site tier put in front of the cloud (or
        # taken away) does not make the mirror another upstream's.
        self.root_url = upstreams[-1].root_url
        self._served: OrderedDict[RelPath, Tier] = OrderedDict()
        self._rejected: OrderedDict[tuple[RelPath, int], str] = OrderedDict()
        self.last_failover: tuple[float, str] | None = None  # (epoch, why)

    # -- capabilities --------------------------------------------------------------
    @property
    def available(self) -> bool:
        return any(tier.usable() and tier.upstream.available for tier in self.tiers)

    @property
    def reads_unlisted(self) -> bool:
        return False  # which tier serves a file is its manifests' to say, by size and ETag

    @property
    def ranged(self) -> bool:
        """As the first usable tier reads (parts go only to tiers that read ranges)."""
        for tier in self.tiers:
            if tier.usable():
                return tier.upstream.ranged
        return False

    @property
    def body_in_memory(self) -> bool:
        return any(tier.upstream.body_in_memory for tier in self.tiers)

    @property
    def download_path(self) -> str:
        return " → ".join(f"tier {tier.number + 1} {tier.name} ({tier.upstream.download_path})"
                          for tier in self.tiers)

    def url_for(self, rel: RelPath) -> str:
        served = self._served.get(rel)
        return (served or self.tiers[-1]).upstream.url_for(rel)

    async def connect_ahead(self, count: int) -> None:
        for tier in self.tiers:
            if tier.usable():
                await tier.upstream.connect_ahead(count)
                return

    async def aclose(self) -> None:
        for tier in self.tiers:
            await tier.upstream.aclose()

    # -- the order ------------------------------------------------------------------
    def _failover(self, tier: Tier, exc: UpstreamError, what: str) -> None:
        state = tier.failed(exc)
        why = f"{what}: tier {tier.number + 1} ({tier.name}) {state}: {cause_of(exc)}"
        self.last_failover = tier.last_failover = (time.time(), why)

    async def _ask(self, tier: Tier, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """One request to one tier, counted; a failure of the tier marks it (NotFound and an
        object's IntegrityError are answers, and leave it as it is)."""
        started = trio.current_time()
        tier.stats.requests += 1
        try:
            result = await request()
        except (NotFound, IntegrityError):
            tier.answered(started)
            raise
        except UpstreamError as exc:
            self._failover(tier, exc, what)
            raise
        tier.answered(started)
        return result

    async def _manifest(self, tier: Tier, what: str) -> Manifest | None:
        if tier.manifest_current():
            return tier.manifest
        return await self._ask(tier, what, tier.load_manifest)

    async def _usable(self, what: str, errors: Errors) -> Usable:
        """The tiers worth asking now, in order, each with its manifest (None: a whole copy).
        A tier whose manifest cannot be had is left out, its failure added to ``errors``."""
        found: Usable = []
        for tier in self.tiers:
            if tier.usable():
                try:
                    found.append((tier, await self._manifest(tier, what)))
                except UpstreamError as exc:
                    errors.append(exc)
        return found

    def _none_left(self, what: str, errors: Errors) -> UpstreamError:
        if errors and all(isinstance(exc, NotFound) for exc in errors):
            return errors[-1]
        states = "; ".join(f"tier {tier.number + 1} {tier.name}: {tier.state}"
                           + (f" ({tier.reason})" if tier.reason else "") for tier in self.tiers)
        for exc in errors:
            if isinstance(exc, AccessDenied):
                return AccessDenied(f"{what}: no tier could serve it ({states})")
        return AllTiersFailed(f"{what}: upstream unavailable (no tier could serve it: {states})")

    # -- listings -------------------------------------------------------------------
    async def list(self, rel: RelPath, fresh: bool = False) -> Entries:
        what = f"list {rel or '/'}"
        held: dict[str, RemoteEntry] = {}  # from the manifests of the tiers before
        errors: Errors = []
        for tier, manifest in await self._usable(what, errors):
            if manifest is not None:
                for name, entry in manifest.entries(rel).items():
                    held.setdefault(name, entry)
                if manifest.is_complete(rel):
                    return list(held.values())
                continue
            try:
                entries = await self._ask(tier, what, functools.partial(tier.upstream.list, rel, fresh))
            except NotFound as exc:
                if held:
                    return list(held.values())
                errors.append(exc)
                raise self._none_left(what, errors) from None
            except UpstreamError as exc:
                errors.append(exc)
                continue
            return self._merged(rel, entries, held)
        if held:
            return list(held.values())  # what the tiers that answered hold: the rest is away
        raise self._none_left(what, errors)

    def _merged(self, rel: RelPath, listed: Entries, held: dict[str, RemoteEntry]) -> Entries:
        """A whole copy's listing, with the entries a manifest tier before it holds in the
        same version (the manifest's MD5: the check its bodies must pass)."""
        entries: dict[str, RemoteEntry] = {}
        for entry in listed:
            if rel.is_root and entry.name == STATE_DIR_NAME:
                continue  # a filled store's own folder, seen through a tier without its manifest
            mine = held.get(entry.name)
            if mine is not None and not entry.is_dir and not mine.is_dir and mine.size == entry.size and (
                    not entry.etag or self._same(rel.child(entry.name), entry.etag)):
                entries[entry.name] = mine
            else:
                entries[entry.name] = entry
        return list(entries.values())

    def _same(self, rel: RelPath, etag: str) -> bool:
        for tier in self.tiers:
            if tier.manifest is not None:
                held = tier.manifest.files.get(rel)
                if held is not None and etag in (held.md5, held.etag):
                    return True
        return False

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry:
        what = f"stat {shown(rel)}"
        errors: Errors = []
        for tier, manifest in await self._usable(what, errors):
            if manifest is not None:
                held = manifest.entries(rel.parent).get(rel.name)
                if held is not None:
                    return held
                if manifest.is_complete(rel.parent):
                    errors.append(NotFound(f"{what}: not found upstream"))
                    raise self._none_left(what, errors) from None
                continue
            try:
                return await self._ask(tier, what, functools.partial(tier.upstream.stat, rel, fresh))
            except UpstreamError as exc:
                errors.append(exc)
                if isinstance(exc, NotFound):
                    raise self._none_left(what, errors) from None
        raise self._none_left(what, errors)

    async def walk(self, rel: RelPath, max_files: int = 5000, partial: bool = False) -> Folders | None:
        for tier, manifest in await self._usable(f"list {rel or '/'}", []):
            if manifest is not None:
                if manifest.is_complete(rel):
                    return _walk_manifest(manifest, rel, max_files)
                continue
            try:
                found = await self._ask(tier, f"list {rel or '/'} (recursive)",
                                        functools.partial(tier.upstream.walk, rel, max_files, partial))
            except UpstreamError:
                continue
            if found is None:
                return None
            return {folder: self._merged(folder, entries, self._held_in(folder)) for folder, entries in found.items()}
        return None

    def _held_in(self, folder: RelPath) -> dict[str, RemoteEntry]:
        held: dict[str, RemoteEntry] = {}
        for tier in self.tiers:
            if tier.manifest is not None:
                for name, entry in tier.manifest.entries(folder).items():
                    held.setdefault(name, entry)
        return held

    async def probe(self, rel: RelPath, timeout: float) -> None:
        errors: Errors = []
        for tier in self.tiers:
            try:
                await self._ask(tier, "probe", functools.partial(tier.upstream.probe, rel, timeout))
                return
            except UpstreamError as exc:
                errors.append(exc)
        raise self._none_left("probe", errors)

    # -- bodies ---------------------------------------------------------------------
    def _servers(self, usable: Usable, rel: RelPath, size: int, etag: str,
                 ranged: bool = False) -> Servers:
        """The tiers that may serve this version of ``rel``, in order, each with the ETag to
        ask it for (If-Match): a manifest tier's objects are checked by the manifest's hash,
        not their own ETags; a whole copy is asked for the source's ETag."""
        servers: Servers = []
        for tier, manifest in usable:
            if (rel, tier.number) in self._rejected or (ranged and not tier.upstream.ranged):
                continue
            if manifest is not None:
                if manifest.holds(rel, size, etag) is not None:
                    servers.append((tier, ""))
                continue
            source_etag = etag
            for earlier in self.tiers[:tier.number]:
                held = earlier.manifest.holds(rel, size, etag) if earlier.manifest is not None else None
                if held is not None and etag == held.md5 and held.etag:
                    source_etag = held.etag  # the entry carries the manifest's MD5; the source knows its own ETag
            servers.append((tier, source_etag))
        return servers

    def _remember(self, rel: RelPath, tier: Tier) -> None:
        self._served[rel] = tier
        self._served.move_to_end(rel)
        while len(self._served) > SERVED_MEMORY:
            self._served.popitem(last=False)

    async def _body(self, rel: RelPath, size: int, etag: str, what: str,
                    send: Callable[[Tier, str, Callable[[int], None]], Awaitable[None]], ranged: bool = False) -> None:
        """One body (or range) from the first tier that holds this version. ``send(tier,
        etag, count)`` asks one tier, telling ``count`` of every byte it hands on: a tier that
        fails before the first byte gives way to the next one in the same request; after it,
        the failure is the caller's to try again (its next try skips the tier, now down)."""
        errors: Errors = []
        usable = await self._usable(what, errors)  # which tiers hold it is the manifests' to say
        for tier, asked in self._servers(usable, rel, size, etag, ranged):
            if not tier.usable():  # failed for an earlier path of this same request
                continue
            self._remember(rel, tier)
            started = trio.current_time()
            tier.stats.requests += 1
            landed = 0

            def count(amount: int) -> None:
                nonlocal landed
                landed += amount

            try:
                await send(tier, asked, count)
            except (NotFound, IntegrityError) as exc:
                tier.answered(started)
                if isinstance(exc, NotFound) and tier is not self.tiers[-1]:
                    errors.append(exc)
                    continue  # a copy that lacks it: the next tier
                raise
            except UpstreamError as exc:
                tier.stats.bytes += landed
                self._failover(tier, exc, what)
                if landed:
                    raise  # bytes were handed on: the caller tries again
                errors.append(exc)
                continue
            tier.stats.bytes += landed
            tier.answered(started)
            return
        raise self._none_left(what, errors)

    async def download(self, rel: RelPath, size: int, sink: Sink, etag: str = "") -> None:
        async def send(tier: Tier, asked: str, count: Callable[[int], None]) -> None:
            await tier.upstream.download(rel, size, _Counting(sink, count), asked)

        await self._body(rel, size, etag, f"fetch {shown(rel)}", send)

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: OnData,
                         etag: str = "", size: int = -1) -> None:
        async def send(tier: Tier, asked: str, count: Callable[[int], None]) -> None:
            async def counted(block: bytes | memoryview) -> None:
                await on_data(block)
                count(len(block))

            await tier.upstream.read_range(rel, start, end, counted, asked, size)

        await self._body(rel, size, etag, f"fetch {shown(rel)}", send, ranged=True)

    def rejected(self, rel: RelPath, why: str) -> None:
        """The fetcher refused the last body of ``rel`` (its size or hash): the tier that
        served it does not serve ``rel`` again; the next one does."""
        tier = self._served.get(rel)
        if tier is None or tier is self.tiers[-1]:
            return  # the last tier: nothing to fail over to (the fetcher lists afresh)
        tier.stats.rejected += 1
        self._rejected[(rel, tier.number)] = why
        while len(self._rejected) > SERVED_MEMORY:
            self._rejected.popitem(last=False)
        log.warning("tier %d (%s) served %s that failed its check (%s); the next tier serves it",
                    tier.number + 1, tier.name, shown(rel), why)
        why = f"{shown(rel)}: tier {tier.number + 1} ({tier.name}) served a body that failed its check: {why}"
        self.last_failover = tier.last_failover = (time.time(), why)

    # -- status ---------------------------------------------------------------------
    def tier_rows(self) -> Rows:
        rows = []
        for tier in self.tiers:
            p50, p95 = tier.stats.percentile(0.5), tier.stats.percentile(0.95)
            rows.append({
                "tier": tier.number + 1, "upstream": tier.name, "state": tier.state, "since": tier.since,
                "reason": tier.reason, "requests": tier.stats.requests, "bytes": tier.stats.bytes,
                "errors": dict(tier.stats.errors), "rejected": tier.stats.rejected,
                "p50_ms": None if p50 is None else round(p50 * 1000, 1),
                "p95_ms": None if p95 is None else round(p95 * 1000, 1),
                "manifest": tier.manifest.id if tier.manifest is not None else None,
                "last_failover": None if tier.last_failover is None else {"at": tier.last_failover[0],
                                                                          "why": tier.last_failover[1]},
                "path": tier.upstream.download_path,
            })
        return rows


def _walk_manifest(manifest: Manifest, rel: RelPath, max_files: int) -> dict[RelPath, list[RemoteEntry]] | None:
    folders: dict[RelPath, list[RemoteEntry]] = {}
    pending = [rel]
    files = 0
    while pending:
        folder = pending.pop()
        entries = manifest.entries(folder)
        folders[folder] = list(entries.values())
        for entry in entries.values():
            if entry.is_dir:
                pending.append(folder.child(entry.name))
            else:
                files += 1
        if files > max_files:
            return None
    return folders
