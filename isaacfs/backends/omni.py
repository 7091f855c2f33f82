"""The omni.client backend: an asset root reached through NVIDIA's omni.client.

This is the one module of isaacfs that imports omni.client. It turns omni.client's callback API
into trio awaitables (results are handed back with ``TrioToken.run_sync_soon``, so no
thread is held per request), bounds every call with a timeout (omni.client's own HTTP
retries can take a minute on a dead host), maps results to a few exception kinds,
validates every listed name, and stops asking a dead upstream for a while (the core's
``Health`` breaker) instead of making every lookup wait for it. It writes nothing
itself: a body goes to the caller's ``Sink``.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import trio

from ..core.config import Settings, redact
from ..core.errors import AccessDenied, ConnectionLost, InvalidPath, NotFound, Unavailable, UpstreamError
from ..core.health import Health
from ..core.paths import RelPath, check_name, shown
from ..core.retry import RetryPolicy, resumable, retrying
from ..core.types import RemoteEntry, Sink
from .http import HttpRanges, NotS3
from .local import LocalRanges

log = logging.getLogger("isaacfs.upstream")

HTTP_RETRY = RetryPolicy(tries=3)  # one small file's GET, from the byte it stopped at (large files: per part)


# (name as listed, None if not UTF-8; how to make its entry once the name is checked)
Listing = list[tuple[str | None, Callable[[str], RemoteEntry]]]
# every folder below a root, with its entries
Folders = dict[RelPath, list[RemoteEntry]]


class _RefusedBeforeBody(Exception):
    """An anonymous GET was refused before any byte came: omni.client (with credentials) fetches."""


class _ShortBody(Unavailable):
    """A body that ended before its size: tried again from where it stopped."""

import omni.client as oc  # noqa: E402  (the only import of omni.client in isaacfs)

_LEVELS = {
    "LogLevel.DEBUG": logging.DEBUG,
    "LogLevel.VERBOSE": logging.DEBUG,
    "LogLevel.INFO": logging.DEBUG,  # omni.client's INFO lines are chatter for our operators
    "LogLevel.WARNING": logging.WARNING,
    "LogLevel.ERROR": logging.ERROR,
}


def _forward_log(_thread: Any, component: Any, level: Any, message: Any) -> None:
    # Runs on omni.client's own thread; logging is thread-safe. Never call omni.client here.
    log.log(_LEVELS.get(str(level), logging.INFO), "omni.client %s: %s", component, str(message).strip())


_initialized = False


@contextmanager
def client_session() -> Iterator[None]:
    """Initialize omni.client for this process (once) and shut it down at the end."""
    global _initialized
    if _initialized:
        yield
        return
    # No Hub process is wanted by a daemon: without this it searches for one and logs about it.
    os.environ.setdefault("OMNICLIENT_HUB_MODE", "disabled")
    oc.set_log_callback(_forward_log)
    # omni.client logs several lines per request below WARNING; each one would cross into
    # Python (and take the GIL) only to be dropped. Let it drop them itself.
    oc.set_log_level(oc.LogLevel.DEBUG if log.isEnabledFor(logging.DEBUG) else oc.LogLevel.WARNING)
    oc.initialize()
    _initialized = True
    try:
        yield
    finally:
        oc.shutdown()
        _initialized = False


def _raise_for(result: Any, what: str) -> None:
    if result == oc.Result.OK:
        return
    if result == oc.Result.ERROR_NOT_FOUND:
        raise NotFound(f"{what}: not found upstream")
    if result == oc.Result.ERROR_ACCESS_DENIED:
        raise AccessDenied(f"{what}: access denied by upstream")
    if result == oc.Result.ERROR_CONNECTION:
        raise ConnectionLost(f"{what}: upstream unavailable ({result.name})")
    if result == oc.Result.ERROR:
        raise Unavailable(f"{what}: upstream failed ({result.name})")
    raise UpstreamError(f"{what}: upstream answered {result.name}")


def _to_entry(item: Any, name: str) -> RemoteEntry:
    modified = item.modified_time
    mtime = 0.0
    if isinstance(modified, datetime):
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=timezone.utc)
        mtime = max(0.0, modified.timestamp())
    is_dir = bool(item.flags & oc.ItemFlags.CAN_HAVE_CHILDREN)
    etag = (item.version or item.hash or "").strip('"')
    return RemoteEntry(name=name, is_dir=is_dir, size=0 if is_dir else int(item.size), mtime=mtime, etag=etag)


def _abandon(request: Any) -> None:
    """Stop a request without waiting: ``stop()`` can block on a lock held by omni.client's IO
    thread (stuck in a read from a hung NFS server or a FIFO), so it runs in a side thread
    and the trio thread never waits for it."""
    threading.Thread(target=request.stop, name="omni-abandon", daemon=True).start()


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


def _trio_callback() -> tuple[Callable[..., None], trio.Event, list[tuple[Any, ...]]]:
    """A callback for omni.client's own thread that hands its arguments to this trio run."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    box: list[tuple[Any, ...]] = []

    def on_result(*args: Any) -> None:
        def deliver() -> None:
            box.append(args)
            done.set()

        try:
            token.run_sync_soon(deliver)
        except trio.RunFinishedError:
            pass  # the daemon is stopping; nobody waits for this answer any more

    return on_result, done, box


