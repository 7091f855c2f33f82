"""Ranged GETs of objects under an HTTPS asset root (the S3 cloud root, on-prem S3).

omni.client hands over whole bodies only; S3 serves byte ranges. This reader streams a
range of an object over connections kept alive and shared, so a large file arrives in
parallel parts, each written as it comes, and a reader can be served its bytes before
the whole file has landed.

The client is urllib3 (the connection pool under requests; maintained, thread-safe),
each range read in a trio worker thread in 1 MiB blocks: its reads loop in C and release
the GIL. httpx on trio was tried first: on the same loopback server it read 64 MiB at
44 MB/s on one connection and 79 MB/s on four (a pure-Python step for every TLS record of
16 KiB, all on the trio thread), where urllib3 in threads read 72 MB/s on one and
220 MB/s on four. The worker thread hands each block to the trio loop, which writes it; a
stall is the socket's read timeout (no byte for ``stall_timeout``).

Listings are S3 ListObjectsV2 requests on the same pool (omni.client's S3 provider sends
the same requests, anonymously, but held 20 parallel listings at 200 ms to 1.7 s where
one round trip will do). Stats stay with omni.client. Where the bucket refuses anonymous
requests (credentials in omniverse.toml), everything goes through omni.client (omni_client.py).
"""

from __future__ import annotations

import http.client
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import trio
import urllib3

from ..core.errors import AccessDenied, ConnectionLost, IntegrityError, NotFound, Unavailable, UpstreamError
from ..core.health import Health
from ..core.types import OnData

BLOCK = 1024 * 1024

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

# One line per upstream request, where ``request_log`` is on (the daemon sets this logger's
# level): what a slow first load waited on, request by request (bench/critical_path.py).
requests_log = logging.getLogger("isaacfs.requests")


def log_request(method: str, url: str, started: float, status: object, first_byte: float | None = None,
                note: str = "") -> None:
    """The request line for ``url`` (its path and query: no host, no credential), finished now."""
    if not requests_log.isEnabledFor(logging.INFO):
        return
    now = time.monotonic()
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    waited = f", first byte after {(first_byte - started) * 1000:.1f} ms" if first_byte is not None else ""
    requests_log.info("request %s %s%s: %s in %.1f ms%s", method, target, note, status, (now - started) * 1000, waited)


def connect_failure(exc: BaseException) -> str:
    """Why a connection could not be made, in words an operator acts on."""
    cause: BaseException | None = exc
    while cause is not None:  # MaxRetryError wraps the real failure in .reason
        if isinstance(cause, urllib3.exceptions.NameResolutionError):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        if isinstance(cause, urllib3.exceptions.ConnectTimeoutError):  # NewConnectionError too
            return "no answer to a connection"
        nested = getattr(cause, "reason", None)
        cause = nested if isinstance(nested, BaseException) and nested is not cause else None
    return type(exc).__name__


class _SinkFailed(Exception):
    """The receiver of the bytes failed (the mirror's disk): not the connection's failure."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__(str(inner))
        self.inner = inner


def _same_object(reply: urllib3.BaseHTTPResponse, start: int, end: int, etag: str, size: int, what: str) -> int:
    """An answer of the object and range asked for, or IntegrityError (UpstreamError for a
    range that is not the one asked for: a server or proxy fault). Returns where the answer
    ends: ``end``, or the object's end where its size was not known and it is shorter."""
    answered = reply.headers.get("ETag", "").removeprefix("W/").strip('"')
    if etag and answered and answered != etag:
        raise IntegrityError(f"{what}: the object changed upstream (ETag {answered}, not {etag})")
    if reply.status == 206:
        found = CONTENT_RANGE.match(reply.headers.get("Content-Range", ""))
        if found is None:
            raise UpstreamError(f"{what}: a ranged answer without a usable Content-Range")
        first, last, total = int(found.group(1)), int(found.group(2)), found.group(3)
        if size >= 0 and total != "*" and int(total) != size:
            raise IntegrityError(f"{what}: the object is {total} bytes upstream, not {size}")
        known = size if size >= 0 else int(total) if total != "*" else end
        if first != start or last < min(end, known) - 1:
            raise UpstreamError(f"{what}: bytes {first}-{last} answered for {start}-{end - 1}")
        return min(end, known)
    if size >= 0 and reply.headers.get("Content-Length") not in (None, str(size)):
        raise IntegrityError(f"{what}: the object is {reply.headers.get('Content-Length')} bytes upstream,"
                             f" not {size}")
    return end


