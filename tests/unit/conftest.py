"""The unit tier: the core, store, fetcher and jobs against the in-memory upstream, on a temp
folder. No kernel mount, no server, no network."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from isaacfs import sample_assets
from isaacfs.fetch.fetcher import Fetcher
from isaacfs.jobs.workspace import Workspace
from isaacfs.store.index import Index
from isaacfs.store.mirror import Mirror
from tests.support.memory import MemoryUpstream

SAMPLE = sample_assets()
GO2 = "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd"
FRANKA = "Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda"


def sample_files() -> dict[str, bytes]:
    """The embedded sample asset root as a path -> bytes dict."""
    return {path.relative_to(SAMPLE).as_posix(): path.read_bytes()
            for path in sorted(SAMPLE.rglob("*")) if path.is_file()}


# Real seconds the loop must sit idle (every task waiting) before the mock clock jumps to the
# next deadline: a backoff or a timeout costs that much real time instead of its length. A
# worker thread's write that takes longer looks idle too, and the jump fires whatever
# deadline is next (a stall watchdog): tests whose subject is a transfer's parts and their
# timing against a paced link run on the real clock (``trio_test_real_clock``).
AUTOJUMP_AFTER = 0.05


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_AFTER)


def trio_test(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body under trio (the project's event loop) with trio's MockClock:
    waits (retry backoff, timeouts, stall watchdogs) pass in virtual time, so a test that
    waits for a deadline takes no real time and says so in virtual seconds."""
    return _under_trio(body, mock=True)


def trio_test_real_clock(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """The same on the real clock, for a test whose subject is a child process (the usd-core
    worker) or a link paced chunk by chunk: under the mock clock, their real time would
    jump deadlines."""
    return _under_trio(body, mock=False)


def _under_trio(body: Callable[..., Awaitable[None]], mock: bool) -> Callable[..., None]:
    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> None:
        clock = mock_clock() if mock else None
        trio.run(functools.partial(body, *args, **kwargs), clock=clock)

    return run


@pytest.fixture
def upstream() -> MemoryUpstream:
    return MemoryUpstream(sample_files())


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "mirror"
    folder.mkdir()
    made = Mirror(folder)
    made.prepare()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def index(mirror: Mirror) -> Iterator[Index]:
    made = Index(mirror.state / "index.db")
    try:
        yield made
    finally:
        made.close()


class Running:
    """A workspace whose fetcher has a live nursery, for the length of one ``async with``."""

    def __init__(self, mirror: Mirror, index: Index, upstream: MemoryUpstream, jobs: int = 4) -> None:
        self.fetcher = Fetcher(mirror, index, upstream, jobs, retries=3)
        self.ws = Workspace(mirror, index, upstream, self.fetcher, jobs)
        self._nursery_cm: Any = None

    async def __aenter__(self) -> Workspace:
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        self.fetcher.attach(nursery)
        self._nursery = nursery
        return self.ws

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._nursery.cancel_scope.cancel()
        return bool(await self._nursery_cm.__aexit__(*exc))
