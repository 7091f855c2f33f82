"""The upstream asset root, reached only through NVIDIA's omni.client.

This is the one module that imports omni.client. It turns omni.client's callback API
into trio awaitables (results are handed back with ``TrioToken.run_sync_soon``, so no
thread is held per request), bounds every call with a timeout (omni.client's own HTTP
retries can take a minute on a dead host), maps results to a few exception kinds,
validates every listed name, and stops asking a dead upstream for a while instead of
making every lookup wait for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from .config import Settings, redact
from .paths import InvalidPath, RelPath, check_name
from .upstream_types import AccessDenied, NotFound, RemoteEntry, Unavailable, UpstreamError

log = logging.getLogger("isaacfs.upstream")

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
    if result in (oc.Result.ERROR_CONNECTION, oc.Result.ERROR):
        raise Unavailable(f"{what}: upstream unavailable ({result.name})")
    raise UpstreamError(f"{what}: upstream answered {result.name}")


PARALLEL_HASH_BYTES = 4 * 1024 * 1024


def _write_hashed(content: Any, dest: Path) -> str:
    """Write a body to a new file and fsync it; its MD5, computed from memory meanwhile.

    For a large body the hash runs in a second thread while this one writes and fsyncs
    (hashlib and os.write both release the GIL), so the check costs no extra time.
    """
    view = memoryview(content)
    digests: list[str] = []

    def hash_body() -> None:
        digests.append(hashlib.md5(view, usedforsecurity=False).hexdigest())

    hasher = threading.Thread(target=hash_body) if len(view) >= PARALLEL_HASH_BYTES else None
    if hasher is not None:
        hasher.start()
    else:
        hash_body()
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            rest = view
            while rest:
                rest = rest[os.write(fd, rest):]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        if hasher is not None:
            hasher.join()
    return digests[0]


def _to_entry(item: Any, name: str) -> RemoteEntry:
    modified = item.modified_time
    mtime = 0.0
    if isinstance(modified, datetime):
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        mtime = max(0.0, modified.timestamp())
    is_dir = bool(item.flags & oc.ItemFlags.CAN_HAVE_CHILDREN)
    etag = (item.version or item.hash or "").strip('"')
    return RemoteEntry(name=name, is_dir=is_dir, size=0 if is_dir else int(item.size), mtime=mtime, etag=etag)


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


class Upstream:
    """An asset root URL (https S3 root, omniverse://, file:) seen as a read-only tree."""

    def __init__(self, root_url: str, timeout: float, stall_timeout: float, retry_after: float,
                 min_rate: float) -> None:
        self.root_url = root_url.rstrip("/")
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.min_rate = min_rate
        self.retry_after = retry_after
        self._down_until = 0.0
        self._down_reason = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Upstream:
        return cls(settings.upstream, settings.upstream_timeout, settings.stall_timeout,
                   settings.upstream_retry_after, settings.min_download_rate)

    # -- URLs ---------------------------------------------------------------------
    def url_for(self, rel: RelPath) -> str:
        url = self.root_url
        for part in rel.parts:
            url = oc.join(url, part)  # percent-encodes each name as one segment
        return url

    # -- health -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _check_available(self, what: str) -> None:
        if not self.available:
            left = self._down_until - time.monotonic()
            raise Unavailable(f"{what}: upstream unavailable ({self._down_reason}); next try in {left:.0f}s")

    def _mark(self, exc: BaseException | None) -> None:
        if isinstance(exc, Unavailable):
            if self.available:
                log.warning("upstream %s is unavailable: %s; serving the mirror only for %.0fs",
                            redact(self.root_url), exc, self.retry_after)
            self._down_until = time.monotonic() + self.retry_after
            self._down_reason = str(exc).rsplit(": ", 1)[-1]
        elif self._down_reason:
            log.info("upstream %s answers again", redact(self.root_url))
            self._down_reason = ""
            self._down_until = 0.0

    async def _call(self, start: Callable[[Callable[..., None]], Any], timeout: float, what: str) -> tuple[Any, ...]:
        """Start an omni.client request and wait for its callback, at most ``timeout`` seconds."""
        on_result, done, box = _trio_callback()
        request = start(on_result)
        try:
            with trio.move_on_after(timeout):
                await done.wait()
        finally:
            if not done.is_set():
                request.stop()
        if not box:
            raise Unavailable(f"{what}: upstream did not answer within {timeout:g}s")
        return box[0]

    async def _guarded(self, what: str, start: Callable[[Callable[..., None]], Any],
                       timeout: float | None = None) -> tuple[Any, ...]:
        self._check_available(what)
        try:
            answer = await self._call(start, timeout or self.timeout, what)
            _raise_for(answer[0], what)
        except UpstreamError as exc:
            self._mark(exc)
            raise
        self._mark(None)
        return answer

    # -- operations ---------------------------------------------------------------
    async def list(self, rel: RelPath) -> list[RemoteEntry]:
        """List a folder. Entries whose names are unsafe are skipped with a log line."""
        url = self.url_for(rel)
        _result, items = await self._guarded(
            f"list {rel or '/'}", lambda cb: oc.list_with_callback(url, cb))
        entries: dict[str, RemoteEntry] = {}
        for item in items:
            raw = item.relative_path
            try:
                # Some providers mark folders with one trailing slash; any other slash is hostile.
                name = check_name(raw[:-1] if raw.endswith("/") else raw)
            except InvalidPath as exc:
                log.warning("skipped upstream entry in %s/: %s", rel or "", exc)
                continue
            entry = _to_entry(item, name)
            if name in entries and entries[name].is_dir != entry.is_dir:
                log.warning("upstream %s/ lists %r as both file and folder; keeping the folder", rel or "", name)
                if not entry.is_dir:
                    continue
            entries[name] = entry
        return list(entries.values())

    async def probe(self, rel: RelPath, timeout: float) -> None:
        """Ask the upstream now, even while it is resting; raise if it does not answer."""
        url, what = self.url_for(rel), "probe"
        try:
            answer = await self._call(lambda cb: oc.stat_with_callback(url, cb), timeout, what)
            _raise_for(answer[0], what)
        except NotFound:
            pass  # an answer all the same
        except UpstreamError as exc:
            self._mark(exc)
            raise
        self._mark(None)

    async def stat(self, rel: RelPath) -> RemoteEntry:
        url = self.url_for(rel)
        _result, item = await self._guarded(f"stat {rel}", lambda cb: oc.stat_with_callback(url, cb))
        return _to_entry(item, rel.name)

    async def download(self, rel: RelPath, dest: Path, size: int) -> str:
        """Write ``rel`` (``size`` bytes) to the new local file ``dest``, fsynced; return its MD5.

        omni.client's ``read_file`` hands over the whole body at once (its ``copy_file``
        does the same internally, then writes), so progress cannot be watched: the bound
        is a deadline, ``stall_timeout`` plus the time the file takes at ``min_rate``
        bytes/s. Hashing the body from memory while writing it saves reading it back.
        """
        what = f"fetch {rel}"
        self._check_available(what)
        url = self.url_for(rel)
        deadline = self.stall_timeout + size / self.min_rate
        on_result, done, box = _trio_callback()
        request = oc.read_file_with_callback(url, on_result)
        try:
            with trio.move_on_after(deadline):
                await done.wait()
        finally:
            if not done.is_set():
                request.stop()
        if not box:
            exc = Unavailable(f"{what}: not done after {deadline:.0f}s (slower than"
                              f" {self.min_rate / 1e6:g} MB/s), download abandoned")
            self._mark(exc)
            raise exc
        result, _version, content = box[0]
        try:
            _raise_for(result, what)
        except UpstreamError as exc:
            self._mark(exc)
            raise
        self._mark(None)
        return await trio.to_thread.run_sync(_write_hashed, content, dest)