class NotS3(UpstreamError):
    """The host does not answer S3 listings anonymously (401/403, not XML, no such bucket)."""


# (name, is_dir, size, mtime, etag) of one listed entry, the name as S3 gives it
Listed = tuple[str, bool, int, float, str]


class Partial(list[Listed]):
    """The first pages of a recursive listing that goes on: its keys in S3's order, so every
    folder none of whose keys comes after the last one here is here whole."""


def _parse_listing(body: bytes, prefix: str) -> tuple[list[Listed], str | None]:
    """Entries of one ListObjectsV2 page below ``prefix``, and the continuation token."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise NotS3("the answer to a listing is not S3's XML") from None
    if root.tag != f"{S3_NS}ListBucketResult":
        raise NotS3(f"the answer to a listing is not an S3 listing ({root.tag})")
    entries: list[Listed] = []
    for common in root.iter(f"{S3_NS}CommonPrefixes"):
        key = common.findtext(f"{S3_NS}Prefix") or ""
        entries.append((key[len(prefix):], True, 0, 0.0, ""))  # "name/": the one slash is dropped later
    for item in root.iter(f"{S3_NS}Contents"):
        key = item.findtext(f"{S3_NS}Key") or ""
        modified = item.findtext(f"{S3_NS}LastModified") or ""
        try:
            mtime = datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
        except ValueError:
            mtime = 0.0
        entries.append((key[len(prefix):], False, int(item.findtext(f"{S3_NS}Size") or 0), max(0.0, mtime),
                        (item.findtext(f"{S3_NS}ETag") or "").strip('"')))
    token = root.findtext(f"{S3_NS}NextContinuationToken") if root.findtext(f"{S3_NS}IsTruncated") == "true" else None
    return entries, token


class _Stop(Exception):
    """The range read was abandoned (its part is tried again, or the transfer is over)."""


# Adds a request's signature: (method, url, headers) -> the headers to send (s3:// tiers).
Sign = Callable[[str, str, dict[str, str]], dict[str, str]]


def s3_error_code(body: bytes) -> str:
    """The <Code> of an S3 error answer (SignatureDoesNotMatch, InvalidAccessKeyId, ...), or ""."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    return (root.findtext("Code") or root.findtext(f"{S3_NS}Code") or "").strip()


