"""Backends: each turns one kind of upstream into the core's ``Upstream`` protocol.

- ``omni``: NVIDIA's omni.client (S3 cloud roots, Nucleus ``omniverse://``, ``file:``);
  the only module of isaacfs that imports omni.client.
- ``memory``: an in-memory tree with fault switches, for the unit tier.

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
