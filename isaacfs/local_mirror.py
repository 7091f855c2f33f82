"""Jobs (warm, verify) on a mirror no daemon serves: this process builds the Workspace
that a daemon would otherwise lend, holding the mirror's lock while it runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from .config import Settings
from .errors import UserError
from .fetch import Fetcher
from .index import Index
from .mirror import Mirror
from .upstream import Upstream, client_session
from .warm import Workspace

T = TypeVar("T")


def run_on_mirror(settings: Settings, mirror_dir: Path, job: Callable[[Workspace], Awaitable[T]],
                  read_only: bool = False) -> T:
    """Run ``job`` on the mirror in ``mirror_dir``.

    ``read_only`` (a dry run) neither takes the lock nor saves the index.
    """
    with client_session():
        return trio.run(_run, settings, mirror_dir, job, read_only)


async def _run(settings: Settings, mirror_dir: Path, job: Callable[[Workspace], Awaitable[T]],
               read_only: bool) -> T:
    mirror = Mirror(mirror_dir)
    try:
        if not read_only:
            mirror.prepare()  # takes the lock: never two writers on one mirror
        index = Index(mirror.state / "index.db", read_only=read_only)
        try:
            upstream = Upstream.from_settings(settings)
            fetcher = Fetcher(mirror, index, upstream, settings.fetch_jobs, settings.fetch_retries)
            workspace = Workspace(mirror, index, upstream, fetcher, settings.fetch_jobs,
                                  listing_ttl=settings.listing_ttl)
            outcome: list[T | UserError] = []
            async with trio.open_nursery() as nursery:
                fetcher.attach(nursery)
                try:
                    outcome.append(await job(workspace))
                except UserError as exc:
                    outcome.append(exc)  # raised below, outside the nursery, as itself
                nursery.cancel_scope.cancel()
            if isinstance(outcome[0], UserError):
                raise outcome[0]
            return outcome[0]
        finally:
            index.close()
    finally:
        mirror.close()
