"""Backends: each turns one kind of upstream into the core's ``Upstream`` protocol.

- ``omni``: the router (S3 cloud roots, Nucleus ``omniverse://``, ``file:``): which way each
  request goes, every listed name checked, the health breaker.
- ``omni_client``: the only module of isaacfs that imports omni.client (Nucleus, and S3
  buckets that want credentials).
- ``s3`` over ``http``: S3 listings, GETs and ranged GETs over isaacfs's own kept-alive
  urllib3 pool.
- ``local``: ``file:`` trees, read block by block with a stall watchdog.

The unit tier's in-memory upstream and the fault switches that wrap any upstream live in
``tests/support`` (memory.py, faults.py): they are not shipped.

Callers choose through :func:`open_upstream` and :func:`client_session`; omni.client is
imported only when an omni.client upstream is actually used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..core.config import Settings
from ..core.types import Upstream

MANIFEST_TTL = 600.0


def open_upstream(settings: Settings) -> Upstream:
    """The backend for the settings' upstream URL; for several (``tiers`` before it), the
    ordered tiers over one backend each."""
    if not settings.tiers and not settings.upstream.startswith("s3://"):
        return _one(settings.upstream, settings, front=False)  # one upstream: as it always was
    from .tiers import TieredUpstream

    backends = [_one(url, settings, front=True) for url in settings.tiers]
    # A manifest is looked for in each tier in front, and in the last one if it is a store
    # ``warm --to`` fills (s3://): the cloud has none.
    manifests = [True] * len(backends) + [settings.upstream.startswith("s3://")]
    # A store's manifest is looked at again every 10 minutes at most (one HEAD; the body only
    # when it changed): a refill reaches the nodes without a remount.
    return TieredUpstream([*backends, _one(settings.upstream, settings, front=False)],
                          settings.upstream_retry_after, min(settings.listing_ttl, MANIFEST_TTL), manifests)


def _one(url: str, settings: Settings, front: bool) -> Upstream:
    # A tier in front of another is on the site: it never stalls longer than it may take to
    # answer, so a silent one costs a reader one upstream_timeout before the next tier serves.
    stall = min(settings.stall_timeout, settings.upstream_timeout) if front else settings.stall_timeout
    if url.startswith("s3://"):
        from .s3tier import S3Upstream

        return S3Upstream(url, settings.upstream_timeout, stall, settings.upstream_retry_after, front)
    from .omni import OmniUpstream

    return OmniUpstream(url, settings.upstream_timeout, stall, settings.upstream_retry_after,
                        settings.min_download_rate, settings.http_ranges, front)


@contextmanager
def client_session(lazy: bool = False) -> Iterator[None]:
    """Initialize (and at the end shut down) the libraries the backends need in this process:
    now, or (``lazy``: a short command) at their first use."""
    from .omni_client import client_session as omni_session

    with omni_session(lazy):
        yield