class OmniUpstream:
    """An asset root URL (https S3 root, omniverse://, file:) seen as a read-only tree."""

    kind = "omni.client"

    def __init__(self, root_url: str, timeout: float, stall_timeout: float, retry_after: float,
                 min_rate: float, http_ranges: bool = True) -> None:
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
        self.ranges = (HttpRanges(self.health, timeout, stall_timeout)
                       if parts.scheme == "https" and http_ranges else None)
        # Not in parallel parts: a file rewritten in place while its parts were read would be
        # installed half old, half new (there is no ETag to catch it); one read in order that
        # checks the file did not change while it was read catches it.
        self.local = LocalRanges(stall_timeout) if self.local_root is not None else None
        # Whether the S3 host answers anonymous HTTP (None: not asked yet; the first listing
        # asks). A bucket that wants the credentials of omniverse.toml goes through omni.client.
        self._http: bool | None = None if self.ranges is not None else False
        self._key_root = unquote(parts.path).strip("/")

    @property
    def download_path(self) -> str:
        """How files come, for `isaacfs status`."""
        if self.local is not None:
            return "local reads in 1 MiB blocks"
        if self.ranges is not None and self._http is not False:
            return "HTTP GETs and listings (urllib3, kept alive), large files in parallel ranged parts"
        return "omni.client whole bodies" + (" (the bucket refuses anonymous HTTP)" if self.ranges is not None else "")

    @property
    def body_in_memory(self) -> bool:
        """omni.client hands a body over whole (Nucleus; a bucket refusing anonymous HTTP)."""
        return self.local is None and not (self.ranges is not None and self._http is not False)

    @property
    def ranged(self) -> bool:
        """Files stream in ranged parts (S3 over anonymous HTTP)."""
        return self.ranges is not None and self._http is True

    def _http_refused(self, why: str) -> None:
        if self._http is not False:
            log.warning("the upstream %s does not answer anonymous HTTP (%s): listings and files go through"
                        " omni.client", redact(self.root_url), why)
        self._http = False

    @classmethod
    def from_settings(cls, settings: Settings) -> OmniUpstream:
        return cls(settings.upstream, settings.upstream_timeout, settings.stall_timeout,
                   settings.upstream_retry_after, settings.min_download_rate, settings.http_ranges)

    async def read_range(self, rel: RelPath, start: int, end: int, on_data: Callable[[bytes], Awaitable[None]],
                         etag: str = "", size: int = -1) -> None:
        """Bytes [start, end) of ``rel`` over HTTP (S3 upstreams only: see ``ranged``), of the
        object version ``etag`` and ``size`` bytes (http.py checks every answer)."""
        assert self.ranges is not None
        what = f"fetch {shown(rel)}"
        await self._refuse_special(rel, what)
        await self.ranges.read(self.url_for(rel), start, end, what, on_data, etag, size)

    def _local_path(self, rel: RelPath) -> str:
        assert self.local_root is not None
        return os.path.join(self.local_root, *rel.parts)

    async def aclose(self) -> None:
        if self.ranges is not None:
            await self.ranges.aclose()

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
            url = oc.join(url, part)  # percent-encodes each name as one segment
        return url

    # -- health -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.health.available

    async def _call(self, start: Callable[[Callable[..., None]], Any], timeout: float, what: str,
                    silence: UpstreamError | None = None) -> tuple[Any, ...]:
        """Start an omni.client request and wait for its callback, at most ``timeout`` seconds;
        past that the request is abandoned and ``silence`` raised (default: ConnectionLost)."""
        on_result, done, box = _trio_callback()
        request = start(on_result)
        try:
            with trio.move_on_after(timeout):
                await done.wait()
        finally:
            if not done.is_set():
                _abandon(request)
        if not box:
            raise silence or ConnectionLost(f"{what}: upstream did not answer within {timeout:g}s")
        return box[0]

    async def _guarded(self, what: str, start: Callable[[Callable[..., None]], Any],
                       timeout: float | None = None) -> tuple[Any, ...]:
        self.health.check(what)
        try:
            answer = await self._call(start, timeout or self.timeout, what)
            _raise_for(answer[0], what)
        except UpstreamError as exc:
            self.health.mark(exc)
            raise
        self.health.mark(None)
        return answer

    # -- operations ---------------------------------------------------------------
    async def _forget_cached(self, url: str) -> None:
        """omni.client keeps list and stat answers of HTTP/S3 providers: drop them, so the next
        answer is the upstream's own (an object changed during the mount)."""
        with trio.move_on_after(self.timeout):
            await trio.to_thread.run_sync(oc.clear_list_cache, url, abandon_on_cancel=True)

    async def list(self, rel: RelPath, fresh: bool = False) -> list[RemoteEntry]:
        """List a folder. Entries whose names are unsafe are skipped with a log line."""
        what = f"list {rel or '/'}"
        listed = await self._http_list(rel, what)
        if listed is None:
            listed = await self._omni_list(rel, fresh, what)
        entries: dict[str, RemoteEntry] = {}
        for raw, make in listed:
            if raw is None:
                log.warning("skipped upstream entry in %s/: its name is not UTF-8", rel or "")
                continue
            if raw == "":
                continue  # an S3 folder marker (a key ending in a slash): the folder itself
            try:
                # Some providers mark folders with one trailing slash; any other slash is hostile.
                name = check_name(raw[:-1] if raw.endswith("/") else raw)
            except InvalidPath as exc:
                log.warning("skipped upstream entry in %s/: %s", rel or "", exc)
                continue
            entry = make(name)
            if name in entries and entries[name].is_dir != entry.is_dir:
                log.warning("upstream %s/ lists %r as both file and folder; keeping the folder", rel or "", name)
                if not entry.is_dir:
                    continue
            entries[name] = entry
        if self.local_root is not None and entries:
            names = tuple(entries)
            reasons = await self._local_checks(tuple(rel.child(name) for name in names), f"list {rel or '/'}")
            for name, why in zip(names, reasons, strict=True):
                if why is not None:
                    log.warning("skipped upstream entry %s: %s", shown(rel.child(name)), why)
                    del entries[name]
        return list(entries.values())

    async def _http_list(self, rel: RelPath, what: str) -> Listing | None:
        """The folder's entries by an anonymous S3 listing on the kept-alive HTTP pool (one
        round trip); None where the upstream does not answer those (omni.client lists)."""
        if self.ranges is None or self._http is False:
            return None
        try:
            path = "/".join([self._key_root, *rel.parts]).encode("utf-8").decode("utf-8")
        except UnicodeEncodeError:
            return None  # a name that cannot be an S3 key: omni.client answers as it can
        try:
            found = await self.ranges.list_folder(self.root_url, path, what)
        except NotS3 as exc:
            self._http_refused(str(exc).rsplit(": ", 1)[-1])
            return None
        assert found is not None  # only a recursive listing gives up on a page count
        self._http = True

        def maker(is_dir: bool, size: int, mtime: float, etag: str) -> Callable[[str], RemoteEntry]:
            return lambda name: RemoteEntry(name, is_dir, 0 if is_dir else size, mtime, etag)

        return [(name, maker(is_dir, size, mtime, etag)) for name, is_dir, size, mtime, etag in found]

    async def connect_ahead(self, count: int) -> None:
        """Open up to ``count`` kept-alive connections now, where requests go over isaacfs's
        own HTTP pool (S3), so a burst of requests that follows pays no handshakes. Before
        the first listing tells whether the bucket answers anonymous HTTP, they are opened
        on the chance (a bucket that does not costs a few idle connections)."""
        if self.ranges is None or self._http is False:
            return
        try:
            await self.ranges.connect_ahead(self.root_url, count)
        except Exception:  # never worth a failure: the requests open what they need
            log.debug("opening connections ahead failed", exc_info=True)

    async def walk(self, rel: RelPath, max_files: int = 5000) -> Folders | None:
        """Every folder below ``rel`` with its entries, from one recursive S3 listing (a
        request per 1,000 keys, where a walk lists folder by folder: one round trip per level
        of depth, as rclone copy does). None where that is not how this upstream is listed,
        or for a tree of more than ``max_files`` files (then a parallel walk is quicker)."""
        if self.ranges is None or self._http is False:
            return None
        path = "/".join([self._key_root, *rel.parts])
        what = f"list {rel or '/'} (recursive)"
        try:
            found = await self.ranges.list_folder(self.root_url, path, what, recursive=True,
                                                  max_pages=max(1, max_files // 1000))
        except NotS3:
            return None  # the plain listing finds out and tells (before the first one: on the chance)
        self._http = True
        if found is None:
            return None
        folders: dict[RelPath, dict[str, RemoteEntry]] = {rel: {}}
        for key, _is_dir, size, mtime, etag in found:
            names = key.split("/")
            try:
                checked = [check_name(name) for name in names[:-1]]
                leaf = check_name(names[-1]) if names[-1] else None  # "" ends a folder marker
            except InvalidPath as exc:
                log.warning("skipped upstream key %s below %s/: %s", key, rel or "", exc)
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
        return {folder: list(entries.values()) for folder, entries in folders.items()}

    async def _omni_list(self, rel: RelPath, fresh: bool, what: str) -> Listing:
        url = self.url_for(rel)
        if fresh:
            await self._forget_cached(url)
        _result, items = await self._guarded(what, lambda cb: oc.list_with_callback(url, cb))
        listed: Listing = []
        for item in items:
            try:
                raw: str | None = item.relative_path
            except UnicodeDecodeError:
                raw = None
            listed.append((raw, functools.partial(_to_entry, item)))
        return listed

    async def probe(self, rel: RelPath, timeout: float) -> None:
        """Ask the upstream now, even while it is resting; raise if it does not answer."""
        url, what = self.url_for(rel), "probe"
        if self.local_root is not None and rel.is_root and not os.path.isdir(self.local_root):
            raise Unavailable(f"{what}: the upstream folder {self.local_root} does not exist")
        if self.ranges is not None and self._http is not False:
            # Over isaacfs's own pool the cause is known at once (a name that does not resolve,
            # a refused connection), where omni.client only says so in its log.
            try:
                await self.ranges.reachable(url, timeout, what)
            except UpstreamError as exc:
                self.health.mark(exc)
                raise
            self.health.mark(None)
            return
        try:
            answer = await self._call(lambda cb: oc.stat_with_callback(url, cb), timeout, what)
            _raise_for(answer[0], what)
        except NotFound:
            pass  # an answer all the same
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
        await self._refuse_special(rel, f"stat {shown(rel)}")
        url = self.url_for(rel)
        if fresh:
            await self._forget_cached(url)
        _result, item = await self._guarded(f"stat {rel}", lambda cb: oc.stat_with_callback(url, cb))
        return _to_entry(item, rel.name)

    async def _http_download(self, rel: RelPath, size: int, sink: Sink, what: str, etag: str = "") -> None:
        """One GET; a 5xx, a reset or a body cut short is tried again from the byte it stopped
        at (as omni.client retries internally), under the one retry policy. A body of another size than
        the listing said fails the fetcher's size and hash checks, which list afresh and retry."""
        assert self.ranges is not None
        url = self.url_for(rel)
        landed = 0

        async def on_data(block: bytes) -> None:
            nonlocal landed
            await sink.write(block)
            landed += len(block)

        async def attempt(_number: int) -> None:
            try:
                await self.ranges.read(url, landed, size, what, on_data, etag, size)  # type: ignore[union-attr]
            except AccessDenied as exc:
                if landed == 0:
                    self._http_refused(str(exc).rsplit(": ", 1)[-1])
                    raise _RefusedBeforeBody from None
                raise
            if landed < size:
                raise _ShortBody(f"{what}: the body ended at byte {landed} of {size}")

        try:
            # A changed object is the fetcher's to handle (it lists afresh), not worth a resume.
            await retrying(attempt, what, HTTP_RETRY, temporary=resumable)
        except _ShortBody:
            return  # short after every try: the fetcher's size check reports it and lists afresh

    async def download(self, rel: RelPath, size: int, sink: Sink, etag: str = "") -> None:
        """Hand the body of ``rel`` (``size`` bytes) to ``sink``.

        A file: tree is read in blocks, each bounded by ``stall_timeout`` (local.py). An S3
        root gets one GET on a connection kept alive (http.py), a stall judged by progress:
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
        if self.ranges is not None and self._http is True and size > 0:
            try:
                await self._http_download(rel, size, sink, what, etag)
                return
            except _RefusedBeforeBody:
                pass  # asks for credentials: omni.client has them (omniverse.toml)
        url = self.url_for(rel)
        deadline = self.stall_timeout + size / self.min_rate
        slow = Unavailable(f"{what}: not done after {deadline:.0f}s (slower than"
                           f" {self.min_rate / 1e6:g} MB/s), download abandoned")
        try:
            result, _version, content = await self._call(
                lambda cb: oc.read_file_with_callback(url, cb), deadline, what, slow)
            _raise_for(result, what)
        except UpstreamError as exc:
            self.health.mark(exc)
            raise
        self.health.mark(None)
        await sink.write(memoryview(content))