class HttpRanges:
    def __init__(self, health: Health, connect_timeout: float, stall_timeout: float, connections: int = 160,
                 sign: Sign | None = None) -> None:
        # ``connections`` kept per host: a warm of small files keeps four requests in flight
        # per place (fetch.fetcher.SMALL_PER_PLACE), more than that beyond (the pool does not
        # block; a connection it cannot keep is closed after its request).
        self.health = health
        self.sign = sign  # None: anonymous requests
        self.stall_timeout = stall_timeout
        self.answer_timeout = connect_timeout  # a listing not answered within it: the upstream is not answering
        self.maxsize = connections
        # Its own worker threads: a range read holds one while it hands each block to the
        # trio loop, whose write to the mirror takes a thread of trio's default limiter (40).
        # Sharing that limiter, 40 reads in flight would wait for writes that wait for a thread.
        self.threads = trio.CapacityLimiter(connections)
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=connections, block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=stall_timeout),
            headers={"User-Agent": "isaacfs", "Accept-Encoding": "identity"})

    async def aclose(self) -> None:
        self.pool.clear()

    def _headers(self, method: str, url: str, headers: dict[str, str] | None = None) -> dict[str, str]:
        given = {"User-Agent": "isaacfs", "Accept-Encoding": "identity", **(headers or {})}
        return self.sign(method, url, given) if self.sign is not None else given

    async def reachable(self, url: str, timeout: float, what: str) -> None:
        """One HEAD of ``url`` within ``timeout``: any HTTP answer is an answer; a name that
        does not resolve, a refused or silent connection raise ConnectionLost naming it."""
        limit = urllib3.Timeout(connect=timeout, read=timeout)

        def head() -> None:
            try:
                self.pool.request("HEAD", url, timeout=limit, redirect=False, headers=self._headers("HEAD", url))
            except urllib3.exceptions.ReadTimeoutError:
                raise ConnectionLost(f"{what}: upstream unavailable (no answer within {timeout:g}s)") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ConnectionLost(f"{what}: upstream unavailable ({connect_failure(exc)})") from None

        with trio.move_on_after(timeout + 1):
            await trio.to_thread.run_sync(head, abandon_on_cancel=True, limiter=self.threads)
            return
        raise ConnectionLost(f"{what}: upstream unavailable (no answer within {timeout:g}s)")

    async def head(self, url: str, what: str) -> dict[str, str] | None:
        """The headers of a HEAD of ``url`` (an object's size, ETag, date); None if there is
        no such object. Failures are the core's kinds, as for a GET."""
        self.health.check(what)

        def ask() -> dict[str, str] | None:
            timeout = urllib3.Timeout(connect=self.answer_timeout, read=self.answer_timeout)
            started = time.monotonic()
            try:
                reply = self.pool.request("HEAD", url, timeout=timeout, redirect=False,
                                          headers=self._headers("HEAD", url))
                log_request("HEAD", url, started, reply.status)
            except urllib3.exceptions.ReadTimeoutError:
                raise ConnectionLost(f"{what}: upstream did not answer within {self.answer_timeout:g}s") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ConnectionLost(f"{what}: upstream unavailable ({connect_failure(exc)})") from None
            if reply.status == 404:
                return None
            if reply.status in (401, 403):
                raise AccessDenied(f"{what}: access denied by upstream (HTTP {reply.status})")
            if reply.status >= 500:
                raise Unavailable(f"{what}: upstream failed (HTTP {reply.status})")
            if reply.status != 200:
                raise UpstreamError(f"{what}: upstream answered HTTP {reply.status}")
            return dict(reply.headers.items())

        try:
            found = await trio.to_thread.run_sync(ask, abandon_on_cancel=True, limiter=self.threads)
        except ConnectionLost as exc:
            self.health.mark(exc)
            raise
        self.health.mark(None)
        return found

    async def connect_ahead(self, url: str, count: int) -> int:
        """Have ``count`` connections to ``url``'s host open and kept (at most the pool's size)
        ahead of the requests that will want them: a connection costs two round trips (TCP,
        TLS 1.3) before its first request, which on a long link is the largest cost of a
        burst of small GETs. Each is opened by a HEAD of ``url``, all in parallel: a request,
        not a bare connect, because a connection that has never read holds the server's TLS
        session tickets unread, and urllib3 takes a readable idle socket for a dropped one
        and opens another. Only new connections are opened, beside the idle ones: a HEAD that
        took the idle connection would leave the reader's next lookup, the very request this
        is for, to open one of its own (three round trips instead of one). Best effort;
        returns how many are open and idle (or answering) now."""
        pool = self.pool.connection_from_url(url)
        target = urllib3.util.parse_url(url).request_uri
        slots = pool.pool  # urllib3 2.x: a LIFO of idle connections over None placeholders
        if slots is None:
            return 0
        with slots.mutex:
            idle = sum(conn is not None for conn in slots.queue)
        wanted = min(count, self.maxsize) - idle

        def claim_slot() -> bool:
            with slots.mutex:  # a placeholder taken, the idle connections left where they are
                if None not in slots.queue:
                    return False
                slots.queue.remove(None)
                return True

        def head() -> bool:
            if not claim_slot():
                return False
            conn = pool._new_conn()
            conn.timeout = self.answer_timeout
            try:
                conn.request("HEAD", target, headers=self._headers("HEAD", url))
                conn.getresponse().read()
            except (urllib3.exceptions.HTTPError, OSError):
                conn.close()
                pool._put_conn(None)  # the placeholder back
                return False
            pool._put_conn(conn)
            return True

        answered = [False] * max(wanted, 0)

        async def one(index: int) -> None:
            answered[index] = await trio.to_thread.run_sync(head, abandon_on_cancel=True, limiter=self.threads)

        async with trio.open_nursery() as nursery:
            for index in range(len(answered)):
                nursery.start_soon(one, index)
        return idle + sum(answered)

    async def read(self, url: str, start: int, end: int, what: str,
                   on_data: OnData, etag: str = "", size: int = -1) -> None:
        """Stream bytes [start, end) of ``url`` to ``on_data``, in order. A body that ends early
        returns short (the caller resumes); errors are the core's UpstreamError kinds, and
        IntegrityError for an answer of another object than the one expected: with ``etag``
        the GET carries ``If-Match`` (412: changed) and the answer's ETag is compared; the
        answer's Content-Range must be the range asked for, of ``size`` bytes in all. A failure
        of ``on_data`` (the mirror's disk) is raised as it is, never taken for the link's."""
        self.health.check(what)
        token = trio.lowlevel.current_trio_token()
        open_ = [True]

        def deliver(block: memoryview) -> None:  # in the worker thread
            if not open_[0]:
                raise _Stop
            try:
                trio.from_thread.run(on_data, block, trio_token=token)
            except BaseException as exc:
                raise _SinkFailed(exc) from exc

        try:
            await trio.to_thread.run_sync(self._read, url, start, end, what, deliver, etag, size,
                                         abandon_on_cancel=True, limiter=self.threads)
        except ConnectionLost as exc:
            self.health.mark(exc)
            raise
        except _Stop:
            raise Unavailable(f"{what}: abandoned") from None
        except _SinkFailed as failed:
            raise failed.inner from None
        finally:
            open_[0] = False
        self.health.mark(None)

    async def list_folder(self, bucket_url: str, path: str, what: str, recursive: bool = False,
                          max_pages: int = 0, partial: bool = False) -> list[Listed] | None:
        """The entries of folder ``path`` (slash-separated key prefix) of the bucket whose
        ListObjectsV2 URL is ``bucket_url`` (``https://bucket.host/``, or path-style
        ``http://host:port/bucket``): with a delimiter, every page; ``recursive``: every key
        below it, names holding slashes, None if that takes more than ``max_pages`` pages
        (``partial``: those pages, as a ``Partial``).
        NotS3 if the host does not answer such listings anonymously; AccessDenied if it
        refuses signed ones (a wrong key: a configuration error)."""
        self.health.check(what)
        try:
            found = await trio.to_thread.run_sync(self._list, bucket_url, path, what, recursive, max_pages, partial,
                                                  abandon_on_cancel=True, limiter=self.threads)
        except ConnectionLost as exc:
            self.health.mark(exc)
            raise
        self.health.mark(None)
        return found

    def _list(self, bucket_url: str, path: str, what: str, recursive: bool = False,
              max_pages: int = 0, partial: bool = False) -> list[Listed] | None:
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: list[Listed] = []
        token: str | None = None
        pages = 0
        while True:
            pages += 1
            if max_pages and pages > max_pages:
                return Partial(entries) if partial else None
            query = ("list-type=2" + ("" if recursive else "&delimiter=%2F") + f"&prefix={quote(prefix, safe='')}")
            if token:
                query += f"&continuation-token={quote(token, safe='')}"
            # As omni.client's listings: no answer in time counts against the upstream (Health).
            started = time.monotonic()
            reply = self._get(f"{bucket_url}?{query}", what,
                              ConnectionLost(f"{what}: upstream did not answer within {self.answer_timeout:g}s"),
                              timeout=urllib3.Timeout(connect=self.answer_timeout, read=self.answer_timeout))
            log_request("LIST", f"{bucket_url}?{query}", started, reply.status)
            if reply.status >= 500:
                raise Unavailable(f"{what}: upstream failed (HTTP {reply.status})")
            if reply.status in (401, 403) and self.sign is not None:
                code = s3_error_code(reply.data)
                raise AccessDenied(f"{what}: the store refused the credentials (HTTP {reply.status}"
                                   f"{' ' + code if code else ''})")
            if reply.status != 200:
                raise NotS3(f"{what}: HTTP {reply.status} to an anonymous S3 listing")
            page, token = _parse_listing(reply.data, prefix)
            entries += page
            if not token:
                return entries

    def _get(self, url: str, what: str, silence: UpstreamError, **options: Any) -> urllib3.BaseHTTPResponse:
        """A GET on the pool, its failures as the core's kinds; ``silence``: what no answer
        within the read timeout means for this request."""
        options["headers"] = self._headers("GET", url, options.get("headers"))
        try:
            return self.pool.request("GET", url, redirect=True, **options)
        except urllib3.exceptions.ReadTimeoutError:
            raise silence from None
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                urllib3.exceptions.MaxRetryError) as exc:
            raise ConnectionLost(f"{what}: upstream unavailable ({connect_failure(exc)})") from None
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(f"{what}: {type(exc).__name__}") from None

    def _read(self, url: str, start: int, end: int, what: str, deliver: Callable[[memoryview], None],
              etag: str = "", size: int = -1) -> None:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        started = time.monotonic()
        reply = self._get(url, what, Unavailable(f"{what}: no answer for {self.stall_timeout:g}s"),
                          headers=headers, preload_content=False)
        answered = time.monotonic()
        whole = False
        view: memoryview | None = None
        try:
            if reply.status == 412:
                raise IntegrityError(f"{what}: the object changed upstream (its ETag is no longer {etag})")
            if reply.status == 416:
                raise IntegrityError(f"{what}: the object is shorter upstream than listed (HTTP 416)")
            if reply.status == 404:
                raise NotFound(f"{what}: not found upstream")
            if reply.status in (401, 403):
                raise AccessDenied(f"{what}: access denied by upstream (HTTP {reply.status})")
            if reply.status >= 500:
                raise Unavailable(f"{what}: upstream failed (HTTP {reply.status})")
            if reply.status == 200 and start != 0:
                raise UpstreamError(f"{what}: the upstream ignores byte ranges (HTTP 200 to a ranged GET)")
            if reply.status not in (200, 206):
                raise UpstreamError(f"{what}: upstream answered HTTP {reply.status}")
            end = _same_object(reply, start, end, etag, size, what)
            view = _take_block()
            readinto = _body_reader(reply)
            position = start
            while position < end:
                got = readinto(view[:min(BLOCK, end - position)])
                if not got:
                    return  # the body ended early: the caller goes on from here
                # The block is handed over as a view of this one buffer, not a copy: a new
                # MiB per block cost a fresh mapping and a page fault per 4 KiB (the daemon
                # gives freed buffers back), half the daemon's CPU on a long cold read. The
                # view is released when ``deliver`` returns: a consumer that kept the block
                # itself fails loudly on its next use (the contract: Upstream.read_range).
                with view[:got] as block:
                    deliver(block)
                position += got
            whole = True
        except urllib3.exceptions.ReadTimeoutError:
            raise Unavailable(f"{what}: no byte arrived for {self.stall_timeout:g}s") from None
        except _SinkFailed:
            raise
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError, OSError) as exc:
            raise Unavailable(f"{what}: the connection broke mid-body ({type(exc).__name__})") from None
        finally:
            if view is not None:
                _give_block(view)
            cut = not whole and reply.status in (200, 206)
            log_request("GET", url, started, f"{reply.status}, body cut" if cut else reply.status, answered,
                        f" bytes {start}-{end - 1}")
            if whole:
                reply.release_conn()  # the connection goes back to the pool, kept alive
            else:
                reply.close()


