"""The FUSE session: mounting the operations, serving the kernel, stopping, unmounting. The
composition root (``app/daemon.py``) drives a mount through these, so that only fuse/
imports pyfuse3."""

from __future__ import annotations

import pyfuse3

from .operations import AssetFS

MAX_FUSE_TASKS = 10_000  # requests served at once (each a trio task)


def mount(operations: AssetFS, mountpoint: str, options: set[str]) -> None:
    """Mount ``operations`` at ``mountpoint``; RuntimeError where the kernel refuses."""
    pyfuse3.init(operations, mountpoint, options)


async def serve() -> None:
    """Answer the kernel until the session ends (``stop``, or an unmount from outside)."""
    await pyfuse3.main(min_tasks=4, max_tasks=MAX_FUSE_TASKS)


def stop() -> None:
    """End ``serve`` (from the trio thread that runs it)."""
    pyfuse3.terminate()


def unmount() -> None:
    pyfuse3.close(unmount=True)
