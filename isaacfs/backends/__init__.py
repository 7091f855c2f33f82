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


def open_upstream(settings: Settings) -> Upstream:
    """The backend for the settings' upstream URL."""
    from .omni import OmniUpstream

    return OmniUpstream.from_settings(settings)


@contextmanager
def client_session() -> Iterator[None]:
    """Initialize (and at the end shut down) the libraries the backends need in this process."""
    from .omni import client_session as omni_session

    with omni_session():
        yield