def _body_reader(reply: urllib3.BaseHTTPResponse) -> Callable[[memoryview], int]:
    """How to read ``reply``'s body into a buffer: straight into it, with the readinto of the
    http.client response under urllib3's, where urllib3 has nothing to decode (no
    Content-Encoding). urllib3's own readinto reads into a temporary and copies it (urllib3
    issue #1540, open), and http.client's read(amt) under that makes and copies another: two
    fresh MiB mappings per MiB, and a page fault per 4 KiB of each (the daemon gives freed
    buffers back). Failures come as urllib3's would: a timeout as ReadTimeoutError, a body
    cut short as ProtocolError."""
    raw = getattr(reply, "_fp", None)
    encoding = (reply.headers.get("Content-Encoding") or "identity").strip().lower()
    if not isinstance(raw, http.client.HTTPResponse) or encoding != "identity":
        return reply.readinto

    def readinto(view: memoryview) -> int:
        try:
            return raw.readinto(view)
        except TimeoutError as exc:
            raise urllib3.exceptions.ReadTimeoutError(None, "", "Read timed out.") from exc  # type: ignore[arg-type]
        except http.client.HTTPException as exc:
            raise urllib3.exceptions.ProtocolError(f"Connection broken: {exc!r}", exc) from exc

    return readinto


# Read buffers (a block each) kept for the next reads: a new one per read was a fresh
# mapping, zeroed, and a page fault per 4 KiB of it. At most POOLED_BLOCKS are kept (a large
# file's parts and a reader's urgent ones at once); a read beyond them makes its own, freed
# after it. (One per worker thread kept 64 MB more in an idle daemon after 32 cold reads.)
POOLED_BLOCKS = 8
_blocks: list[memoryview] = []


def _take_block() -> memoryview:
    try:
        return _blocks.pop()  # atomic: reads run in several worker threads
    except IndexError:
        return memoryview(bytearray(BLOCK))


def _give_block(view: memoryview) -> None:
    if len(_blocks) < POOLED_BLOCKS:
        _blocks.append(view)
