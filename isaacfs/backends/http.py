"""Ranged GETs of objects under an HTTPS asset root (the S3 cloud root, on-prem S3).

omni.client hands over whole bodies only; S3 serves byte ranges. This reader streams a
range of an object over connections kept alive and shared (httpx on trio), so a large
file arrives in parallel parts, each written as it comes, and a reader can be served
its bytes before the whole file has landed. Why httpx: a maintained async HTTP client
that runs on trio (through anyio), pools and reuses connections, streams bodies, and
honours SSL_CERT_FILE; the rest of isaacfs never sees it.

Listings and stats stay with omni.client (they need its S3 provider and configuration).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx

from ..core.errors import AccessDenied, ConnectionLost, NotFound, Unavailable, UpstreamError
from ..core.health import Health

logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is the library's chatter


class HttpRanges:
    def __init__(self, health: Health, connect_timeout: float, stall_timeout: float, connections: int = 32) -> None:
        self.health = health
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.connections = connections
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # made on first use, inside the running trio loop
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=self.connect_timeout, read=self.stall_timeout,
                                      write=self.connect_timeout, pool=None),
                limits=httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections,
                                    keepalive_expiry=60.0),
                follow_redirects=True, trust_env=True, headers={"User-Agent": "isaacfs"})
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def read(self, url: str, start: int, end: int, what: str,
                   on_data: Callable[[bytes], Awaitable[None]]) -> None:
        """Stream bytes [start, end) of ``url`` to ``on_data``, in order. A body that ends early
        returns short (the caller resumes); errors are the core's UpstreamError kinds."""
        self.health.check(what)
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        try:
            async with self._http().stream("GET", url, headers=headers) as reply:
                if reply.status_code == 404:
                    raise NotFound(f"{what}: not found upstream")
                if reply.status_code in (401, 403):
                    raise AccessDenied(f"{what}: access denied by upstream (HTTP {reply.status_code})")
                if reply.status_code >= 500:
                    raise Unavailable(f"{what}: upstream failed (HTTP {reply.status_code})")
                if reply.status_code == 200 and start != 0:
                    raise UpstreamError(f"{what}: the upstream ignores byte ranges (HTTP 200 to a ranged GET)")
                if reply.status_code not in (200, 206):
                    raise UpstreamError(f"{what}: upstream answered HTTP {reply.status_code}")
                position = start
                async for chunk in reply.aiter_raw():
                    if position + len(chunk) > end:
                        chunk = chunk[:end - position]
                    if chunk:
                        await on_data(chunk)
                        position += len(chunk)
                    if position >= end:
                        break
        except httpx.ReadTimeout:
            raise Unavailable(f"{what}: no byte arrived for {self.stall_timeout:g}s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            error = ConnectionLost(f"{what}: upstream unavailable ({type(exc).__name__})")
            self.health.mark(error)
            raise error from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise Unavailable(f"{what}: the connection broke mid-body ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from None
        self.health.mark(None)
