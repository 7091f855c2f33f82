"""The router for an asset root URL: which way each request goes.

An S3 root (https) is listed and read over isaacfs's own kept-alive HTTP pool (``s3.py``),
large files in ranged parts, as long as the bucket answers anonymous HTTP; a ``file:``
tree is read directly in blocks (``local.py``), links out of it and special files never
served; everything else (Nucleus, a bucket that wants the credentials of omniverse.toml)
goes through omni.client (``omni_client.py``, the only module that imports it). Every
listed name is validated here, and a dead upstream is not asked for a while (the core's
``Health`` breaker) instead of making every lookup wait for it. It writes nothing itself: a
body goes to the caller's ``Sink``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import trio

from ..core.config import Settings, redact
from ..core.errors import NotFound, Unavailable, UpstreamError
from ..core.health import Health
from ..core.paths import RelPath, shown
from ..core.retry import RetryPolicy
from ..core.types import OnData, RemoteEntry, Sink, TierRows
from . import omni_client
from .entries import Folders, Listing, checked_entries
from .local import LocalRanges
from .omni_client import client_session
from .s3 import HTTP_RETRY, RefusedBeforeBody, S3Http

__all__ = ["OmniUpstream", "client_session"]

log = logging.getLogger("isaacfs.upstream")


def _special_reason(root: str, path: str) -> str | None:
    """Why a local path of a file: upstream is not an asset (None if it is one): a link out of
    the upstream tree, or a FIFO, socket or device. Runs in a worker thread."""
    real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        return "a link out of the upstream tree"
    try:
        st = os.stat(real)
    except OSError as exc:
        return exc.strerror or "unreadable"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "not a regular file or folder"
    return None


class OmniUpstream:
    """An asset root URL (https S3 root, omniverse://, file:) seen as a read-only tree."""

    kind = "omni.client"

    def __init__(self, root_url: str, timeout: float, stall_timeout: float, retry_after: float,
                 min_rate: float, http_ranges: bool = True, front: bool = False) -> None:
        self.root_url = root_url.rstrip("/")
        parts = urlsplit(self.root_url)
        # A file: upstream is a local tree: links out of it and special files are never served.
        self.local_root = os.path.realpath(unquote(parts.path)) if parts.scheme == "file" else None
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.min_rate = min_rate
        self.health = Health(redact(self.root_url), retry_after)
        # S3 (the cloud root, on-prem buckets) serves byte ranges: files stream in parts over
        # HTTP. A file: tree is read directly, in blocks, so a hung network file system is seen
        # as a stall. Nucleus gets whole bodies through omni.client.
        self.s3 = (S3Http(self.root_url, f"{parts.scheme}://{parts.netloc}/", unquote(parts.path).strip("/"),
                          self.health, timeout, stall_timeout, retry=RetryPolicy(tries=1) if front else HTTP_RETRY)
                   if parts.scheme == "https" and http_ranges else None)
        # Not in parallel parts: a file rewritten in place while its parts were read would be
        # installed half old, half new (there is no ETag to catch it); one read in order that
        # checks the file did not change while it was read catches it.
        self.local = LocalRanges(stall_timeout) if self.local_root is not None else None

    @property
    def download_path(self) -> str:
        """How files come, for `isaacfs status`."""
        if self.local is not None:
            return "local reads in 1 MiB blocks"
        if self.s3 is not None and self.s3.usable:
            return "HTTP GETs and listings (urllib3, kept alive), large files in parallel ranged parts"
        return "omni.client whole bodies" + (" (the bucket refuses anonymous HTTP)" if self.s3 is not None else "")

    @property
    def body_in_memory(self) -> bool:
        """omni.client hands a body over whole (Nucleus; a bucket refusing anonymous HTTP)."""
        return self.local is None and not (self.s3 is not None and self.s3.usable)

    @property
    def ranged(self) -> bool:
        """Files stream in ranged parts (S3 over anonymous HTTP)."""
        return self.s3 is not None and self.s3.answers is True

    @property
    def reads_unlisted(self) -> bool:
        """A file may be read by range before it is listed (a layer read beside its folder's
        listing): S3 over HTTP, and before the first listing has told whether the bucket
        answers anonymously (a refusal costs that one read, and the file is fetched as usual)."""
        return self.s3 is not None and self.s3.answers is not False

    @classmethod
    def from_settings(cls, settings: Settings) -> OmniUpstream:
        return cls(settings.upstream, settings.upstream_timeout, settings.stall_timeout,
                   settings.upstream_retry_after, settings.min_download_rate, settings.http_ranges)

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: OnData,
                         etag: str = "", size: int = -1) -> None:
        """Bytes [start, end) of ``rel`` over HTTP (S3 upstreams only: see ``ranged``), of the
        object version ``etag`` and ``size`` bytes (http.py checks every answer)."""
        assert self.s3 is not None
        what = f"fetch {shown(rel)}"
        await self._refuse_special(rel, what)
        await self.s3.read_range(self.url_for(rel), start, end, what, on_data, etag, size)

    def _local_path(self, rel: RelPath) -> str:
        assert self.local_root is not None
        return os.path.join(self.local_root, *rel.parts)

    def tier_rows(self) -> TierRows:
        return []

    def rejected(self, rel: RelPath, why: str) -> None:
        """One upstream: nothing to fail over to (the fetcher lists afresh and tries again)."""

    async def aclose(self) -> None:
        if self.s3 is not None:
            await self.s3.aclose()

    # -- URLs ---------------------------------------------------------------------
    def url_for(self, rel: RelPath) -> str:
        url = self.root_url
        for part in rel.parts:
            try:
                part.encode("utf-8")
            except UnicodeEncodeError:
                # A name that is not UTF-8 (kept as surrogates): omni.client cannot take it
                # as text, so its bytes are percent-encoded here, as one segment.
                url = f"{url}/{quote(part.encode('utf-8', 'surrogateescape'), safe='')}"
                continue
            url = omni_client.join(url, part)  # percent-encodes each name as one segment
        return url

    # -- health -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.health.available

    async def _guarded(self, what: str, request: Callable[[], Awaitable[Any]]) -> Any:
        """An omni.client request, through the health breaker."""
        self.health.check(what)
        try:
            answer = await request()
        except UpstreamError as exc:
            self.health.mark(exc)
            raise
        self.health.mark(None)
        return answer

    # -- operations ---------------------------------------------------------------
    async def list(self, rel: RelPath, fresh: bool = False) -> list[RemoteEntry]:
        """List a folder. Entries whose names are unsafe are skipped with a log line."""
        what = f"list {rel or '/'}"
        listed = await self.s3.list(rel, what) if self.s3 is not None else None
        if listed is None:
            listed = await self._omni_list(rel, fresh, what)
        entries = checked_entries(listed, rel)
        if self.local_root is not None and entries:
            names = tuple(entries)
            reasons = await self._local_checks(tuple(rel.child(name) for name in names), f"list {rel or '/'}")
            for name, why in zip(names, reasons, strict=True):
                if why is not None:
                    log.warning("skipped upstream entry %s: %s", shown(rel.child(name)), why)
                    del entries[name]
        return list(entries.values())

    async def connect_ahead(self, count: int) -> None:
        """Open up to ``count`` kept-alive connections now, where requests go over isaacfs's
        own HTTP pool (S3), so a burst of requests that follows pays no handshakes."""
        if self.s3 is not None:
            await self.s3.connect_ahead(count)

    async def walk(self, rel: RelPath, max_files: int = 5000, partial: bool = False) -> Folders | None:
        """Every folder below ``rel`` with its entries, from one recursive S3 listing (a
        request per 1,000 keys, where a walk lists folder by folder: one round trip per level
        of depth, as rclone copy does). None where that is not how this upstream is listed,
        or for a tree of more than ``max_files`` files (then a parallel walk is quicker)."""
        return await self.s3.walk(rel, max_files, partial) if self.s3 is not None else None

    async def _omni_list(self, rel: RelPath, fresh: bool, what: str) -> Listing:
        url = self.url_for(rel)
        if fresh:
            await omni_client.forget_cached(url, self.timeout)
        listed: Listing = await self._guarded(what, lambda: omni_client.list_folder(url, self.timeout, what))
        return listed

    async def probe(self, rel: RelPath, timeout: float) -> None:
        """Ask the upstream now, even while it is resting; raise if it does not answer."""
        url, what = self.url_for(rel), "probe"
        if self.local_root is not None and rel.is_root and not os.path.isdir(self.local_root):
            raise Unavailable(f"{what}: the upstream folder {self.local_root} does not exist")
        try:
            if self.s3 is not None and self.s3.usable:
                # Over isaacfs's own pool the cause is known at once (a name that does not
                # resolve, a refused connection), where omni.client only says so in its log.
                await self.s3.reachable(url, timeout, what)
            else:
                await omni_client.answers(url, timeout, what)
        except UpstreamError as exc:
            self.health.mark(exc)
            raise
        self.health.mark(None)

    async def _local_checks(self, rels: tuple[RelPath, ...], what: str) -> tuple[str | None, ...]:
        """_special_reason for each path, in one worker thread that is abandoned if the local
        tree (a hung NFS server) does not answer in time."""
        root = self.local_root
        assert root is not None
        assert self.local is not None
        paths = [os.path.join(root, *rel.parts) for rel in rels]
        with trio.move_on_after(self.timeout):
            # The local reader's own threads: those stuck on a hung server never starve others.
            return await trio.to_thread.run_sync(lambda: tuple(_special_reason(root, p) for p in paths),
                                                 abandon_on_cancel=True, limiter=self.local.limiter)
        raise Unavailable(f"{what}: the upstream folder did not answer within {self.timeout:g}s")

    async def _refuse_special(self, rel: RelPath, what: str) -> None:
        if self.local_root is not None and not rel.is_root:
            why = (await self._local_checks((rel,), what))[0]
            if why is not None:
                raise NotFound(f"{what}: {why}")

    async def stat(self, rel: RelPath, fresh: bool = False) -> RemoteEntry:
        what = f"stat {shown(rel)}"
        await self._refuse_special(rel, what)
        url = self.url_for(rel)
        if fresh:
            await omni_client.forget_cached(url, self.timeout)
        entry: RemoteEntry = await self._guarded(f"stat {rel}", lambda: omni_client.stat(url, self.timeout, what,
                                                                                          rel.name))
        return entry

    async def download(self, rel: RelPath, size: int, sink: Sink, etag: str = "") -> None:
        """Hand the body of ``rel`` (``size`` bytes) to ``sink``.

        A file: tree is read in blocks, each bounded by ``stall_timeout`` (local.py). An S3
        root gets one GET on a connection kept alive (s3.py), a stall judged by progress:
        over long links omni.client's ``read_file`` took about two round trips a file where
        one will do (bench/bench_wan.py, category warm at 200 ms). Elsewhere (Nucleus)
        omni.client's ``read_file`` hands over the whole body at once (its ``copy_file``
        does the same internally, then writes), so progress cannot be watched: the bound
        is a deadline, ``stall_timeout`` plus the time the file takes at ``min_rate``
        bytes/s.
        """
        what = f"fetch {shown(rel)}"
        self.health.check(what)
        await self._refuse_special(rel, what)
        if self.local is not None:
            await self.local.read(self._local_path(rel), what, sink.write)
            return
        if self.s3 is not None and self.s3.answers is True and size > 0:
            try:
                await self.s3.download(self.url_for(rel), size, sink, what, etag)
                return
            except RefusedBeforeBody:
                pass  # asks for credentials: omni.client has them (omniverse.toml)
        url = self.url_for(rel)
        deadline = self.stall_timeout + size / self.min_rate
        slow = Unavailable(f"{what}: not done after {deadline:.0f}s (slower than"
                           f" {self.min_rate / 1e6:g} MB/s), download abandoned")
        content = await self._guarded(what, lambda: omni_client.read_file(url, deadline, what, slow))
        await sink.write(content)
