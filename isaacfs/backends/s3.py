"""An S3 root over isaacfs's own kept-alive HTTP pool (``http.py``): listings, recursive
walks, whole GETs resumed from where they stopped, ranged parts.

Two uses. Behind the router (an ``https://`` root, the cloud): anonymous, and a bucket that
refuses anonymous HTTP is told to the router, which sends it through omni.client (with the
credentials of omniverse.toml) from then on. As an ``s3://`` tier (``explicit``): requests
are signed when credentials were found, and a refusal is an error of its own (a wrong key
is a configuration error, not a reason to go elsewhere)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..core.config import redact
from ..core.errors import AccessDenied, InvalidPath, Unavailable
from ..core.health import Health
from ..core.paths import RelPath, check_name
from ..core.retry import RetryPolicy, resumable, retrying
from ..core.types import OnData, RemoteEntry, Sink, Walked
from .entries import Folders, Listing
from .http import HttpRanges, NotS3, Partial, Sign

log = logging.getLogger("isaacfs.upstream")

HTTP_RETRY = RetryPolicy(tries=3)  # one small file's GET, from the byte it stopped at (large files: per part)


class RefusedBeforeBody(Exception):
    """An anonymous GET was refused before any byte came: omni.client (with credentials) fetches."""


class _ShortBody(Unavailable):
    """A body that ended before its size: tried again from where it stopped."""


class S3Http:
    def __init__(self, root_url: str, bucket_url: str, key_root: str, health: Health, timeout: float,
                 stall_timeout: float, sign: Sign | None = None, explicit: bool = False,
                 retry: RetryPolicy = HTTP_RETRY) -> None:
        # ``retry``: a body's tries here; one for a tier in front of another (its failover
        # is the next tier, at once: trying a dead site three times would triple the wait).
        self.retry = retry
        self.root_url = root_url  # for logs (redacted) and connect_ahead
        self.bucket_url = bucket_url  # where ListObjectsV2 queries go
        self.key_root = key_root
        self.explicit = explicit
        self.pool = HttpRanges(health, timeout, stall_timeout, sign=sign)
        # Whether the host answers S3 (None: not asked yet; the first listing asks). An
        # explicit s3:// tier is S3 by its URL.
        self.answers: bool | None = True if explicit else None

    @property
    def usable(self) -> bool:
        """Not known to refuse: worth asking."""
        return self.answers is not False

    def refused(self, why: str) -> None:
        if self.answers is not False:
            log.warning("the upstream %s does not answer anonymous HTTP (%s): listings and files go through"
                        " omni.client", redact(self.root_url), why)
        self.answers = False

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def list(self, rel: RelPath, what: str) -> Listing | None:
        """The folder's entries by one S3 listing (one round trip); None where the upstream
        does not answer those (omni.client lists)."""
        if not self.usable:
            return None
        try:
            path = "/".join([self.key_root, *rel.parts]).encode("utf-8").decode("utf-8")
        except UnicodeEncodeError:
            return None  # a name that cannot be an S3 key: omni.client answers as it can
        try:
            found = await self.pool.list_folder(self.bucket_url, path, what)
        except NotS3 as exc:
            if self.explicit:
                raise AccessDenied(f"{what}: the store refused an anonymous listing ({str(exc).rsplit(': ', 1)[-1]});"
                                   " give it credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or"
                                   " AWS_PROFILE)") from None
            self.refused(str(exc).rsplit(": ", 1)[-1])
            return None
        assert found is not None  # only a recursive listing gives up on a page count
        self.answers = True

        def maker(is_dir: bool, size: int, mtime: float, etag: str) -> Callable[[str], RemoteEntry]:
            return lambda name: RemoteEntry(name, is_dir, 0 if is_dir else size, mtime, etag)

        return [(name, maker(is_dir, size, mtime, etag)) for name, is_dir, size, mtime, etag in found]

    async def connect_ahead(self, count: int) -> None:
        """Open up to ``count`` kept-alive connections now, so a burst of requests that follows
        pays no handshakes. Before the first listing tells whether the bucket answers
        anonymous HTTP, they are opened on the chance (one that does not costs a few idle
        connections)."""
        if not self.usable:
            return
        try:
            await self.pool.connect_ahead(self.bucket_url, count)
        except Exception:  # never worth a failure: the requests open what they need
            log.debug("opening connections ahead failed", exc_info=True)

    async def walk(self, rel: RelPath, max_files: int, partial: bool = False) -> Folders | None:
        """Every folder below ``rel`` with its entries, from one recursive listing (a request
        per 1,000 keys); None if the host does not answer those, or past ``max_files``
        (``partial``: the folders the first ``max_files`` keys hold whole, None if none)."""
        if not self.usable:
            return None
        path = "/".join([self.key_root, *rel.parts])
        what = f"list {rel or '/'} (recursive)"
        try:
            found = await self.pool.list_folder(self.bucket_url, path, what, recursive=True,
                                                max_pages=max(1, max_files // 1000), partial=partial)
        except NotS3:
            return None  # the plain listing finds out and tells (before the first one: on the chance)
        self.answers = True
        if found is None:
            return None
        folders: dict[RelPath, dict[str, RemoteEntry]] = {rel: {}}
        for key, _is_dir, size, mtime, etag in found:
            names = key.split("/")
            try:
                checked: list[str] = []
                for name in names[:-1]:
                    checked.append(check_name(name))
                leaf = check_name(names[-1]) if names[-1] else None  # "" ends a folder marker
            except InvalidPath as exc:  # said as a folder's own listing says it
                where = RelPath((*rel.parts, *checked))
                log.warning("skipped upstream entry in %s/: %s", where or "", exc)
                continue
            folder = rel
            for name in checked:
                folders.setdefault(folder, {}).setdefault(name, RemoteEntry(name, True, 0, 0.0, ""))
                folder = folder.child(name)
                folders.setdefault(folder, {})
            if leaf is not None:
                known = folders.setdefault(folder, {}).get(leaf)
                if known is None or not known.is_dir:
                    folders[folder][leaf] = RemoteEntry(leaf, False, size, mtime, etag)
        if isinstance(found, Partial):
            # The folders holding the last key listed go on past it: only the others are whole;
            # of those, what the page saw is kept apart (``Walked.partly``).
            last = found[-1][0].split("/")[:-1] if found else []
            partly: dict[RelPath, list[RemoteEntry]] = {}
            for depth in range(len(last) + 1):
                folder = RelPath((*rel.parts, *last[:depth]))
                seen = folders.pop(folder, None)
                if seen:
                    partly[folder] = list(seen.values())
            if not folders and not partly:
                return None
            return Walked({folder: list(entries.values()) for folder, entries in folders.items()}, partly)
        return {folder: list(entries.values()) for folder, entries in folders.items()}

    async def read_range(self, url: str, start: int, end: int, what: str,
                         on_data: OnData, etag: str, size: int) -> None:
        await self.pool.read(url, start, end, what, on_data, etag, size)

    async def download(self, url: str, size: int, sink: Sink, what: str, etag: str = "") -> None:
        """One GET; a 5xx, a reset or a body cut short is tried again from the byte it stopped
        at (as omni.client retries internally), under the one retry policy. A body of another
        size than the listing said fails the fetcher's size and hash checks, which list afresh
        and retry. Raises RefusedBeforeBody if the bucket wants credentials."""
        landed = 0

        async def on_data(block: bytes | memoryview) -> None:
            nonlocal landed
            await sink.write(block)
            landed += len(block)

        async def attempt(_number: int) -> None:
            try:
                await self.pool.read(url, landed, size, what, on_data, etag, size)
            except AccessDenied as exc:
                if landed == 0 and not self.explicit:
                    self.refused(str(exc).rsplit(": ", 1)[-1])
                    raise RefusedBeforeBody from None
                raise
            if landed < size:
                raise _ShortBody(f"{what}: the body ended at byte {landed} of {size}")

        try:
            # A changed object is the fetcher's to handle (it lists afresh), not worth a resume.
            await retrying(attempt, what, self.retry, temporary=resumable)
        except _ShortBody:
            return  # short after every try: the fetcher's size check reports it and lists afresh

    async def reachable(self, url: str, timeout: float, what: str) -> None:
        await self.pool.reachable(url, timeout, what)
