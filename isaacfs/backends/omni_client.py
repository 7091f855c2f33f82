"""The bridge to NVIDIA's omni.client: the one module of isaacfs that imports it.

It turns omni.client's callback API into trio awaitables (results are handed back with
``TrioToken.run_sync_soon``, so no thread is held per request), bounds every call with a
timeout (omni.client's own HTTP retries can take a minute on a dead host), abandons a
request past it without waiting, and maps results to a few exception kinds. Which upstream
goes through here, and the health breaker, are the router's (``omni.py``).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import trio

from ..core.errors import AccessDenied, ConnectionLost, NotFound, Unavailable, UpstreamError
from ..core.types import RemoteEntry
from .entries import Listing
from .http import requests_log

log = logging.getLogger("isaacfs.upstream")

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


# omni.client, imported and initialized on first use inside a session: a command that never
# asks it (a warm over S3's HTTP path, a no-op warm) does not pay its import.
oc: Any = None
_initialized = False
_sessions = 0


@contextmanager
def client_session(lazy: bool = False) -> Iterator[None]:
    """omni.client for this process, shut down at the end: initialized now, or (``lazy``) at
    its first request."""
    global _sessions
    _sessions += 1
    try:
        if not lazy:
            _client()
        yield
    finally:
        _sessions -= 1
        if not _sessions:
            _shutdown()


def _client() -> Any:
    global oc, _initialized
    if _initialized:
        return oc
    if not _sessions:
        raise RuntimeError("omni.client asked outside client_session()")
    import omni.client

    oc = omni.client
    # No Hub process is wanted by a daemon: without this it searches for one and logs about it.
    os.environ.setdefault("OMNICLIENT_HUB_MODE", "disabled")
    oc.set_log_callback(_forward_log)
    # omni.client logs several lines per request below WARNING; each one would cross into
    # Python (and take the GIL) only to be dropped. Let it drop them itself.
    oc.set_log_level(oc.LogLevel.DEBUG if log.isEnabledFor(logging.DEBUG) else oc.LogLevel.WARNING)
    oc.initialize()
    _initialized = True
    return oc


def _shutdown() -> None:
    global _initialized
    if _initialized:
        oc.shutdown()
        _initialized = False


def join(url: str, name: str) -> str:
    """``url`` with one more path segment, percent-encoded as omni.client does."""
    return str(_client().join(url, name))


def raise_for(result: Any, what: str) -> None:
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


def to_entry(item: Any, name: str) -> RemoteEntry:
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


async def call(start: Callable[[Callable[..., None]], Any], timeout: float, what: str,
               silence: UpstreamError | None = None) -> tuple[Any, ...]:
    """Start an omni.client request and wait for its callback, at most ``timeout`` seconds;
    past that the request is abandoned and ``silence`` raised (default: ConnectionLost)."""
    on_result, done, box = _trio_callback()
    _client()
    started = time.monotonic()
    request = start(on_result)
    try:
        with trio.move_on_after(timeout):
            await done.wait()
    finally:
        if not done.is_set():
            _abandon(request)
        if requests_log.isEnabledFor(logging.INFO):
            answer = getattr(box[0][0], "name", box[0][0]) if box and box[0] else "no answer"
            took = (time.monotonic() - started) * 1000
            requests_log.info("request omni.client %s: %s in %.1f ms", what, answer, took)
    if not box:
        raise silence or ConnectionLost(f"{what}: upstream did not answer within {timeout:g}s")
    return box[0]


async def forget_cached(url: str, timeout: float) -> None:
    """omni.client keeps list and stat answers of HTTP/S3 providers: drop them, so the next
    answer is the upstream's own (an object changed during the mount)."""
    with trio.move_on_after(timeout):
        await trio.to_thread.run_sync(_client().clear_list_cache, url, abandon_on_cancel=True)


async def list_folder(url: str, timeout: float, what: str) -> Listing:
    _result, items = await checked(lambda cb: oc.list_with_callback(url, cb), timeout, what)
    listed: Listing = []
    for item in items:
        try:
            raw: str | None = item.relative_path
        except UnicodeDecodeError:
            raw = None
        listed.append((raw, functools.partial(to_entry, item)))
    return listed


async def stat(url: str, timeout: float, what: str, name: str) -> RemoteEntry:
    _result, item = await checked(lambda cb: oc.stat_with_callback(url, cb), timeout, what)
    return to_entry(item, name)


async def answers(url: str, timeout: float, what: str) -> None:
    """Raise unless the upstream answers a stat of ``url`` (not found is an answer)."""
    try:
        await checked(lambda cb: oc.stat_with_callback(url, cb), timeout, what)
    except NotFound:
        pass


async def read_file(url: str, deadline: float, what: str, slow: UpstreamError) -> memoryview:
    """The whole body of ``url`` at once (omni.client's ``read_file``), within ``deadline``."""
    result, _version, content = await call(lambda cb: oc.read_file_with_callback(url, cb), deadline, what, slow)
    raise_for(result, what)
    return memoryview(content)


async def checked(start: Callable[[Callable[..., None]], Any], timeout: float, what: str) -> tuple[Any, ...]:
    answer = await call(start, timeout, what)
    raise_for(answer[0], what)
    return answer
